"""Impossible configs fail at start-up, before anything is built, naming the key, the value and what is allowed."""
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonargparse import dict_to_namespace

from spikeloc.cli import SpikelocCLI, train
from spikeloc.config_checks import ConfigError, check_run_config

from .test_cli import QUICKSTART, ROOT

DETECT = str(ROOT / "configs" / "quickstart_detect.yaml")


def start(config, *overrides):
    return SpikelocCLI(args=["--config", config, "--trainer.logger", "false", *overrides])


@pytest.mark.parametrize("override, message", [
    (["--model.init_args.num_steps", "0"], "model.init_args.num_steps=0 is not allowed: an integer >= 1"),
    (["--model.init_args.fptt.parts", "3"],
     "model.init_args.fptt.parts=3 is not allowed: null or a divisor of num_steps=4"),
    (["--model.init_args.fptt.alpha", "0"], "model.init_args.fptt.alpha=0.0 is not allowed: a number > 0"),
    (["--model.init_args.fptt.beta", "1.5"], "model.init_args.fptt.beta=1.5 is not allowed: a number in (0, 1]"),
    (["--model.init_args.fptt.beta", "0"], "model.init_args.fptt.beta=0.0 is not allowed"),
    (["--model.init_args.optimizer.init_args.lr", "-0.1"], "optimizer.init_args.lr=-0.1 is not allowed: a number > 0"),
    (["--data.init_args.batch_size", "0"], "data.init_args.batch_size=0 is not allowed: an integer >= 1"),
    (["--trainer.precision", "16-mixed", "--model.init_args.optimizer.init_args.fused", "true"],
     "model.init_args.optimizer.init_args.fused=True is not allowed with trainer.precision=16-mixed and gradient "
     "clipping (model.init_args.gradient_clip_val=1.0)"),
])
def test_value_errors_name_key_value_and_what_is_allowed(override, message, capsys):
    with pytest.raises(SystemExit):
        start(QUICKSTART, *override)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("config, key, value, message", [
    (QUICKSTART, "fptt", "{alpah: 0.3}", "Option 'alpah' is not accepted"),
    (QUICKSTART, "fptt", "{native: true}", "Option 'native' is not accepted"),
    (QUICKSTART, "fptt", "{backend: native}", "Expected a typing.Literal['auto', 'eager', 'cpu_kernels']. Got value: "
                                              "native"),
    (QUICKSTART, "fptt", "{consolidate: 2}", "Parser key \"consolidate\":\n"),
    (DETECT, "loss_kwargs", "{box_wieght: 2}", "Unexpected keys: {'box_wieght'}"),
    (DETECT, "loss_kwargs", "{assign: worst}", "Expected a typing.Literal['threshold', 'best']. Got value: worst"),
    (DETECT, "neck_kwargs", "{nueron: lif}", "Unexpected keys: {'nueron'}"),
])
def test_typed_options_are_checked_by_their_type_naming_the_key(config, key, value, message, capsys):
    """``fptt`` (FPTTConfig), ``loss_kwargs`` (YOLOLoss's arguments) and ``neck_kwargs`` (the neck's): a wrong key or
    value is refused by jsonargparse before anything is built, the message naming the key and what is wrong."""
    with pytest.raises(SystemExit):
        start(config, f"--model.init_args.{key}", value)
    err = capsys.readouterr().err
    assert f'Parser key "{key}"' in err and message in err and "Traceback" not in err and len(err.splitlines()) < 80


@pytest.mark.parametrize("override, message", [
    (["--model.init_args.anchors", "[[[10, 14]], [[20, 30], [5]]]"], "anchors"),  # a type error: jsonargparse
    (["--model.init_args.anchors", "[[[10, 14], [23, 27]]]"],
     "one list of (w, h) pairs > 0 per feature stride [16, 32]"),
    (["--model.init_args.anchors", "[[[10, 14], [23, 27]], [[37, 58]]]", "--model.init_args.anchor_masks",
      "[[0, 1], [2, 3]]"],
     "model.init_args.anchor_masks=[[0, 1], [2, 3]] is not allowed: one list of anchor indices in 0..2 per feature"),
    (["--model.init_args.image_size", "100"], "model.init_args.image_size=100 is not allowed: a positive multiple of "
                                              "the largest feature stride 32"),
    (["--data.init_args.image_size", "120"], "data.init_args.image_size=120"),
    (["--model.init_args.class_names", "[a, b]"], "model.init_args.class_names=['a', 'b'] is not allowed: 5 names"),
    (["--data.init_args.batch_size", "0"], "data.init_args.batch_size=0"),
])
def test_detector_shapes_and_class_counts(override, message, capsys):
    with pytest.raises(SystemExit):
        start(DETECT, *override)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("config, override, message", [
    (QUICKSTART, ["--model.init_args.model_kwargs", "{channel: [8, 16]}"],
     "model.init_args.model_kwargs.channel=[8, 16] is not allowed: not an argument of ltc_convnet; it takes "
     "backend, channels, features_only, init_state, neuron, out_indices, pretrained, pretrained_cfg, "
     "pretrained_cfg_overlay, reset, surrogate, tau_bias, tau_kernel, threshold, width"),
    (DETECT, ["--model.init_args.backbone_kwargs", "{widht: 0.25, neuron: ann}"],
     "model.init_args.backbone_kwargs.widht=0.25 is not allowed: not an argument of spyv4_tiny with ann neurons; "
     "it takes activation, backend, decay,"),
    (DETECT, ["--model.init_args.backbone_kwargs", "{width: 0.25, tau_kernal: 5}"], "backbone_kwargs.tau_kernal=5"),
    (DETECT, ["--model.init_args.backbone_kwargs", "{width: 0.25, stem_neuron: ann, decay: 0.5}"],
     "backbone_kwargs.decay=0.5 is not allowed: not an argument of spyv4_tiny"),  # LIF's: not the LTC cells'
    (DETECT, ["--model.init_args.neck_kwargs", "{neuron_kwargs: {threshhold: 0.5}, output_neuron: ltc_readout}"],
     "model.init_args.neck_kwargs.neuron_kwargs.threshhold=0.5 is not allowed: not an argument of the neck's ltc and "
     "ltc_readout neurons; they take backend, init_state, reset, surrogate, tau_bias, tau_kernel, threshold"),
    (DETECT, ["--model.init_args.neck_kwargs", "{neuron: lif, neuron_kwargs: {tau_kernel: 5}}"],
     "neck_kwargs.neuron_kwargs.tau_kernel=5 is not allowed: not an argument of the neck's lif neurons"),
])
def test_a_typo_in_the_backbone_arguments_is_named_with_what_is_taken(config, override, message, capsys):
    with pytest.raises(SystemExit):
        start(config, *override)
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.splitlines()) < 80


