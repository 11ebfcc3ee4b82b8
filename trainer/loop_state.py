"""What one training process carries from step to step besides the model, optimizer and RNG states (accelerate
saves those): its loader's position, the metrics window, the epoch coverage reports and the skipped updates.

`LoopState` holds them all and, as torchtitan's checkpointed parts do, gives them to a checkpoint as one
`state_dict()` (a process_N.json, `checkpoint.ProcessState`) and takes them back with `load_state_dict()`:
state added here is saved and resumed without touching the loop, so a resumed run goes on exactly as an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from narrator.streaming.dataset import EpochCoverage, TrainBatch
from narrator.streaming.layout import Layout
from narrator.streaming.position import DataPosition
from narrator.trainer.checkpoint import ProcessState
from narrator.trainer.metrics import StepMetrics

if TYPE_CHECKING:
    from narrator.trainer.run import ValLoss


@dataclasses.dataclass
class LoopState:
    """This process's loop state; `checkpoint.TrainerState` holds what the processes share (step, tokens seen)."""

    position: DataPosition  # after the last batch taken from each loader worker
    window: Window
    coverage: CoverageLog
    skipped: int = 0  # updates skipped for a non-finite loss over the whole run, resumes included
    unlogged_skips: int = 0  # of which not yet in metrics.jsonl

    def batches(self, loader: Iterable[TrainBatch]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) of each batch; taking one moves the position past it and keeps its coverage reports."""
        # Moved on a copy: the loader reads the position it was built from only as its workers start.
        self.position = dataclasses.replace(self.position, workers=list(self.position.workers))
        return self.coverage.strip(self.position.follow(loader))

    def skip(self) -> int:
        """Count an update skipped for a non-finite loss; the run's count so far."""
        self.skipped += 1
        self.unlogged_skips += 1
        return self.skipped

    def record(self, step: int, lr: float, val: ValLoss | None, layout: Layout | None) -> StepMetrics:
        """The metrics record of the steps since the last one; what it reports is no longer pending."""
        record = self.window.record(step, lr, val, self.coverage.records(), layout)
        record.skipped_nonfinite, self.unlogged_skips = self.unlogged_skips or None, 0
        return record

    def state_dict(self) -> ProcessState:
        """A snapshot for the checkpoint: training on does not change it."""
        parts, unlogged = self.coverage.pending()
        return ProcessState(dataclasses.replace(self.position, workers=list(self.position.workers)), parts, unlogged,
                            list(self.window.losses), self.window.tokens, self.window.seconds, self.skipped,
                            self.unlogged_skips)

    def load_state_dict(self, saved: ProcessState) -> None:
        """Go on from a checkpoint's state for this process (run.carry_on picks it)."""
        self.position = saved.data
        self.window.restore(saved.losses, saved.tokens, saved.seconds)
        self.coverage.restore(saved.coverage_parts, saved.coverage_unlogged)
        self.skipped, self.unlogged_skips = saved.skipped, saved.unlogged_skips


