"""Shared test fixtures: tiny token folders for the trainer, one local Ray per session, speech-like audio."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Literal

# One intra-op thread per process: tests share 2 cores with Ray actors and trainer subprocesses,
# and oversubscribed torch threads made steps ~20x slower here. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np
import pytest
import soundfile as sf

from narrator.tokenfolder.manifest import (ACOUSTIC, BookEntry, Manifest, ShardEntry, ShardFile, StreamInfo, WeightsIdentity,
                                          write_book_index)
from narrator.tokenfolder.split import held_out_slots, split_span
from narrator.tokenfolder.shards import ChunkRecord, ShardWriter

SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"  # <repo>/../shared/audio


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Keep every test at one intra-op thread, even after code under test changed it."""
    import torch

    yield
    torch.set_num_threads(1)


# --- token folders (trainer / streaming tests) ---------------------------------------------------

def make_token_folder(out: str | Path, books: int = 2, seconds: float | Sequence[float] = 20.0, n_codebooks: int = 4,
                      chunk_seconds: float = 5.0, samples_per_shard: int = 2, seed: int = 0,
                      codes: Literal["random", "position"] = "random", streams: Sequence[str] = (ACOUSTIC,),
                      semantic_k: int | None = None) -> Path:
    """A token folder as `narrator tokenize` writes it (shards, their book indexes, manifest.json: narrator-tokens/3).

    `books` recordings `book0, book1, ...` of `seconds` each (or one per entry of a list of
    durations), cut into chunks of `chunk_seconds` (a shorter recording is one short chunk), packed
    into shards of `samples_per_shard` chunks back to back, so a shard may hold many books and a
    book may continue in the next shard. `streams`: "acoustic" (EnCodec codes [n_codebooks, 3 per
    slot] at 75 Hz) and/or "semantic" (k-means ids [2 per slot] at 50 Hz, `semantic_k` of them),
    each in its own shard set with identical keys. codes "random": ids < 16 (learnable in a few
    steps); "position": acoustic codebook 0 = frame % 1024, 1 = frame // 1024 (absolute frame in the
    book), 2 = book index, 3 = chunk index; semantic id = 4096 * book index + absolute semantic frame
    (k 32768: at most 8 books of < 82 s), so every token tells where it came from.
    """
    out = Path(out)
    durations = [float(seconds)] * books if isinstance(seconds, (int, float)) else [float(s) for s in seconds]
    semantic_k = semantic_k or (32768 if codes == "position" else 64)
    weights = WeightsIdentity(mode="random", source="random-init seed=0", sha256="0" * 64, seed=0)
    infos = {
        ACOUSTIC: StreamInfo(name=ACOUSTIC, kind="encodec", sample_rate=24000, frame_rate=75.0, n_codebooks=n_codebooks,
                             codebook_size=1024, config={"test": True}, config_hash="test-tokens", weights=weights,
                             bandwidth={2: 1.5, 4: 3.0, 8: 6.0}.get(n_codebooks, 3.0)),
        "semantic": StreamInfo(name="semantic", kind="whisper-kmeans", sample_rate=16000, frame_rate=50.0, n_codebooks=1,
                               codebook_size=semantic_k, config={"test": True, "k": semantic_k},
                               config_hash="test-semantic", weights=weights),
    }
    manifest = Manifest(streams=[infos[s] for s in streams])
    rng = np.random.default_rng(seed)
    chunk_slots = round(chunk_seconds / 0.04)
    plan = []  # (book index, chunk, first slot, slots), in plan order
    books = []
    for b, duration in enumerate(durations):
        slots = max(1, round(duration / 0.04))  # books are whole 40 ms slots
        plan += [(b, c, first, min(chunk_slots, slots - first)) for c, first in enumerate(range(0, slots, chunk_slots))]
        books.append(BookEntry(f"book{b}", f"book{b}.wav", slots * 0.04, slots, len(range(0, slots, chunk_slots)),
                               0, 0, (0, 0)))
    if codes == "position" and "semantic" in streams and (len(durations) > 8 or max(b.slots for b in books) > 2048):
        raise ValueError("position-coded semantic ids fit at most 8 books of < 82 s")
    held = held_out_slots(books, manifest.split)  # one tokenize run: the split of its books, fixed with them
    for part, first_sample in enumerate(range(0, len(plan), samples_per_shard)):
        chunks = plan[first_sample : first_sample + samples_per_shard]
        files = {}
        for stream in streams:
            path = f"shards/{stream}/{part:06d}.tar"
            with ShardWriter(out / path, path) as writer:
                for b, c, first, slots in chunks:
                    record = ChunkRecord(f"book{b}", c, first * 0.04, (first + slots) * 0.04,
                                         slots * (3 if stream == ACOUSTIC else 2), stream)
                    writer.write(record, _chunk_codes(stream, codes, rng, b, c, first, slots, n_codebooks, semantic_k))
                shard = writer.close()
            files[stream] = ShardFile(path, shard.tokens, shard.bytes, shard.sha256)
        pieces = {}  # book -> (first chunk, chunks) in this shard
        for b, c, _, _ in chunks:
            pieces[b] = (pieces.get(b, (c, 0))[0], pieces.get(b, (c, 0))[1] + 1)
        entries = [dataclasses.replace(books[b], first_chunk=first, shard_chunks=count, held_out=held[books[b].id])
                   for b, (first, count) in pieces.items()]
        split = [s for b, _, first, slots in chunks for s in split_span(first, slots, held[f"book{b}"])]
        manifest.shards.append(ShardEntry(part, len(chunks), sum(s.frames for s in split if s.split == "train"),
                                          sum(s.frames for s in split if s.split == "val"), files,
                                          write_book_index(out, part, entries)))
    manifest.save(out / "manifest.json")
    return out


