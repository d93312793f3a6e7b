"""tonic event datasets read from tiny files in their real formats; framing with a fixed T."""
from pathlib import Path

import numpy as np
import pytest
import torch
from tonic.transforms import ToFrame

from datamodules.events.classification import EventClassificationDataModule, local_dataset
from datamodules.events.frames import FixedFrames, bin_events
from tests.event_formats import random_events, write_aedat4, write_atis_bin, write_gesture_npy

EV_DTYPE = np.dtype([("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")])


def _structured(ev: dict) -> np.ndarray:
    out = np.empty(len(ev["t"]), EV_DTYPE)
    for key in "xytp":
        out[key] = ev[key]
    return out


def _nmnist(root: Path, per_class: int = 2, seed: int = 0) -> dict[str, dict]:
    rng, written = np.random.default_rng(seed), {}
    for split in ("Train", "Test"):
        for digit in range(10):
            for k in range(per_class):
                ev = random_events(rng, 40 + k, 34, 34, 300_000)
                path = root / "NMNIST" / split / str(digit) / f"{k:05d}.bin"
                write_atis_bin(path, ev)
                written[str(path)] = ev
    return written


def test_nmnist_files_read_back_field_by_field(tmp_path):
    written = _nmnist(tmp_path)
    data = local_dataset("nmnist", tmp_path, "train")
    assert len(data) == 20
    for index in range(len(data)):
        events, label = data[index]
        ev = written[data.data[index]]
        assert label == int(Path(data.data[index]).parent.name)
        for key in "xytp":
            np.testing.assert_array_equal(events[key], ev[key])


def test_dvs_gesture_files_read_back_field_by_field(tmp_path):
    rng, written = np.random.default_rng(1), {}
    for user, light in ((1, "fluorescent"), (2, "led")):
        for label in (0, 3, 10):
            ev = random_events(rng, 30, 128, 128, 2_000_000)
            ev["t"] = ev["t"] // 1000 * 1000  # the release stores milliseconds
            path = tmp_path / "DVSGesture" / "ibmGestureTrain" / f"user{user:02d}_{light}" / f"{label}.npy"
            write_gesture_npy(path, ev)
            written[str(path)] = (ev, label)
    data = local_dataset("dvs_gesture", tmp_path, "train")
    assert len(data) == 6
    for index in range(len(data)):
        events, label = data[index]
        ev, expected = written[data.data[index]]
        assert label == expected
        for key in "xytp":
            np.testing.assert_array_equal(events[key].astype(np.int64), ev[key])


def test_ncaltech101_events_are_shifted_to_the_origin_by_tonic(tmp_path):
    ev = random_events(np.random.default_rng(2), 50, 200, 150, 300_000)
    ev["x"], ev["y"] = ev["x"] + 7, ev["y"] + 3
    write_atis_bin(tmp_path / "NCALTECH101" / "Caltech101" / "airplanes" / "image_0001.bin", ev)
    events, label = local_dataset("ncaltech101", tmp_path, "all")[0]
    assert label == "airplanes"
    np.testing.assert_array_equal(events["x"], ev["x"] - ev["x"].min())
    np.testing.assert_array_equal(events["t"], ev["t"])


def test_cifar10_dvs_aedat4_files_read_back_and_split(tmp_path):
    rng, written = np.random.default_rng(6), {}
    for name in ("airplane", "cat", "truck"):
        for k in range(5):
            ev = random_events(rng, 25, 128, 128, 1_000_000)
            path = tmp_path / "CIFAR10DVS" / name / f"cifar10_{name}_{k}.aedat4"
            write_aedat4(path, ev)
            written[str(path)] = ev
    data = local_dataset("cifar10_dvs", tmp_path, "all")
    assert len(data) == 15
    for index in range(len(data)):
        events, label = data[index]
        ev = written[data.data[index]]
        assert label == {"airplane": 0, "cat": 3, "truck": 9}[Path(data.data[index]).parent.name]
        for key in "xytp":
            np.testing.assert_array_equal(events[key].astype(np.int64), ev[key])
    module = EventClassificationDataModule("cifar10_dvs", str(tmp_path), num_steps=4, val_fraction=0.25,
                                           test_fraction=0.2, batch_size=2)
    module.setup("fit")
    sizes = [len(module.datasets[k]) for k in ("train", "val", "test")]
    assert sizes == [9, 3, 3] and module.num_classes == 10
    x, y = module.datasets["test"][0]
    assert x.shape == (4, 2, 128, 128) and x.sum() > 0


