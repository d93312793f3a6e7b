"""Streaming with carried state: equals one long run, per-row resets, constant memory."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import spikeloc.models  # noqa: F401
from spikeloc.streaming import Streamer, annotate, interleave, save_stream, stream_detect, windows

ROOT = Path(__file__).resolve().parents[1]


def _net(seed: int = 0):
    torch.manual_seed(seed)
    net = timm.create_model("ltc_convnet", num_classes=3, in_chans=2, channels=[4, 8], threshold=0.2).eval()

    def step(x, state):
        features, state = net(x, state)
        return net.forward_head(features), state
    return net, step


def _long_run(step, frames):
    """Reference: one plain loop over all frames ``[B, T, ...]`` from a fresh state."""
    outputs, state = [], None
    with torch.no_grad():
        for t in range(frames.shape[1]):
            out, state = step(frames[:, t], state)
            outputs.append(out)
    return torch.stack(outputs, 1)


def test_windows_cut_tensors_and_iterators_alike():
    frames = torch.arange(7 * 2).view(7, 2)
    from_tensor = [w.tolist() for w in windows(frames, 3)]
    from_iter = [w.tolist() for w in windows(iter(frames), 3)]
    assert from_tensor == from_iter and [len(w) for w in from_tensor] == [3, 3, 1]


def test_windowed_stream_equals_one_long_run():
    _, step = _net()
    frames = 3 * (torch.rand(2, 23, 2, 16, 16) < 0.3).float()
    streamer = Streamer(step)
    streamed = torch.cat([torch.stack(streamer(w), 1) for w in frames.split(5, dim=1)], 1)
    torch.testing.assert_close(streamed, _long_run(step, frames), rtol=0, atol=0)
    fresh = torch.stack(Streamer(step)(frames[:, 5:10]), 1)  # without the carried state: different
    assert not torch.allclose(fresh, streamed[:, 5:10])


def test_interleaved_recordings_with_resets_equal_their_solo_runs():
    _, step = _net(1)
    gen = torch.Generator().manual_seed(0)
    recordings = [3 * (torch.rand(n, 2, 16, 16, generator=gen) < 0.3).float() for n in (9, 4, 12, 6, 3)]
    streamer, outputs = Streamer(step), {i: [] for i in range(len(recordings))}
    for batch in interleave(recordings, window=4, slots=2):
        result = torch.stack(streamer(batch.frames, batch.reset), 1)
        for row, rec in enumerate(batch.recording):
            if rec >= 0:
                outputs[rec].append(result[row, :batch.valid[row]])
    for index, recording in enumerate(recordings):
        solo = _long_run(step, recording.unsqueeze(0))[0]
        torch.testing.assert_close(torch.cat(outputs[index]), solo, rtol=0, atol=1e-6)


def test_stream_detect_on_two_channel_frames_and_annotation(tmp_path):
    from spikeloc.training.detection import SpikingDetector
    module = SpikingDetector(backbone="spyv4_tiny", backbone_kwargs={"width": 0.125, "threshold": 0.1}, num_classes=2,
                             in_channels=2, neck_kwargs={"neuron_kwargs": {"threshold": 0.1}},
                             image_size=64, anchors=[[(8, 8), (12, 12), (16, 16)], [(20, 20), (28, 28), (40, 40)]],
                             conf_threshold=0.0, max_detections=5)
    frames = 3 * (torch.rand(10, 2, 64, 64) < 0.3).float()
    results = list(stream_detect(module, iter(frames), window=4))
    assert not torch.equal(results[0].detections["scores"], results[-1].detections["scores"])  # state evolves
    assert [r.first_step for r in results] == [0, 4, 8]
    assert all(r.detections["boxes"].shape[1] == 4 and len(r.detections["boxes"]) <= 5 for r in results)
    reference = module.detect(frames.unsqueeze(0), step=-1)[0]  # one long run over all 10 frames
    torch.testing.assert_close(results[-1].detections["scores"], reference["scores"])
    picture = annotate(results[0], ["a", "b"], score_threshold=0.0)
    assert picture.dtype == torch.uint8 and picture.shape[0] == 3
    path = save_stream(iter(results), tmp_path / "out", ["a", "b"], score_threshold=0.0)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["first_step"] for line in lines] == [0, 4, 8]
    assert lines[-1]["scores"] == pytest.approx(results[-1].detections["scores"].tolist())
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [f"window_{i:05d}.png" for i in range(3)]


def test_peak_memory_is_flat_over_100_windows():
    script = ROOT / "tests" / "streaming_memory.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2",
           "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    result = json.loads(subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                                       check=True).stdout.splitlines()[-1])
    flat, leaking = result["flat"], result["leaking"]
    # peak after window 100 is within 2 MiB of the peak after window 10; keeping the graph grows it
    assert flat["peak_100"] - flat["peak_10"] < 2 * 2 ** 20, result
    assert leaking["peak_100"] - leaking["peak_10"] > 20 * 2 ** 20, result


def test_training_over_windows_detaches_state_between_windows():
    """FPTT-style streaming training: backward per window, state carried but never unrolled."""
    net, step = _net(2)
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    streamer = Streamer(step, grad=True)
    frames = 3 * (torch.rand(2, 12, 2, 16, 16) < 0.3).float()
    before = [p.detach().clone() for p in net.parameters()]
    for window in frames.split(4, dim=1):
        loss = torch.stack(streamer(window)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()  # a graph reaching into the previous window would fail here
        optimizer.step()
        assert all(leaf.grad_fn is not None for leaf in _leaves(streamer.state))
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def _leaves(state):
    from spikeloc.neurons import map_state
    found = []
    map_state(lambda t: found.append(t) or t, state)
    return [t for t in found if t.requires_grad]
