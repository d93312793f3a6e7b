"""SpikingYOLO: backbone + spiking neck + non-spiking head, one time step per call (SPYv4)."""
from __future__ import annotations

import contextlib
from typing import Iterator, Literal, Sequence

import torch
from torch import Tensor, nn

from ...neurons import NeuronKind
from ...neurons.modules import InitState
from .geometry import DEFAULT_SCALE_XY, LOG_WH_RANGE, Anchors, YOLOGeometry
from .head import HeadInit, Readout, YOLOHead
from .neck import SpikingYOLONeck, Upsample

WeightInit = Literal["default", "xavier_normal"]


class SpikingYOLO(nn.Module):
    """Spiking YOLOv4-tiny detector over any backbone following the backbone contract.

    Args:
        backbone: ``forward(x_t, state) -> (features, state)`` with attributes ``out_channels``
            and ``strides`` (features ordered by increasing stride).
        num_classes: K.
        anchors: per scale a list of (w, h) anchors in input pixels, or with ``anchor_masks`` one
            flat list of all anchors; default SPYv4's six scaled to ``image_size`` (which needs the
            backbone strides to be (16, 32)).
        anchor_masks: per scale the indices into a flat ``anchors`` list.
        scale_xy, log_wh_clamp: decoding constants (reference: 1.0 and None), see
            :class:`YOLOGeometry`; ``self.geometry`` is what the loss and post-processing read.
        readout: ``"last"`` (the head's 1x1 output of the current step), ``"leaky"`` (a leaky
            integrator over the steps) or ``"mean"`` (the running mean over the steps: spike counts).
        neuron, neuron_kwargs: the neuron of the neck cells; output_neuron: of the neck cells that
            feed the head (see :class:`SpikingYOLONeck`).
        image_size: input side used for the default anchors and the head's bias priors.
        neck_upsample: ``"current"`` (reference) or ``"spikes"``, see :class:`SpikingYOLONeck`.
        init_state: fresh membrane of every spiking neuron: ``"zeros"`` or ``"uniform"`` U[0, 1)
            (reference). Training draws from the global RNG; in eval mode a sequence that starts
            from ``state=None`` draws with the RNG seeded by ``eval_seed`` (then restored), so an
            evaluation batch gives the same result whatever ran before it; ``eval_seed=None`` draws
            from the global RNG in eval mode too (the reference: each evaluation another draw).
        input_dropout: ``Dropout2d`` probability on the input at every step in training (reference 0.1).
        weight_init: ``"default"`` (PyTorch's) or ``"xavier_normal"``: Xavier-normal weights and
            zero biases on every conv of the whole network (the reference's cells; no head bias priors).
        head_init: ``None`` (as ``weight_init``: bias priors with ``default``, Xavier with
            ``xavier_normal``) or how the 1x1 heads start, see :meth:`YOLOHead.initialise`; the
            reference's is ``"default"`` (PyTorch's init, non-zero biases).

    ``forward(x_t, state=None)``: ``x_t`` ``[B, 3, S, S]`` -> raw outputs, per scale
    ``[B, A_i, S / s_i, S / s_i, 5 + K]``, and state ``{"backbone", "neck", "head"}``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 20, anchors: Anchors | None = None,
                 readout: Readout = "last", neuron: NeuronKind = "ltc", neuron_kwargs: dict | None = None,
                 image_size: int = 416, anchor_masks: Sequence[Sequence[int]] | None = None,
                 scale_xy: float = DEFAULT_SCALE_XY, log_wh_clamp: tuple[float, float] | None = LOG_WH_RANGE,
                 neck_upsample: Upsample = "current", init_state: InitState = "zeros", input_dropout: float = 0.0,
                 weight_init: WeightInit = "default", eval_seed: int | None = 0,
                 output_neuron: NeuronKind | None = None, head_init: HeadInit | None = None) -> None:
        super().__init__()
        self.geometry = make_geometry([int(s) for s in backbone.strides], anchors, anchor_masks, image_size,
                                      scale_xy=scale_xy, log_wh_clamp=log_wh_clamp)
        self.num_classes = num_classes
        self.backbone = backbone
        self.neck = SpikingYOLONeck(backbone.out_channels, neuron, neuron_kwargs, neck_upsample, output_neuron)
        self.head = YOLOHead(self.neck.out_channels, self.geometry.num_anchors, num_classes, readout,
                             self.strides, image_size)
        if init_state not in ("zeros", "uniform") or weight_init not in ("default", "xavier_normal"):
            raise ValueError(f"init_state must be 'zeros' or 'uniform' and weight_init 'default' or "
                             f"'xavier_normal', got {init_state!r}, {weight_init!r}")
        self.init_state, self.eval_seed = init_state, eval_seed
        for module in self.modules():
            if hasattr(module, "init_state") and module is not self:
                module.init_state = init_state
        self.input_dropout = nn.Dropout2d(input_dropout) if input_dropout > 0 else nn.Identity()
        if weight_init == "xavier_normal":
            xavier_init(self)
        if head_init is not None and head_init != ("priors" if weight_init == "default" else "xavier_normal"):
            self.head.initialise(head_init)

    @property
    def anchors(self) -> list[list[tuple[float, float]]]:
        """Per scale, the (w, h) anchors (``geometry.scale_anchors``)."""
        return self.geometry.scale_anchors

    @property
    def strides(self) -> list[int]:
        return list(self.geometry.strides)

    @property
    def readout(self) -> str:
        return self.head.readout

    def forward(self, x_t: Tensor, state: dict | None = None) -> tuple[list[Tensor], dict]:
        with self._seeded(x_t.device, state is None):
            state = state or {}
            x_t = self.input_dropout(x_t)
            features, backbone_state = self.backbone(x_t, state.get("backbone"))
            neck_out, neck_state = self.neck(features, state.get("neck"))
        raw, head_state = self.head(neck_out, state.get("head"))
        return raw, {"backbone": backbone_state, "neck": neck_state, "head": head_state}

    def _seeded(self, device: torch.device, fresh: bool) -> contextlib.AbstractContextManager:
        """RNG seeded with ``eval_seed`` for a fresh uniform state in eval mode, else nothing."""
        if not fresh or self.training or self.init_state != "uniform" or self.eval_seed is None:
            return contextlib.nullcontext()
        return seeded_rng(device, self.eval_seed)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, geometry={self.geometry}, init_state={self.init_state}"


@contextlib.contextmanager
def seeded_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Run the block with ``device``'s default generator seeded, restoring its state afterwards."""
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        else:
            torch.random.default_generator.manual_seed(seed)
        yield


def make_geometry(strides: list[int], anchors: Anchors | None, masks: Sequence[Sequence[int]] | None,
                  image_size: int, **decoding) -> YOLOGeometry:
    """The :class:`YOLOGeometry` of a backbone with ``strides`` (see :class:`SpikingYOLO`'s arguments)."""
    if anchors is None:
        geometry = YOLOGeometry.spyv4(image_size, **decoding)
        if list(geometry.strides) != strides:
            raise ValueError(f"the default SPYv4 anchors are for strides {list(geometry.strides)}; the backbone "
                             f"has {strides}: pass `anchors` (one list of (w, h) per scale)")
        return geometry
    if masks is None:
        return YOLOGeometry.from_scales(anchors, strides, **decoding)
    return YOLOGeometry(tuple(tuple(a) for a in anchors), tuple(tuple(m) for m in masks), tuple(strides),
                        **decoding)


@torch.no_grad()
def xavier_init(module: nn.Module) -> None:
    """Xavier-normal weights and zero biases on every ``nn.Conv2d`` inside ``module`` (the reference)."""
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            nn.init.xavier_normal_(conv.weight)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["SpikingYOLO", "count_parameters", "make_geometry", "seeded_rng", "xavier_init"]
