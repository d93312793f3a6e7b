"""Streaming: long recordings processed as consecutive windows with the neuron state carried across.

A spiking network's explicit state (``forward(x_t, state) -> (y_t, state)``) is all it needs to
continue a recording: running window after window with the state carried gives the same outputs
as one long run over the concatenated frames, while memory stays that of one window (nothing of
past windows is kept; inference runs without autograd). Several recordings share a batch:
each batch row is a *slot*; when a slot's recording ends the next recording takes the slot and
that row's state is reset with :func:`spikeloc.neurons.reset_state` (the other rows carry on).

- :func:`windows` cuts a frame sequence (tensor or iterator of frames) into windows.
- :class:`Streamer` carries state over windows of a ``[B, W, ...]`` batch, with per-row resets.
- :func:`interleave` schedules many recordings over ``slots`` batch rows (resets included).
- :func:`stream_detect` runs a trained ``SpikingDetector`` over one recording, yielding per-window
  detections; :func:`annotate` draws them on the window's last event frame and
  :func:`save_stream` writes ``detections.jsonl`` plus annotated PNGs, one per window.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor

from spikeloc.neurons import detach_state, reset_state

StepFn = Callable[[Tensor, Any], tuple[Any, Any]]  # (x_t [B, ...], state) -> (output_t, state)


def windows(frames: Tensor | Iterable[Tensor], window: int) -> Iterator[Tensor]:
    """Consecutive windows ``[W, ...]`` of a ``[T, ...]`` tensor or of an iterator of ``[...]`` frames.

    The last window is shorter when T is not a multiple of ``window``; frames are pulled lazily.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if isinstance(frames, Tensor):
        yield from frames.split(window)
        return
    buffer: list[Tensor] = []
    for frame in frames:
        buffer.append(frame)
        if len(buffer) == window:
            yield torch.stack(buffer)
            buffer = []
    if buffer:
        yield torch.stack(buffer)


class Streamer:
    """Runs ``step_fn`` over windows ``[B, W, ...]``, carrying the state from window to window.

    Args:
        step_fn: one model time step, e.g. ``module.forward_step`` of an ``OnlineModule``.
        grad: keep autograd (training: the state is detached between windows, as FPTT does);
            off (default) for constant-memory inference.
    """

    def __init__(self, step_fn: StepFn, grad: bool = False) -> None:
        self.step_fn, self.grad, self.state = step_fn, grad, None

    def reset(self, mask: Tensor | None = None) -> None:
        """Fresh state for all rows (``mask=None``) or for the rows where bool ``mask [B]`` is True."""
        self.state = None if mask is None or self.state is None else reset_state(self.state, mask)

    def __call__(self, window: Tensor, reset: Tensor | None = None) -> list[Any]:
        """Outputs of the W steps of ``window`` ``[B, W, ...]``; ``reset`` rows start fresh first."""
        if reset is not None:
            self.reset(reset.to(window.device))
        state = detach_state(self.state)
        outputs = []
        with torch.set_grad_enabled(self.grad):
            for t in range(window.shape[1]):
                output, state = self.step_fn(window[:, t], state)
                outputs.append(output)
        self.state = state
        return outputs


@dataclass
class Slots:
    """What :func:`interleave` yields per batch: ``frames [B, W, ...]`` (rows of idle slots are
    zeros), ``reset`` bool ``[B]`` (row starts a new recording), ``recording`` ``[B]`` index of
    the recording in each row (-1: idle) and ``valid`` ``[B]`` number of real frames in the row."""

    frames: Tensor
    reset: Tensor
    recording: list[int]
    valid: list[int]


