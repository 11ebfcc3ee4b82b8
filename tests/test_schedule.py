import pytest
import torch

from narrator.trainer.config import ScheduleConfig
from narrator.trainer.schedule import build_scheduler, lr_at

COSINE = ScheduleConfig(kind="cosine", warmup_steps=10, min_lr_ratio=0.1)


def test_warmup_rises_linearly_to_the_peak():
    lrs = [lr_at(s, COSINE, 1e-3, 100) for s in range(10)]
    assert lrs == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])
    assert lr_at(9, COSINE, 1e-3, 100) == pytest.approx(1e-3)
    assert lr_at(10, COSINE, 1e-3, 100) == pytest.approx(1e-3)  # cosine starts at the peak


def test_cosine_decays_to_min_at_max_steps_and_stays():
    lrs = [lr_at(s, COSINE, 1e-3, 100) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lr_at(55, COSINE, 1e-3, 100) == pytest.approx(0.55e-3)  # halfway: mean of peak and min
    assert lr_at(100, COSINE, 1e-3, 100) == pytest.approx(1e-4)
    assert lr_at(150, COSINE, 1e-3, 100) == pytest.approx(1e-4)


def test_constant_holds_after_warmup_and_without_warmup():
    cfg = ScheduleConfig(kind="constant", warmup_steps=4)
    assert [lr_at(s, cfg, 2.0, 10) for s in (0, 3, 4, 9, 50)] == pytest.approx([0.5, 2.0, 2.0, 2.0, 2.0])
    assert lr_at(0, ScheduleConfig(kind="constant", warmup_steps=0), 2.0, 10) == 2.0


def test_lambda_lr_follows_lr_at_from_any_start_step():
    for start in (0, 7):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        scheduler = build_scheduler(optimizer, COSINE, 1e-3, 30, start_step=start)
        seen = []
        for _ in range(20):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        assert seen == pytest.approx([lr_at(s, COSINE, 1e-3, 30) for s in range(start, start + 20)])
