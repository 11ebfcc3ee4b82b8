"""Audio in: probe a book from its header, and read any stretch of it as mono 24 kHz float32 without loading it whole.

soundfile (libsndfile) reads wav, flac, ogg and mp3 and seeks sample-exactly in all of them, from
a local path or a URL (storage.py: an object store is read in ranges as soundfile seeks). Other
containers (m4a, opus-in-webm, ...) are refused; convert them first, e.g.
`ffmpeg -i book.m4a -ac 1 -ar 24000 book.flac`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from narrator.errors import NarratorError
from narrator.tokenfolder import storage
from narrator.tokenizers.config import SAMPLE_RATE
from narrator.tokenizers.mp3 import untagged_mp3_samples

# Source seconds read beyond each end of a segment before resampling, so the resampler's edge
# transient (~80 output samples) falls outside the samples we keep.
_RESAMPLE_PAD_SECONDS = 0.02


@dataclass(frozen=True)
class AudioInfo:
    path: str  # a local path or a URL
    sample_rate: int
    channels: int
    frames: int  # in the file's own sample rate: what reading gives, exactly
    duration_s: float
    unread_s: float = 0.0  # audio past what libsndfile can read (an MP3 whose header underestimates its length)


def probe(path: str | Path) -> AudioInfo:
    """Header facts of an audio file (a path or URL); one-line NarratorError if it is missing, empty or unreadable."""
    path = storage.root(path)
    if not storage.exists(path):
        raise NarratorError(f"{path}: file not found")
    if storage.size(path) == 0:
        raise NarratorError(f"{path}: empty file (0 bytes)")
    try:
        with _sound_file(str(path)) as f:
            frames, samplerate, channels = f.frames, f.samplerate, f.channels
    except RuntimeError:  # sf.LibsndfileError; its text ("File does not exist ...") often misleads
        raise NarratorError(f"{path}: unsupported or corrupt audio (wav, flac, ogg and mp3 are read)") from None
    decoded = frames
    if is_mp3(path):
        # Without a Xing/Info tag libsndfile guesses the length from the file size, and reads no further than its
        # guess; the decoder stops at the real end. What can be read is the smaller of the guess and the frames counted.
        with storage.open_read(path) as raw:
            decoded = untagged_mp3_samples(raw) or frames
    if frames <= 0 or samplerate <= 0:
        raise NarratorError(f"{path}: zero-length audio (no samples)")
    readable = min(frames, decoded)
    return AudioInfo(str(path), samplerate, channels, readable, readable / samplerate, (decoded - readable) / samplerate)


@contextlib.contextmanager
def _sound_file(path: str) -> Iterator[sf.SoundFile]:
    """The audio open for seeking reads: by name when local, through a ranged-read file object for a URL."""
    if not storage.is_url(path):
        with sf.SoundFile(path) as f:
            yield f
        return
    with storage.open_read(path) as raw, sf.SoundFile(raw) as f:
        yield f


def n_samples(duration_s: float) -> int:
    """Samples at 24 kHz in `duration_s` (times on the 0.04 s grid convert exactly)."""
    return round(duration_s * SAMPLE_RATE)


def read_segment(source: str | Path | AudioInfo, start_s: float, end_s: float) -> np.ndarray:
    """Mono float32 at 24 kHz for [start_s, end_s), clipped to the file; equal to the same slice of a full read.

    Resampling starts on a source sample that maps exactly onto a 24 kHz sample (e.g. every 147th
    at 22.05 kHz = every 160th at 24 kHz), and reads a little extra on both sides that is trimmed
    after resampling, so segments cut from one book join without clicks.
    """
    info = source if isinstance(source, AudioInfo) else probe(source)
    sr = info.sample_rate
    total_out = info.frames * SAMPLE_RATE // sr
    out0 = min(max(n_samples(start_s), 0), total_out)
    out1 = min(max(n_samples(end_s), out0), total_out)
    if out1 == out0:
        return np.zeros(0, dtype=np.float32)
    step_in, step_out = sr // math.gcd(sr, SAMPLE_RATE), SAMPLE_RATE // math.gcd(sr, SAMPLE_RATE)
    pad_steps = math.ceil(_RESAMPLE_PAD_SECONDS * sr / step_in)
    first_step = max(out0 // step_out - pad_steps, 0)
    src0 = first_step * step_in
    src1 = min(math.ceil(out1 * sr / SAMPLE_RATE) + pad_steps * step_in, info.frames)
    try:
        with _sound_file(info.path) as f:
            f.seek(src0)
            block = f.read(src1 - src0, dtype="float32", always_2d=True)
    except RuntimeError as e:
        raise NarratorError(f"{info.path}: unreadable audio at {start_s:.2f}-{end_s:.2f} s ({e})") from None
    mono = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
    if sr != SAMPLE_RATE:
        mono = soxr.resample(mono, sr, SAMPLE_RATE)
    offset = out0 - first_step * step_out
    out = mono[offset: offset + (out1 - out0)]
    if len(out) < out1 - out0:  # the resampler may end one sample short at the very end of a file
        out = np.pad(out, (0, out1 - out0 - len(out)))
    return np.ascontiguousarray(out, dtype=np.float32)


def is_mp3(source: str | Path) -> bool:
    return str(source).split("?")[0].lower().endswith(".mp3")


def dbfs(peak: float) -> float:
    """A peak amplitude in dBFS (-inf for digital silence)."""
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf
