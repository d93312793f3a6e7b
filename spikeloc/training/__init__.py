"""Lightning glue: the shared FPTT / BPTT loop and the task modules."""
from .classification import SpikingClassifier
from .detection import SpikingDetector
from .fptt import FPTT
from .loop import FPTTConfig, OnlineModule
from .time_loop import present, split_steps, step_weights
from .writers import DetectionWriter, EvaluationWriter

__all__ = ["DetectionWriter", "EvaluationWriter", "FPTT", "FPTTConfig", "OnlineModule", "SpikingClassifier",
           "SpikingDetector", "present", "split_steps", "step_weights"]
