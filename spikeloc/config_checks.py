"""Value checks of a whole run's config, made before anything is built (README "Troubleshooting").

jsonargparse already rejects unknown keys and wrong types, also inside the typed option dicts
(``fptt``: :class:`~spikeloc.training.FPTTConfig`; ``loss_kwargs`` / ``neck_kwargs``: :func:`options_type` of the
constructors they go to); these functions add the constraints types cannot say (T >= 1, K divides T, alpha > 0,
0 < beta <= 1, lr > 0, batch size >= 1, anchors shaped per scale, image size a multiple of the largest stride,
class names matching the datamodule, the arguments of the backbone and neurons chosen by name) and check the
YAML files named by ``--config``. Every failure is one :class:`ConfigError` whose message names the key, the
value and what is allowed.
"""
from __future__ import annotations

import importlib
import inspect
import typing
from pathlib import Path
from typing import Any, Callable, Sequence, TypedDict

import yaml

DEFAULT_OUT_STRIDES = (16, 32)  # the SPYv4 detector's feature strides


class ConfigError(ValueError):
    """A config value outside what is allowed."""


def options_type(function: Callable, name: str, module: str, skip: Sequence[str] = ()) -> type:
    """A ``TypedDict`` named ``module.name`` (every key optional) of ``function``'s keyword parameters but ``skip``,
    with their type hints: the type of a ``*_kwargs`` argument passed on to ``function``, so jsonargparse checks
    each key and value against the one signature that declares them, and a typo is named with its config key."""
    hints = typing.get_type_hints(function)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [p.name for p in inspect.signature(function).parameters.values()
             if p.kind in kinds and p.name not in {"self", *skip}]
    options = TypedDict(name, {key: hints.get(key, Any) for key in names}, total=False)  # type: ignore[operator]
    options.__module__ = module
    return options


def _get(config: Any, dotted: str) -> Any:
    """``config["a.b.c"]`` or ``None`` when any part is absent."""
    node = config
    for part in dotted.split("."):
        if node is None or not hasattr(node, "get"):
            return None
        node = node.get(part)
    return node


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_config_files(args: Sequence[str]) -> None:
    """Every ``--config FILE`` must be a readable YAML mapping; fails naming the file otherwise."""
    args = list(args)
    paths = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "-c")]
    paths += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    for name in paths:
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"--config {name}: no such file")
        try:
            content = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"--config {name}: cannot be read ({err})") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"--config {name}: not valid YAML ({err})") from err
        if not isinstance(content, dict) or not content:
            what = "is empty" if content is None else f"holds a {type(content).__name__}, not a mapping of keys"
            raise ConfigError(f"--config {name}: the file {what}; a run config has trainer/model/data keys "
                              "(see configs/quickstart.yaml)")


def _sequence_length(model: Any, data: Any) -> tuple[str, int] | None:
    """``(key, T)`` the FPTT parts must divide: the data's own sequence length where it has one
    (``num_steps`` of event data, ``seq_len``), else the model's ``num_steps`` for static inputs;
    ``None`` when only the data knows it (``presentation: sequential_pixels``)."""
    data = data if data is not None else {}
    for key in ("num_steps", "seq_len"):
        if isinstance(data.get(key), int):
            return f"data.init_args.{key}", data.get(key)
    if data.get("presentation", "static") != "static":
        return None
    return "num_steps", model.get("num_steps")


def check_loop(model: Any, data: Any = None) -> None:
    """The online loop's values: T, K, FPTT alpha/beta, learning rates, non-finite limit."""
    steps = model.get("num_steps")
    _require(isinstance(steps, int) and steps >= 1, "model.init_args.num_steps", steps, "an integer >= 1")
    fptt = model.get("fptt")  # keys and types checked by jsonargparse (FPTTConfig)
    if model.get("algorithm", "fptt") == "fptt" and fptt is not None:
        parts, length = fptt.get("parts"), _sequence_length(model, data)
        allowed = f"null or a divisor of {length[0]}={length[1]}" if length else "null or an integer >= 1"
        ok = parts is None or isinstance(parts, int) and parts >= 1 and (
            length is None or isinstance(length[1], int) and length[1] >= 1 and length[1] % parts == 0)
        _require(ok, "model.init_args.fptt.parts", parts, allowed)
        alpha, beta = fptt.get("alpha"), fptt.get("beta")
        _require(_number(alpha) and alpha > 0, "model.init_args.fptt.alpha", alpha, "a number > 0")
        _require(_number(beta) and 0 < beta <= 1, "model.init_args.fptt.beta", beta, "a number in (0, 1]")
    lr = _get(model, "optimizer.init_args.lr")
    if lr is not None:
        _require(_number(lr) and lr > 0, "model.init_args.optimizer.init_args.lr", lr, "a number > 0")
    backbone_lr = model.get("backbone_lr")
    if backbone_lr is not None:
        _require(_number(backbone_lr) and backbone_lr > 0, "model.init_args.backbone_lr", backbone_lr, "a number > 0")
    limit = model.get("max_nonfinite_steps")
    if limit is not None:
        _require(isinstance(limit, int) and limit >= 0, "model.init_args.max_nonfinite_steps", limit,
                 "an integer >= 0 (0: never stop)")


