"""Shared test fixtures: tiny token folders for the trainer, one local Ray per session, speech-like audio."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

# One intra-op thread per process: tests share 2 cores with Ray actors and trainer subprocesses,
# and oversubscribed torch threads made steps ~20x slower here. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np
import pytest
import soundfile as sf

from narrator.tokenizers.manifest import BookEntry, Manifest, ShardEntry, TokenizerInfo, WeightsIdentity
from narrator.tokenizers.shards import ChunkRecord, ShardWriter

SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"  # <repo>/../shared/audio


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Keep every test at one intra-op thread, even after code under test changed it."""
    import torch

    yield
    torch.set_num_threads(1)


# --- token folders (trainer / streaming tests) ---------------------------------------------------

def make_token_folder(out: str | Path, books: int = 2, seconds: float = 20.0, n_codebooks: int = 4,
                      chunk_seconds: float = 5.0, chunks_per_shard: int = 2, seed: int = 0) -> Path:
    """A token folder as `narrator tokenize` writes it (shards + manifest.json), holding random int16 codes < 16."""
    out = Path(out)
    frame_rate = 75
    info = TokenizerInfo(kind="encodec", stream="encodec", sample_rate=24000, frame_rate=float(frame_rate),
                         bandwidth={2: 1.5, 4: 3.0, 8: 6.0}.get(n_codebooks, 3.0), n_codebooks=n_codebooks,
                         codebook_size=1024, config={"test": True}, config_hash="test-tokens",
                         weights=WeightsIdentity(mode="random", source="random-init seed=0", sha256="0" * 64, seed=0))
    manifest = Manifest(tokenizer=info)
    rng = np.random.default_rng(seed)
    chunk_frames = round(chunk_seconds * frame_rate)
    total = round(seconds * frame_rate)
    for b in range(books):
        book = f"book{b}"
        starts = list(range(0, total, chunk_frames))
        names = []
        for part, first in enumerate(range(0, len(starts), chunks_per_shard)):
            names.append(f"shards/{book}-{part:05d}.tar")
            with ShardWriter(out / names[-1]) as writer:
                for c in range(first, min(first + chunks_per_shard, len(starts))):
                    frames = min(chunk_frames, total - starts[c])
                    codes = rng.integers(0, 16, (n_codebooks, frames), dtype=np.int16)  # few codes: learnable in a few steps
                    writer.write(ChunkRecord(book, c, starts[c] / frame_rate, (starts[c] + frames) / frame_rate,
                                             frames, "encodec"), codes)
                shard = writer.close()
            manifest.shards.append(ShardEntry(names[-1], book, shard.samples, shard.tokens, shard.bytes, shard.sha256))
        manifest.books.append(BookEntry(book, f"{book}.wav", total / frame_rate, total, len(starts), names))
    manifest.save(out / "manifest.json")
    return out


@pytest.fixture(scope="session")
def token_folder(tmp_path_factory) -> Path:
    """2 books x 20 s of random 4-codebook tokens (config_hash "test-tokens")."""
    return make_token_folder(tmp_path_factory.mktemp("tokens"))


# --- Ray and audio (tokenizer tests) -------------------------------------------------------------

@pytest.fixture(scope="session")
def ray_local():
    """A 2-CPU local Ray started once per session (start-up costs ~4 s)."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def speech_wav() -> Callable[..., Path]:
    """write(path, seconds, seed=1, sample_rate=24000, channels=1, fmt=None) -> path of a speech-like file."""
    from narrator.tokenizers.encodec import synthetic_speech

    def write(path: str | Path, seconds: float, seed: int = 1, sample_rate: int = 24_000, channels: int = 1,
              fmt: str | None = None) -> Path:
        mono = synthetic_speech(seconds, seed, sample_rate)
        audio = np.stack([mono * (1.0 - 0.3 * c) for c in range(channels)], axis=1) if channels > 1 else mono
        sf.write(str(path), audio.astype(np.float32), sample_rate, format=fmt)
        return Path(path)

    return write
