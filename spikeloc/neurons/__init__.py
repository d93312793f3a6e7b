"""Spiking neurons: pure step functions, surrogate gradients, stateful modules and the layers around them."""
from .backend import BACKENDS, Backend, BackendError
from .functional import adaptive_threshold, lif_step, ltc_step, readout_step, reset_membrane
from .fused import fused_lif_step, fused_ltc_step
from .layers import LeakyReadout, LTCDense, SpikingConv2d
from .modules import ALIFNeuron, LIFNeuron, LTCNeuron, NeuronKind, make_neuron, set_twin
from .state import detach_state, map_state, reset_state
from .surrogate import ATan, MultiGaussian, Sigmoid, Surrogate, get_surrogate

__all__ = [
    "ALIFNeuron", "ATan", "BACKENDS", "Backend", "BackendError", "LIFNeuron", "LTCDense", "LTCNeuron", "LeakyReadout",
    "MultiGaussian", "NeuronKind", "Sigmoid", "SpikingConv2d", "Surrogate", "adaptive_threshold", "detach_state",
    "fused_lif_step", "fused_ltc_step", "get_surrogate", "lif_step", "ltc_step", "make_neuron", "map_state",
    "readout_step", "reset_membrane", "reset_state", "set_twin",
]
