"""The learning suite's event sets: the event-camera model against a plain loop and a hand-computed case,
boxes on the rendered objects, recordings a function of their seed, the GEN1 layout read back."""
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import event_camera  # noqa: E402
import event_sets  # noqa: E402
from datamodules.events.gen1 import GEN1DataModule  # noqa: E402

EXACT = event_camera.SensorNoise(threshold_std=0.0, reference_jitter=0.0)


def _sensor_events(levels: torch.Tensor, chunks: list[int], noise=EXACT, seed=0) -> np.ndarray:
    """Events of log-intensity frames ``[F, H, W]`` fed to the sensor in chunks of the given sizes, sorted."""
    sensor = event_camera.EventSensor(levels[0], 1000, np.random.default_rng(seed), noise)
    parts, at = [], 1
    for size in chunks:
        parts.append(sensor(levels[at:at + size]))
        at += size
    events = np.concatenate(parts)
    return events[np.lexsort((events["p"], events["x"], events["y"], events["t"]))]


def test_threshold_crossings_by_hand():
    # pixel (0, 0): log level 0 -> 0.55 -> 0.55 -> 0; threshold 0.25, frames every 1000 us; pixel (1, 0) constant
    levels = torch.tensor([[[0.0, 1.0]], [[0.55, 1.0]], [[0.55, 1.0]], [[0.0, 1.0]]])
    events = _sensor_events(levels, [3])
    # ON at levels 0.25 and 0.5 (fractions 0.25/0.55, 0.5/0.55 of the first interval); the reference is then 0.5,
    # so OFF at 0.25 and 0.0 (fractions 0.3/0.55 and 1 of the third interval)
    assert events["t"].tolist() == [454, 909, 2545, 3000]
    assert events["p"].tolist() == [1, 1, 0, 0] and not events["x"].any() and not events["y"].any()


def _plain_loop(levels: torch.Tensor, thresholds: torch.Tensor, reference: torch.Tensor) -> list[tuple]:
    """Per pixel and frame, one event per whole threshold between the level and the reference (sorted)."""
    out = []
    frames, height, width = levels.shape
    for pixel in range(height * width):
        ref, off, on = float(reference[pixel]), float(thresholds[0, pixel]), float(thresholds[1, pixel])
        for f in range(1, frames):
            level = float(levels.view(frames, -1)[f, pixel])
            while level - ref >= on:
                ref += on
                out.append((f, pixel % width, pixel // width, 1))
            while ref - level >= off:
                ref -= off
                out.append((f, pixel % width, pixel // width, 0))
    return sorted(out)


def test_the_sensor_equals_a_plain_loop_whatever_the_chunks():
    gen = torch.Generator().manual_seed(0)
    levels = (torch.rand(13, 3, 4, generator=gen) < 0.4) * torch.randn(13, 3, 4, generator=gen).cumsum(0)
    noise = event_camera.SensorNoise()
    sensor = event_camera.EventSensor(levels[0], 1000, np.random.default_rng(3), noise)
    expected = _plain_loop(levels, sensor.thresholds, sensor.reference.clone())
    for chunks in ([12], [5, 7], [1] * 12):
        events = _sensor_events(levels, chunks, noise, seed=3)
        frame = events["t"] // 1000 + 1  # the interval an event lies in ends at this frame
        got = sorted(zip(frame.tolist(), events["x"].tolist(), events["y"].tolist(), events["p"].tolist()))
        assert got == expected and len(expected) > 20


@pytest.mark.parametrize("name", sorted(event_sets.SETS))
def test_boxes_are_the_extent_of_each_objects_coverage(name):
    spec = dataclasses.replace(event_sets.SETS[name], duration_us=1_000_000)  # 201 frames
    objects = event_sets.draw_objects(spec, np.random.default_rng(5))
    scene = torch.full((event_sets.HEIGHT, event_sets.WIDTH), 0.5)
    checked = 0
    for k, obj in enumerate(objects):
        _, boxes = event_sets.render([obj], scene, 0, 201)
        for frame, _, x0, y0, x1, y1 in boxes[::37]:  # a few frames of each object, checked by a plain loop
            aspect, sdf = event_sets.SHAPES[obj["shape"]]
            x, y = torch.meshgrid(torch.arange(event_sets.WIDTH), torch.arange(event_sets.HEIGHT), indexing="xy")
            dx, dy, cos, sin = x - obj["cx"][frame], y - obj["cy"][frame], np.cos(obj["angle"]), np.sin(obj["angle"])
            u, v = (cos * dx + sin * dy) / obj["half"], (cos * dy - sin * dx) / obj["half"]
            u = -u if obj["flip"] else u
            ys, xs = ((0.5 - sdf(u.float(), v.float()) * obj["half"]) >= 0.5).nonzero(as_tuple=True)
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            checked += 1
    assert checked > 5


@pytest.fixture
def tiny(monkeypatch):
    """The street set, 1 s recordings, one per split."""
    monkeypatch.setitem(event_sets.SETS, "street", dataclasses.replace(
        event_sets.SETS["street"], recordings=(1, 1, 1), duration_us=1_000_000))
    return "street"


def test_a_recording_is_a_function_of_its_seed_and_events_sit_on_the_objects(tiny):
    spec = event_sets.SETS[tiny]
    events, boxes = event_sets.record(spec, np.random.default_rng(7))
    again, boxes_again = event_sets.record(spec, np.random.default_rng(7))
    assert np.array_equal(events, again) and np.array_equal(boxes, boxes_again)
    assert np.all(np.diff(events["t"]) >= 0) and events["t"].max() < spec.duration_us and len(boxes)
    # in the 50 ms before a label, events are denser inside its boxes than elsewhere (background noise only)
    t = int(boxes["ts"][len(boxes) // 2])
    window = events[(events["t"] >= t - 50_000) & (events["t"] < t)]
    inside = np.zeros((event_sets.HEIGHT, event_sets.WIDTH), bool)
    for box in boxes[boxes["ts"] == t]:
        inside[int(box["y"]):int(box["y"] + box["h"]), int(box["x"]):int(box["x"] + box["w"])] = True
    hits = inside[window["y"], window["x"]]
    assert hits.mean() / inside.mean() > 5


def test_written_once_in_the_gen1_layout_and_read_back(tiny, tmp_path):
    folder = event_sets.write_set(tiny, tmp_path)
    stamp = (folder / "train" / "rec0000_td.dat").stat().st_mtime_ns
    assert event_sets.write_set(tiny, tmp_path) == folder
    assert (folder / "train" / "rec0000_td.dat").stat().st_mtime_ns == stamp  # kept, not written again
    data = GEN1DataModule(str(folder), num_steps=4, window_us=50_000, image_size=128, batch_size=4)
    data.setup("fit")
    item = data.train_set[0]
    assert len(data.train_set) > 5 and item["image"].shape == (4, 2, 128, 128) and item["image"].sum() > 0
    assert event_sets.summary(folder)["val"]["samples"] == len(data.val_set)
