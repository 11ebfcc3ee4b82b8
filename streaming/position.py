"""Where a rank's training loader is in its endless stream of windows, so a resumed run reads on from exactly there.

A rank's training windows are a function of (seed, rank, worker, epoch) (`dataset.TrainWindows`). Every
window carries its DataLoader worker's position after it: per token folder, the epoch and how many of its
windows the worker has handed out, and for a mix how many windows the mix has drawn. The trainer keeps the
position of the last batch it consumed from each worker (`DataPosition.follow`: batches prefetched but not
consumed do not count) and checkpoints store it as JSON. A resumed worker replays only its current epoch,
from the start through the same seeded cut and shuffle, and drops the windows it had handed out, so its
shuffle buffer comes out as it was without replaying earlier epochs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Protocol

MIX_BLOCK = 1024  # the mix draws its folder choices in blocks of this many, each block seeded on its own


@dataclass(frozen=True)
class SourcePosition:
    """One worker's place in one token folder: it handed out `windows` windows of `epoch` (after the shuffle)."""

    epoch: int = 0
    windows: int = 0
    read_all: bool = False  # its share of an epoch held no window, so it reads every shard from then on


@dataclass(frozen=True)
class WorkerPosition:
    """One DataLoader worker's place: in each token folder of data.sources, and in the mix's draws."""

    sources: tuple[SourcePosition, ...]
    draws: int = 0  # windows the mix drew (MixedWindows); 0 for one folder


@dataclass(frozen=True)
class DataDeal:
    """What decides which windows each worker reads, and so whether a position carries over to another run."""

    processes: int
    workers: int  # DataLoader workers per process; 0 counts as 1 (the same windows, read in the process)
    seed: int
    shuffle_buffer: int
    shards: tuple[int, ...]  # planned shards of each token folder

    def differences(self, other: DataDeal) -> str:
        """'workers 1 -> 2, shards (7,) -> (9,)': what changed from this deal to `other`."""
        return ", ".join(f"{f.name.replace('_', ' ')} {getattr(self, f.name)} -> {getattr(other, f.name)}"
                         for f in fields(self) if getattr(self, f.name) != getattr(other, f.name))


class _Batch(Protocol):
    worker: int
    position: WorkerPosition | None


@dataclass
class DataPosition:
    """One rank's loader position: each worker's, and which worker hands over the next batch.

    A DataLoader takes batches from its workers in turn, always starting with its worker 0; a resumed
    loader's worker k therefore plays worker (k + next_worker) % workers (`worker`).
    """

    deal: DataDeal
    workers: list[WorkerPosition]
    next_worker: int = 0

    @classmethod
    def fresh(cls, deal: DataDeal, epoch: int = 0, draws: int = 0) -> DataPosition:
        """Every worker at the start of `epoch` of every token folder (and at the mix's draw `draws`)."""
        worker = WorkerPosition(tuple(SourcePosition(epoch) for _ in deal.shards), draws)
        return cls(deal, [worker] * max(1, deal.workers))

    def worker(self, loader_worker: int) -> int:
        """Which worker of this position the loader's worker `loader_worker` continues."""
        return (loader_worker + self.next_worker) % len(self.workers)

    def follow(self, batches: Iterable[_Batch]) -> Iterator[_Batch]:
        """The batches, unchanged; each one handed on moves this position past it."""
        for batch in batches:
            self.workers[batch.worker] = batch.position
            self.next_worker = (batch.worker + 1) % len(self.workers)
            yield batch


def carry_over(saved: Sequence[DataPosition], rank: int, deal: DataDeal) -> tuple[DataPosition, str | None]:
    """This rank's position from a checkpoint's positions (one per rank), and None; or, when the checkpoint
    was read under another deal, a fresh position past every epoch it started, and what differs.

    A fresh position is one all ranks agree on, so no window of the new epochs was seen before.
    """
    if len(saved) == deal.processes and all(p.deal == deal for p in saved):
        return replace(saved[rank], workers=list(saved[rank].workers)), None
    epoch = 1 + max(s.epoch for p in saved for w in p.workers for s in w.sources)
    draws = (max(w.draws for p in saved for w in p.workers) // MIX_BLOCK + 1) * MIX_BLOCK
    return DataPosition.fresh(deal, epoch, draws), saved[0].deal.differences(deal)