def interleave(recordings: Sequence[Tensor], window: int, slots: int) -> Iterator[Slots]:
    """Schedule recordings ``[T_i, ...]`` (any lengths) over ``slots`` batch rows, window by window.

    A recording occupies one row from its first window to its last (state carried), then the
    next waiting recording takes the row with ``reset`` set (the rule of
    :func:`datamodules.events.streams.slot_schedule`, which training batches follow too). A short last
    window is zero-padded; ``valid`` says how many of its frames are real.
    """
    from datamodules.events.streams import slot_schedule  # here: scripts run from tests/ see tests/datamodules first

    if not recordings:
        return
    shape = recordings[0].shape[1:]
    for batch in slot_schedule([math.ceil(len(r) / window) for r in recordings], slots):
        frames = torch.zeros(slots, window, *shape, dtype=recordings[0].dtype)
        valid = [0] * slots
        for row, slot in enumerate(batch):
            if slot is not None:
                chunk = recordings[slot[0]][slot[1] * window:(slot[1] + 1) * window]
                frames[row, :len(chunk)] = chunk
                valid[row] = len(chunk)
        yield Slots(frames, torch.tensor([s is not None and s[1] == 0 for s in batch]),
                    [-1 if s is None else s[0] for s in batch], valid)


@dataclass
class WindowDetections:
    """Detections of one window: read at its last step, boxes in network-input pixels."""

    index: int  # window number, from 0
    first_step: int  # time step of the window's first frame in the recording
    frame: Tensor  # the window's last input frame [C, H, W] (for drawing)
    detections: dict[str, Tensor]  # {"boxes" [N, 4] xyxy, "scores" [N], "labels" [N]}


def stream_detect(module: Any, frames: Tensor | Iterable[Tensor], window: int) -> Iterator[WindowDetections]:
    """Run a trained detector over one recording, window by window, at constant memory.

    Args:
        module: a ``SpikingDetector`` (anything with ``forward_step`` and ``postprocess``), in eval mode.
        frames: the recording's frames, ``[T, C, S, S]`` or an iterator of ``[C, S, S]`` (e.g. binned
            from a ``.dat`` file window by window); sized as the network's input.
        window: frames per window; the state is carried from one window to the next, never reset.
    Yields:
        :class:`WindowDetections`, one per window, detections on the CPU.
    """
    module.eval()
    streamer = Streamer(module.forward_step)
    device = next(module.parameters()).device
    step = 0
    for index, chunk in enumerate(windows(frames, window)):
        outputs = streamer(chunk.unsqueeze(0).to(device=device, dtype=torch.float32))
        with torch.no_grad():
            detections = module.postprocess(outputs[-1])[0]
        yield WindowDetections(index, step, chunk[-1].cpu(), {k: v.cpu() for k, v in detections.items()})
        step += len(chunk)


def annotate(result: WindowDetections, class_names: Sequence[str], score_threshold: float = 0.25) -> Tensor:
    """uint8 ``[3, H', W']`` picture of the window's last event frame with its detections drawn."""
    from spikeloc.visualize import draw_detections  # event frames drawn with visualize.event_picture

    return draw_detections(result.frame, result.detections, class_names, score_threshold=score_threshold)


def save_stream(results: Iterable[WindowDetections], out_dir: str | Path, class_names: Sequence[str],
                score_threshold: float = 0.25, pictures: bool = True) -> Path:
    """Write ``detections.jsonl`` (one line per window: index, first_step, boxes, scores, labels,
    names; boxes in network-input pixels, scores >= ``score_threshold``) and, with ``pictures``,
    ``window_<index>.png`` annotated frames into ``out_dir``, consuming ``results`` lazily.
    Returns the JSON-lines path."""
    from spikeloc.visualize import save_png

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "detections.jsonl"
    with path.open("w") as lines:
        for result in results:
            det = result.detections
            keep = det["scores"] >= score_threshold
            labels = det["labels"][keep].tolist()
            lines.write(json.dumps({
                "index": result.index, "first_step": result.first_step, "boxes": det["boxes"][keep].tolist(),
                "scores": det["scores"][keep].tolist(), "labels": labels,
                "names": [class_names[k] if 0 <= k < len(class_names) else str(k) for k in labels]}) + "\n")
            if pictures:
                save_png(annotate(result, class_names, score_threshold), out_dir / f"window_{result.index:05d}.png")
    return path