def _chunk_codes(stream: str, codes: str, rng: np.random.Generator, book: int, chunk: int, first_slot: int, slots: int,
                 n_codebooks: int, semantic_k: int) -> np.ndarray:
    """One chunk of one stream: acoustic int16 [n_codebooks, 3 * slots], semantic int16 [2 * slots]."""
    if stream == "semantic":
        if codes == "random":
            return rng.integers(0, min(16, semantic_k), 2 * slots, dtype=np.int16)
        return (4096 * book + np.arange(2 * first_slot, 2 * (first_slot + slots))).astype(np.int16)
    if codes == "random":  # few codes: learnable in a few steps
        return rng.integers(0, 16, (n_codebooks, 3 * slots), dtype=np.int16)
    at = np.arange(3 * first_slot, 3 * (first_slot + slots))
    return np.stack([at % 1024, at // 1024, np.full_like(at, book), np.full_like(at, chunk)][:n_codebooks]).astype(np.int16)


@pytest.fixture(scope="session")
def token_folder(tmp_path_factory) -> Path:
    """2 recordings x 20 s of random 4-codebook tokens (config_hash "test-tokens"), 2 chunks per shard."""
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


# --- reading a token folder's book index (tests) ---------------------------------------------------

def folder_books(folder: str | Path) -> list[BookEntry]:
    """Every book of a token folder once, in plan order (its first piece's line)."""
    return list(Manifest.load(folder).iter_books(folder))


def shard_books(folder: str | Path) -> dict[int, list[str]]:
    """Shard index -> the ids of the books it holds, in chunk order."""
    manifest = Manifest.load(folder)
    return {s.index: [b.id for b in manifest.book_index(folder, s)] for s in manifest.shards}


def book_shards(folder: str | Path) -> dict[str, list[int]]:
    """Book id -> the shards holding its chunks, in chunk order."""
    found: dict[str, list[int]] = {}
    for index, books in shard_books(folder).items():
        for book in books:
            found.setdefault(book, []).append(index)
    return found
