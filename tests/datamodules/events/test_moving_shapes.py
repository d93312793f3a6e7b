"""Moving-shapes event detection: exact boxes over time, events where the shapes move, seeded; the options
that make it harder (distractors, shapes entering and leaving, speed changes, hot pixels, threshold noise)."""
import numpy as np
import pytest
import torch

from datamodules.detection.base import collate_detection
from datamodules.events.moving_shapes import Harder, MovingShapesDetectionDataModule, draw_scene, generate_moving_detection
from datamodules.classification.procedural import SHAPE_NAMES, render_shapes


def _generate(seed=0, n=6, noise=0.0):
    ids = [SHAPE_NAMES.index(c) for c in ("disc", "square", "triangle")]
    return generate_moving_detection(n, 48, 5, 3, ids, noise, np.random.default_rng(seed), chunk=4)


def test_same_seed_same_sequences_and_chunking_does_not_matter():
    events, targets = _generate()
    again, targets_again = _generate()
    assert torch.equal(events, again)
    ids = [SHAPE_NAMES.index(c) for c in ("disc", "square", "triangle")]
    whole, _ = generate_moving_detection(6, 48, 5, 3, ids, 0.0, np.random.default_rng(0), chunk=64)
    assert torch.equal(events, whole)
    for a, b in zip(targets, targets_again):
        assert torch.equal(a["track_boxes"], b["track_boxes"]) and torch.equal(a["labels"], b["labels"])


def _plain_box(obj: dict, k: int, step: int, size: int) -> list[int] | None:
    """Object ``k`` rendered alone at image ``step``; the extent of its coverage >= 0.5 by a plain pixel loop
    (None: not in view)."""
    one = lambda value: torch.tensor([value], dtype=torch.float32)  # noqa: E731
    mask = render_shapes(torch.tensor([int(obj["shape"][k])]), one(obj["cx"][k, step]), one(obj["cy"][k, step]),
                         one(obj["radius"][k]), one(obj["angle"][k]), size)[0]
    ys, xs = [], []
    for y in range(size):
        for x in range(size):
            if mask[y, x] >= 0.5:
                ys.append(y)
                xs.append(x)
    return [min(xs), min(ys), max(xs) + 1, max(ys) + 1] if xs else None


def test_boxes_are_the_exact_extent_of_each_rendered_shape():
    events, targets = _generate(seed=1, n=3)
    ids = [SHAPE_NAMES.index(c) for c in ("disc", "square", "triangle")]
    obj = draw_scene(np.random.default_rng(1), 3, 48, 5, 3, ids, (0.5, 2.0), Harder())
    track = torch.cat([t["track_boxes"] for t in targets])
    for k in range(len(obj["seq"])):
        for t in range(5):
            box = _plain_box(obj, k, t + 1, 48)
            assert track[k, t].tolist() == box
            assert 0 <= box[0] and box[2] <= 48 and 0 <= box[1] and box[3] <= 48  # inside the sensor


def test_events_appear_only_where_shapes_were_or_are():
    events, targets = _generate(seed=2)
    assert events.shape == (6, 5, 2, 48, 48) and events.dtype == torch.uint8
    assert events[:, :, 0].any() and events[:, :, 1].any()  # both polarities occur
    for seq, target in enumerate(targets):
        allowed = torch.zeros(48, 48, dtype=torch.bool)
        for t in range(5):
            allowed[:] = False
            previous = target["track_boxes"][:, t - 1] if t else None
            for boxes in (target["track_boxes"][:, t], previous):
                if boxes is None:
                    continue
                for x0, y0, x1, y1 in boxes.long().tolist():
                    allowed[max(y0 - 2, 0):y1 + 2, max(x0 - 2, 0):x1 + 2] = True
            if t > 0:
                assert not events[seq, t].any(0)[~allowed].any()


def test_datamodule_samples_follow_the_detection_batch_contract():
    data = MovingShapesDetectionDataModule(num_train=8, num_val=4, num_test=4, image_size=64, num_steps=3,
                                           class_names=["disc", "plus"], batch_size=4)
    data.setup("fit")
    batch = collate_detection([data.train_set[i] for i in range(4)])
    assert batch["images"].shape == (4, 3, 2, 64, 64) and batch["images"].dtype == torch.float32
    target = batch["targets"][0]
    assert torch.equal(target["boxes"], target["track_boxes"][:, -1]) and target["image_id"] == 1
    assert set(target["labels"].tolist()) <= {0, 1} and data.num_classes == 2 and data.in_channels == 2
    with pytest.raises(ValueError, match="hexagon"):
        MovingShapesDetectionDataModule(class_names=["hexagon"])


IDS = [SHAPE_NAMES.index(c) for c in ("disc", "square")]


def _harder(seed: int, n: int = 6, noise: float = 0.0, chunk: int = 4, **options):
    """Sequences of 48 px, 4 steps, up to 3 labelled discs and squares, and the objects they were drawn from."""
    harder = Harder(**options)
    events, targets = generate_moving_detection(n, 48, 4, 3, IDS, noise, np.random.default_rng(seed), chunk=chunk,
                                                harder=harder)
    return events, targets, draw_scene(np.random.default_rng(seed), n, 48, 4, 3, IDS, (0.5, 2.0), harder)


