"""``tools/predict.py --stream`` checks the detector and the file before anything is written."""
import argparse
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.event_formats import random_events, write_dat
from tests.training.test_detection_module import tiny_detector

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("predict_tool", REPO / "tools" / "predict.py")
predict = importlib.util.module_from_spec(spec)
spec.loader.exec_module(predict)


def run_stream(tmp_path, recording: Path, channels: int, headerless: bool = False) -> None:
    cli = SimpleNamespace(model=tiny_detector(in_channels=channels), datamodule=None)
    args = SimpleNamespace(stream=str(recording), frame_us=50_000, headerless=headerless, ckpt="unused.ckpt",
                           window=None, out=str(tmp_path / "out"), score=0.25)
    predict.stream(cli, args, argparse.ArgumentParser(prog="predict.py"))


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
