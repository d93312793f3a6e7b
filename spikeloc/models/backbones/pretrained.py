"""Pretrained weights for backbones from local files, with a readable load report.

Three sources are understood, all read with ``torch.load(..., weights_only=True)``:

* a spikeloc Lightning ``.ckpt`` (``{"state_dict": {"model.backbone.conv1.conv.weight": ...}}``):
  the module prefix that matches the backbone best is detected and stripped (or pass ``prefix``);
  keys outside it (heads, necks) are ignored;
* a plain ``state_dict`` file of the backbone;
* an ANN timm/torchvision checkpoint of the matching architecture: ``...convN.weight`` maps to the
  cell's ``...convN.conv.weight`` and ``...bnN.*`` to ``...convN.bn.*``; the neurons' tau-convs
  keep their fresh initialisation and are reported missing.
* a non-spiking YOLOv4-tiny in the common PyTorch layout, whole detector or backbone
  (:mod:`~spikeloc.models.backbones.yolov4_tiny`): renamed onto SPYv4's backbone, neck and heads
  (its BatchNorm step counters are left out and counted).

The input conv and the classifier are timm's business: the registered models name them in their
``pretrained_cfg`` (``first_conv``, ``classifier``), and timm's ``load_pretrained`` adapts a stem
pretrained on other input channels (``adapt_input_conv``) and drops a classifier of another size
(reported missing). Any other shape mismatch raises unless ``strict_shapes=False``.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timm.models import load_pretrained as timm_load_pretrained
from torch import Tensor, nn

from spikeloc.checkpoints import load_checkpoint

from .yolov4_tiny import from_yolov4_tiny, is_yolov4_tiny

logger = logging.getLogger(__name__)

_ANN_CONV = re.compile(r"(^|\.)conv(\d+)\.(weight|bias)$")
_ANN_BN = re.compile(r"(^|\.)bn(\d+)\.")


@dataclass
class LoadReport:
    """What a load did. Keys are the model's own names (after prefix stripping and ANN mapping)."""

    source: str
    prefix: str = ""
    layout: str = "spikeloc or timm"
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    head_skipped: list[str] = field(default_factory=list)
    input_adapted: list[str] = field(default_factory=list)
    renamed_from_ann: int = 0
    ignored_outside_prefix: int = 0
    counters_skipped: int = 0

    def summary(self) -> str:
        """Readable multi-line description for logs."""
        lines = [f"pretrained weights from {self.source} ({self.layout} layout, prefix {self.prefix!r}): "
                 f"{len(self.loaded)} tensors loaded, {self.renamed_from_ann} renamed from ANN layout, "
                 f"{self.ignored_outside_prefix} outside the prefix ignored"]
        if self.counters_skipped:
            lines[0] += f", {self.counters_skipped} BatchNorm step counters (num_batches_tracked) left out"
        for title, keys in (("missing (left at init)", self.missing), ("unexpected (dropped)", self.unexpected),
                            ("classifier skipped, shape differs", self.head_skipped),
                            ("input conv adapted to the model's input channels", self.input_adapted)):
            if keys:
                lines.append(f"  {title}: {len(keys)}: {_compact(keys)}")
        for key, got, want in self.mismatched:
            lines.append(f"  shape mismatch skipped: {key}: checkpoint {got} vs model {want}")
        return "\n".join(lines)


def _compact(keys: list[str]) -> str:
    """``a.b.tau_bn.bias, c.d.tau_bn.bias, fc.bias`` -> ``*.tau_bn.bias (x2), fc.bias``."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        parts = key.split(".")
        groups.setdefault("*." + ".".join(parts[-2:]) if len(parts) > 2 else key, []).append(key)
    return ", ".join(members[0] if len(members) == 1 else f"{pattern} (x{len(members)})"
                     for pattern, members in groups.items())


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a checkpoint file: Lightning ``state_dict``, a ``model`` entry, or a plain dict."""
    checkpoint = load_checkpoint(path)
    for key in ("state_dict", "model"):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    return {key: value for key, value in checkpoint.items() if isinstance(value, Tensor)}


def ann_to_cell_key(key: str) -> str:
    """ANN ResNet name -> LTC cell name: ``layer1.0.conv1.weight`` -> ``layer1.0.conv1.conv.weight``,
    ``layer1.0.bn1.running_mean`` -> ``layer1.0.conv1.bn.running_mean``, ``bn1.weight`` -> ``conv1.bn.weight``."""
    key = _ANN_CONV.sub(r"\1conv\2.conv.\3", key)
    return _ANN_BN.sub(r"\1conv\2.bn.", key)


def _resolve(key: str, model_keys: set[str]) -> str | None:
    """The model key a (prefix-free) checkpoint key loads into, or ``None``."""
    if key in model_keys:
        return key
    mapped = ann_to_cell_key(key)
    return mapped if mapped in model_keys else None


def detect_prefix(keys: list[str], model_keys: set[str]) -> str:
    """The module prefix (``""``, ``"net."``, ``"model.backbone."``...) under which most checkpoint
    keys resolve to model keys; ties go to the shortest prefix."""
    votes: Counter[str] = Counter()
    for key in keys:
        cuts = [0] + [i + 1 for i, char in enumerate(key) if char == "."]
        for cut in cuts:
            if _resolve(key[cut:], model_keys) is not None:
                votes[key[:cut]] += 1
    if not votes:
        raise ValueError(f"no checkpoint key matches the model under any prefix (first keys: {keys[:5]})")
    return max(votes, key=lambda prefix: (votes[prefix], -len(prefix)))