def test_abbreviated_flags_are_refused(capsys):
    with pytest.raises(SystemExit):
        start(QUICKSTART, "--trainer.max_epoch", "3")
    assert "unrecognized arguments: --trainer.max_epoch" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [("", "the file is empty"), ("- a\n- b\n", "holds a list"),
                                              ("trainer: [unclosed\n", "not valid YAML")])
def test_bad_yaml_names_its_file(tmp_path, content, message, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(content)
    with pytest.raises(SystemExit):
        SpikelocCLI(args=["--config", str(path)])
    err = capsys.readouterr().err
    assert f"--config {path}" in err and message in err


def test_missing_yaml_names_its_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        SpikelocCLI(args=[f"--config={tmp_path / 'nope.yaml'}"])
    assert f"--config {tmp_path / 'nope.yaml'}: no such file" in capsys.readouterr().err


def test_a_run_that_never_started_leaves_no_folder(tmp_path):
    args = ["--config", DETECT, "--data", "datamodules.detection.voc.VOCDetectionDataModule", "--data.root", str(tmp_path / "no"),
            "--data.image_size", "128", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    with pytest.raises(FileNotFoundError, match="dataset root incomplete"):
        train(args)
    assert not any((tmp_path / "runs").rglob("version_*"))


def test_resume_last_without_a_checkpoint_says_where_it_looked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        SpikelocCLI(args=["--config", QUICKSTART, "--trainer.logger.init_args.save_dir", str(tmp_path),
                          "--ckpt_path", "last"])
    err = capsys.readouterr().err
    assert "--ckpt_path last: no checkpoint of this run under" in err and str(tmp_path) in err


def config(steps, parts, alpha, beta, lr, batch):
    return dict_to_namespace({
        "model": {"class_path": "spikeloc.training.SpikingClassifier", "init_args": {
            "num_steps": steps, "algorithm": "fptt", "fptt": {"alpha": alpha, "beta": beta, "parts": parts},
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": lr}}}},
        "data": {"class_path": "tests.training.tiny.QuadrantData", "init_args": {"batch_size": batch}}})


@settings(max_examples=200, deadline=None)
@given(steps=st.integers(-2, 12), parts=st.none() | st.integers(-1, 13), alpha=st.floats(-1, 1), beta=st.floats(-1, 2),
       lr=st.floats(-1, 1), batch=st.integers(-2, 64))
def test_config_validation_accepts_exactly_the_allowed_values(steps, parts, alpha, beta, lr, batch):
    allowed = (steps >= 1 and (parts is None or parts >= 1 and steps % parts == 0) and alpha > 0 and 0 < beta <= 1
               and lr > 0 and batch >= 1)
    try:
        check_run_config(config(steps, parts, alpha, beta, lr, batch))
        accepted = True
    except ConfigError:
        accepted = False
    assert accepted == allowed


@pytest.mark.parametrize("data, parts, message", [
    ({"num_steps": 20}, 10, None),  # event frames bring their own T
    ({"num_steps": 20}, 3, "model.init_args.fptt.parts=3 is not allowed: null or a divisor of data.init_args.num_steps=20"),
    ({"seq_len": 200}, 10, None),
    ({"presentation": "sequential_pixels"}, 784, None),  # only the data knows T
    ({"presentation": "static"}, 3, "null or a divisor of num_steps=8"),
])
def test_fptt_parts_divide_the_sequence_the_data_presents(data, parts, message):
    namespace = config(8, parts, 0.1, 0.5, 0.01, 4)
    for key, value in data.items():
        namespace.data.init_args[key] = value
    if message is None:
        check_run_config(namespace)
    else:
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_run_config(namespace)


@pytest.mark.parametrize("precision, fused, clip, allowed", [
    ("16-mixed", True, 1.0, False), ("16-mixed", True, None, True), ("16-mixed", False, 1.0, True),
    ("bf16-mixed", True, 1.0, True), ("32-true", True, 1.0, True)])
def test_a_fused_optimizer_is_refused_only_where_its_gradients_cannot_be_clipped(precision, fused, clip, allowed):
    config = dict_to_namespace({"trainer": {"precision": precision}, "model": {"init_args": {
        "num_steps": 4, "gradient_clip_val": clip, "optimizer": {"init_args": {"lr": 0.01, "fused": fused}}}}})
    if allowed:
        check_run_config(config)
    else:
        with pytest.raises(ConfigError, match="fused=True is not allowed with trainer.precision=16-mixed"):
            check_run_config(config)
