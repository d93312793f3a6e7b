"""Box-aware augmentation for detection, built on ``torchvision.transforms.v2``.

Every pipeline here is called as ``image, target = transform(image, target)`` with

- ``image``: ``tv_tensors.Image`` uint8 ``[3, H, W]``;
- ``target``: dict with ``"boxes"`` (``tv_tensors.BoundingBoxes`` XYXY ``[N, 4]``), ``"labels"``
  long ``[N]``, ``"difficult"`` bool ``[N]``, ``"index"`` long ``[N]`` (position of each object in
  the source annotation, so callers can re-align per-object data after boxes are dropped) and
  ``"letterbox"`` (a :class:`LetterboxInfo`, updated by :class:`Letterbox`).

and returns ``image`` float ``[3, S, S]`` in [0, 1] with the target's boxes in input pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

PAD_VALUE = 114  # grey used for letterbox/zoom-out padding (114/255 for float images)
TARGET_FIELDS = ("labels", "difficult", "index")  # per-object tensors kept aligned with the boxes


@dataclass(frozen=True)
class LetterboxInfo:
    """Affine map from source-image pixels to network-input pixels: ``input = orig * scale + pad``.

    Lives in the target dict as a leaf that only :class:`Letterbox` changes (other v2 transforms
    pass it through untouched).
    """

    scale: float | tuple[float, float] = 1.0  # one factor, or (s_x, s_y) after a plain resize
    pad: tuple[float, float] = (0.0, 0.0)  # (pad_x, pad_y)

    def then(self, scale: float | tuple[float, float], pad: tuple[float, float]) -> "LetterboxInfo":
        """Compose with a further ``x * scale + pad`` step (``scale`` one factor or ``(s_x, s_y)``;
        once a pair, always a pair)."""
        (ax, ay), (bx, by) = _pair(self.scale), _pair(scale)
        paired = isinstance(self.scale, tuple) or isinstance(scale, tuple)
        new = (ax * bx, ay * by) if paired else ax * bx
        return LetterboxInfo(new, (self.pad[0] * bx + pad[0], self.pad[1] * by + pad[1]))


def _pair(scale: float | tuple[float, float]) -> tuple[float, float]:
    return (float(scale), float(scale)) if isinstance(scale, (int, float)) else (float(scale[0]), float(scale[1]))


def letterbox_params(height: int, width: int, size: int) -> dict[str, Any]:
    """Scale that fits the long side into ``size``, resized shape and centring pad (left, top, right, bottom)."""
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    left, top = (size - new_w) // 2, (size - new_h) // 2
    return dict(scale=scale, new_hw=[new_h, new_w], padding=[left, top, size - new_w - left, size - new_h - top])


class Letterbox(v2.Transform):
    """Resize the long side to ``size`` keeping the aspect ratio, then pad to ``size x size``.

    Images are padded with grey 114 (uint8) or 114/255 (float), masks with 0. Boxes are mapped
    exactly with one scale, ``boxes * scale + (pad_x, pad_y)``, so the recorded
    :class:`LetterboxInfo` inverts them to within float rounding.
    """

    _transformed_types = (torch.Tensor, PIL.Image.Image, LetterboxInfo)

    def __init__(self, size: int) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"Letterbox size must be positive, got {size}")
        self.size = size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        return letterbox_params(height, width, self.size)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        scale, (left, top) = params["scale"], params["padding"][:2]
        if isinstance(inpt, LetterboxInfo):
            return inpt.then(scale, (float(left), float(top)))
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            xyxy = F.convert_bounding_box_format(inpt, new_format=tv_tensors.BoundingBoxFormat.XYXY)
            shift = torch.tensor([left, top, left, top], dtype=xyxy.dtype)
            moved = xyxy.as_subclass(torch.Tensor) * scale + shift
            return tv_tensors.wrap(moved, like=xyxy, canvas_size=(self.size, self.size))
        is_mask = isinstance(inpt, tv_tensors.Mask)
        out = inpt
        if list(params["new_hw"]) != list(F.get_size(inpt)):
            mode = v2.InterpolationMode.NEAREST if is_mask else v2.InterpolationMode.BILINEAR
            out = self._call_kernel(F.resize, inpt, params["new_hw"], interpolation=mode, antialias=True)
        if not any(params["padding"]):
            return out
        fill = 0 if is_mask else (PAD_VALUE if _is_integer(inpt) else PAD_VALUE / 255.0)
        return self._call_kernel(F.pad, out, params["padding"], fill=fill)


class Stretch(v2.Transform):
    """Resize to ``size x size`` without keeping the aspect ratio (no padding; bicubic), as the
    reference evaluates; records ``(s_x, s_y)`` in the :class:`LetterboxInfo` so boxes map back exactly."""

    _transformed_types = (torch.Tensor, PIL.Image.Image, LetterboxInfo)

    def __init__(self, size: int) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"Stretch size must be positive, got {size}")
        self.size = size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        return dict(scale=(self.size / width, self.size / height))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, LetterboxInfo):
            return inpt.then(params["scale"], (0.0, 0.0))
        mode = v2.InterpolationMode.NEAREST if isinstance(inpt, tv_tensors.Mask) else v2.InterpolationMode.BICUBIC
        return self._call_kernel(F.resize, inpt, [self.size, self.size], interpolation=mode, antialias=True)


def resize_to_input(size: int, letterbox: bool = True) -> v2.Transform:
    """The last geometric step: :class:`Letterbox` (spikeloc) or :class:`Stretch` (the reference)."""
    return Letterbox(size) if letterbox else Stretch(size)


class RandomAspectScale(v2.Transform):
    """The reference's geometric augmentation: stretch the aspect ratio by
    ``U(1 - jitter, 1 + jitter) / U(1 - jitter, 1 + jitter)``, scale the longer output side to
    ``U(*scale) * size``, and paste the result at a random offset on a grey ``size x size`` canvas
    (cropping what falls outside). Boxes move with the pixels; the :class:`LetterboxInfo` records
    ``(s_x, s_y)`` and the offset. Then clamp and sanitise the boxes.
    """

    _transformed_types = (torch.Tensor, LetterboxInfo)

    def __init__(self, size: int, jitter: float = 0.3, scale: tuple[float, float] = (0.25, 2.0),
                 fill: int = 128) -> None:
        super().__init__()
        if size <= 0 or not 0 <= jitter < 1 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"RandomAspectScale needs size > 0, 0 <= jitter < 1, 0 < scale[0] <= scale[1]; "
                             f"got {size}, {jitter}, {scale}")
        self.size, self.jitter, self.scale, self.fill = size, jitter, tuple(scale), fill

    @staticmethod
    def _uniform(low: float, high: float) -> float:
        """``low + (high - low) U(0, 1)`` (``high < low`` allowed: an offset when the image overflows)."""
        return low + (high - low) * float(torch.rand(()))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        j = self.jitter
        aspect = self._uniform(1 - j, 1 + j) / self._uniform(1 - j, 1 + j)  # output w/h for a square input
        side = self._uniform(*self.scale) * self.size
        new_w, new_h = (int(side * aspect), int(side)) if aspect < 1 else (int(side), int(side / aspect))
        new_w, new_h = max(new_w, 1), max(new_h, 1)
        return dict(new_hw=(new_h, new_w), scale=(new_w / width, new_h / height),
                    offset=(int(self._uniform(0, self.size - new_w)), int(self._uniform(0, self.size - new_h))))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        (dx, dy), (sx, sy) = params["offset"], params["scale"]
        if isinstance(inpt, LetterboxInfo):
            return inpt.then((sx, sy), (float(dx), float(dy)))
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            xyxy = F.convert_bounding_box_format(inpt, new_format=tv_tensors.BoundingBoxFormat.XYXY)
            moved = xyxy.as_subclass(torch.Tensor) * xyxy.new_tensor([sx, sy, sx, sy]) + xyxy.new_tensor(
                [dx, dy, dx, dy])
            return tv_tensors.wrap(moved, like=xyxy, canvas_size=(self.size, self.size))
        image = F.resize(inpt.as_subclass(torch.Tensor), list(params["new_hw"]),
                         interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        fill = self.fill if _is_integer(inpt) else self.fill / 255.0
        canvas = image.new_full((*image.shape[:-2], self.size, self.size), fill)
        (new_h, new_w), size = params["new_hw"], self.size
        x0, y0, x1, y1 = max(dx, 0), max(dy, 0), min(dx + new_w, size), min(dy + new_h, size)
        if x1 > x0 and y1 > y0:
            canvas[..., y0:y1, x0:x1] = image[..., y0 - dy:y1 - dy, x0 - dx:x1 - dx]
        return tv_tensors.wrap(canvas, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else canvas


HueRule = Literal["wrap", "reference"]


def rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB ``[..., 3, H, W]`` in [0, 1] -> hue in degrees [0, 360), saturation and value ``[..., H, W]``."""
    r, g, b = x.unbind(-3)
    v = x.amax(dim=-3)
    c = v - x.amin(dim=-3)
    safe = torch.where(c > 0, c, torch.ones_like(c))
    sector = torch.where(v == r, ((g - b) / safe) % 6, torch.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(c > 0, 60 * sector, torch.zeros_like(c))
    return h, c / torch.where(v > 0, v, torch.ones_like(v)), v


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Hue in degrees (360 is 0), saturation, value ``[..., H, W]`` -> RGB ``[..., 3, H, W]``."""
    k = (h.new_tensor([5.0, 3.0, 1.0]).view(3, 1, 1) + h.unsqueeze(-3) / 60) % 6
    return v.unsqueeze(-3) * (1 - s.unsqueeze(-3) * torch.minimum(k, 4 - k).clamp(0, 1))


def hsv_jitter(image: torch.Tensor, hue: float, saturation: float, value: float,
               hue_rule: HueRule = "wrap") -> torch.Tensor:
    """Shift the hue by ``hue`` turns, multiply saturation and value (each clipped to 1) of an RGB
    image ``[..., 3, H, W]`` in [0, 1] (float) or uint8; returns the same dtype.

    ``hue_rule="wrap"``: the hue wraps around the colour circle. ``"reference"``: as the paper's code
    does it on OpenCV's hue in degrees: add ``360 hue``, then subtract 1 where the sum is above 1 and add
    1 where it is below 0, then clip to [0, 360] (360 is red, as 0) instead of wrapping.
    """
    dtype = image.dtype
    h, s, v = rgb_to_hsv(F.to_dtype(image, torch.float32, scale=True))
    if hue_rule == "wrap":
        h = (h + 360 * hue) % 360
    elif hue_rule == "reference":
        h = h + 360 * hue
        h = torch.where(h > 1, h - 1, torch.where(h < 0, h + 1, h)).clamp(0, 360)
    else:
        raise ValueError(f"hue_rule must be 'wrap' or 'reference', got {hue_rule!r}")
    x = hsv_to_rgb(h, (s * saturation).clamp(max=1), (v * value).clamp(max=1))
    return F.to_dtype(x.clamp(0, 1), dtype, scale=True)


class HSVJitter(v2.Transform):
    """The reference's colour augmentation: hue shift ``U(-hue, hue)`` turns, saturation and value
    factors each ``U(1, s)`` or its inverse with probability 1/2 (see :func:`hsv_jitter`, whose
    ``hue_rule`` it passes on)."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, hue: float = 0.1, saturation: float = 1.5, value: float = 1.5,
                 hue_rule: HueRule = "wrap") -> None:
        super().__init__()
        self.hue, self.saturation, self.value, self.hue_rule = hue, saturation, value, hue_rule

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        def factor(high: float) -> float:
            draw = float(torch.empty(()).uniform_(1.0, high))
            return draw if float(torch.rand(())) < 0.5 else 1.0 / draw

        return dict(hue=float(torch.empty(()).uniform_(-self.hue, self.hue)), saturation=factor(self.saturation),
                    value=factor(self.value))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = hsv_jitter(inpt.as_subclass(torch.Tensor), params["hue"], params["saturation"], params["value"],
                         self.hue_rule)
        return tv_tensors.wrap(out, like=inpt)


