"""Letterbox geometry, augmentation validity/alignment and the collate contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from datamodules.detection.base import collate_detection, make_record, make_sample
from datamodules.detection.transforms import PAD_VALUE, LetterboxInfo, eval_transform, train_transform

COLORS = torch.tensor([[230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 20]], dtype=torch.uint8)


def scene(height: int = 60, width: int = 100) -> tuple[torch.Tensor, np.ndarray]:
    """uint8 [3, H, W] grey image with 4 disjoint rectangles of distinct colours; boxes [4, 4] xyxy."""
    boxes = np.array([[0, 0, 30, 20], [70, 5, 100, 35], [10, 30, 45, 60], [55, 40, 85, 58]], np.float32)
    image = torch.full((3, height, width), 100, dtype=torch.uint8)
    for (x0, y0, x1, y1), color in zip(boxes.astype(int), COLORS):
        image[:, y0:y1, x0:x1] = color[:, None, None]
    return image, boxes


def test_letterbox_maps_boxes_and_pads_grey() -> None:
    image, boxes = scene()
    record = make_record(7, boxes, [0, 1, 2, 3], [False, True, False, True])
    sample = make_sample(image, record, eval_transform(200))
    out, target = sample["image"], sample["target"]
    assert out.shape == (3, 200, 200) and out.dtype == torch.float32
    assert target["scale"] == pytest.approx(2.0) and target["pad"] == pytest.approx((0.0, 40.0))
    pad = torch.tensor(target["pad"] * 2)
    assert torch.allclose(target["boxes"], torch.from_numpy(boxes) * target["scale"] + pad, atol=1e-4)
    back = (target["boxes"] - pad) / target["scale"]
    assert torch.allclose(back, target["orig_boxes"], atol=1e-4)
    assert torch.allclose(out[:, :40], torch.full_like(out[:, :40], PAD_VALUE / 255))
    assert torch.allclose(out[:, 160:], torch.full_like(out[:, 160:], PAD_VALUE / 255))
    # the content moved with the boxes: centre of each mapped box has the object's colour
    for box, color in zip(target["boxes"], COLORS):
        cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
        assert torch.allclose(out[:, cy, cx] * 255, color.float(), atol=2)
    assert target["difficult"].tolist() == [False, True, False, True]


def test_letterbox_info_composes() -> None:
    info = LetterboxInfo(2.0, (1.0, 3.0)).then(0.5, (10.0, 0.0))
    assert info.scale == 1.0 and info.pad == (10.5, 1.5)


def _check_aligned(sample: dict, size: int) -> None:
    target = sample["target"]
    boxes, labels = target["boxes"], target["labels"]
    assert boxes.shape == (len(labels), 4) and boxes.dtype == torch.float32
    assert (boxes >= 0).all() and (boxes <= size).all()
    assert (boxes[:, 2] - boxes[:, 0] >= 1).all() and (boxes[:, 3] - boxes[:, 1] >= 1).all()
    assert target["difficult"].tolist() == [bool(label % 2) for label in labels.tolist()]
    assert len(target["orig_boxes"]) == len(labels)
    image = sample["image"] * 255
    for box, label in zip(boxes, labels):  # centre of every kept box (not a sliver) shows its object
        x0, y0, x1, y1 = box.tolist()
        if min(x1 - x0, y1 - y0) < 4:
            continue
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        qx, qy = max((x1 - x0) / 4, 0.5), max((y1 - y0) / 4, 0.5)
        patch = image[:, int(cy - qy):int(np.ceil(cy + qy)), int(cx - qx):int(np.ceil(cx + qx))]
        assert torch.allclose(patch.mean((1, 2)), COLORS[label].float(), atol=40), (box, label)


def test_train_augmentation_keeps_boxes_valid_and_labels_aligned() -> None:
    image, boxes = scene()
    record = make_record(1, boxes, [0, 1, 2, 3], [False, True, False, True])
    transform = train_transform(64, crop=True, jitter=False)
    torch.manual_seed(0)
    dropped = 0
    for _ in range(60):
        sample = make_sample(image, record, transform)
        _check_aligned(sample, 64)
        labels = sample["target"]["labels"]
        dropped += len(labels) < 4
        assert torch.equal(sample["target"]["orig_boxes"], torch.from_numpy(boxes)[labels])
    assert dropped > 0  # crops really dropped objects and the checks above still held


def test_flip_moves_boxes_with_pixels() -> None:
    image, boxes = scene()
    record = make_record(1, boxes, [0, 1, 2, 3], [False, True, False, True])
    transform = train_transform(64, crop=False, jitter=False)
    torch.manual_seed(0)
    starts = set()
    for _ in range(20):
        sample = make_sample(image, record, transform)
        _check_aligned(sample, 64)
        starts.add(round(sample["target"]["boxes"][0, 0].item(), 3))
    assert starts == {0.0, round(64 - 30 * 0.64, 3)}  # label 0 at the left edge, or mirrored to the right


def test_train_augmentation_jitter_and_drop_difficult() -> None:
    image, boxes = scene()
    record = make_record(1, boxes, [0, 1, 2, 3], [False, True, False, True])
    torch.manual_seed(1)
    sample = make_sample(image, record, train_transform(64), drop_difficult=True)
    target = sample["target"]
    assert not target["difficult"].any() and set(target["labels"].tolist()) <= {0, 2}
    assert sample["image"].min() >= 0 and sample["image"].max() <= 1


def test_empty_image_and_collate_contract() -> None:
    image, boxes = scene()
    samples = [make_sample(image, make_record(1, boxes, [0, 1, 2, 3], [False] * 4), eval_transform(32)),
               make_sample(image, make_record(2, np.zeros((0, 4)), [], []), train_transform(32))]
    batch = collate_detection(samples)
    assert set(batch) == {"images", "targets"}
    assert batch["images"].shape == (2, 3, 32, 32) and batch["images"].dtype == torch.float32
    empty = batch["targets"][1]
    assert empty["boxes"].shape == (0, 4) and empty["orig_boxes"].shape == (0, 4)
    assert empty["labels"].dtype == torch.long and empty["difficult"].dtype == torch.bool
    for target, image_id in zip(batch["targets"], (1, 2)):
        assert set(target) == {"boxes", "labels", "difficult", "image_id", "orig_size", "orig_boxes",
                               "scale", "pad"}
        assert target["image_id"] == image_id and target["orig_size"] == (60, 100)
        assert isinstance(target["scale"], float) and all(isinstance(p, float) for p in target["pad"])


def test_plain_resize_maps_boxes_and_inverts() -> None:
    from spikeloc.models.detection import to_original_boxes

    image, boxes = scene()  # 60 x 100
    record = make_record(3, boxes, [0, 1, 2, 3], [False] * 4)
    sample = make_sample(image, record, eval_transform(200, letterbox=False))
    out, target = sample["image"], sample["target"]
    assert out.shape == (3, 200, 200) and target["scale"] == pytest.approx((2.0, 200 / 60))
    assert target["pad"] == (0.0, 0.0)
    torch.testing.assert_close(target["boxes"], torch.from_numpy(boxes) * torch.tensor([2.0, 200 / 60] * 2))
    back = to_original_boxes(target["boxes"], target["scale"], target["pad"], target["orig_size"])
    torch.testing.assert_close(back, torch.from_numpy(boxes), atol=1e-4, rtol=0)
    for box, color in zip(target["boxes"], COLORS):  # the pixels moved with the boxes
        cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
        assert torch.allclose(out[:, cy, cx] * 255, color.float(), atol=2)
    assert LetterboxInfo(2.0, (1.0, 3.0)).then((0.5, 2.0), (0.0, 0.0)) == LetterboxInfo((1.0, 4.0), (0.5, 6.0))
    augmented = make_sample(image, record, train_transform(64, letterbox=False))
    assert augmented["image"].shape == (3, 64, 64) and augmented["target"]["pad"] == (0.0, 0.0)


def test_random_aspect_scale_by_hand_and_boxes_follow_pixels() -> None:
    from torchvision import tv_tensors

    from datamodules.detection.transforms import RandomAspectScale

    image, boxes = scene()  # 60 x 100
    step = RandomAspectScale(80)
    # new size 50 x 120 (h x w) pasted at (-20, 10): s = (1.2, 50 / 60), 20 columns cut on the left.
    params = dict(new_hw=(50, 120), scale=(1.2, 50 / 60), offset=(-20, 10))
    out = step.transform(tv_tensors.Image(image), params)
    assert out.shape == (3, 80, 80) and (out[:, :10] == 128).all() and (out[:, 60:] == 128).all()
    moved = step.transform(tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=(60, 100)),
                           params)
    expected = torch.from_numpy(boxes) * torch.tensor([1.2, 50 / 60] * 2) + torch.tensor([-20.0, 10.0] * 2)
    torch.testing.assert_close(moved.as_subclass(torch.Tensor), expected)
    assert step.transform(LetterboxInfo(), params) == LetterboxInfo((1.2, 50 / 60), (-20.0, 10.0))
    for box, color in zip(expected, COLORS):  # box centres inside the canvas show their colour
        cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
        if 0 <= cx < 80 and 0 <= cy < 80:
            assert torch.allclose(out[:, cy, cx].float(), color.float(), atol=12)
    torch.manual_seed(0)
    draws = [step.make_params([tv_tensors.Image(image)]) for _ in range(300)]
    longer = torch.tensor([max(d["new_hw"]) / 80 for d in draws])
    aspect = torch.tensor([d["new_hw"][1] / d["new_hw"][0] for d in draws])
    assert 0.24 < longer.min() < 0.35 and 1.8 < longer.max() <= 2.0  # scale 0.25..2 of the side
    assert 0.5 < aspect.min() < 0.7 and 1.4 < aspect.max() < 1.9  # (1.3 / 0.7) at most


def test_hsv_jitter_matches_colorsys() -> None:
    import colorsys

    from datamodules.detection.transforms import hsv_jitter

    pixels = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(0))
    for hue, sat, val in ((0.0, 1.5, 1.0), (0.07, 0.7, 1.4), (-0.1, 1.3, 0.8)):
        out = hsv_jitter(pixels, hue, sat, val)
        for y in range(4):
            for x in range(5):
                h, s, v = colorsys.rgb_to_hsv(*pixels[:, y, x].tolist())
                expected = colorsys.hsv_to_rgb((h + hue) % 1.0, min(s * sat, 1.0), min(v * val, 1.0))
                assert out[:, y, x].tolist() == pytest.approx(expected, abs=2e-3)
    as_uint8 = hsv_jitter((pixels * 255).round().to(torch.uint8), 0.0, 1.0, 1.0)
    assert as_uint8.dtype == torch.uint8 and (as_uint8.float() - (pixels * 255).round()).abs().max() <= 1


def test_reference_hue_rule_matches_a_plain_loop_of_the_papers_steps() -> None:
    import colorsys

    from datamodules.detection.transforms import hsv_jitter

    pixels = torch.rand(3, 6, 7, generator=torch.Generator().manual_seed(1))
    pixels[:, 0, 0] = torch.tensor([1.0, 0.0, 0.02])  # hue 358.8 degrees: shifted up, clipped at 360 (red)
    pixels[:, 0, 1] = torch.tensor([1.0, 0.02, 0.0])  # hue 1.2 degrees: shifted down, clipped at 0
    pixels[:, 0, 2] = 0.4  # grey: any hue is the same colour
    far = 0
    for hue, sat, val in ((0.08, 1.2, 0.9), (-0.05, 0.8, 1.3), (0.0, 1.0, 1.0)):
        out = hsv_jitter(pixels, hue, sat, val, hue_rule="reference")
        wrapped = hsv_jitter(pixels, hue, sat, val)
        for y in range(6):
            for x in range(7):
                h, s, v = colorsys.rgb_to_hsv(*pixels[:, y, x].tolist())
                degrees = h * 360 + hue * 360  # the paper: OpenCV's hue in degrees, + hue * 360
                degrees = degrees - 1 if degrees > 1 else degrees + 1 if degrees < 0 else degrees
                degrees = min(max(degrees, 0.0), 360.0)  # clipped, not wrapped
                expected = colorsys.hsv_to_rgb(degrees / 360, min(s * sat, 1.0), min(v * val, 1.0))
                assert out[:, y, x].tolist() == pytest.approx(expected, abs=2e-3), (hue, y, x)
        far += int(((out - wrapped).abs().amax(dim=0) > 10 / 255).sum())
    assert far >= 2  # the clipped corner pixels differ from the wrapped hue by far more than the 1 degree
    with pytest.raises(ValueError, match="hue_rule"):
        hsv_jitter(pixels, 0.1, 1.0, 1.0, hue_rule="cyclic")
    from datamodules.detection.transforms import HSVJitter, reference_train_transform
    steps = [[t for t in reference_train_transform(96, **kw).transforms if isinstance(t, HSVJitter)][0]
             for kw in ({}, {"hue_rule": "wrap"})]
    assert [step.hue_rule for step in steps] == ["reference", "wrap"]  # the reference pipeline: the paper's


def test_reference_augmentation_keeps_boxes_valid_and_aligned() -> None:
    from datamodules.detection.transforms import reference_train_transform

    torch.manual_seed(0)
    image, boxes = scene()
    record = make_record(1, boxes, [0, 1, 2, 3], [False, True, False, True])
    kept = 0
    for _ in range(20):
        sample = make_sample(image, record, reference_train_transform(96))
        target = sample["target"]
        assert sample["image"].shape == (3, 96, 96) and sample["image"].dtype == torch.float32
        assert (target["boxes"] >= 0).all() and (target["boxes"] <= 96).all()
        assert (target["boxes"][:, 2:] - target["boxes"][:, :2] >= 1).all()
        assert target["difficult"].tolist() == [bool(label % 2) for label in target["labels"].tolist()]
        kept += len(target["labels"])
    assert kept > 20


def test_grayscale_jitter_keeps_gray_images_gray_and_changes_their_levels() -> None:
    gray = tv_tensors.Image(torch.linspace(0, 255, 32 * 32).reshape(1, 32, 32).expand(3, 32, 32).to(torch.uint8))
    for grayscale in (False, True):
        jitter = train_transform(32, crop=False, flip=False, grayscale=grayscale).transforms[0].transforms[0]
        assert (jitter.saturation is None and jitter.hue is None) == grayscale  # identities on gray images
    torch.manual_seed(0)
    out = [jitter(gray) for _ in range(8)]  # the grayscale one
    assert all(torch.equal(o[0], o[1]) and torch.equal(o[1], o[2]) for o in out)
    assert len({round(float(o.float().mean()), 3) for o in out}) > 4  # brightness and contrast still vary
