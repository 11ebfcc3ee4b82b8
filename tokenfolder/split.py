"""Train/validation split: a window in the middle of each long book, whole short recordings.

A time window (not whole chunks or books) keeps validation in-domain for every speaker of a long
book while the model never trains on a frame inside it. A window in the middle of a 3 s clip
would leave two scraps, so short recordings are held out whole instead, chosen by a stable hash
of their id (the same on every machine and every run). Both are a held-out range of 40 ms slots
per book, the same stretch of time for every token stream (a slot is 3 EnCodec frames, 2 Whisper
frames), so one code path cuts chunks. Frames are absolute positions in the book.

The split is the token folder's: fixed at tokenize time, for each book as it is planned (the k-means
of a semantic stream is fit away from it), and recorded with the book in its shard's index. A
training config may ask for another; it is then re-derived from these rules over all the books,
with one line saying so.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from narrator.errors import ConfigError
from narrator.tokenfolder.shards import ChunkRecord


@dataclass(frozen=True)
class SplitConfig:
    """Which frames of a token folder are held out for validation (a training config's `data:` repeats these keys)."""

    val_center: float = 0.5  # where a long book's validation window sits, as a fraction of its duration
    val_fraction: float = 0.05  # held out for validation: this share of each long book, and of the short recordings
    long_book_seconds: float = 60.0  # shorter recordings are held out whole (by a hash of their id), not cut

    def __post_init__(self) -> None:
        check_split(self.val_center, self.val_fraction, self.long_book_seconds, "split")

    def with_overrides(self, overrides: dict[str, float]) -> "SplitConfig":
        """This split with a training config's `data:` values for some of its keys."""
        return dataclasses.replace(self, **overrides)


def check_split(val_center: float | None, val_fraction: float | None, long_book_seconds: float | None,
                section: str) -> None:
    """One ConfigError line for a split value out of range (None: not set)."""
    if val_center is not None and not 0.0 <= val_center <= 1.0:
        raise ConfigError(f"'{section}.val_center': {val_center} is not in [0, 1]")
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"'{section}.val_fraction': {val_fraction} is not in (0, 1)")
    if long_book_seconds is not None and long_book_seconds < 0:
        raise ConfigError(f"'{section}.long_book_seconds': {long_book_seconds} is negative")


@dataclass(frozen=True)
class Segment:
    """Frames [start, end) of one chunk (chunk-relative) that belong to one split."""

    split: Literal["train", "val"]
    start: int
    end: int
    book_start: int  # absolute frame of `start` in the book

    @property
    def frames(self) -> int:
        return self.end - self.start


def val_window(book_frames: int, center: float, fraction: float) -> tuple[int, int]:
    """Book frames [start, end) held out for validation: `fraction` of the book centred at `center`.

    At least one frame long, moved inward where it would cross the book's start or end.
    """
    if book_frames < 1:
        raise ValueError(f"a book needs at least 1 frame, got {book_frames}")
    length = min(book_frames, max(1, round(book_frames * fraction)))
    start = round(book_frames * center - length / 2)
    start = min(max(start, 0), book_frames - length)
    return start, start + length


def id_hash(book_id: str) -> float:
    """A stable number in [0, 1) for a book id (sha256, not Python's per-process hash)."""
    return int(hashlib.sha256(book_id.encode()).hexdigest()[:16], 16) / 2**64


class Recording(Protocol):
    id: str
    duration_s: float
    slots: int


@dataclass(frozen=True)
class Planned:
    """What a folder's plan held before the books now added: their split is fixed and never revised."""

    books: int = 0
    short_held_out: int = 0  # short recordings held out whole


def held_out_slots(books: Sequence[Recording], cfg: SplitConfig, before: Planned = Planned()) -> dict[str, tuple[int, int]]:
    """Each book's held-out slots [start, end): a mid-book window, the whole recording, or (0, 0).

    Books of at least `cfg.long_book_seconds` get `val_window`. Shorter recordings are held out
    whole when id_hash < val_fraction; if that picks none of two or more and the folder holds none
    `before`, the one with the smallest hash is, so a corpus of short clips always has validation
    data. A lone short recording in an empty folder gets a mid window (holding it out whole would
    leave nothing to train on). `before`: books added to a folder are split among themselves, so
    the books already there keep their split.
    """
    long = [b for b in books if b.duration_s >= cfg.long_book_seconds]
    short = sorted((b for b in books if b.duration_s < cfg.long_book_seconds), key=lambda b: id_hash(b.id))
    held = {b.id for b in short if id_hash(b.id) < cfg.val_fraction}
    if not held and len(short) >= 2 and not before.short_held_out:
        held = {short[0].id}
    if not long and len(short) == 1 and not before.books:
        long, short = short, []
    windows = {b.id: val_window(b.slots, cfg.val_center, cfg.val_fraction) for b in long}
    windows.update({b.id: (0, b.slots) if b.id in held else (0, 0) for b in short})
    return windows


def split_chunk(record: ChunkRecord, frame_rate: float, window: tuple[int, int]) -> list[Segment]:
    """Cut a chunk into its train part before the window, its val part inside it, its train part after.

    Empty parts are left out; segments come in chunk order.
    """
    return split_span(round(record.start_s * frame_rate), record.frames, window)


def split_span(first: int, length: int, window: tuple[int, int]) -> list[Segment]:
    """`length` units (frames or slots) from unit `first` of a book, cut around the held-out units `window`.

    The loader cuts every chunk in 40 ms slots this way, so all streams of a chunk split at the same instants.
    """
    lo = min(max(window[0] - first, 0), length)  # window bounds, clipped to the chunk
    hi = min(max(window[1] - first, lo), length)
    parts = [Segment("train", 0, lo, first), Segment("val", lo, hi, first + lo), Segment("train", hi, length, first + hi)]
    return [s for s in parts if s.frames > 0]
