"""Property-based checks (hypothesis) of box conversions, the box rule, augmentation and the collate."""
import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from datamodules.detection.base import collate_detection, make_record, make_sample
from datamodules.detection.transforms import eval_transform, letterbox_params, train_transform
from datamodules.detection.validation import clean_box_array
from spikeloc.models.detection.anchors import decode_boxes, encode_boxes
from spikeloc.models.detection.postprocess import to_original_boxes

FAST = settings(max_examples=60, deadline=None)


@st.composite
def image_and_boxes(draw, max_side=96, max_boxes=5):
    """``(height, width, boxes [N, 4] xyxy inside the image with sides >= 1)``."""
    height, width = draw(st.integers(8, max_side)), draw(st.integers(8, max_side))
    boxes = []
    for _ in range(draw(st.integers(0, max_boxes))):
        x1, y1 = draw(st.floats(0, width - 2)), draw(st.floats(0, height - 2))
        boxes.append([x1, y1, draw(st.floats(x1 + 1, width)), draw(st.floats(y1 + 1, height))])
    return height, width, np.asarray(boxes, np.float32).reshape(-1, 4)


@FAST
@given(size=st.tuples(st.integers(1, 500), st.integers(1, 500)),
       boxes=arrays(np.float64, st.tuples(st.integers(0, 8), st.just(4)),
                    elements=st.floats(-1e4, 1e4) | st.sampled_from([np.nan, np.inf, -np.inf])))
def test_box_rule_leaves_only_finite_boxes_inside_the_image(size, boxes):
    height, width = size
    kept, keep, counts = clean_box_array(boxes, height, width)
    assert len(kept) == keep.sum() == len(boxes) - counts["non_finite"] - counts["empty"]
    assert np.isfinite(kept).all()
    assert (kept[:, [0, 2]] >= 0).all() and (kept[:, [0, 2]] <= width).all()
    assert (kept[:, [1, 3]] >= 0).all() and (kept[:, [1, 3]] <= height).all()
    assert (kept[:, 2] > kept[:, 0]).all() and (kept[:, 3] > kept[:, 1]).all()


@FAST
@given(image_and_boxes(max_side=300))
def test_valid_boxes_pass_the_box_rule_unchanged(sample):
    height, width, boxes = sample
    kept, keep, counts = clean_box_array(boxes, height, width)
    assert keep.all() and sum(counts.values()) == 0
    np.testing.assert_array_equal(kept, boxes)


@FAST
@given(image_and_boxes(max_side=300), st.sampled_from([32, 64, 416]))
def test_letterbox_and_its_inverse_round_trip(sample, size):
    height, width, boxes = sample
    params = letterbox_params(height, width, size)
    pad = params["padding"][:2]
    moved = torch.from_numpy(boxes) * params["scale"] + torch.tensor([pad[0], pad[1], pad[0], pad[1]])
    assert (moved >= -1e-3).all() and (moved <= size + 1e-3).all()
    back = to_original_boxes(moved, params["scale"], pad, (height, width))
    torch.testing.assert_close(back, torch.from_numpy(boxes), atol=2e-3, rtol=1e-5)


@FAST
@given(cx=st.floats(0.1, 0.9), cy=st.floats(0.1, 0.9), cell=st.tuples(st.integers(0, 3), st.integers(0, 3)),
       w=st.floats(2, 300), h=st.floats(2, 300), anchor=st.tuples(st.floats(4, 200), st.floats(4, 200)),
       stride=st.sampled_from([8, 16, 32]))
def test_encode_inverts_decode(cx, cy, cell, w, h, anchor, stride):
    assume(all(-8.0 < np.log(s / a) < 4.0 for s, a in zip((w, h), anchor)))  # decode's clamp on log(wh / anchor)
    x, y = (cell[0] + cx) * stride, (cell[1] + cy) * stride
    box = torch.tensor([[x - w / 2, y - h / 2, x + w / 2, y + h / 2]], dtype=torch.float64)
    as_tensor = lambda value: torch.tensor([value], dtype=torch.float64)  # noqa: E731
    t = encode_boxes(box, as_tensor(cell), as_tensor(anchor), stride)
    raw = torch.zeros(1, 1, 4, 4, 4, dtype=torch.float64)
    raw[0, 0, cell[1], cell[0]] = t[0]
    decoded = decode_boxes(raw, [anchor], stride)[0, 0, cell[1], cell[0]]
    torch.testing.assert_close(decoded, box[0], atol=1e-6, rtol=1e-6)


def sample_of(height, width, boxes, transform, seed):
    torch.manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    labels = np.arange(len(boxes)) % 3
    record = make_record(1, boxes, labels, np.zeros(len(boxes), bool))
    return make_sample(image, record, transform)


@FAST
@given(image_and_boxes(), st.sampled_from([32, 64]), st.integers(0, 2 ** 31 - 1))
def test_augmentation_keeps_boxes_valid_inside_the_image_and_aligned(sample, size, seed):
    height, width, boxes = sample
    out = sample_of(height, width, boxes, train_transform(size), seed)
    image, target = out["image"], out["target"]
    assert image.shape == (3, size, size) and image.dtype == torch.float32
    b = target["boxes"]
    assert len(b) == len(target["labels"]) == len(target["difficult"]) == len(target["orig_boxes"]) <= len(boxes)
    assert (b >= 0).all() and (b <= size).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    # each surviving object keeps its own label: orig_boxes come from the source row of that label
    for row, label in zip(target["orig_boxes"], target["labels"]):
        match = np.where((np.abs(boxes - row.numpy()) < 1e-4).all(axis=1))[0]
        assert len(match) and label.item() in (match % 3).tolist()


@FAST
@given(st.lists(image_and_boxes(max_side=48), min_size=1, max_size=4), st.integers(0, 1000))
def test_collate_keeps_every_sample_and_its_variable_number_of_boxes(samples, seed):
    items = [sample_of(h, w, boxes, eval_transform(32), seed) for h, w, boxes in samples]
    batch = collate_detection(items)
    assert batch["images"].shape == (len(samples), 3, 32, 32)
    assert [len(t["boxes"]) for t in batch["targets"]] == [len(boxes) for _, _, boxes in samples]
    for item, target in zip(items, batch["targets"]):
        assert target is item["target"] and target["boxes"].shape[1:] == (4,)
    for image, item in zip(batch["images"], items):
        assert torch.equal(image, item["image"])
