"""Lightning glue: the shared FPTT / BPTT loop, task modules, callbacks."""
from .classification import SpikingClassifier
from .fptt import FPTT
from .loop import FPTTConfig, OnlineModule, present, split_steps, step_weights

__all__ = ["FPTT", "FPTTConfig", "OnlineModule", "SpikingClassifier", "present", "split_steps", "step_weights"]
