"""Event-frame augmentation: flips, zooms and shifts move frames and boxes alike (hand-computed cases),
GEN1's time-window jitter, and both event datamodules augment their training split only."""
import numpy as np
import pytest
import torch

from datamodules.events.frames import EventAugment
from datamodules.events.gen1 import GEN1DataModule
from datamodules.events.moving_shapes import MovingShapesDetectionDataModule
from tests.event_formats import random_events, write_dat, write_gen1_boxes


def _frames(points, size=8, steps=3):
    """``[T, 2, S, S]`` with a count of 1 at each (t, p, y, x)."""
    frames = torch.zeros(steps, 2, size, size)
    for t, p, y, x in points:
        frames[t, p, y, x] = 1.0
    return frames


def test_a_flip_mirrors_every_frame_and_the_boxes():
    frames = _frames([(0, 1, 2, 1), (2, 0, 5, 7)])
    out, boxes, kept = EventAugment(hflip=1.0)(frames, torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert torch.equal(out, _frames([(0, 1, 2, 6), (2, 0, 5, 0)]))  # x -> 7 - x
    assert boxes.tolist() == [[5.0, 2.0, 7.0, 4.0]] and kept.tolist() == [0]  # x0, x1 -> 8 - x1, 8 - x0


def test_a_zoom_in_by_two_about_the_centre_and_a_box_pushed_out_is_dropped():
    frames = torch.zeros(2, 2, 8, 8)
    frames[:, 0, 3:5, 3:5] = 1.0  # a 2x2 block around the centre (4, 4)
    out, boxes, kept = EventAugment(zoom=(2.0, 2.0))(frames, torch.tensor([[3.0, 3.0, 5.0, 5.0], [0.0, 0.0, 2.0, 2.0]]))
    expected = torch.zeros(2, 2, 8, 8)
    expected[:, 0, 2:6, 2:6] = 1.0  # x -> 2 (x - 4) + 4, each pixel copied (nearest)
    assert torch.equal(out, expected)
    assert boxes.tolist() == [[2.0, 2.0, 6.0, 6.0]] and kept.tolist() == [0]  # [-4, -4, 0, 0] clamps to nothing


def test_a_zoom_out_by_two():
    frames = _frames([(0, 0, 4, 4), (1, 1, 6, 6)])
    out, boxes, _ = EventAugment(zoom=(0.5, 0.5))(frames, torch.tensor([[0.0, 0.0, 8.0, 8.0]]))
    assert torch.equal(out, _frames([(0, 0, 4, 4), (1, 1, 5, 5)]))  # x -> (x - 4) / 2 + 4
    assert boxes.tolist() == [[2.0, 2.0, 6.0, 6.0]]


@pytest.mark.parametrize("seed", range(6))
def test_a_shift_moves_every_frame_and_the_boxes_by_the_same_pixels(seed):
    frames = _frames([(0, 0, 3, 3), (1, 1, 4, 5), (2, 0, 5, 4)])
    torch.manual_seed(seed)
    out, boxes, _ = EventAugment(translate=0.25)(frames, torch.tensor([[3.0, 3.0, 6.0, 6.0]]))
    dx, dy = int(boxes[0, 0]) - 3, int(boxes[0, 1]) - 3
    assert boxes.tolist() == [[3.0 + dx, 3.0 + dy, 6.0 + dx, 6.0 + dy]] and max(abs(dx), abs(dy)) <= 2
    assert torch.equal(out, _frames([(0, 0, 3 + dy, 3 + dx), (1, 1, 4 + dy, 5 + dx), (2, 0, 5 + dy, 4 + dx)]))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match=r"zoom\[0\] <= zoom\[1\].*zoom=\(1.5, 0.8\)"):
        EventAugment(zoom=(1.5, 0.8))
    with pytest.raises(ValueError, match="hflip=2"):
        EventAugment(hflip=2)


def _gen1_root(tmp_path):
    for split in ("train", "val", "test"):
        write_dat(tmp_path / split / "r_td.dat", random_events(np.random.default_rng(0), 20_000, 304, 240, 2_000_000))
        write_gen1_boxes(tmp_path / split / "r_bbox.npy", [(1_000_000, 20, 30, 40, 30, 0, 1.0, 1),
                                                           (1_500_000, 100, 60, 60, 40, 1, 1.0, 2)])
    return tmp_path


def test_gen1_time_jitter_moves_the_window_end_before_the_label_and_keeps_its_boxes(tmp_path):
    data = GEN1DataModule(str(_gen1_root(tmp_path)), num_steps=2, window_us=50_000, image_size=152,
                          clip_count=None, time_jitter=0.5)
    train, val = data.make_dataset("train", None), data.make_dataset("val", None)
    ends = set()
    for seed in range(8):
        torch.manual_seed(seed)
        end = 1_000_000 - int(torch.rand(()) * 0.5 * 50_000)  # the draw the dataset makes
        torch.manual_seed(seed)
        item = train[0]
        assert torch.equal(item["image"], train.frames(train.samples[0].dat, end)[0])
        assert item["target"]["boxes"].tolist() == [[10.0, 15.0, 30.0, 30.0]]  # the label's, scaled by 1/2
        ends.add(end)
    assert len(ends) == 8 and all(1_000_000 - 25_000 < end <= 1_000_000 for end in ends)
    assert torch.equal(val[0]["image"], val.frames(val.samples[0].dat, 1_000_000)[0])  # validation: never jittered
    with pytest.raises(ValueError, match="time_jitter must be in"):
        GEN1DataModule(str(tmp_path), time_jitter=1.5)


def test_gen1_flips_training_samples_only(tmp_path):
    root = _gen1_root(tmp_path)
    plain = GEN1DataModule(str(root), num_steps=2, image_size=152, clip_count=None).make_dataset("train", None)[1]
    data = GEN1DataModule(str(root), num_steps=2, image_size=152, clip_count=None, hflip=1.0)
    flipped = data.make_dataset("train", None)[1]
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    assert flipped["target"]["boxes"].tolist() == [[152 - 80.0, 30.0, 152 - 50.0, 50.0]]
    assert torch.equal(flipped["target"]["orig_boxes"], plain["target"]["orig_boxes"])
    assert torch.equal(data.make_dataset("val", None)[1]["image"], plain["image"])


def test_moving_shapes_flips_training_samples_only():
    kwargs = dict(num_train=4, num_val=4, num_test=4, image_size=48, num_steps=3)
    plain = MovingShapesDetectionDataModule(**kwargs)
    flipped = MovingShapesDetectionDataModule(**kwargs, hflip=1.0)
    plain.setup("fit")
    flipped.setup("fit")
    for index in range(4):
        a, b = plain.train_set[index], flipped.train_set[index]
        assert torch.equal(b["image"], a["image"].flip(-1)) and "track_boxes" not in b["target"]
        x0, y0, x1, y1 = a["target"]["boxes"].unbind(1)
        torch.testing.assert_close(b["target"]["boxes"], torch.stack([48 - x1, y0, 48 - x0, y1], 1))
        assert torch.equal(b["target"]["labels"], a["target"]["labels"])
        assert torch.equal(flipped.val_set[index]["image"], plain.val_set[index]["image"])