def _classifier_prefix(model: nn.Module) -> str | None:
    """``"fc."`` for a model whose ``get_classifier()`` (or ``fc``) is a submodule, else ``None``."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else getattr(model, "fc", None)
    return next((f"{name}." for name, module in model.named_modules() if name and module is head), None)


def _raise_on_mismatch(report: LoadReport) -> None:
    details = "; ".join(f"{key}: checkpoint {got} vs model {want}" for key, got, want in report.mismatched)
    raise ValueError(f"shape mismatch loading {report.source} (pass strict_shapes=False to skip): {details}")


def match_state_dict(state_dict: dict[str, Tensor], model: nn.Module, strict_shapes: bool = True,
                     prefix: str | None = None, source: str = "<state_dict>") -> tuple[dict[str, Tensor], LoadReport]:
    """Rename and filter ``state_dict`` so that ``model.load_state_dict(result, strict=False)`` loads it.

    Raises ``ValueError`` naming every key with both shapes on a (non-classifier) shape mismatch
    unless ``strict_shapes=False``, in which case those tensors are skipped and reported.
    """
    target = model.state_dict()
    model_keys, head = set(target), _classifier_prefix(model)
    stem = next((key for key, value in target.items() if value.dim() == 4), None)  # the input conv
    layout, counters = "spikeloc or timm", 0
    if is_yolov4_tiny(list(state_dict)):
        (state_dict, counters), layout = from_yolov4_tiny(state_dict, prefix or ""), "YOLOv4-tiny"
    prefix = detect_prefix(list(state_dict), model_keys) if prefix is None else prefix
    report = LoadReport(source=source, prefix=prefix, layout=layout, counters_skipped=counters)
    matched: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            report.ignored_outside_prefix += 1
            continue
        stripped = key[len(prefix):]
        name = _resolve(stripped, model_keys)
        if name is None:
            report.unexpected.append(stripped)
        elif value.shape == target[name].shape:
            matched[name] = value
            report.renamed_from_ann += name != stripped
        elif name == stem and _differs_in_input_channels(value, target[name]):
            # e.g. weights pretrained on grayscale frames feeding RGB images or 2-polarity events
            matched[name] = value  # adapted by timm (first_conv)
            report.input_adapted.append(name)
        elif head is not None and name.startswith(head):
            matched[name] = value  # dropped by timm (classifier of another num_classes)
            report.head_skipped.append(name)
        else:
            report.mismatched.append((name, tuple(value.shape), tuple(target[name].shape)))
    if report.mismatched and strict_shapes:
        _raise_on_mismatch(report)
    if not matched:
        raise ValueError(f"nothing in {source} loads into {type(model).__name__} under prefix {prefix!r}")
    report.loaded = sorted(set(matched) - set(report.head_skipped))
    report.missing = sorted(model_keys - set(report.loaded))
    report.unexpected.sort()
    report.head_skipped.sort()
    return matched, report


def _differs_in_input_channels(saved: Tensor, wanted: Tensor) -> bool:
    return saved.dim() == wanted.dim() == 4 and saved.shape[0] == wanted.shape[0] and saved.shape[2:] == wanted.shape[2:]


def _log(report: LoadReport) -> None:
    level = logging.WARNING if report.unexpected or report.mismatched else logging.INFO
    logger.log(level, report.summary())


def describe_source(cfg: dict[str, Any], matched: dict[str, Tensor]) -> dict[str, Any]:
    """``cfg`` with ``input_size`` channels and ``num_classes`` read from the matched tensors of its
    ``first_conv`` and ``classifier``, so timm adapts and resets exactly what the file holds."""
    stem = matched.get(f"{cfg.get('first_conv')}.weight")
    head = matched.get(f"{cfg.get('classifier')}.weight")
    if stem is not None and stem.dim() == 4:
        cfg["input_size"] = (stem.shape[1], *tuple(cfg.get("input_size") or (3, 224, 224))[1:])
    if head is not None:
        cfg["num_classes"] = head.shape[0]
    return cfg


def load_pretrained(model: nn.Module, path: str | Path, strict_shapes: bool = True,
                    prefix: str | None = None) -> LoadReport:
    """Load a local checkpoint (Lightning ``.ckpt``, plain ``state_dict`` or ANN timm) into ``model``
    through timm's ``load_pretrained`` (input-conv adaptation and classifier reset).

    Returns (and logs) the :class:`LoadReport`. ``prefix`` forces the module prefix to strip.
    """
    matched, report = match_state_dict(read_state_dict(path), model, strict_shapes, prefix, source=str(path))
    cfg = describe_source({**getattr(model, "pretrained_cfg", {}), "state_dict": matched}, matched)
    timm_load_pretrained(model, cfg, num_classes=getattr(model, "num_classes", 0),
                         in_chans=getattr(model, "in_chans", 3), strict=False)
    _log(report)
    return report


def timm_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """``pretrained_filter_fn`` for ``timm.models.build_model_with_cfg``: the same matching as
    :func:`load_pretrained` (timm has already read the file with ``weights_only=True``). The model's
    ``pretrained_cfg`` (the dict timm reads next) is updated to describe the file's stem and classifier."""
    matched, report = match_state_dict(state_dict, model, source="timm pretrained_cfg")
    describe_source(model.pretrained_cfg, matched)
    _log(report)
    return matched
