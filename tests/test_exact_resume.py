"""Exact resume: a run killed and resumed is the run that was configured, bit for bit on CPU.

The loader resumed at a saved position yields exactly the batches the uninterrupted loader yields
next (0, 1, 2 workers and a mix), and `trainer/run.py` killed with SIGKILL 5 times and rerun each time
ends with the weights and metrics of a run that was never interrupted (dropout on, shuffled data in a
DataLoader worker, 2 micro-batches per step, losses averaged over 2 steps per record).
"""

import dataclasses
import hashlib
import itertools
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from narrator.streaming.config import DataConfig, MixSource
from narrator.streaming.dataset import build_train_loader, data_deal, open_folder, open_sources
from narrator.streaming.position import DataDeal, DataPosition, SourcePosition, WorkerPosition, carry_over
from narrator.trainer import run
from narrator.trainer.checkpoint import checkpoint_dir, latest_checkpoint, read_process_states
from narrator.trainer.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_token_folder

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "train" / "tiny.yaml"
BLOCK = 63  # windows of 64 tokens: 16 frames of 4 codebooks
SEED = 5


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    """Two small token folders whose codes say where they came from: short epochs, many shards."""
    root = tmp_path_factory.mktemp("resume")
    a = make_token_folder(root / "a", books=3, seconds=8.0, chunk_seconds=2.0, codes="position")
    b = make_token_folder(root / "b", books=2, seconds=6.0, chunk_seconds=2.0, codes="position", seed=1)
    return a, b


def take(cfg: DataConfig, n: int, batch_size: int, start: DataPosition | None = None):
    """The first n batches (x) of a loader from `start`, each with the consumed position after it."""
    sources = open_sources(cfg, [open_folder(s.manifest) for s in cfg.sources])
    position = start or DataPosition.fresh(data_deal(cfg, sources, 1, SEED))
    consumed = dataclasses.replace(position, workers=list(position.workers))
    loader = build_train_loader(cfg, sources, BLOCK, batch_size, rank=0, world_size=1, seed=SEED, start=start)
    return [(batch.x.numpy().copy(), dataclasses.replace(consumed, workers=list(consumed.workers)))
            for batch in itertools.islice(consumed.follow(loader), n)]


@pytest.mark.parametrize("workers, mixed, batch_size, n", [(0, False, 4, 40), (1, False, 4, 40), (2, False, 4, 40),
                                                           (2, True, 16, 140)],
                         ids=["0-workers", "1-worker", "2-workers", "mix-2-workers"])
def test_a_loader_resumed_at_a_position_yields_the_remaining_batches(folders, workers, mixed, batch_size, n):
    a, b = folders
    sources = [MixSource(str(a), 3.0), MixSource(str(b), 1.0)] if mixed else []
    cfg = DataConfig(manifest="" if mixed else str(a), mix=sources, shuffle_buffer=8, num_workers=workers)
    full = take(cfg, n, batch_size)
    last = full[-1][1]
    assert max(s.epoch for w in last.workers for s in w.sources) >= 2  # the run crossed epoch boundaries
    if mixed:
        assert min(w.draws for w in last.workers) > 1024  # and, per worker, a block of the mix's draws
    for cut in [1, *sorted(random.Random(n + workers).sample(range(2, n - 2), 2)), n - 2]:  # odd and even cuts
        resumed = take(cfg, n - cut, batch_size, start=full[cut - 1][1])
        assert all(np.array_equal(x, y) for (x, _), (y, _) in zip(resumed, full[cut:], strict=True)), cut
        assert [p for _, p in resumed] == [p for _, p in full[cut:]]


def test_a_position_under_another_deal_starts_a_fresh_epoch_past_every_one_begun():
    deal = DataDeal(processes=1, workers=2, seed=0, shuffle_buffer=8, shards=(7, 3))
    saved = DataPosition(deal, [WorkerPosition((SourcePosition(4, 10), SourcePosition(9, 2)), draws=2050),
                                WorkerPosition((SourcePosition(5, 1), SourcePosition(8, 0, True)), draws=2049)], 1)
    same, changed = carry_over([saved], 0, deal)
    assert (same, changed) == (saved, None) and same.workers is not saved.workers
    other = dataclasses.replace(deal, workers=3, shards=(7, 4))
    fresh, changed = carry_over([saved], 0, other)
    assert changed == "workers 2 -> 3, shards (7, 3) -> (7, 4)"
    assert fresh == DataPosition(other, [WorkerPosition((SourcePosition(10), SourcePosition(10)), 3072)] * 3)


