"""Peak RSS of streaming 100 windows through a small spiking net (run by tests/test_streaming.py).

Prints ``{"flat": {"peak_10": bytes, "peak_100": bytes}, "leaking": {...}}``: the process's
peak resident memory (VmHWM) after 10 and after 100 windows, the peak reset after a warm-up
window. ``leaking`` streams with autograd on and keeps every output: the positive control.
"""
import json
from pathlib import Path

import timm
import torch

import spikeloc.models  # noqa: F401
from spikeloc.streaming import Streamer


def vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise KeyError("VmHWM")


def measure(step, keep: bool) -> dict[str, int]:
    """Peak RSS after 10 and 100 windows; ``keep``: autograd on and every output kept (a leak)."""
    streamer, kept = Streamer(step, grad=keep), []
    window = lambda: 3 * (torch.rand(2, 5, 2, 32, 32) < 0.2).float()  # noqa: E731
    kept.append(streamer(window()))
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    peaks = {}
    for index in range(1, 101):
        outputs = streamer(window())
        if keep:
            kept.append(outputs)
        if index in (10, 100):
            peaks[f"peak_{index}"] = vm_hwm()
    return peaks


def main() -> None:
    torch.manual_seed(0)
    net = timm.create_model("ltc_convnet", num_classes=3, in_chans=2, channels=[8, 16], threshold=0.2)

    def step(x, state):
        features, state = net(x, state)
        return net.forward_head(features), state

    print(json.dumps({"flat": measure(step, keep=False), "leaking": measure(step, keep=True)}))


if __name__ == "__main__":
    main()
