"""Pictures of detections and of the anytime mAP curve, written as PNG files (matplotlib Agg)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402
from torchvision.io import write_png  # noqa: E402
from torchvision.utils import draw_bounding_boxes  # noqa: E402

PREDICTION_COLOR = "#ff3030"
GROUND_TRUTH_COLOR = "#30ff30"
FONT_SIZE = 14


def label_font() -> str | None:
    """A TrueType font file for box labels (matplotlib ships DejaVu Sans); ``None``: PIL's small default."""
    try:
        return font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    except (OSError, ValueError):
        return None


def event_picture(frame: Tensor) -> Tensor:
    """``[2, H, W]`` ON/OFF event counts -> uint8 ``[3, H, W]``: grey background, ON white, OFF black."""
    on, off = (frame.detach().cpu()[:2] > 0).unbind(0)
    picture = torch.full(on.shape, 128, dtype=torch.uint8)
    picture[off], picture[on] = 0, 255
    return picture.expand(3, -1, -1).clone()


def to_uint8(image: Tensor) -> Tensor:
    """``[3, H, W]`` float in [0, 1] (or uint8) -> uint8 ``[3, H, W]`` on the CPU; a ``[2, H, W]``
    event frame is drawn with :func:`event_picture`."""
    image = image.detach().cpu()
    if image.shape[0] == 2:
        return event_picture(image)
    if image.dtype == torch.uint8:
        return image
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def upscale(image: Tensor, min_side: int) -> tuple[Tensor, float]:
    """Enlarge uint8 ``[3, H, W]`` so its short side is at least ``min_side`` (labels stay legible).

    Returns the image and the factor applied to it (1.0 when already large enough).
    """
    factor = max(1.0, min_side / min(image.shape[-2:]))
    if factor == 1.0:
        return image, 1.0
    size = [round(image.shape[-2] * factor), round(image.shape[-1] * factor)]
    big = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return big.round().clamp(0, 255).to(torch.uint8), factor


def draw_detections(image: Tensor, detections: dict[str, Tensor], class_names: Sequence[str],
                    ground_truth: dict[str, Tensor] | None = None, score_threshold: float = 0.25,
                    min_side: int = 384) -> Tensor:
    """Draw predicted boxes (red, ``label score``) and optional ground truth (green) on an image.

    Args:
        image: ``[3, H, W]`` float in [0, 1] or uint8; boxes are in its pixel coordinates.
        detections: ``boxes`` ``[M, 4]`` xyxy, ``scores`` ``[M]``, ``labels`` ``[M]``.
        class_names: label -> name.
        ground_truth: ``boxes`` ``[N, 4]`` xyxy and ``labels`` ``[N]``.
        score_threshold: predictions below this score are not drawn.
        min_side: the picture is enlarged to this short side first.

    Returns:
        uint8 ``[3, H', W']``.
    """
    canvas, factor = upscale(to_uint8(image), min_side)
    font = label_font()
    style = dict(width=2, font=font, font_size=FONT_SIZE if font else None)
    if ground_truth is not None and len(ground_truth["boxes"]):
        names = [_name(class_names, k) for k in ground_truth["labels"].tolist()]
        canvas = draw_bounding_boxes(canvas, ground_truth["boxes"].detach().cpu().float() * factor, names,
                                     colors=GROUND_TRUTH_COLOR, **style)
    keep = detections["scores"].detach().cpu() >= score_threshold
    if keep.any():
        boxes = detections["boxes"].detach().cpu().float()[keep] * factor
        names = [f"{_name(class_names, k)} {s:.2f}" for k, s in
                 zip(detections["labels"].cpu()[keep].tolist(), detections["scores"].cpu()[keep].tolist())]
        canvas = draw_bounding_boxes(canvas, boxes, names, colors=PREDICTION_COLOR, **style)
    return canvas


def _name(class_names: Sequence[str], label: int) -> str:
    return class_names[label] if 0 <= label < len(class_names) else str(label)


def save_png(image: Tensor, path: str | Path) -> Path:
    """Write uint8 ``[3, H, W]`` to ``path`` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(image.contiguous(), str(path))
    return path


def plot_map_vs_step(map_per_step: Sequence[float], path: str | Path, label: str = "mAP@0.5",
                     title: str = "Anytime detection: mAP at every time step") -> Path:
    """Line plot of a metric against the time step (1..T) saved as PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    steps = list(range(1, len(map_per_step) + 1))
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot(steps, [100 * v for v in map_per_step], marker="o")
    ax.set_xlabel("time step")
    ax.set_ylabel(f"{label} (%)")
    ax.set_title(title, fontsize=10)
    ax.set_xticks(steps)
    ax.set_ylim(0, min(100.0, max(5.0, 115 * max(map_per_step, default=0.0))))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
