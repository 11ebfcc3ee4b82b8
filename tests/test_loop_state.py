"""LoopState: the loop state one process checkpoints (process_N.json) comes back whole, and is a snapshot."""

import json

import torch

from narrator.config import from_dict, to_dict
from narrator.streaming.dataset import EpochCoverage, TrainBatch
from narrator.streaming.position import DataDeal, DataPosition, SourcePosition, WorkerPosition
from narrator.trainer.checkpoint import ProcessState
from narrator.trainer.loop_state import CoverageLog, LoopState, Window

DEAL = DataDeal(processes=1, workers=2, seed=0, shuffle_buffer=8, shards=(3,))


def fresh() -> LoopState:
    return LoopState(DataPosition.fresh(DEAL), Window(flops_per_token=1000), CoverageLog(workers=2, block_size=64,
                                                                                          rank=None))


def batch(worker: int, windows: int, coverage: list[EpochCoverage] = ()) -> TrainBatch:
    x = torch.zeros(1, 64, dtype=torch.long)
    return TrainBatch(x, x, list(coverage), worker, WorkerPosition((SourcePosition(windows // 10, windows),)))


def trained() -> LoopState:
    """Two batches taken (one epoch half reported, one finished and not logged), two steps, one skip."""
    state = fresh()
    list(state.batches([batch(0, 4, [EpochCoverage(0, 100, 90)]),
                        batch(1, 5, [EpochCoverage(0, 100, 99), EpochCoverage(1, 50, 50)])]))
    state.window.add(2.5, tokens=256, seconds=0.5)
    state.window.add(1.5, tokens=256, seconds=0.25)
    state.skip()
    return state


def test_state_dict_round_trips_through_process_json_with_its_keys_unchanged():
    saved = trained().state_dict()
    on_disk = json.loads(json.dumps(to_dict(saved)))
    assert list(on_disk) == ["data", "coverage_parts", "coverage_unlogged", "losses", "tokens", "seconds", "skipped",
                             "unlogged_skips"]  # what checkpoints already on disk hold
    assert saved.data.next_worker == 0 and [w.sources[0].windows for w in saved.data.workers] == [4, 5]
    assert saved.coverage_parts == [EpochCoverage(1, 50, 50)]
    assert saved.coverage_unlogged == [EpochCoverage(0, 200, 189)]
    assert (saved.losses, saved.tokens, saved.seconds, saved.skipped, saved.unlogged_skips) == ([2.5, 1.5], 512, 0.75,
                                                                                                 1, 1)
    resumed = fresh()
    resumed.load_state_dict(from_dict(ProcessState, on_disk))
    assert resumed.state_dict() == saved
    assert resumed.window.rate == 512 / 0.75


def test_state_dict_is_a_snapshot_training_on_does_not_change():
    state = fresh()
    batches = state.batches([batch(0, 4, [EpochCoverage(0, 100, 90)]), batch(1, 5, [EpochCoverage(0, 100, 99)])])
    next(batches)
    state.window.add(2.5, tokens=256, seconds=0.5)
    saved = state.state_dict()
    before = json.dumps(to_dict(saved))
    next(batches)  # the same loader read on: its position moves, the second worker finishes epoch 0
    state.window.add(1.5, tokens=256, seconds=0.5)
    state.skip()
    state.record(step=2, lr=1e-3, val=None, layout=None)
    assert json.dumps(to_dict(saved)) == before


def test_batches_leave_the_position_the_loader_started_from_alone():
    state = fresh()
    start = state.position  # what build_train_loader was given; its workers read it as they start
    list(state.batches([batch(0, 4), batch(1, 5)]))
    assert start == DataPosition.fresh(DEAL) and state.position != start


def test_a_record_reports_the_pending_skips_and_epochs_once():
    state = trained()
    record = state.record(step=2, lr=1e-3, val=None, layout=None)
    assert record.skipped_nonfinite == 1 and record.epoch_coverage == [
        {"epoch": 0, "tokens": 200, "covered": 189, "share": 0.945}]
    assert record.train_loss == 2.0
    saved = state.state_dict()
    assert (saved.unlogged_skips, saved.coverage_unlogged, saved.losses, saved.skipped) == (0, [], [], 1)
    state.window.add(1.0, tokens=256, seconds=0.5)
    assert state.record(step=3, lr=1e-3, val=None, layout=None).skipped_nonfinite is None