def reference_train_transform(size: int, hue_rule: HueRule = "reference") -> v2.Compose:
    """The reference's training augmentation: :class:`RandomAspectScale` (aspect jitter 0.3, scale
    0.25-2, grey canvas), horizontal flip (p=0.5), :class:`HSVJitter` (0.1, 1.5, 1.5, the reference's
    clipped hue unless ``hue_rule="wrap"``), then boxes clamped and those under one pixel wide or high
    dropped. (The reference's optional mosaic is :mod:`datamodules.detection.mosaic`, applied before this pipeline.)"""
    return v2.Compose([RandomAspectScale(size), v2.RandomHorizontalFlip(p=0.5), HSVJitter(hue_rule=hue_rule),
                       v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1, labels_getter=target_fields),
                       v2.ToDtype(torch.float32, scale=True)])


def _is_integer(inpt: Any) -> bool:
    return isinstance(inpt, PIL.Image.Image) or not inpt.is_floating_point()


def target_fields(inputs: Any) -> tuple[torch.Tensor, ...]:
    """``labels_getter`` for ``SanitizeBoundingBoxes``: every per-object tensor of ``(image, target)``."""
    target = inputs[1]
    return tuple(target[key] for key in TARGET_FIELDS if key in target)


def train_transform(size: int, crop: bool = True, jitter: bool = True, flip: bool = True,
                    letterbox: bool = True, grayscale: bool = False) -> v2.Compose:
    """Training augmentation: colour jitter, zoom-out / IoU crop, horizontal flip, sanitise, letterbox
    (or a plain resize with ``letterbox=False``).

    Args:
        size: network input side S.
        crop: random zoom-out (p=0.3, up to 2x) then an SSD-style ``RandomIoUCrop`` (p=0.5).
        jitter: colour jitter (p=0.8).
        flip: random horizontal flip (p=0.5).
        grayscale: the images are gray (three equal channels): jitter brightness and contrast only, as
            saturation and hue leave them unchanged (the hue step is also the costliest).
    """
    steps: list[v2.Transform] = []
    if jitter:
        colour = v2.ColorJitter(0.3, 0.3) if grayscale else v2.ColorJitter(0.3, 0.3, 0.3, 0.03)
        steps.append(v2.RandomApply([colour], p=0.8))
    if crop:
        fill = {tv_tensors.Image: PAD_VALUE, tv_tensors.Mask: 0}
        steps += [v2.RandomZoomOut(fill=fill, side_range=(1.0, 2.0), p=0.3),
                  v2.RandomApply([v2.RandomIoUCrop()], p=0.5)]
    if flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(labels_getter=target_fields),
              resize_to_input(size, letterbox), v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(steps)


def eval_transform(size: int, letterbox: bool = True) -> v2.Compose:
    """Evaluation: letterbox (or, ``letterbox=False``, a plain resize as the reference evaluates) only,
    every box kept and mapped exactly, then float in [0, 1]."""
    return v2.Compose([resize_to_input(size, letterbox), v2.ToDtype(torch.float32, scale=True)])
