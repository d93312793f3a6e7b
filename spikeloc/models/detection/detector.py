"""SpikingYOLO: backbone + spiking neck + non-spiking head, one time step per call (SPYv4)."""
from __future__ import annotations

from torch import Tensor, nn

from ...neurons import NeuronKind
from .anchors import SPYV4_ANCHORS, SPYV4_STRIDES, Anchors, check_anchors
from .head import Readout, YOLOHead
from .neck import SpikingYOLONeck


class SpikingYOLO(nn.Module):
    """Spiking YOLOv4-tiny detector over any backbone following the backbone contract.

    Args:
        backbone: ``forward(x_t, state) -> (features, state)`` with attributes ``out_channels``
            and ``strides`` (features ordered by increasing stride).
        num_classes: K.
        anchors: per scale a list of (w, h) anchors in input pixels; default SPYv4's (which needs
            the backbone strides to be (16, 32)).
        readout: ``"last"`` (the head's 1x1 output of the current step) or ``"leaky"``
            (a leaky integrator over the steps).
        neuron, neuron_kwargs: the neuron of the neck cells; output_neuron: of the neck cells that
            feed the head (see :class:`SpikingYOLONeck`).
        image_size: input side used for the head's bias priors.

    ``forward(x_t, state=None)``: ``x_t`` ``[B, 3, S, S]`` -> raw outputs, per scale
    ``[B, A_i, S / s_i, S / s_i, 5 + K]``, and state ``{"backbone", "neck", "head"}``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 20, anchors: Anchors | None = None,
                 readout: Readout = "last", neuron: NeuronKind = "ltc", neuron_kwargs: dict | None = None,
                 image_size: int = 416, output_neuron: NeuronKind | None = None) -> None:
        super().__init__()
        strides = [int(s) for s in backbone.strides]
        if anchors is None:
            if tuple(strides) != SPYV4_STRIDES:
                raise ValueError(f"the default SPYv4 anchors are for strides {SPYV4_STRIDES}; the backbone has "
                                 f"{strides}: pass `anchors` (one list of (w, h) per scale)")
            anchors = SPYV4_ANCHORS
        self.anchors = check_anchors(anchors, strides)
        self.strides = strides
        self.num_classes = num_classes
        self.backbone = backbone
        self.neck = SpikingYOLONeck(backbone.out_channels, neuron, neuron_kwargs, output_neuron)
        self.head = YOLOHead(self.neck.out_channels, [len(a) for a in self.anchors], num_classes, readout,
                             strides, image_size)

    @property
    def readout(self) -> str:
        return self.head.readout

    def forward(self, x_t: Tensor, state: dict | None = None) -> tuple[list[Tensor], dict]:
        state = state or {}
        features, backbone_state = self.backbone(x_t, state.get("backbone"))
        neck_out, neck_state = self.neck(features, state.get("neck"))
        raw, head_state = self.head(neck_out, state.get("head"))
        return raw, {"backbone": backbone_state, "neck": neck_state, "head": head_state}

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, strides={self.strides}, anchors={self.anchors}"


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["SpikingYOLO", "count_parameters"]