def _pairs(value: Any) -> bool:
    """A non-empty list of (w, h) pairs of positive numbers."""
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(a, (list, tuple)) and len(a) == 2 and all(_number(v) and v > 0 for v in a) for a in value)


def check_detector(model: Any, data: Any) -> None:
    """Anchors: one list of (w, h) > 0 per feature stride, or one flat list with ``anchor_masks`` (one list of
    indices per stride); image sizes multiples of the largest stride."""
    strides = list(_get(model, "backbone_kwargs.out_strides") or DEFAULT_OUT_STRIDES)
    anchors, masks = model.get("anchors"), model.get("anchor_masks")
    if anchors is not None and masks is None:
        shaped = isinstance(anchors, (list, tuple)) and len(anchors) == len(strides) and all(map(_pairs, anchors))
        _require(shaped, "model.init_args.anchors", anchors,
                 f"one list of (w, h) pairs > 0 per feature stride {strides}, e.g. [[[10, 14], [23, 27]], "
                 "[[81, 82], [135, 169]]] (or one flat list with anchor_masks)")
    if anchors is not None and masks is not None:
        flat = [a for scale in anchors for a in scale] if anchors and not _pairs(anchors) else anchors
        _require(_pairs(flat), "model.init_args.anchors", anchors, "(w, h) pairs > 0")
        shaped = isinstance(masks, (list, tuple)) and len(masks) == len(strides) and all(
            isinstance(m, (list, tuple)) and m and all(isinstance(i, int) and 0 <= i < len(flat) for i in m)
            for m in masks)
        _require(shaped, "model.init_args.anchor_masks", masks,
                 f"one list of anchor indices in 0..{len(flat) - 1} per feature stride {strides}")
    for key, value in (("model.init_args.image_size", model.get("image_size")),
                       ("data.init_args.image_size", data.get("image_size") if data is not None else None)):
        if value is not None:
            _require(isinstance(value, int) and value > 0 and value % max(strides) == 0, key, value,
                     f"a positive multiple of the largest feature stride {max(strides)}")


TIMM_KEYS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "features_only", "out_indices")


