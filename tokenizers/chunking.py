"""Cut a book into chunks on the 0.04 s grid, each with the context window it is encoded in.

0.04 s is 960 samples at 24 kHz, exactly 3 EnCodec frames (and 2 Whisper frames), so every chunk
boundary is a frame boundary and a chunk's tokens are an exact slice of the book's token stream.
All arithmetic is done in whole grid steps; seconds are derived from them.
"""

from __future__ import annotations

from dataclasses import dataclass

from narrator.errors import NarratorError
from narrator.tokenizers.config import FRAME_GRID_SECONDS, SAMPLE_RATE, ChunkingConfig

SAMPLES_PER_STEP = round(FRAME_GRID_SECONDS * SAMPLE_RATE)  # 960
FRAMES_PER_STEP = 3  # EnCodec 24 kHz frames (75 Hz, 320 samples each) in one grid step


@dataclass(frozen=True)
class ChunkSpec:
    """One chunk of a book: the seconds it covers, the window it is encoded in, and the frames to cut off."""

    book: str
    chunk: int
    start_s: float
    end_s: float
    ctx_start_s: float  # max(0, start - left context)
    ctx_end_s: float  # min(book end, end + right context)
    trim_left: int  # EnCodec frames of left context to drop after encoding
    trim_right: int  # ... and of right context
    frames: int  # EnCodec frames kept: (end_s - start_s) * 75


def grid_steps(seconds: float) -> int:
    """Whole grid steps in `seconds`, rounding down (a tail shorter than one step is dropped)."""
    return int(seconds * SAMPLE_RATE + 1e-6) // SAMPLES_PER_STEP


def _seconds(steps: int) -> float:
    return round(steps * FRAME_GRID_SECONDS, 6)


def plan_chunks(book_id: str, duration_s: float, cfg: ChunkingConfig) -> list[ChunkSpec]:
    """Consecutive chunks of `cfg.chunk_seconds` covering the book; the last one (or a short recording's
    only one) may be shorter."""
    total = grid_steps(duration_s)
    size = round(cfg.chunk_seconds / FRAME_GRID_SECONDS)
    left = round(cfg.left_context_seconds / FRAME_GRID_SECONDS)
    right = round(cfg.right_context_seconds / FRAME_GRID_SECONDS)
    if total < 1:
        raise NarratorError(f"{book_id}: too short: {duration_s:.3f} s is less than one {FRAME_GRID_SECONDS} s grid step")
    specs = []
    for i, start in enumerate(range(0, total, size)):
        end = min(start + size, total)
        ctx_start, ctx_end = max(0, start - left), min(total, end + right)
        specs.append(ChunkSpec(
            book=book_id, chunk=i,
            start_s=_seconds(start), end_s=_seconds(end),
            ctx_start_s=_seconds(ctx_start), ctx_end_s=_seconds(ctx_end),
            trim_left=(start - ctx_start) * FRAMES_PER_STEP, trim_right=(ctx_end - end) * FRAMES_PER_STEP,
            frames=(end - start) * FRAMES_PER_STEP,
        ))
    return specs