def test_a_resume_with_other_workers_or_without_a_position_says_it_starts_a_fresh_epoch(token_folder, tmp_path, capsys):
    argv = ["--config", str(TINY), "--set", f"data.manifest={token_folder}", "--set", f"out={tmp_path}"]
    assert run.main(argv + ["--set", "max_steps=3"]) == 0
    assert [p.data.deal.workers for p in read_process_states(latest_checkpoint(tmp_path))] == [1]
    assert run.main(argv + ["--set", "max_steps=5", "--set", "data.num_workers=1"]) == 0  # 0 and 1: the same windows
    assert "data position" not in capsys.readouterr().out
    assert run.main(argv + ["--set", "max_steps=7", "--set", "data.num_workers=2"]) == 0
    out = capsys.readouterr().out
    assert (f"data position: {checkpoint_dir(tmp_path, 5)} was read with workers 1 -> 2, so its position does not "
            "carry over: every token folder starts afresh at epoch 1") in out
    (checkpoint_dir(tmp_path, 7) / "process_0.json").unlink()  # as a checkpoint written before positions existed
    assert run.main(argv + ["--set", "max_steps=9", "--set", "data.num_workers=2"]) == 0
    assert (f"data position: {checkpoint_dir(tmp_path, 7)} holds none (an older checkpoint), so every token folder "
            "starts afresh at epoch 7") in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == list(range(1, 10))


# --- killed 5 times at random moments, resumed each time --------------------------------------------------

KILL_SETTINGS = ["model.dropout=0.1", "data.num_workers=1", "grad_accum=2", "max_steps=30", "checkpoint_every=3", "log_every=2",
                 "eval_every=5", "plot_every=30", "keep_checkpoints=2"]


def train_command(tokens: Path, out: Path) -> list[str]:
    settings = [f"data.manifest={tokens}", f"out={out}", *KILL_SETTINGS]
    return [sys.executable, str(REPO / "trainer" / "run.py"), "--config", str(TINY),
            *itertools.chain.from_iterable(("--set", s) for s in settings)]


def start(tokens: Path, out: Path, log: Path) -> subprocess.Popen:
    with open(log, "a") as f:  # into a file: nobody reads a pipe while it trains
        return subprocess.Popen(train_command(tokens, out), cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def last_logged_step(out: Path, before: int | None) -> int:
    """The newest step this run logged: 0 until it rewrote metrics.jsonl (a resumed run drops the records after
    its checkpoint by replacing the file; `before` is the file's inode when the run started)."""
    path = out / "metrics.jsonl"
    try:
        if path.stat().st_ino == before:
            return 0
        records = read_metrics(path)
    except FileNotFoundError:
        return 0
    return records[-1]["step"] if records else 0


def kill_when(proc: subprocess.Popen, ready, what: str) -> None:
    """SIGKILL the run (and its DataLoader worker) the moment `ready()` holds; fail if it ended first."""
    deadline = time.monotonic() + 240
    while not ready():
        assert proc.poll() is None, f"the run ended (status {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within 240 s"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def weights_digest(checkpoint: Path) -> dict[str, str]:
    return {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
            for k, v in sorted(load_file(checkpoint / "model.safetensors").items())}


def curve(out: Path) -> list[dict]:
    """metrics.jsonl without its timing fields."""
    timed = ("tokens_per_s", "tflops", "mfu")  # measured speeds, not results
    return [{k: v for k, v in r.items() if k not in timed} for r in read_metrics(out / "metrics.jsonl")]


def test_a_run_killed_5_times_and_resumed_ends_as_the_uninterrupted_run(token_folder, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    a = start(token_folder, whole, tmp_path / "whole.log")

    # 5 kills: k steps after the checkpoint a start resumes from (k drawn from a fixed seed; checkpoints
    # every 3 steps, so most land between two), and once the moment a start's first checkpoint is written.
    rng = random.Random(11)
    plan = [("steps", rng.randint(1, 8)) for _ in range(5)]
    plan[2] = ("checkpoint", 3)
    landed = []
    for kind, k in plan:
        resume_at = latest_checkpoint(killed)
        resume_at = int(resume_at.name.split("_")[1]) if resume_at else 0
        path = killed / "metrics.jsonl"
        before = path.stat().st_ino if path.exists() else None
        proc = start(token_folder, killed, tmp_path / "killed.log")
        if kind == "steps":
            at = resume_at + k
            kill_when(proc, lambda at=at, before=before: last_logged_step(killed, before) >= at, f"logging step {at}")
        else:
            step = resume_at + k
            kill_when(proc, lambda step=step: checkpoint_dir(killed, step).is_dir(), f"checkpoint {step}")
        landed.append((kind, k, resume_at, last_logged_step(killed, before)))
    print("kills (kind, k, resumed from, last step logged):", landed)
    assert start(token_folder, killed, tmp_path / "killed.log").wait(timeout=300) == 0  # the 6th start finishes
    assert a.wait(timeout=300) == 0
    log = (tmp_path / "killed.log").read_text()
    assert log.count("resumed from") == 5 and "data position" not in log

    assert latest_checkpoint(killed).name == latest_checkpoint(whole).name == "step_0000030"
    assert weights_digest(latest_checkpoint(killed)) == weights_digest(latest_checkpoint(whole))
    expected = curve(whole)
    assert [r["step"] for r in expected] == [2, 4, 5, 6, 8, 10, 12, 14, 15, 16, 18, 20, 22, 24, 25, 26, 28, 30]
    assert any("epoch_coverage" in r for r in expected)  # an epoch ended and was reported once
    assert curve(killed) == expected
    assert not [line for line in (tmp_path / "whole.log").read_text().splitlines()
                if "error" in line.lower() or "traceback" in line.lower()]