def _parameters(function: Callable) -> tuple[set[str], bool]:
    """Named parameters of ``function`` (``self`` and the first positional of a neuron left in), and whether
    it takes ``**kwargs``."""
    parameters = inspect.signature(function).parameters.values()
    named = {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self"}
    return named, any(p.kind is p.VAR_KEYWORD for p in parameters)


def _neuron_arguments(kind: str) -> set[str]:
    """What a cell passes on to a neuron of ``kind`` (the stateless ``ann`` twin also takes the spiking ones)."""
    from spikeloc.neurons.modules import NEURONS, SPIKING_ONLY

    named, more = _parameters(NEURONS[kind].__init__)
    return (named | (set(SPIKING_ONLY) if more else set())) - {"channels"}


def backbone_arguments(name: str, kwargs: dict[str, Any]) -> set[str] | None:
    """The keyword arguments the registered backbone ``name`` takes with these ``kwargs`` (its own, those its
    cells hand to every neuron kind it uses, timm's), or None when ``name`` is not a registered model."""
    import timm
    import torch

    import spikeloc.models  # noqa: F401  (registers the backbones)
    from spikeloc.neurons import LTCDense
    from spikeloc.neurons.modules import NEURONS

    if name not in timm.list_models():
        return None
    with torch.device("meta"):  # no memory, no weights: the class is all that is needed
        cls = type(timm.create_model(name, num_classes=0))
    own, more = _parameters(cls.__init__)
    accepted = own - {"in_chans", "num_classes"} | set(TIMM_KEYS)  # those two the task module sets
    if more and "neuron" in own:  # the rest goes to every conv cell's neuron: what all its kinds take
        kinds = {kwargs.get("neuron") or inspect.signature(cls.__init__).parameters["neuron"].default,
                 kwargs.get("stem_neuron")} - {None}
        if not kinds <= set(NEURONS):
            return None  # an unknown neuron: building names it and the known ones
        accepted |= set.intersection(*map(_neuron_arguments, kinds))
    elif more:  # dense recurrent layers
        accepted |= _parameters(LTCDense.__init__)[0] - {"in_features", "out_features"}
    return accepted


def check_model_kwargs(model: Any) -> None:
    """Every key of ``backbone_kwargs`` (detector) / ``model_kwargs`` (classifier, regressor) must be an argument
    of the named backbone, its neurons' or timm's: a typo fails naming the key and the accepted names."""
    for key, name_key in (("backbone_kwargs", "backbone"), ("model_kwargs", "model")):
        kwargs, name = model.get(key), model.get(name_key)
        if not kwargs or not isinstance(name, str) or not hasattr(kwargs, "items"):
            continue
        kwargs = dict(kwargs.items())
        if model.get("neuron") is not None and key == "backbone_kwargs":
            kwargs.setdefault("neuron", model.get("neuron"))
        accepted = backbone_arguments(name, kwargs)
        unknown = sorted(set(kwargs) - accepted) if accepted is not None else []
        if unknown:
            neurons = f" with {kwargs['neuron']} neurons" if "neuron" in kwargs else ""
            _require(False, f"model.init_args.{key}.{unknown[0]}", kwargs[unknown[0]],
                     f"not an argument of {name}{neurons}; it takes {', '.join(sorted(accepted))}")
    check_neck_neuron_kwargs(model)


def check_neck_neuron_kwargs(model: Any) -> None:
    """Every key of a detector's ``neck_kwargs.neuron_kwargs`` must be an argument of the neck's neurons (its
    ``neuron`` and ``output_neuron`` kinds): a typo fails naming the key and the accepted names."""
    from spikeloc.neurons.modules import NEURONS

    neck = model.get("neck_kwargs")
    kwargs = neck.get("neuron_kwargs") if hasattr(neck, "get") else None
    if not kwargs or not hasattr(kwargs, "items"):
        return
    kinds = {neck.get("neuron") or model.get("neuron") or "ltc", neck.get("output_neuron")} - {None}
    if not kinds <= set(NEURONS):
        return  # an unknown neuron: jsonargparse names it (NeuronKind)
    accepted = set.intersection(*map(_neuron_arguments, kinds))
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        _require(False, f"model.init_args.neck_kwargs.neuron_kwargs.{unknown[0]}", kwargs[unknown[0]],
                 f"not an argument of the neck's {' and '.join(sorted(kinds))} neurons; they take "
                 f"{', '.join(sorted(accepted))}")


def check_data(data: Any) -> None:
    """Batch size and worker counts."""
    if data is None:
        return
    size = data.get("batch_size")
    if size is not None:
        _require(isinstance(size, int) and size >= 1, "data.init_args.batch_size", size, "an integer >= 1")
    workers = data.get("num_workers")
    if workers is not None:
        _require(isinstance(workers, int) and workers >= 0, "data.init_args.num_workers", workers, "an integer >= 0")


def check_class_names(config: Any, build_data: Callable[[], Any] | None = None) -> None:
    """``model.init_args.class_names`` (when given) must have as many names as the datamodule has classes."""
    names = _get(config, "model.init_args.class_names")
    if names is None or build_data is None:
        return
    count = getattr(build_data(), "num_classes", None)
    _require(count is None or len(names) == count, "model.init_args.class_names", names,
             f"{count} names, one per class of the datamodule")


def check_precision(config: Any) -> None:
    """16-mixed scales the loss, and a fused optimizer unscales the gradients inside its step: they
    cannot be clipped before it (bf16-mixed scales nothing, so it can)."""
    precision, model = str(_get(config, "trainer.precision")), _get(config, "model.init_args")
    clip = model.get("gradient_clip_val", 1.0) if model is not None else None  # the loop's default: 1.0
    if precision in ("16-mixed", "16") and clip and _get(model, "optimizer.init_args.fused") is True:
        raise ConfigError(f"model.init_args.optimizer.init_args.fused=True is not allowed with trainer.precision="
                          f"{precision} and gradient clipping (model.init_args.gradient_clip_val={clip}): the fused "
                          "step unscales the gradients itself, so they cannot be clipped before it; set fused: "
                          "false, precision: bf16-mixed or gradient_clip_val: null")


def check_run_config(config: Any) -> None:
    """All value checks of a parsed (not yet instantiated) run config; raises :class:`ConfigError`."""
    model = _get(config, "model.init_args")
    data = _get(config, "data.init_args")
    check_precision(config)
    if model is not None:
        check_loop(model, data)
        check_model_kwargs(model)
        if "anchors" in model or "backbone" in model:
            check_detector(model, data)
    check_data(data)
    data_class = _get(config, "data.class_path")
    if data_class and data is not None:
        module, name = data_class.rsplit(".", 1)
        check_class_names(config, lambda: getattr(importlib.import_module(module), name)(**data.as_dict()))
