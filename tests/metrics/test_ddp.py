"""The metrics under DDP (two gloo processes, uneven splits): the gathered result equals one process's."""
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spikeloc.metrics import DetectionMAP, FiringStats
from .test_detection_map import NAMES, _pred, _target

# Five images; image 5 has two cats and a dog. Scores interleave across images so that the order
# of the union matters.
TARGETS = [_target(1, [[10, 10, 60, 60], [100, 100, 180, 150]], [0, 1]), _target(2, [[20, 30, 120, 130]], [0]),
           _target(3, [[5, 5, 40, 50]], [2]), _target(4, [[50, 60, 150, 120]], [1], size=(300, 200)),
           _target(5, [[0, 0, 30, 30], [40, 40, 90, 90], [100, 10, 160, 70]], [0, 0, 1], [False, True, False])]
PREDS = [_pred([[10, 10, 60, 60], [200, 20, 250, 80], [100, 100, 180, 150]], [0.9, 0.8, 0.95], [0, 0, 1]),
         _pred([[20, 30, 110, 125]], [0.7], [0]), _pred([[5, 5, 40, 50], [0, 0, 20, 20]], [0.6, 0.85], [2, 2]),
         _pred([], [], []), _pred([[2, 0, 30, 33], [100, 10, 150, 70], [40, 40, 90, 90]], [0.75, 0.5, 0.4], [0, 1, 0])]
# Rank 0 takes images 1, 3, 5; rank 1 takes 2, 4 and (a sampler's padding) image 1 again, there with an
# extra false positive that would lower the AP if the copy were counted.
PADDING = _pred([[10, 10, 60, 60], [200, 20, 250, 80], [100, 100, 180, 150], [0, 150, 40, 190]],
                [0.9, 0.8, 0.95, 0.99], [0, 0, 1, 0])
SPLITS = {0: ([0, 2], [4]), 1: ([1, 3], [0])}  # two updates per rank: rank 0 holds 3 images, rank 1 holds 2 + 1


def _worker(rank: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["TEST_PORT"])
    dist.init_process_group("gloo", rank=rank, world_size=2)
    _firing(rank, folder)
    metric = DetectionMAP(NAMES)
    for indices in SPLITS[rank]:
        preds = [PADDING if rank == 1 and i == 0 else PREDS[i] for i in indices]
        metric.update(preds, [TARGETS[i] for i in indices])
    result = metric.compute()
    result["coco_results"] = metric.coco_results()
    result["local_images"] = metric.gathered().images[:, 0].tolist()  # unsynced again after compute
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)
    dist.destroy_process_group()


def _network() -> torch.nn.Module:
    import timm
    torch.manual_seed(0)
    return timm.create_model("ltc_convnet", channels=(4, 8), num_classes=2)


def _sequences(rank: int | None) -> list[torch.Tensor]:
    """Three sequences of 2 steps (batches 3, 1, 2); rank 0 runs the first two, rank 1 the last."""
    generator = torch.Generator().manual_seed(1)
    batches = [2 * torch.rand(size, 1, 16, 16, generator=generator) for size in (3, 1, 2)]
    return batches if rank is None else batches[:2] if rank == 0 else batches[2:]


def _firing(rank: int | None, folder: str | None = None) -> dict:
    network = _network()
    stats = FiringStats(network)
    with torch.no_grad():
        for x in _sequences(rank):
            state = None
            for _ in range(2):
                _, new_state = network(x, state)
                stats.update(x, state, new_state)
                state = new_state
    result = stats.compute(time_steps=None)
    if folder is not None:
        with open(os.path.join(folder, f"firing{rank}.json"), "w") as handle:
            json.dump(result, handle)
    return result


def _key(entry: dict) -> tuple:
    return entry["image_id"], -entry["score"]


def test_ddp_metrics_equal_single_process(tmp_path, monkeypatch):
    single = DetectionMAP(NAMES)
    single.update(PREDS, TARGETS)
    expected = single.compute()
    assert 0 < expected["map_50"] < 1 and expected["per_class"]["bird"] > 0
    with_copy = DetectionMAP(NAMES)  # the padded copy, were it counted, changes the result
    with_copy.update(PREDS[1:] + [PADDING], TARGETS[1:] + [_target(6, TARGETS[0]["orig_boxes"], [0, 1])])
    assert with_copy.compute()["map_50"] != pytest.approx(expected["map_50"])

    monkeypatch.setenv("TEST_PORT", str(29500 + os.getpid() % 1000))
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for result in ranks:
        in_rank_order = result.pop("coco_results")
        assert sorted(in_rank_order, key=_key) == sorted(json.loads(json.dumps(single.to_coco_results())), key=_key)
        assert result == {**json.loads(json.dumps(expected)), "local_images": result["local_images"]}
    assert ranks[0]["local_images"] == [1, 3, 5] and ranks[1]["local_images"] == [2, 4, 1]
    expected = _firing(None)
    assert expected["sample_steps"] == 12 and expected["mean_firing_rate"] > 0
    for rank in (0, 1):
        result = json.loads((tmp_path / f"firing{rank}.json").read_text())
        assert result == json.loads(json.dumps(expected))  # integer counts: exact