def test_distractors_move_and_make_events_but_carry_no_label():
    ring = SHAPE_NAMES.index("ring")
    events, targets, obj = _harder(3, distractors=(ring,), max_distractors=2)
    distractor = obj["label"] < 0
    assert distractor.sum() > 3 and set(obj["shape"][distractor]) == {ring}
    for s, target in enumerate(targets):
        labelled = np.nonzero((obj["seq"] == s) & ~distractor)[0]
        assert target["labels"].tolist() == obj["label"][labelled].tolist()
        assert target["track_boxes"][:, -1].tolist() == [_plain_box(obj, k, 4, 48) for k in labelled]
    # a distractor's edge makes events where no labelled shape is
    k = int(np.nonzero(distractor)[0][0])
    s, elsewhere = int(obj["seq"][k]), torch.zeros(48, 48, dtype=torch.bool)
    x0, y0, x1, y1 = _plain_box(obj, k, 4, 48)
    elsewhere[y0:y1, x0:x1] = True
    for box in targets[s]["track_boxes"][:, -2:].reshape(-1, 4).long().tolist():
        elsewhere[max(box[1] - 2, 0):box[3] + 2, max(box[0] - 2, 0):box[2] + 2] = False
    assert events[s, -1].any(0)[elsewhere].any()


def test_shapes_entering_and_leaving_are_clipped_to_the_sensor_and_dropped_out_of_view():
    events, targets, obj = _harder(4, n=10, enter_leave=1.0)
    clipped = dropped = 0
    for s, target in enumerate(targets):
        mine = np.nonzero(obj["seq"] == s)[0]
        boxes = [_plain_box(obj, k, 4, 48) for k in mine]
        shown = [k for k, box in zip(mine, boxes) if box is not None]
        dropped += len(mine) - len(shown)
        assert target["labels"].tolist() == obj["label"][shown].tolist()
        assert target["track_boxes"][:, -1].tolist() == [box for box in boxes if box is not None]
        clipped += sum(box[0] == 0 or box[1] == 0 or box[2] == 48 or box[3] == 48 for box in boxes if box)
        for k in mine:  # the centre passes the edge region: within 1.3 radii of an edge (inside or out)
            cx, cy, r = obj["cx"][k, 2], obj["cy"][k, 2], obj["radius"][k]
            assert min(abs(cx), abs(47 - cx), abs(cy), abs(47 - cy)) <= 1.3 * r + 1e-6
    assert clipped > 5 and dropped > 0


def test_speed_changes_once_along_the_heading():
    _, targets, obj = _harder(5, speed_change=1.0)
    steps = np.hypot(np.diff(obj["cx"], axis=1), np.diff(obj["cy"], axis=1))  # [m, 4] pixels per step
    changed = 0
    for row in steps:
        values = np.unique(row.round(6))
        assert len(values) <= 2
        changed += len(values) == 2 and 0.25 <= values.max() / values.min() <= 4  # factor in [0.25, 2.5]
    assert changed == len(steps)
    heading = np.arctan2(np.diff(obj["cy"], axis=1), np.diff(obj["cx"], axis=1))
    np.testing.assert_allclose(np.cos(heading - heading[:, :1]), 1.0, atol=1e-9)  # a straight line
    box = targets[0]["track_boxes"][0, -1].tolist()
    assert box == _plain_box(obj, int(np.nonzero(obj["seq"] == 0)[0][0]), 4, 48)
    assert 0 < box[0] and box[2] < 48 and 0 < box[1] and box[3] < 48  # still inside the sensor


def test_hot_pixels_fire_at_every_step_and_nothing_else_changes():
    plain, targets, _ = _harder(6, noise=0.002)
    hot, hot_targets, _ = _harder(6, noise=0.002, hot_pixels=3)
    added = (hot > plain).any(1)  # [n, 2, S, S]: pixels the hot ones add at some step
    assert torch.equal(hot | plain, hot) and added.flatten(1).sum(1).tolist() <= [3] * 6 and added.any()
    s, p, y, x = added.nonzero(as_tuple=True)
    assert hot[s, :, p, y, x].all()  # at every step
    for a, b in zip(targets, hot_targets):
        assert torch.equal(a["track_boxes"], b["track_boxes"])


def test_threshold_noise_changes_edges_and_every_option_ignores_the_chunk_size():
    plain, _, _ = _harder(7)
    options = dict(threshold_noise=0.5, hot_pixels=2, max_distractors=1, distractors=(SHAPE_NAMES.index("plus"),),
                   enter_leave=0.5, speed_change=0.5)
    noisy, targets, _ = _harder(7, threshold_noise=0.5)
    assert not torch.equal(noisy, plain) and (noisy != plain).float().mean() < 0.01  # edges only, a little
    small, small_targets, _ = _harder(8, chunk=2, **options)
    whole, whole_targets, _ = _harder(8, chunk=64, **options)
    assert torch.equal(small, whole)
    for a, b in zip(small_targets, whole_targets):
        assert torch.equal(a["track_boxes"], b["track_boxes"]) and torch.equal(a["labels"], b["labels"])


def test_datamodule_options_are_checked():
    data = MovingShapesDetectionDataModule(class_names=["disc", "plus"], max_distractors=2)
    assert [SHAPE_NAMES[k] for k in data.harder.distractors] == [c for c in SHAPE_NAMES if c not in ("disc", "plus")]
    with pytest.raises(ValueError, match=r"distractors \['disc'\] must be names .* not in class_names"):
        MovingShapesDetectionDataModule(class_names=["disc", "plus"], distractors=["disc"], max_distractors=1)
    with pytest.raises(ValueError, match="enter_leave, speed_change in \\[0, 1\\]"):
        MovingShapesDetectionDataModule(enter_leave=1.5)
