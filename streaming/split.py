"""Train/validation split by time: every book holds out one window around a point in its middle.

A time window (not whole chunks or books) keeps validation in-domain for every speaker while the
model never trains on a frame inside it. Frames are absolute positions in the book.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from narrator.tokenizers.shards import ChunkRecord


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


def split_chunk(record: ChunkRecord, frame_rate: float, window: tuple[int, int]) -> list[Segment]:
    """Cut a chunk into its train part before the window, its val part inside it, its train part after.

    Empty parts are left out; segments come in chunk order.
    """
    first = round(record.start_s * frame_rate)
    lo = min(max(window[0] - first, 0), record.frames)  # window bounds, clipped to the chunk
    hi = min(max(window[1] - first, lo), record.frames)
    parts = [Segment("train", 0, lo, first), Segment("val", lo, hi, first + lo), Segment("train", hi, record.frames, first + hi)]
    return [s for s in parts if s.frames > 0]
