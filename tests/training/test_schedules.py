"""PhaseCosineLR: sized when its phase begins, the learning rate it reports is the one in effect."""
import math

import torch

from spikeloc.training.schedules import PhaseCosineLR


def test_the_sized_schedule_reports_the_rate_in_effect_from_its_first_step():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = PhaseCosineLR(optimizer, warmup=0.5)
    schedule.fit_to(4)  # two warm-up steps, then a cosine over two
    seen = [schedule.get_last_lr()[0]]
    for _ in range(3):
        optimizer.step()
        schedule.step()
        seen.append(schedule.get_last_lr()[0])
    assert seen == [0.5, 1.0, 1.0, (1 + math.cos(math.pi / 2)) / 2]
    assert optimizer.param_groups[0]["lr"] == seen[-1]
