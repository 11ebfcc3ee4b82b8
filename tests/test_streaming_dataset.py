"""The streaming pipeline on small token folders whose codes encode their own position.

Code layout of the fixture (4 codebooks): c0 = frame % 1024, c1 = frame // 1024 (absolute frame
in the book), c2 = book index, c3 = chunk index; so every window tells where it came from.
"""

import itertools
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from narrator.errors import NarratorError
from narrator.streaming.config import DataConfig
from narrator.streaming.dataset import (TokenShards, TrainWindows, build_train_loader, build_val_loader, data_vocab,
                                        shard_urls)
from narrator.streaming.layout import FlatLayout
from narrator.streaming.split import split_chunk, val_window
from narrator.tokenizers.manifest import BookEntry, Manifest, ShardEntry, TokenizerInfo, WeightsIdentity
from narrator.tokenizers.shards import ChunkRecord, ShardWriter

FRAME_RATE = 75
CHUNK_FRAMES = 150  # 2 s chunks
BLOCK = 63  # windows of 64 tokens = 16 frames
LAYOUT = FlatLayout(4)


def write_tokens(out: Path, book_chunks: list[int], chunks_per_shard: int = 4) -> Manifest:
    """A token folder with one book per entry of `book_chunks` (its chunk count) and its manifest."""
    tok = TokenizerInfo(kind="encodec", stream="encodec", sample_rate=24000, frame_rate=FRAME_RATE, bandwidth=3.0,
                        n_codebooks=4, codebook_size=1024, config={}, config_hash="test",
                        weights=WeightsIdentity(mode="random", source="random-init seed=0", sha256="0", seed=0))
    manifest = Manifest(tokenizer=tok)
    for b, n_chunks in enumerate(book_chunks):
        book, names = f"book{b}", []
        for part, first in enumerate(range(0, n_chunks, chunks_per_shard)):
            names.append(f"shards/{book}-{part:05d}.tar")
            with ShardWriter(out / names[-1]) as writer:
                for c in range(first, min(first + chunks_per_shard, n_chunks)):
                    frames = np.arange(c * CHUNK_FRAMES, (c + 1) * CHUNK_FRAMES)
                    codes = np.stack([frames % 1024, frames // 1024, np.full_like(frames, b), np.full_like(frames, c)])
                    writer.write(ChunkRecord(book, c, c * CHUNK_FRAMES / FRAME_RATE, (c + 1) * CHUNK_FRAMES / FRAME_RATE,
                                             CHUNK_FRAMES, "encodec"), codes)
                shard = writer.close()
            manifest.shards.append(ShardEntry(names[-1], book, shard.samples, shard.tokens, shard.bytes, shard.sha256))
        manifest.books.append(BookEntry(book, f"{book}.wav", n_chunks * CHUNK_FRAMES / FRAME_RATE,
                                        n_chunks * CHUNK_FRAMES, n_chunks, names))
    manifest.save(out / "manifest.json")
    return manifest


def origin(window) -> tuple[int, int, np.ndarray]:
    """(book, chunk, absolute frames) of a window that starts on a frame boundary."""
    codes = LAYOUT.to_codes(np.asarray(window))
    books, chunks = set(codes[2].tolist()), set(codes[3].tolist())
    assert len(books) == 1 and len(chunks) == 1, "a window crossed a chunk"
    frames = codes[0] + 1024 * codes[1]
    assert np.array_equal(frames, np.arange(frames[0], frames[0] + len(frames))), "a window skipped frames"
    return books.pop(), chunks.pop(), frames


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging if a loader never yields."""
    def fail(*_):
        raise TimeoutError(f"no data within {seconds} s")
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


BOOKS = [10, 7, 5]  # chunks per book: 7 uneven shards of up to 4 chunks


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, Manifest]:
    out = tmp_path_factory.mktemp("tokens")
    return out, write_tokens(out, BOOKS)


def cfg(**kw) -> DataConfig:
    return DataConfig(**{"manifest": "unused", "val_fraction": 0.1, "shuffle_buffer": 32, "num_workers": 0, **kw})


def book_windows(book_chunks: list[int] = BOOKS) -> dict[int, tuple[int, int]]:
    return {b: val_window(n * CHUNK_FRAMES, 0.5, 0.1) for b, n in enumerate(book_chunks)}


def train_chunks(book_chunks: list[int] = BOOKS) -> set[tuple[int, int]]:
    """Chunks holding at least one train segment long enough for a window."""
    out = set()
    for b, n in enumerate(book_chunks):
        window = book_windows(book_chunks)[b]
        for c in range(n):
            rec = ChunkRecord(f"book{b}", c, c * CHUNK_FRAMES / FRAME_RATE, 0, CHUNK_FRAMES, "encodec")
            if any(s.split == "train" and s.frames >= 16 for s in split_chunk(rec, FRAME_RATE, window)):
                out.add((b, c))
    return out


def test_data_vocab_follows_the_manifest(folder):
    _, manifest = folder
    assert data_vocab(cfg(), manifest)[1] == 4096
    assert data_vocab(cfg(shared_vocab=True), manifest)[1] == 1024


def test_train_batches_are_shifted_windows_that_never_touch_the_val_window(folder):
    loader = build_train_loader(cfg(), folder[1], folder[0], BLOCK, batch_size=8, rank=0, world_size=1, seed=1)
    it = iter(loader)
    seen = set()
    for _ in range(60):  # 480 windows: several epochs of the ~200 train windows
        x, y = next(it)
        assert x.shape == y.shape == (8, BLOCK) and x.dtype == y.dtype == torch.int64
        assert (x[:, 1:] == y[:, :-1]).all()
        for row_x, row_y in zip(x.numpy(), y.numpy()):
            book, chunk, frames = origin(np.concatenate([row_x, row_y[-1:]]))
            start, end = book_windows()[book]
            assert frames[-1] < start or frames[0] >= end, f"book{book} {frames[0]}..{frames[-1]} in val [{start}, {end})"
            seen.add((book, chunk))
    assert seen == train_chunks()


@pytest.mark.parametrize("book_chunks", [BOOKS, [6]], ids=["7-shards", "1-shard"])
def test_uneven_shards_over_2_ranks_x_2_workers_partition_the_train_chunks(tmp_path, book_chunks):
    manifest = write_tokens(tmp_path, book_chunks, chunks_per_shard=4 if len(book_chunks) > 1 else 8)
    shards = TokenShards.open(cfg(), manifest, tmp_path)
    for epoch in range(3):
        shares = []
        for rank in range(2):
            ds = TrainWindows(shards, BLOCK, rank, 2, workers=2, seed=5, shuffle_buffer=8)
            for worker in range(2):
                share = {origin(w)[:2] for w in ds.epoch(epoch, worker, slot=rank * 2 + worker, slots=4)}
                assert share, f"rank {rank} worker {worker} got no data in epoch {epoch}"
                shares.append(share)
        assert sum(len(s) for s in shares) == len(set().union(*shares)), "two slots read the same chunk"
        assert set().union(*shares) == train_chunks(book_chunks)
    fallback = TrainWindows(shards, BLOCK, 1, 2, workers=2, seed=5, shuffle_buffer=8).epoch(0, 1, 3, 4, read_all=True)
    assert {origin(w)[:2] for w in fallback} == train_chunks(book_chunks)  # a starved slot's fallback reads it all


def test_real_loaders_on_2_ranks_with_2_workers_all_yield(folder):
    with deadline(120):
        for rank in range(2):
            loader = build_train_loader(cfg(num_workers=2), folder[1], folder[0], BLOCK, 4, rank, 2, seed=3)
            it = iter(loader)
            batches = [next(it) for _ in range(6)]  # workers take turns: 3 batches from each
            assert all(x.shape == (4, BLOCK) for x, _ in batches)
            del it, loader


def test_same_seed_same_order_other_seed_other_order(folder):
    def first_batches(seed):
        it = iter(build_train_loader(cfg(), folder[1], folder[0], BLOCK, 8, 0, 1, seed=seed))
        return np.concatenate([next(it)[0].numpy() for _ in range(5)])

    a = first_batches(7)
    assert np.array_equal(a, first_batches(7))
    assert not np.array_equal(a, first_batches(8))


def test_epoch_offset_resumes_at_that_epoch(folder):
    shards = TokenShards.open(cfg(), folder[1], folder[0])
    ds = TrainWindows(shards, BLOCK, 0, 1, workers=1, seed=2, shuffle_buffer=8)
    epoch1 = [w.tolist() for w in ds.epoch(1, 0, 0, 1)]
    resumed = TrainWindows(shards, BLOCK, 0, 1, workers=1, seed=2, shuffle_buffer=8, epoch_offset=1)
    assert [w.tolist() for w in itertools.islice(resumed, len(epoch1))] == epoch1
    assert epoch1 != [w.tolist() for w in ds.epoch(0, 0, 0, 1)]


def test_val_loader_is_deterministic_and_holds_only_val_frames(folder):
    loader = build_val_loader(cfg(), folder[1], folder[0], BLOCK, batch_size=4, rank=0, world_size=1)
    first = [(x.clone(), y.clone()) for x, y in loader]
    second = list(loader)
    assert len(first) == len(second) > 0
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(first, second))
    for x, y in first:
        for row_x, row_y in zip(x.numpy(), y.numpy()):
            book, _, frames = origin(np.concatenate([row_x, row_y[-1:]]))
            start, end = book_windows()[book]
            assert start <= frames[0] and frames[-1] < end


def test_val_windows_are_shared_between_ranks(folder):
    def rows(rank, world_size):
        loader = build_val_loader(cfg(), folder[1], folder[0], BLOCK, 100, rank, world_size)
        return [r.tolist() for x, _ in loader for r in x]

    everything = rows(0, 1)
    halves = rows(0, 2), rows(1, 2)
    assert sorted(halves[0] + halves[1]) == sorted(everything)
    assert not set(map(tuple, halves[0])) & set(map(tuple, halves[1]))
    assert rows(3, len(everything) + 1) == everything  # fewer windows than ranks: every rank uses all


def test_no_window_fits_is_an_error_not_a_hang(folder):
    shards = TokenShards.open(cfg(), folder[1], folder[0])
    with deadline(60), pytest.raises(NarratorError, match="no training window"):
        next(iter(TrainWindows(shards, 4 * CHUNK_FRAMES, 0, 1, workers=1, seed=0, shuffle_buffer=8)))
    with pytest.raises(NarratorError, match="no validation window"):
        build_val_loader(cfg(), folder[1], folder[0], 4 * CHUNK_FRAMES, 4, 0, 1)


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


def test_missing_or_truncated_shard_is_named(tmp_path):
    manifest = write_tokens(tmp_path, [3])
    shard = tmp_path / manifest.shards[0].path
    shard.write_bytes(shard.read_bytes()[:-1000])
    with pytest.raises(NarratorError, match="truncated") as e:
        build_train_loader(cfg(), manifest, tmp_path, BLOCK, 4, 0, 1, seed=0)
    assert str(shard) in one_line(e)
    shard.unlink()
    with pytest.raises(NarratorError, match="missing") as e:
        shard_urls(manifest, tmp_path)
    assert str(shard) in one_line(e)


def test_corrupt_shard_while_streaming_is_one_line_naming_it(tmp_path):
    manifest = write_tokens(tmp_path, [3])
    shard = tmp_path / manifest.shards[0].path
    data = bytearray(shard.read_bytes())
    data[:512] = b"\x07" * 512  # same size, so only reading it finds the damage
    shard.write_bytes(bytes(data))
    loader = build_train_loader(cfg(num_workers=1), manifest, tmp_path, BLOCK, 4, 0, 1, seed=0)
    with deadline(60), pytest.raises(NarratorError, match="truncated or corrupt") as e:
        next(iter(loader))
    assert one_line(e).startswith(f"shard {shard.resolve()} is truncated or corrupt")


def test_pipe_and_unknown_urls_are_refused(tmp_path):
    manifest = write_tokens(tmp_path, [2])
    marker = tmp_path / "ran"
    manifest.shards[0].path = f"pipe:touch {marker}"
    with pytest.raises(NarratorError, match="pipe: URL") as e:
        build_train_loader(cfg(), manifest, tmp_path, BLOCK, 4, 0, 1, seed=0)
    assert str(tmp_path / "manifest.json") in one_line(e) and not marker.exists()
    manifest.shards[0].path = "s3://bucket/x.tar"
    with pytest.raises(NarratorError, match="unsupported URL scheme"):
        shard_urls(manifest, tmp_path)
    manifest.shards[0].path = "https://example.org/x.tar"  # remote shards pass through, checked when read
    assert shard_urls(manifest, tmp_path)[0] == "https://example.org/x.tar"
