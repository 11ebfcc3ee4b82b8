"""Trainer vs a bare loop: steady-state seconds per step of `trainer/run.py`'s train() and of a minimal loop
(forward, backward, clip, AdamW step, nothing else) on the same model, batches and threads, in one process.

    python benchmarks/trainer_overhead.py [--config configs/train/demo.yaml] [--steps 30] [--warmup 5] [--threads 1]

The trainer's step time is the interval between the starts of consecutive `train_step` calls (stamped by
wrapping run.train_step, which still does the work), so it holds everything the loop does per step
(DataLoader, metrics records, progress bar, coverage) but not start-up. Evaluation, plots and
checkpoints are moved to the final step, after the last stamp. The bare loop trains a fresh model of
the same config on batches taken beforehand from the same loader. It runs before and after the
trainer, and the two are averaged, so a load change on the machine shows in both sides.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader_speed import write_synthetic

from narrator.config import load_config
from narrator.streaming.dataset import build_train_loader, open_folder, open_sources
from narrator.tokenfolder.manifest import MANIFEST_NAME
from narrator.trainer import run
from narrator.trainer.config import TrainConfig
from narrator.trainer.model import GPT
from narrator.trainer.optim import build_optimizer

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "train" / "demo.yaml"


@dataclass
class TrainerOverhead:
    bare: list[float]  # seconds of each timed bare-loop step, the run before the trainer's and the one after
    trainer: list[float]  # seconds of each timed trainer step (steady state)
    tokens_per_step: int
    params: int

    @property
    def ratio(self) -> float:
        """Trainer steps per second / bare-loop steps per second (1.0: no overhead), from the medians: other
        jobs on a shared machine slow single steps of either side, which the median leaves out."""
        return statistics.median(self.bare) / statistics.median(self.trainer)

    @property
    def mean_ratio(self) -> float:
        return statistics.mean(self.bare) / statistics.mean(self.trainer)


def measure(config: Path = DEMO, steps: int = 30, warmup: int = 5, threads: int = 1) -> TrainerOverhead:
    """Both sides on `threads` torch threads (1: on a busy 2-core machine, 2 threads per process crawl)."""
    before_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _measure(config, steps, warmup)
    finally:
        torch.set_num_threads(before_threads)


def _measure(config: Path, steps: int, warmup: int) -> TrainerOverhead:
    with tempfile.TemporaryDirectory(prefix="trainer-overhead-") as tmp:
        tokens = Path(tmp) / "tokens"
        write_synthetic(tokens, chunks=40, seconds=30.0, codebooks=4)
        max_steps = warmup + steps + 1
        cfg = load_config(TrainConfig, config, [f"data.manifest={tokens}", f"out={Path(tmp) / 'run'}",
                                                f"max_steps={max_steps}", f"eval_every={max_steps}",
                                                f"plot_every={max_steps}", f"checkpoint_every={max_steps}",
                                                "resume=never"])
        batches, model, optimizer = _bare_setup(cfg, warmup + steps)
        before = _bare_loop(model, optimizer, batches, cfg)[warmup:]
        trainer = _trainer_intervals(cfg, Path(tmp) / "trainer.log")[warmup:]
        batches, model, optimizer = _bare_setup(cfg, warmup + steps)
        after = _bare_loop(model, optimizer, batches, cfg)[warmup:]
    return TrainerOverhead(before + after, trainer, cfg.batch_size * cfg.grad_accum * cfg.model.block_size,
                           model.num_params())


def _trainer_intervals(cfg: TrainConfig, log: Path) -> list[float]:
    """Seconds between the starts of consecutive train_step calls of run.train (its output into `log`)."""
    stamps: list[float] = []
    real_step = run.train_step

    def stamped(*args):
        stamps.append(time.perf_counter())
        return real_step(*args)

    run.train_step = stamped
    try:
        with open(log, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            if run.train(cfg) != 0:
                raise RuntimeError(f"trainer failed; see {log}")
    finally:
        run.train_step = real_step
    return [b - a for a, b in itertools.pairwise(stamps)]


def _bare_setup(cfg: TrainConfig, steps: int) -> tuple[list, GPT, torch.optim.Optimizer]:
    """The trainer's first `steps` x grad_accum batches, and a fresh model and AdamW as the trainer builds them."""
    folders = [open_folder(source.manifest) for source in cfg.data.sources]
    manifest, folder = folders[0]
    vocab = run.check_vocab(cfg, manifest, folder / MANIFEST_NAME)
    sources = open_sources(cfg.data, folders)
    loader = build_train_loader(cfg.data, sources, cfg.model.block_size, cfg.batch_size, rank=0, world_size=1,
                                seed=cfg.data.seed)
    batches = [(b.x, b.y) for b in itertools.islice(loader, steps * cfg.grad_accum)]
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model.gpt_config(vocab))
    return batches, model, build_optimizer(model, cfg.optim, torch.device("cpu"))


def _bare_loop(model: GPT, optimizer: torch.optim.Optimizer, batches: list, cfg: TrainConfig) -> list[float]:
    """Seconds of each step: forward, backward, clip, AdamW step, nothing else."""
    model.train()
    micro = iter(batches)
    times = []
    for _ in range(len(batches) // cfg.grad_accum):
        start = time.perf_counter()
        for _ in range(cfg.grad_accum):
            x, y = next(micro)
            _, loss = model(x, y)
            (loss / cfg.grad_accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEMO)
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    args = parser.parse_args()
    r = measure(args.config, args.steps, args.warmup, args.threads)
    print(f"{args.config.name}: {r.params / 1e6:.2f} M parameters, {r.tokens_per_step} tokens per step, "
          f"{args.threads} torch threads")
    print(f"median ms per step: bare loop {statistics.median(r.bare) * 1e3:.1f}, trainer "
          f"{statistics.median(r.trainer) * 1e3:.1f}; ratio {r.ratio:.3f} (means: {r.mean_ratio:.3f})")


if __name__ == "__main__":
    main()