def test_missing_root_fails_at_once_naming_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)DVSGesture/ibmGestureTrain.*Expected layout"):
        EventClassificationDataModule("dvs_gesture", str(tmp_path))
    (tmp_path / "NMNIST" / "Train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"holds no \.bin recordings"):
        EventClassificationDataModule("nmnist", str(tmp_path))


@pytest.mark.parametrize("mode", [dict(n_time_bins=5), dict(time_window=20_000.0), dict(event_count=7)])
def test_fixed_frames_always_give_t_frames_on_a_non_square_sensor(mode):
    sensor = (304, 240, 2)
    framing = FixedFrames(sensor, num_steps=5, **mode)
    empty = framing(np.zeros(0, EV_DTYPE))
    assert empty.shape == (5, 2, 240, 304) and empty.dtype == np.int16 and not empty.any()
    few = _structured(random_events(np.random.default_rng(3), 3, 304, 240, 10_000))
    many = _structured(random_events(np.random.default_rng(4), 500, 304, 240, 1_000_000))
    for events in (few, many):
        frames = framing(events)
        assert frames.shape == (5, 2, 240, 304)
        reference = ToFrame(sensor_size=sensor, include_incomplete="n_time_bins" not in mode, **mode)(events)
        np.testing.assert_array_equal(frames[:min(5, len(reference))], reference[:5])


def test_bin_events_matches_a_plain_loop_and_tonic():
    sensor, steps, t0, t1 = (17, 11, 2), 4, 1_000, 9_000
    ev = _structured(random_events(np.random.default_rng(5), 400, 20, 13, 10_000))  # some off-sensor
    frames = bin_events(ev, sensor, steps, t0, t1)
    expected = np.zeros((steps, 2, 11, 17), np.int16)
    for x, y, t, p in zip(ev["x"], ev["y"], ev["t"], ev["p"]):
        if t0 <= t < t1 and x < 17 and y < 11:
            expected[(t - t0) * steps // (t1 - t0), p, y, x] += 1
    np.testing.assert_array_equal(frames, expected)
    inside = ev[(ev["x"] < 17) & (ev["y"] < 11)]
    tonic_frames = ToFrame(sensor_size=sensor, time_window=2_000.0, start_time=t0, end_time=t1)(inside)
    np.testing.assert_array_equal(frames, tonic_frames[:steps])


def test_nmnist_datamodule_batches_and_disk_cache(tmp_path):
    _nmnist(tmp_path / "data")
    kwargs = dict(name="nmnist", root=str(tmp_path / "data"), num_steps=6, batch_size=4, val_fraction=0.25)
    cached = EventClassificationDataModule(**kwargs, cache_dir=str(tmp_path / "cache"))
    cached.setup("fit")
    x, y = next(iter(cached.train_dataloader()))
    assert x.shape == (4, 6, 2, 34, 34) and x.dtype == torch.float32 and y.dtype == torch.long
    assert cached.num_classes == 10 and cached.in_channels == 2
    assert len(cached.datasets["train"]) == 15 and len(cached.datasets["val"]) == 5
    assert len(list((tmp_path / "cache").rglob("*.hdf5"))) == 4  # only what was loaded is binned
    plain = EventClassificationDataModule(**kwargs)
    plain.setup("fit")
    for index in range(len(plain.datasets["val"])):
        a, b = cached.datasets["val"][index], plain.datasets["val"][index]
        torch.testing.assert_close(a[0], b[0])
        assert a[1] == b[1]
        assert a[0].sum() == b[0].sum() > 0


def test_ncaltech101_classification_labels_survive_the_disk_cache(tmp_path):
    rng = np.random.default_rng(7)
    for name in ("airplanes", "watch"):
        for k in range(1, 6):
            write_atis_bin(tmp_path / "data" / "NCALTECH101" / "Caltech101" / name / f"image_{k:04d}.bin",
                           random_events(rng, 30, 200, 150, 300_000))
    module = EventClassificationDataModule("ncaltech101", str(tmp_path / "data"), num_steps=3, test_fraction=0.2,
                                           cache_dir=str(tmp_path / "cache"))
    module.setup("fit")
    assert module.class_names == ["airplanes", "watch"]
    for _ in range(2):  # binned and cached, then read back from the cache
        labels = [int(module.datasets["train"][i][1]) for i in range(len(module.datasets["train"]))]
        assert sorted(set(labels)) == [0, 1] and len(labels) == 8


def test_a_recording_left_without_events_becomes_zero_frames_also_in_the_disk_cache(tmp_path):
    rng = np.random.default_rng(3)
    burst = {"x": 60 + np.arange(40) % 2, "y": np.full(40, 60), "t": np.arange(0, 400_000, 10_000),
             "p": np.ones(40, int)}
    isolated = random_events(rng, 5, 128, 128, 1_000_000)  # far apart in time: the denoise filter drops them all
    empty = {key: np.zeros(0, int) for key in "xytp"}
    for folder in ("ibmGestureTrain", "ibmGestureTest"):
        for label, events in enumerate((burst, isolated, empty)):
            write_gesture_npy(tmp_path / "data" / "DVSGesture" / folder / "user01_led" / f"{label}.npy", events)
    kwargs = dict(name="dvs_gesture", root=str(tmp_path / "data"), num_steps=4, denoise_us=20_000, downsample=0.25,
                  cache_dir=str(tmp_path / "cache"))
    for _ in range(2):  # binned and cached, then a new datamodule reads the cache back
        module = EventClassificationDataModule(**kwargs)
        module.setup("fit")
        samples = sorted((int(y), x) for x, y in (module.datasets["val"][i] for i in range(3)))
        assert [x.shape for _, x in samples] == [(4, 2, 32, 32)] * 3
        assert samples[0][1].sum() > 0 and samples[1][1].sum() == 0 and samples[2][1].sum() == 0
    assert len(list((tmp_path / "cache").rglob("*.hdf5"))) == 3
