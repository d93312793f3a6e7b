"""Reading checkpoint files: the one place where spikeloc calls ``torch.load``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The dict saved in ``path`` (a Lightning ``.ckpt`` or a ``state_dict`` file), read on the CPU with
    ``weights_only=True`` (no code from the file runs)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict):
        raise TypeError(f"{path}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    return checkpoint
