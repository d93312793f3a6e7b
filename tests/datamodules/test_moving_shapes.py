"""Moving-shapes event detection: exact boxes over time, events where the shapes move, seeded."""
import numpy as np
import pytest
import torch

from datamodules.detection import collate_detection
from datamodules.moving_shapes import MovingShapesDetectionDataModule, generate_moving_detection
from datamodules.procedural import SHAPE_NAMES, render_shapes


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


def test_boxes_are_the_exact_extent_of_each_rendered_shape():
    """Re-render one object alone with a plain pixel loop over its coverage >= 0.5."""
    events, targets = _generate(seed=1, n=3)
    from datamodules import moving_shapes
    obj = moving_shapes._draw_objects(np.random.default_rng(1), 3, 48, 5, 3, 3, (0.5, 2.0))
    ids = [SHAPE_NAMES.index(c) for c in ("disc", "square", "triangle")]
    track = torch.cat([t["track_boxes"] for t in targets])
    for k in range(len(obj["seq"])):
        for t in range(5):
            one = lambda value: torch.tensor([value], dtype=torch.float32)  # noqa: E731
            mask = render_shapes(torch.tensor([ids[obj["cls"][k]]]), one(obj["cx"][k, t + 1]), one(obj["cy"][k, t + 1]),
                                 one(obj["radius"][k]), one(obj["angle"][k]), 48)[0]
            ys, xs = [], []
            for y in range(48):
                for x in range(48):
                    if mask[y, x] >= 0.5:
                        ys.append(y)
                        xs.append(x)
            assert track[k, t].tolist() == [min(xs), min(ys), max(xs) + 1, max(ys) + 1]
            assert 0 <= min(xs) and max(xs) < 48 and 0 <= min(ys) and max(ys) < 48  # inside the sensor


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
