"""Token shards -> training and validation windows, as a webdataset pipeline behind a DataLoader.

One pipeline per pass: shard source -> `wds.tarfile_to_samples` -> chunk segments of one split ->
windows of block_size + 1 tokens (-> shuffle buffer, for training). Every (rank, worker) slot of a
run reads its own share of the shards; training loops over epochs without end, so ranks that were
dealt fewer tokens never starve or hang. Validation windows are read once and kept in memory.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NoReturn
from urllib.parse import urlparse

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from narrator.errors import NarratorError
from narrator.streaming.config import DataConfig
from narrator.streaming.layout import Layout, make_layout
from narrator.streaming.split import split_chunk, val_window
from narrator.tokenizers.manifest import MANIFEST_NAME, Manifest
from narrator.tokenizers.shards import ChunkRecord, decode_npy

REMOTE_SCHEMES = ("http", "https")  # opened by webdataset's gopen with curl (no shell)


def data_vocab(cfg: DataConfig, manifest: Manifest) -> tuple[Layout, int]:
    """The layout this data is read with and its vocabulary size, for checking a model against the data."""
    tok = manifest.tokenizer
    layout = make_layout(cfg.layout, tok.n_codebooks, tok.codebook_size, cfg.shared_vocab)
    return layout, layout.vocab_size


def shard_urls(manifest: Manifest, manifest_dir: Path) -> list[str]:
    """The manifest's shards as paths or URLs to open, refusing missing, truncated or unsafe ones.

    Local shards are checked against the manifest's byte counts here; http(s) shards only when read.
    """
    where = Path(manifest_dir) / MANIFEST_NAME
    if not manifest.shards:
        raise NarratorError(f"{where}: the manifest lists no shards")
    urls = []
    for entry in manifest.shards:
        scheme = urlparse(entry.path).scheme
        if entry.path.startswith("pipe:"):
            raise NarratorError(f"{where}: shard {entry.path!r} is a pipe: URL; "
                                "narrator never runs commands a manifest names")
        if scheme in REMOTE_SCHEMES:
            urls.append(entry.path)
            continue
        if scheme not in ("", "file"):
            raise NarratorError(f"{where}: shard {entry.path!r} has an unsupported URL scheme {scheme!r} "
                                "(local paths and http(s) only)")
        path = Path(manifest_dir) / (urlparse(entry.path).path if scheme == "file" else entry.path)
        if not path.is_file():
            raise NarratorError(f"{path}: shard listed in {where} is missing")
        size = path.stat().st_size
        if size != entry.bytes:
            raise NarratorError(f"{path}: shard is {size} bytes but {where} says {entry.bytes} "
                                "(truncated or rewritten; re-run tokenize)")
        urls.append(str(path.resolve()))
    return urls


@dataclass
class TokenShards:
    """A manifest's checked shards and what is needed to cut their chunks into windows."""

    where: str  # the manifest file, for messages
    urls: list[str]
    samples: int  # chunks over all shards
    stream: str
    frame_rate: float
    layout: Layout
    val_frames: dict[str, tuple[int, int]]  # book id -> its held-out frames [start, end)

    @classmethod
    def open(cls, cfg: DataConfig, manifest: Manifest, manifest_dir: Path) -> "TokenShards":
        layout, _ = data_vocab(cfg, manifest)
        return cls(
            where=str(Path(manifest_dir) / MANIFEST_NAME),
            urls=shard_urls(manifest, manifest_dir),
            samples=sum(s.samples for s in manifest.shards),
            stream=manifest.tokenizer.stream,
            frame_rate=manifest.tokenizer.frame_rate,
            layout=layout,
            val_frames={b.id: val_window(b.frames, cfg.val_center, cfg.val_fraction) for b in manifest.books},
        )

    def pipeline(self, urls: list[str], split: Literal["train", "val"], block_size: int,
                 rng: np.random.Generator | None, keep: slice = slice(None)) -> wds.DataPipeline:
        """Windows of one split from `urls`, in order. `keep` selects chunks by position in the stream;
        `rng` draws where each segment's first window starts (None: at its first frame)."""
        source = _ShardSource(urls)
        return wds.DataPipeline(
            source,
            wds.tarfile_to_samples(handler=source.fail),
            wds.slice(keep.start or 0, None, keep.step or 1),
            lambda samples: self._segments(samples, split),
            lambda segments: _windows(segments, block_size + 1, self.layout.tokens_per_frame, rng),
        )

    def _segments(self, samples: Iterator[dict], split: str) -> Iterator[np.ndarray]:
        """Token runs of `split` from each chunk; a chunk's npy is decoded only when it holds one."""
        field = f"{self.stream}.npy"
        for sample in samples:
            url, key = sample["__url__"], sample["__key__"]
            if field not in sample or "json" not in sample:
                raise NarratorError(f"{url}: sample {key} lacks '{field}' or 'json' (not a {self.stream} token shard)")
            try:
                record = ChunkRecord(**json.loads(sample["json"]))
            except (ValueError, TypeError) as e:
                raise NarratorError(f"{url}: sample {key} has a malformed json record ({e})") from None
            if record.book not in self.val_frames:
                raise NarratorError(f"{url}: sample {key} belongs to book {record.book!r}, which {self.where} does not list")
            parts = [s for s in split_chunk(record, self.frame_rate, self.val_frames[record.book]) if s.split == split]
            if not parts:
                continue
            codes = self._codes(sample[field], record, url, key)
            for part in parts:
                yield self.layout.to_tokens(codes[:, part.start : part.end])

    def _codes(self, data: bytes, record: ChunkRecord, url: str, key: str) -> np.ndarray:
        try:
            codes = decode_npy(data)
        except (ValueError, EOFError) as e:
            raise NarratorError(f"{url}: sample {key} holds an unreadable npy ({e})") from None
        shape = [self.layout.n_codebooks, record.frames]
        if list(codes.shape) != shape or codes.dtype.kind not in "iu":
            raise NarratorError(f"{url}: sample {key} holds {codes.dtype} codes of shape {list(codes.shape)}, "
                                f"expected integers of shape {shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.layout.codebook_size):
            raise NarratorError(f"{url}: sample {key} holds codes outside [0, {self.layout.codebook_size})")
        return codes


class _ShardSource:
    """The pipeline's first stage: yields each shard's URL and remembers which one is being read."""

    def __init__(self, urls: list[str]):
        self.urls = urls
        self.current: str | None = None

    def __call__(self) -> Iterator[dict]:
        for url in self.urls:
            self.current = url
            yield {"url": url}

    def fail(self, exn: Exception) -> NoReturn:
        """tarfile_to_samples' handler: any read error ends the run, naming the shard it came from."""
        if isinstance(exn, OSError) and exn.strerror:
            detail = exn.strerror
        else:  # webdataset appends " @ <file object>" and extra args; keep the reason only
            detail = str(exn.args[0]).split(" @ ")[0] if exn.args else type(exn).__name__
        raise NarratorError(f"shard {self.current} is truncated or corrupt: {detail}") from None


def _windows(segments: Iterator[np.ndarray], length: int, tokens_per_frame: int,
             rng: np.random.Generator | None) -> Iterator[np.ndarray]:
    """Non-overlapping windows of `length` tokens starting on frame boundaries, never leaving a segment.

    Starts are one stride apart (`length` rounded up to whole frames); the first start is a random
    frame below one stride when `rng` is given, else 0. Segments shorter than `length` give none.
    """
    stride = math.ceil(length / tokens_per_frame)  # in frames
    for tokens in segments:
        last = (len(tokens) - length) // tokens_per_frame  # last frame a window may start on
        if last < 0:
            continue
        first = int(rng.integers(min(stride, last + 1))) if rng is not None else 0
        for frame in range(first, last + 1, stride):
            start = frame * tokens_per_frame
            yield tokens[start : start + length]


def _collate(windows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of block_size + 1 tokens -> (x, y) int64 [batch, block_size], y = x shifted by one."""
    w = torch.from_numpy(np.stack(windows).astype(np.int64))
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def slot_plan(n_shards: int, n_samples: int, seed: int, epoch: int, slot: int, slots: int) -> tuple[list[int], slice]:
    """Which shards a (rank, worker) slot reads in `epoch`, in order, and which of their chunks it keeps.

    All slots shuffle the shard list identically, so their shares partition it: with at least as
    many shards as slots each slot takes every slots-th shard; with fewer, each slot reads all of
    them and keeps every slots-th chunk; with fewer chunks than slots, each slot keeps everything.
    """
    order = [int(i) for i in np.random.default_rng([seed, epoch]).permutation(n_shards)]
    if n_shards >= slots:
        return order[slot::slots], slice(0, None, 1)
    if n_samples >= slots:
        return order, slice(slot, None, slots)
    return order, slice(0, None, 1)


class TrainWindows(IterableDataset):
    """Endless shuffled training windows of block_size + 1 tokens for one rank.

    Deterministic for a given (seed, rank, worker, epoch). A slot whose share of an epoch yields no
    window (its chunks too short) reads every shard from then on: duplicate data beats a hung rank.
    """

    def __init__(self, shards: TokenShards, block_size: int, rank: int, world_size: int, workers: int,
                 seed: int, shuffle_buffer: int, epoch_offset: int = 0):
        if block_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need block_size >= 1 and 0 <= rank < world_size, got {block_size}, {rank}, {world_size}")
        self.shards = shards
        self.block_size = block_size
        self.rank, self.world_size, self.workers = rank, world_size, max(1, workers)
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.epoch_offset = epoch_offset

    def __iter__(self) -> Iterator[np.ndarray]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        slot, slots = self.rank * self.workers + worker, self.world_size * self.workers
        read_all = False
        for epoch in itertools.count(self.epoch_offset):
            found = 0
            for window in self.epoch(epoch, worker, slot, slots, read_all):
                found += 1
                yield window
            if found == 0 and read_all:
                raise NarratorError(f"{self.shards.where}: no training window of {self.block_size + 1} tokens fits "
                                    "in any chunk outside the validation windows; lower block_size")
            read_all = read_all or found == 0

    def epoch(self, epoch: int, worker: int, slot: int, slots: int, read_all: bool = False) -> Iterator[np.ndarray]:
        """One pass over this slot's share (or over everything, when `read_all`)."""
        urls = self.shards.urls
        if read_all:
            slot, slots = 0, 1
        order, keep = slot_plan(len(urls), self.shards.samples, self.seed, epoch, slot, slots)
        rng = np.random.default_rng([self.seed, self.rank, worker, epoch])
        windows = self.shards.pipeline([urls[i] for i in order], "train", self.block_size, rng, keep)
        if self.shuffle_buffer > 1:
            windows.append(wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, seed=int(rng.integers(2**63))))
        return iter(windows)


class _Loader(DataLoader):
    """A DataLoader whose worker errors stay one line (torch re-raises them with the worker's traceback)."""

    def __iter__(self):
        try:
            yield from super().__iter__()
        except NarratorError as e:
            lines = str(e).rstrip().splitlines()
            if len(lines) == 1:
                raise
            raise type(e)(lines[-1].split(": ", 1)[-1]) from None  # the traceback ends "module.Error: message"


def build_train_loader(cfg: DataConfig, manifest: Manifest, manifest_dir: Path, block_size: int, batch_size: int,
                       rank: int, world_size: int, seed: int, epoch_offset: int = 0) -> DataLoader:
    """Endless (x, y) int64 batches [batch_size, block_size] for this rank; shards reshuffle every epoch.

    The loader already splits data by rank: do not pass it through `accelerator.prepare`.
    """
    shards = TokenShards.open(cfg, manifest, manifest_dir)
    dataset = TrainWindows(shards, block_size, rank, world_size, cfg.num_workers, seed, cfg.shuffle_buffer, epoch_offset)
    return _Loader(dataset, batch_size=batch_size, collate_fn=_collate, num_workers=cfg.num_workers,
                   persistent_workers=cfg.num_workers > 0, pin_memory=torch.cuda.is_available())


def val_windows(shards: TokenShards, block_size: int, rank: int, world_size: int) -> np.ndarray:
    """This rank's validation windows [n, block_size + 1], in a fixed order.

    Rank r keeps windows i % world_size == r; when there are fewer windows than ranks, all of them.
    """
    windows = list(shards.pipeline(shards.urls, "val", block_size, rng=None))
    if not windows:
        raise NarratorError(f"{shards.where}: no validation window of {block_size + 1} tokens fits in the held-out "
                            "part of any book; raise data.val_fraction or lower block_size")
    if len(windows) >= world_size:
        windows = windows[rank::world_size]
    return np.stack(windows).astype(np.int32)


def build_val_loader(cfg: DataConfig, manifest: Manifest, manifest_dir: Path, block_size: int, batch_size: int,
                     rank: int, world_size: int) -> DataLoader:
    """Finite (x, y) batches over this rank's validation windows, identical on every iteration.

    The windows are read once, here, and held in memory (int32), so repeated evaluations cost no I/O.
    """
    windows = val_windows(TokenShards.open(cfg, manifest, manifest_dir), block_size, rank, world_size)
    return DataLoader(windows, batch_size=batch_size, shuffle=False, collate_fn=_collate)