class Window:
    """Train losses, tokens and seconds since the last metrics record, and the speed they give: tokens/s,
    TFLOP/s (`flops_per_token`: estimate.Workload.train_flops_per_token) and MFU (over `peak_tflops`, the
    processes' summed bf16 peak; None off CUDA)."""

    def __init__(self, flops_per_token: int = 0, peak_tflops: float | None = None):
        self.losses: list[float] = []
        self.tokens = 0
        self.seconds = 0.0
        self.rate = 0.0
        self.last_loss = math.nan
        self.flops_per_token = flops_per_token
        self.peak_tflops = peak_tflops

    def restore(self, losses: Sequence[float], tokens: int, seconds: float) -> None:
        """Go on with a checkpoint's window: the next record averages over the steps before the resume too."""
        self.losses, self.tokens, self.seconds = list(losses), tokens, seconds
        self.rate = tokens / seconds if seconds > 0 else 0.0

    @property
    def tflops(self) -> float:
        return self.rate * self.flops_per_token / 1e12

    @property
    def mfu(self) -> float | None:
        return self.tflops / self.peak_tflops if self.peak_tflops else None

    def postfix(self) -> dict[str, str]:
        """The speed for the progress bar: tokens/s, and MFU where the peak is known."""
        return {"tok_s": f"{self.rate:,.0f}", **({"mfu": f"{self.mfu:.1%}"} if self.mfu is not None else {})}

    def add(self, loss: float, tokens: int, seconds: float) -> None:
        self.losses.append(loss)
        self.tokens += tokens
        self.seconds += seconds
        self.rate = self.tokens / max(self.seconds, 1e-9)
        self.last_loss = loss

    def record(self, step: int, lr: float, val: ValLoss | None, epoch_coverage: list[dict] | None = None,
               layout: Layout | None = None) -> StepMetrics:
        mfu = self.mfu
        record = StepMetrics(step=step, train_loss=sum(self.losses) / len(self.losses), lr=lr,
                             tokens_per_s=round(self.rate, 1), tflops=float(f"{self.tflops:.4g}"),
                             mfu=None if mfu is None else round(mfu, 4), epoch_coverage=epoch_coverage or None)
        if val is not None:
            record.val_loss = val.overall
            record.val_loss_per_group = {k: round(v, 4) for k, v in val.per_group.items()}
            record.val_loss_per_stream = {k: round(v, 4) for k, v in val.per_stream.items()}
            per_codebook = val.per_codebook(layout) if layout is not None else None
            record.val_loss_per_codebook = None if per_codebook is None else [round(v, 4) for v in per_codebook]
        self.losses, self.tokens, self.seconds = [], 0, 0.0
        return record


class CoverageLog:
    """Per epoch, the share of this process's training tokens that landed in a window.

    Each DataLoader worker reports its epochs on its own (with the batch holding its last window of
    the epoch); an epoch is summed and reported once all `workers` reported it. In a mix, each token
    folder (`sources`) counts its own epochs. A resumed run `restore`s the checkpoint's `pending`
    reports, and its loader skips the windows that made them, so no epoch is counted twice or lost.
    """

    def __init__(self, workers: int, block_size: int, rank: int | None, sources: list[str] | None = None):
        self.workers, self.block_size, self.rank, self.sources = workers, block_size, rank, sources
        self._parts: dict[tuple[int, int], list[EpochCoverage]] = {}  # (source, epoch) -> its workers' reports so far
        self._done: list[EpochCoverage] = []  # finished, not yet printed
        self._unlogged: list[EpochCoverage] = []  # finished, not yet in metrics.jsonl

    def strip(self, batches: Iterable[TrainBatch]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) of each batch, keeping the coverage reports it carries."""
        for batch in batches:
            for part in batch.coverage:
                parts = self._parts.setdefault((part.source, part.epoch), [])
                parts.append(part)
                if len(parts) == self.workers:
                    done = sum(self._parts.pop((part.source, part.epoch))[1:], parts[0])
                    self._done.append(done)
                    self._unlogged.append(done)
            yield batch.x, batch.y

    def pending(self) -> tuple[list[EpochCoverage], list[EpochCoverage]]:
        """What a checkpoint keeps: the reports of epochs not every worker finished, and finished epochs
        not yet in metrics.jsonl."""
        return [p for parts in self._parts.values() for p in parts], list(self._unlogged)

    def restore(self, parts: Sequence[EpochCoverage], unlogged: Sequence[EpochCoverage]) -> None:
        """Go on from a checkpoint's `pending` reports."""
        self._parts = {}
        for part in parts:
            self._parts.setdefault((part.source, part.epoch), []).append(part)
        self._unlogged = list(unlogged)

    def lines(self) -> list[str]:
        """One line per epoch finished since the last call."""
        where = "" if self.rank is None else f" on rank {self.rank}"
        lines = [f"epoch {c.epoch}{'' if self.sources is None else f' of {self.sources[c.source]}'}: {c.share:.2%} of "
                 f"{c.tokens:,} training tokens{where} landed in a window (block {self.block_size})" for c in self._done]
        self._done = []
        return lines

    def records(self) -> list[dict]:
        """The epochs finished since the last call, for metrics.jsonl."""
        records = [{"epoch": c.epoch, "tokens": c.tokens, "covered": c.covered, "share": round(c.share, 6),
                    **({} if self.sources is None else {"source": self.sources[c.source]})} for c in self._unlogged]
        self._unlogged = []
        return records
