"""``tools/predict.py --stream`` checks the detector and the file before anything is written, and needs only the
recording and the checkpoint: frames made as the detector was trained, the training data gone."""
import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from datamodules.events.gen1 import iter_dat_frames
from spikeloc.cli import train
from tests.event_formats import random_events, write_dat, write_gen1_boxes
from tests.training.test_detection_module import tiny_detector

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("predict_tool", REPO / "tools" / "predict.py")
predict = importlib.util.module_from_spec(spec)
spec.loader.exec_module(predict)


def run_stream(tmp_path, recording: Path, channels: int, headerless: bool = False) -> None:
    args = SimpleNamespace(stream=str(recording), frame_us=50_000, headerless=headerless, ckpt="unused.ckpt",
                           window=None, out=str(tmp_path / "out"), score=0.25)
    predict.stream(tiny_detector(in_channels=channels), {}, args, argparse.ArgumentParser(prog="predict.py"))


def test_an_rgb_detector_is_refused_before_anything_is_written(tmp_path, capsys):
    write_dat(tmp_path / "rec_td.dat", random_events(np.random.default_rng(0), 100, 304, 240, 200_000))
    with pytest.raises(SystemExit) as stop:
        run_stream(tmp_path, tmp_path / "rec_td.dat", channels=3)
    assert stop.value.code == 2 and not (tmp_path / "out").exists()
    assert "2-channel event frames (ON/OFF), but this detector takes 3-channel input" in capsys.readouterr().err


@pytest.mark.parametrize("headerless", [False, True])
def test_a_file_that_is_not_an_event_recording_is_refused(tmp_path, capsys, headerless):
    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 64 * 1024 + 3, dtype=np.uint8).tobytes())
    with pytest.raises(SystemExit) as stop:
        run_stream(tmp_path, noise, channels=2, headerless=headerless)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and not (tmp_path / "out").exists() and str(noise) in err
    assert ("not a multiple of 8" if headerless else "not a Prophesee .dat event file") in err


def test_a_recording_and_a_checkpoint_are_enough_frames_as_trained(tmp_path, monkeypatch, capsys):
    data = tmp_path / "gen1"
    for split in ("train", "val", "test"):
        write_dat(data / split / "r_td.dat", random_events(np.random.default_rng(0), 20_000, 304, 240, 2_000_000))
        write_gen1_boxes(data / split / "r_bbox.npy", [(1_000_000, 20, 30, 60, 40, 0, 1.0, 1)])
    model = {"class_path": "spikeloc.training.SpikingDetector", "init_args": {
        "backbone": "spyv4_tiny", "backbone_kwargs": {"width": 0.125}, "check_anchors": False,
        "anchors": [[(8, 8), (12, 12), (16, 16)], [(20, 20), (28, 28), (40, 40)]]}}
    settings = {"root": str(data), "num_steps": 3, "window_us": 20_000, "image_size": 64, "clip_count": 2.0,
                "batch_size": 1}
    cli = train(["--model", json.dumps(model), "--data", json.dumps({"class_path": "datamodules.events.gen1.GEN1DataModule",
                                                                     "init_args": settings}),
                 "--trainer.max_epochs", "1", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                 "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.accelerator", "cpu"])
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    shutil.rmtree(data)  # the training data is gone
    events = random_events(np.random.default_rng(1), 5000, 304, 240, 400_000)
    events["x"][:50], events["y"][:50], events["p"][:50] = 10, 10, 1  # a burst at one pixel in the first frame
    write_dat(tmp_path / "rec_td.dat", events)
    calls, streamed = [], []

    def frames_spy(path, frame_us, **kwargs):
        calls.append({"frame_us": frame_us, **kwargs})
        return iter_dat_frames(path, frame_us, **kwargs)

    def stream_spy(module, frames, window):
        frames = list(frames)
        streamed.append((torch.stack(frames), window))
        return real_stream(module, iter(frames), window)

    real_stream = predict.stream_detect
    monkeypatch.setattr("datamodules.events.gen1.iter_dat_frames", frames_spy)
    monkeypatch.setattr(predict, "stream_detect", stream_spy)
    monkeypatch.setattr(sys, "argv", ["predict.py", "--ckpt", ckpt, "--stream", str(tmp_path / "rec_td.dat"),
                                      "--out", str(tmp_path / "out"), "--score", "0"])
    predict.main()
    assert calls == [{"frame_us": 20_000, "image_size": 64, "clip_count": 2.0, "headerless": False}]
    frames, window = streamed[0]
    clipped = torch.stack(list(iter_dat_frames(tmp_path / "rec_td.dat", 20_000, image_size=64, clip_count=2.0)))
    raw = torch.stack(list(iter_dat_frames(tmp_path / "rec_td.dat", 20_000, image_size=64, clip_count=None)))
    assert window == 3 and torch.equal(frames, clipped) and not torch.equal(frames, raw)  # 20 ms frames, clipped at 2
    lines = (tmp_path / "out" / "detections.jsonl").read_text().splitlines()
    assert len(lines) == -(-len(frames) // 3)
    assert "frames of 20000 us, 3 per window, 64 px, counts clipped at 2.0" in capsys.readouterr().out


def test_stream_settings_from_a_config_and_overrides(tmp_path, monkeypatch, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  class_path: spikeloc.training.carry.StreamingDetector\n"
                      "  init_args: {conf_threshold: 0.2}\n"
                      "data:\n  init_args: {num_steps: 6, clip_count: 3}\ntrainer: {max_epochs: 2}\n")
    overrides = ["--model.init_args.conf_threshold", "0.1", "--data.init_args.window_us=30000",
                 "--trainer.accelerator", "cpu"]
    settings = predict.stream_settings(str(config), overrides)
    assert settings == {"model": {"_class_path": "spikeloc.training.carry.StreamingDetector", "conf_threshold": 0.1},
                        "data": {"num_steps": 6, "clip_count": 3, "window_us": 30000}}
    monkeypatch.setattr(sys, "argv", ["predict.py", "--ckpt", str(tmp_path / "none.ckpt"), "--stream", "x.dat",
                                      "--out", str(tmp_path / "out"), "--checkpoint.every_n_epochs", "1"])
    with pytest.raises(SystemExit):
        predict.main()
    assert "--stream takes --model.init_args.<key> <value> and --data.init_args.<key> <value> overrides" in \
        capsys.readouterr().err
