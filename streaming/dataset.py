"""Token shards -> training and validation windows, as a webdataset pipeline behind a DataLoader.

One pipeline per pass: for each planned shard, the tars of every stream the layout reads
(`wds.tarfile_to_samples` each), read in lockstep and joined by sample key -> the chunk parts of
one split, cut on the 40 ms slot grid -> `layout.pack` -> one continuous token stream -> windows
(`layout.cut`, `layout.to_window`) (-> shuffle buffer, for training). The stream crosses chunk
boundaries: consecutive chunks of a book are exact consecutive slices of its tokens, so they are
joined, and everything else (the next recording, a gap, a validation window cut out of a book) is
packed behind one boundary unit. Windows are cut every block_size tokens (rounded to whole units),
so nearly every token lands in a window once per epoch.

Every (rank, worker) slot of a run reads its own share of the shards; training loops over epochs
without end, so ranks that were dealt fewer tokens never starve or hang. Several token folders
(`data.mix`) each run such a pipeline, and every training window is drawn from one of them in
proportion to its weight. Each training window carries its worker's position (streaming/position.py),
so a resumed run reads on exactly where it stopped. Validation windows are read once and kept in memory.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, NamedTuple, NoReturn
from urllib.parse import urlparse

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_expander

from narrator.errors import NarratorError
from narrator.streaming.config import DataConfig
from narrator.streaming.layout import LAYOUTS, SLOT_FRAMES, Layout, StreamShape, make_layout
from narrator.streaming.position import MIX_BLOCK, DataDeal, DataPosition, SourcePosition, WorkerPosition
from narrator.tokenfolder.split import held_out_slots, split_span
from narrator.tokenfolder import storage
from narrator.tokenfolder.manifest import ACOUSTIC, MANIFEST_NAME, SLOT_SECONDS, Manifest, read_shard_books, token_folder
from narrator.tokenfolder.shards import ChunkRecord, decode_npy

REMOTE_SCHEMES = ("http", "https")  # opened by webdataset's gopen with curl (no shell)


def data_vocab(cfg: DataConfig, manifest: Manifest, where: str | Path = MANIFEST_NAME) -> tuple[Layout, int]:
    """The layout this data is read with and its vocabulary size (stream ids + special tokens), for checking a model.

    Refuses a layout that needs a stream the token folder lacks, or a stream off the 40 ms slot grid.
    """
    needed = LAYOUTS.get(cfg.layout)
    if needed is None:
        make_layout(cfg.layout, {})  # the one-line "unknown layout" error
    present = [s.name for s in manifest.streams]
    missing = [s for s in needed if s not in present]
    if missing:
        raise NarratorError(f"{where}: layout {cfg.layout!r} reads the {' and '.join(missing)} stream, which this "
                            f"token folder lacks (streams: {', '.join(present) or 'none'}); tokenize it first")
    shapes = {}
    for name in needed:
        info = manifest.stream(name, where)
        if abs(info.frame_rate * SLOT_SECONDS - SLOT_FRAMES[name]) > 1e-6:
            raise NarratorError(f"{where}: stream {name!r} has {info.frame_rate:g} frames/s, not {SLOT_FRAMES[name]} "
                                f"per {SLOT_SECONDS:g} s slot ({SLOT_FRAMES[name] / SLOT_SECONDS:g}/s)")
        try:
            shapes[name] = StreamShape(name, info.n_codebooks, info.codebook_size)
        except ValueError as e:
            raise NarratorError(f"{where}: stream {name!r}: {e}") from None
    layout = make_layout(cfg.layout, shapes, shared_vocab=cfg.shared_vocab, dedup_semantic=cfg.dedup_semantic)
    return layout, layout.vocab_size


def open_folder(path: str | Path) -> tuple[Manifest, Path | storage.URL]:
    """A token folder (or its manifest.json), local or at a URL -> its manifest and the folder its paths
    are relative to."""
    return Manifest.load(path), token_folder(path)


def open_sources(cfg: DataConfig, folders: Sequence[tuple[Manifest, Path]]) -> list[TokenShards]:
    """The checked shards of each token folder of `cfg.sources` (opened by `open_folder`), with its index and weight.

    A mix must be one kind of tokens: every folder has the streams the layout reads, made with the
    same config and weights as the first folder's.
    """
    first, first_dir = folders[0]
    shards = []
    for i, ((manifest, folder), source) in enumerate(zip(folders, cfg.sources, strict=True)):
        opened = TokenShards.open(cfg, manifest, folder)
        for stream in opened.layout.streams:
            mine, theirs = manifest.stream(stream), first.stream(stream)
            if (mine.config_hash, mine.weights.sha256) != (theirs.config_hash, theirs.weights.sha256):
                raise NarratorError(f"{storage.join(folder, MANIFEST_NAME)}: its {stream} tokens were made with "
                                    f"another config or weights (config_hash {mine.config_hash}, weights {mine.weights.sha256[:12]}) than "
                                    f"{storage.join(first_dir, MANIFEST_NAME)}'s ({theirs.config_hash}, "
                                    f"{theirs.weights.sha256[:12]}); a mix must be one kind of tokens")
        shards.append(dataclasses.replace(opened, source=i, weight=source.weight))
    return shards


def shard_urls(manifest: Manifest, manifest_dir: Path | storage.URL, stream: str,
               allow_outside_root: bool = False) -> list[str]:
    """One stream's shards, in plan order, as paths or URLs to open, refusing missing, truncated or unsafe ones.

    A shard's path must be a name inside the token folder (`storage.escape`), unless `allow_outside_root`:
    then absolute paths and http(s) URLs are read too. Shards in the token folder (local, or at its URL:
    one listing per shard folder) are checked against the manifest's byte counts here; http(s) shards only when read.
    """
    folder = storage.root(manifest_dir)
    where = folder / MANIFEST_NAME
    listings: dict[str, dict[str, int]] = {}  # a URL folder's shard folder -> its files' sizes
    if manifest.pending:
        raise NarratorError(f"{where}: tokenization is incomplete ({len(manifest.pending)} shard files pending); "
                            "rerun narrator tokenize")
    if not manifest.shards:
        raise NarratorError(f"{where}: the manifest lists no shards")
    urls = []
    for shard in manifest.shards:
        if stream not in shard.files:
            raise NarratorError(f"{where}: shard {shard.index} has no {stream!r} file (streams there: "
                                f"{', '.join(shard.files) or 'none'}); tokenize that stream first")
        entry = shard.files[stream]
        scheme = urlparse(entry.path).scheme
        if entry.path.startswith("pipe:"):
            raise NarratorError(f"{where}: shard {entry.path!r} is a pipe: URL; "
                                "narrator never runs commands a manifest names")
        if scheme not in ("", "file", *REMOTE_SCHEMES):
            raise NarratorError(f"{where}: shard {entry.path!r} has an unsupported URL scheme {scheme!r} "
                                "(local paths and http(s) only)")
        outside = storage.escape(folder, entry.path)
        if outside and not allow_outside_root:
            raise NarratorError(outside_root_error(where, f"shard {shard.index}'s {stream} file", entry.path, outside,
                                                   folder))
        if scheme in REMOTE_SCHEMES:
            urls.append(entry.path)
            continue
        path = folder / (urlparse(entry.path).path if scheme == "file" else entry.path)
        if storage.is_url(path):
            if path.parent not in listings:
                listings[path.parent] = storage.list_sizes(path.parent)
            sizes = listings[path.parent]
            if path.name not in sizes:
                raise NarratorError(f"{path}: shard listed in {where} is missing")
            if sizes[path.name] != entry.bytes:
                raise NarratorError(f"{path}: shard is {sizes[path.name]} bytes but {where} says {entry.bytes} "
                                    "(truncated or rewritten; re-run tokenize)")
            urls.append(str(path))
            continue
        if not path.is_file():
            raise NarratorError(f"{path}: shard listed in {where} is missing")
        size = path.stat().st_size
        if size != entry.bytes:
            raise NarratorError(f"{path}: shard is {size} bytes but {where} says {entry.bytes} "
                                "(truncated or rewritten; re-run tokenize)")
        urls.append(str(path.resolve()))
    return urls


def outside_root_error(where: str | Path, what: str, rel: str, why: str, folder: Path | storage.URL) -> str:
    """The one line refusing a manifest entry that lies outside its token folder."""
    return (f"{where}: {what} {rel!r} lies outside the token folder {folder} ({why}); "
            "--set data.allow_outside_root=true reads it anyway")


@dataclass
class EpochCoverage:
    """One epoch's training tokens (boundary frames not counted) and how many landed in some window."""

    epoch: int
    tokens: int
    covered: int
    source: int = 0  # which token folder of data.sources (each has its own epochs)

    @property
    def share(self) -> float:
        return self.covered / self.tokens if self.tokens else 1.0

    def __add__(self, other: "EpochCoverage") -> "EpochCoverage":
        if (other.source, other.epoch) != (self.source, self.epoch):
            raise ValueError(f"cannot add the coverage of source {other.source} epoch {other.epoch} to source "
                             f"{self.source} epoch {self.epoch}")
        return EpochCoverage(self.epoch, self.tokens + other.tokens, self.covered + other.covered, self.source)


@dataclass
class Window:
    """block_size + 1 tokens; a slot's last window of an epoch carries that epoch's coverage.

    A training window also says which DataLoader worker made it and where that worker is after it.
    """

    tokens: np.ndarray
    coverage: EpochCoverage | None = None
    worker: int = 0
    position: WorkerPosition | None = None


class TrainBatch(NamedTuple):
    x: torch.Tensor  # int64 [batch, block_size]
    y: torch.Tensor  # x shifted by one
    coverage: list[EpochCoverage]  # epochs that a slot finished with this batch's windows
    worker: int = 0  # the worker (of DataPosition) that made it
    position: WorkerPosition | None = None  # that worker's position after this batch


@dataclass
class _Piece:
    """A run of consecutive slots of one book, as tokens."""

    book: str
    start: int  # absolute slot in the book
    slots: int
    tokens: np.ndarray


class ShardSource(NamedTuple):
    """One stream's tar of one planned shard, as the loader opens it and the manifest identifies it."""

    url: str  # path or URL to open
    sha256: str  # what reading it to the end must hash to
    bytes: int
    folder: str  # its token folder, for messages


ShardFiles = dict[str, ShardSource]  # one planned shard: stream -> its tar, the reference stream first


@dataclass
class TokenShards:
    """A manifest's checked shards (every stream the layout reads) and what is needed to cut them into windows."""

    where: str  # the manifest file, for messages
    urls: list[ShardFiles]  # per planned shard, in plan order
    shard_samples: list[int]  # chunks per shard, as the manifest says
    book_index: list[tuple[str, str]]  # per shard: its book index file (path or URL) and sha256
    train: list[int]  # the shards (positions in `urls`) that hold training slots
    val: list[int]  # and those that hold held-out slots
    layout: Layout
    val_slots: dict[str, tuple[int, int]] | None = None  # a split re-derived for this run: book -> its held-out slots
    source: int = 0  # its index in data.sources
    weight: float = 1.0  # its share of the training windows, relative to the other sources
    _read: tuple[int, dict[str, tuple[int, int]]] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def open(cls, cfg: DataConfig, manifest: Manifest, manifest_dir: Path) -> "TokenShards":
        """The folder's shards for `cfg`: its own split (each shard's books read from its index when the shard is),
        or another that `cfg` asks for, re-derived over every book of the folder (every index file read here)."""
        where = storage.join(manifest_dir, MANIFEST_NAME)
        layout, _ = data_vocab(cfg, manifest, where)
        # The reference stream's frames say how many slots a chunk has; the others must agree.
        order = sorted(layout.streams, key=lambda s: s != (ACOUSTIC if ACOUSTIC in layout.streams else layout.streams[0]))
        per_stream = {s: shard_urls(manifest, manifest_dir, s, cfg.allow_outside_root) for s in order}
        for stream in order:  # files beside the shards (random weights, k-means) that checkpoints copy
            for rel in manifest.stream(stream, where).files():
                outside = storage.escape(manifest_dir, rel)
                if outside and not cfg.allow_outside_root:
                    raise NarratorError(outside_root_error(where, f"the {stream} stream's file", rel, outside,
                                                           storage.root(manifest_dir)))
        everything = list(range(len(manifest.shards)))
        split = cfg.split_of(manifest.split)
        rederived = None if split == manifest.split else \
            held_out_slots(list(manifest.iter_books(manifest_dir)), split)
        return cls(
            where=str(where),
            urls=[{s: ShardSource(per_stream[s][i], shard.files[s].sha256, shard.files[s].bytes, str(manifest_dir))
                   for s in order} for i, shard in enumerate(manifest.shards)],
            shard_samples=[s.samples for s in manifest.shards],
            book_index=[(str(manifest.index_file(manifest_dir, s)), s.books.sha256) for s in manifest.shards],
            train=everything if rederived else [i for i, s in enumerate(manifest.shards) if s.train_slots],
            val=everything if rederived else [i for i, s in enumerate(manifest.shards) if s.val_slots],
            layout=layout,
            val_slots=rederived,
        )

    def held_out(self, shard: int) -> dict[str, tuple[int, int]]:
        """The held-out slots of the books of shard `shard` (its index file; the last one read is kept)."""
        if self.val_slots is not None:
            return self.val_slots
        if self._read is None or self._read[0] != shard:
            path, sha256 = self.book_index[shard]
            self._read = (shard, {b.id: b.held_out for b in read_shard_books(path, sha256)})
        return self._read[1]

    def stride(self, block_size: int) -> int:
        """Tokens between window starts (`Layout.cut`)."""
        return self.layout.cut(block_size).stride

    def token_stream(self, shards: list[int], split: Literal["train", "val"],
                     keep: slice = slice(None)) -> Iterator[np.ndarray]:
        """The tokens of `split` in `shards` (positions in `urls`), in order, with a boundary unit wherever two
        pieces do not join.

        `keep` selects chunks by position in the shards' concatenated samples.
        """
        chunks = ((i, chunk) for i in shards for chunk in _joined(self.urls[i]))
        last = None  # (book, slot after the previous piece)
        for piece in self._pieces(itertools.islice(chunks, keep.start, keep.stop), split):
            if last is not None and last != (piece.book, piece.start):
                yield self.layout.boundary_unit
            yield piece.tokens
            last = (piece.book, piece.start + piece.slots)

    def _pieces(self, chunks: Iterator[tuple[int, dict[str, dict]]], split: str) -> Iterator[_Piece]:
        """Token runs of `split` from each chunk (cut on the slot grid); its npys are decoded only when it holds one."""
        for shard, samples in chunks:
            records = {stream: self._record(stream, sample) for stream, sample in samples.items()}
            ref, ref_record = next(iter(records.items()))
            url, key = samples[ref]["__url__"], samples[ref]["__key__"]
            fps = SLOT_FRAMES[ref]
            if ref_record.frames % fps:
                raise NarratorError(f"{url}: sample {key} has {ref_record.frames} frames, not whole 40 ms slots of {fps}")
            slots = ref_record.frames // fps
            for stream, record in records.items():
                if record.frames != slots * SLOT_FRAMES[stream]:
                    raise NarratorError(f"{samples[stream]['__url__']}: sample {key} has {record.frames} frames but "
                                        f"{url} has {ref_record.frames} for {slots} slots")
            held_out = self.held_out(shard).get(ref_record.book)
            if held_out is None:
                raise NarratorError(f"{url}: sample {key} belongs to book {ref_record.book!r}, which "
                                    f"{self.book_index[shard][0] if self.val_slots is None else self.where} does not list")
            first = round(ref_record.start_s / SLOT_SECONDS)
            parts = [p for p in split_span(first, slots, held_out) if p.split == split]
            if not parts:
                continue
            frames = {stream: self._frames(stream, samples[stream], records[stream]) for stream in samples}
            for part in parts:
                pieces = {stream: self.layout.infos[stream].array(
                          f[:, part.start * SLOT_FRAMES[stream] : part.end * SLOT_FRAMES[stream]])
                          for stream, f in frames.items()}
                yield _Piece(ref_record.book, part.book_start, part.frames, self.layout.pack(pieces))

    def held_out_counts(self) -> tuple[int, int]:
        """(tokens, slots) of the held-out split as the layout packs it, boundaries left out."""
        tokens = slots = 0
        for piece in self._pieces(((i, chunk) for i in self.val for chunk in _joined(self.urls[i])), "val"):
            tokens, slots = tokens + len(piece.tokens), slots + piece.slots
        return tokens, slots

    @staticmethod
    def _record(stream: str, sample: dict) -> ChunkRecord:
        url, key, field = sample["__url__"], sample["__key__"], f"{stream}.npy"
        if field not in sample or "json" not in sample:
            raise NarratorError(f"{url}: sample {key} lacks '{field}' or 'json' (not a {stream} token shard)")
        try:
            return ChunkRecord(**json.loads(sample["json"]))
        except (ValueError, TypeError) as e:
            raise NarratorError(f"{url}: sample {key} has a malformed json record ({e})") from None

    def _frames(self, stream: str, sample: dict, record: ChunkRecord) -> np.ndarray:
        """The sample's codes as int64 [n_codebooks, frames], refusing a wrong shape or an id out of range."""
        url, key = sample["__url__"], sample["__key__"]
        try:
            codes = decode_npy(sample[f"{stream}.npy"])
        except (ValueError, EOFError) as e:
            raise NarratorError(f"{url}: sample {key} holds an unreadable npy ({e})") from None
        try:
            frames = self.layout.infos[stream].frames(codes)
        except ValueError as e:
            raise NarratorError(f"{url}: sample {key}: {e}") from None
        if frames.shape[1] != record.frames:
            raise NarratorError(f"{url}: sample {key} holds {frames.shape[1]} frames, its json record says {record.frames}")
        return frames

    def windows(self, stream: Iterable[np.ndarray], block_size: int, rotate: int = 0, epoch: int = 0) -> Iterator[Window]:
        """Windows of block_size + 1 tokens cut from `stream` (`Layout.cut`, `Layout.to_window`); the last
        carries the coverage.

        `rotate` > 0 holds the stream's first `rotate` tokens back and cuts them last, behind a
        boundary unit: a different cut every epoch, and still at most one partial window lost.
        """
        boundary = self.layout.boundary_token
        cut = self.layout.cut(block_size)
        cutter = _Cutter(cut.length, cut.stride, boundary)
        held, tokens, last = [], 0, None
        for piece in stream:
            tokens += int(np.count_nonzero(piece != boundary))
            if rotate > 0:
                held.append(piece[:rotate])
                piece, rotate = piece[rotate:], rotate - len(held[-1])
            for window in cutter.feed(piece):
                if last is not None:
                    yield Window(self.layout.to_window(last, block_size))
                last = window
        if held:
            tail = np.concatenate(held)
            for window in cutter.feed(np.concatenate([self.layout.boundary_unit, tail]) if cutter.fed else tail):
                if last is not None:
                    yield Window(self.layout.to_window(last, block_size))
                last = window
        if last is not None:
            yield Window(self.layout.to_window(last, block_size), EpochCoverage(epoch, tokens, cutter.covered, self.source))


def _joined(files: ShardFiles) -> Iterator[dict[str, dict]]:
    """One planned shard's samples, {stream: sample} per chunk, its streams' tars read in lockstep.

    Refuses tars whose keys differ, naming both sides: the streams must hold the same chunks in the same order.
    """
    names = list(files)
    for samples in itertools.zip_longest(*(_tar_samples(files[s]) for s in names)):
        if any(sample is None for sample in samples):
            done = [n for n, sample in zip(names, samples) if sample is None]
            more = next((n, sample) for n, sample in zip(names, samples) if sample is not None)
            raise NarratorError(f"{files[done[0]].url}: ends before {files[more[0]].url}, which goes on with sample "
                                f"{more[1]['__key__']} (the streams' shards must hold the same chunks)")
        keys = [sample["__key__"] for sample in samples]
        for name, sample_key in zip(names[1:], keys[1:]):
            if sample_key != keys[0]:
                raise NarratorError(f"{files[name].url}: sample {sample_key} where {files[names[0]].url} has sample "
                                    f"{keys[0]} (the streams' shards must hold the same chunks in the same order)")
        yield dict(zip(names, samples))


def _tar_samples(shard: ShardSource) -> Iterator[dict]:
    """The samples of one tar, its sha256 checked against the manifest's once it has been read to the end.

    The bytes are hashed as webdataset reads them (no second read), so a shard changed after tokenize
    is refused when read: after its samples were yielded, before the next shard's. A shard left
    part-read (a slot's share ends inside it) is not checked. Any read error ends the run with one
    line naming it. Registers the fsspec opener for the URL's scheme here, in the process that reads
    (DataLoader workers included).
    """
    url = shard.url
    storage.register_webdataset_schemes(url)
    handler = functools.partial(_fail, url)
    try:
        raw = gopen(url)
    except Exception as e:  # noqa: BLE001 - gopen's handlers raise OSError, ValueError, botocore errors, ...
        handler(e)
    with raw:
        reader = _HashingReader(raw)
        files = tar_file_expander(iter([{"url": url, "stream": reader}]), handler=handler)
        yield from group_by_keys(files, handler=handler)
        reader.drain()  # tar's end-of-archive blocks and record padding: the hash covers every byte
    if (reader.sha256.hexdigest(), reader.bytes) != (shard.sha256, shard.bytes):
        found = reader.sha256.hexdigest()
        raise NarratorError(f"shard {url}: sha256 mismatch (manifest says {shard.sha256[:12]}..., read {found[:12]}... "
                            f"in {reader.bytes:,} bytes): the file changed after tokenize; "
                            f"narrator inspect --verify {shard.folder} lists every bad shard")


class _HashingReader:
    """A read-only byte stream that feeds everything read through it to sha256."""

    def __init__(self, raw: IO[bytes]):
        self.raw, self.sha256, self.bytes = raw, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha256.update(data)
        self.bytes += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


class _Cutter:
    """Cuts windows of `length` tokens every `stride` tokens from a stream fed piece by piece, in O(length) memory.

    Counts the stream's non-boundary tokens that land in a window (a token shared by two windows once).
    """

    def __init__(self, length: int, stride: int, boundary: int):
        self.length, self.stride, self.boundary = length, stride, boundary
        self.buffer = np.empty(0, np.int64)
        self.position = 0  # stream position of buffer[0]
        self.covered_until = 0  # stream position after the last token counted as covered
        self.covered = 0
        self.fed = False

    def feed(self, piece: np.ndarray) -> Iterator[np.ndarray]:
        if not len(piece):
            return
        self.fed = True
        self.buffer = np.concatenate([self.buffer, piece]) if len(self.buffer) else piece
        while len(self.buffer) >= self.length:
            window = self.buffer[: self.length].copy()
            fresh = window[max(0, self.covered_until - self.position):]
            self.covered += int(np.count_nonzero(fresh != self.boundary))
            self.covered_until = self.position + self.length
            yield window
            self.buffer, self.position = self.buffer[self.stride:], self.position + self.stride


def _fail(url: str, exn: Exception) -> NoReturn:
    """tarfile_to_samples' handler: any read error ends the run, naming the shard it came from."""
    if isinstance(exn, OSError) and exn.strerror:
        detail = exn.strerror
    else:  # webdataset appends " @ <file object>" and extra args; keep the reason only
        detail = str(exn.args[0]).split(" @ ")[0] if exn.args else type(exn).__name__
    raise NarratorError(f"shard {url} is truncated or corrupt: {detail}") from None


def _pairs(windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows [batch, block_size + 1] -> (x, y) int64 [batch, block_size], y = x shifted by one."""
    w = torch.from_numpy(windows.astype(np.int64))
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def _collate_train(windows: list[Window]) -> TrainBatch:
    x, y = _pairs(np.stack([w.tokens for w in windows]))
    return TrainBatch(x, y, [w.coverage for w in windows if w.coverage is not None], windows[-1].worker,
                      windows[-1].position)


def _collate_val(windows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    return _pairs(np.stack(windows))


def slot_plan(shard_samples: list[int], seed: int, epoch: int, slot: int, slots: int) -> tuple[list[int], slice]:
    """Which shards a (rank, worker) slot reads in `epoch`, in order, and which of their chunks it keeps.

    All slots shuffle the shard list identically, so their shares partition it: with at least as
    many shards as slots each slot takes every slots-th shard; with fewer, slot k keeps the k-th of
    `slots` contiguous runs of chunks (so its books stay continuous) and reads only the shards that
    hold them; with fewer chunks than slots, each slot keeps everything.
    """
    order = [int(i) for i in np.random.default_rng([seed, epoch]).permutation(len(shard_samples))]
    if len(shard_samples) >= slots:
        return order[slot::slots], slice(None)
    total = sum(shard_samples)
    if total < slots:
        return order, slice(None)
    lo, hi = slot * total // slots, (slot + 1) * total // slots
    picked, first, position = [], 0, 0
    for i in order:
        end = position + shard_samples[i]
        if end > lo and position < hi:
            first = first if picked else position
            picked.append(i)
        position = end
    return picked, slice(lo - first, hi - first)


class TrainWindows(IterableDataset):
    """Endless shuffled training windows of block_size + 1 tokens for one rank, from `start` on.

    Deterministic for a given (seed, rank, worker, epoch). A slot whose share of an epoch yields no
    window (too few tokens) reads every shard from then on: duplicate data beats a hung rank. The
    token folder of data.sources[i] is shuffled with seed + i.
    """

    def __init__(self, shards: TokenShards, block_size: int, rank: int, world_size: int, workers: int,
                 seed: int, shuffle_buffer: int, start: DataPosition | None = None):
        if block_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need block_size >= 1 and 0 <= rank < world_size, got {block_size}, {rank}, {world_size}")
        self.shards = shards
        self.block_size = block_size
        self.rank, self.world_size, self.workers = rank, world_size, max(1, workers)
        self.seed = seed + shards.source
        self.shuffle_buffer = shuffle_buffer
        self.start = start

    def __iter__(self) -> Iterator[Window]:
        worker, start = _worker_start(self.start, self.workers)
        for window, position in self.stream(worker, start.sources[0] if start else SourcePosition()):
            window.worker, window.position = worker, WorkerPosition((position,))
            yield window

    def stream(self, worker: int, start: SourcePosition) -> Iterator[tuple[Window, SourcePosition]]:
        """The worker's windows from `start` on, each with the worker's position after it.

        Resuming inside an epoch replays that epoch (the same cut, the same shuffle) and drops the
        windows already handed out: what comes next is what an uninterrupted run would give.
        """
        slot, slots = self.rank * self.workers + worker, self.world_size * self.workers
        read_all, skip = start.read_all, start.windows
        for epoch in itertools.count(start.epoch):
            found = skip
            for window in itertools.islice(self.epoch(epoch, worker, slot, slots, read_all), skip, None):
                found += 1
                yield window, SourcePosition(epoch, found, read_all)
            if found == 0 and read_all:
                raise NarratorError(f"{self.shards.where}: the training tokens fill no window of {self.block_size + 1} "
                                    "tokens; lower block_size")
            read_all, skip = read_all or found == 0, 0

    def epoch(self, epoch: int, worker: int, slot: int, slots: int, read_all: bool = False) -> Iterator[Window]:
        """One pass over this slot's share (or over everything, when `read_all`)."""
        train = self.shards.train
        if read_all:
            slot, slots = 0, 1
        order, keep = slot_plan([self.shards.shard_samples[i] for i in train], self.seed, epoch, slot, slots)
        rng = np.random.default_rng([self.seed, self.rank, worker, epoch])
        unit = self.shards.layout.unit_tokens
        rotate = int(rng.integers(self.shards.stride(self.block_size) // unit)) * unit  # whole units, < one stride
        stream = self.shards.token_stream([train[i] for i in order], "train", keep)
        windows = self.shards.windows(stream, self.block_size, rotate, epoch)
        if self.shuffle_buffer > 1:
            windows = wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, seed=int(rng.integers(2**63)))(windows)
        return iter(windows)


class MixedWindows(IterableDataset):
    """Endless training windows of one rank from several token folders, from `start` on: each window comes
    from folder i with probability weight_i / sum(weights).

    The folder choices are drawn in blocks of MIX_BLOCK, block b by a generator seeded with (seed, rank,
    worker, b), so a run is reproducible and a resumed one draws on where it stopped.
    """

    def __init__(self, parts: Sequence[TrainWindows], seed: int, start: DataPosition | None = None):
        self.parts = list(parts)
        weights = np.array([p.shards.weight for p in self.parts], dtype=np.float64)
        self.p = weights / weights.sum()
        self.seed, self.start = seed, start

    def __iter__(self) -> Iterator[Window]:
        first = self.parts[0]
        worker, start = _worker_start(self.start, first.workers)
        positions = list(start.sources) if start else [SourcePosition()] * len(self.parts)
        streams = [part.stream(worker, at) for part, at in zip(self.parts, positions, strict=True)]
        draws = start.draws if start else 0
        while True:
            block, done = divmod(draws, MIX_BLOCK)
            rng = np.random.default_rng([self.seed, first.rank, worker, block])
            for i in rng.choice(len(streams), size=MIX_BLOCK, p=self.p)[done:]:  # one call per window is slow
                window, positions[i] = next(streams[i])
                draws += 1
                window.worker, window.position = worker, WorkerPosition(tuple(positions), draws)
                yield window


def _worker_start(start: DataPosition | None, workers: int) -> tuple[int, WorkerPosition | None]:
    """The worker (of `start`) this DataLoader worker continues, and where it starts."""
    info = get_worker_info()
    loader_worker = info.id if info is not None else 0
    if start is None:
        return loader_worker, None
    if len(start.workers) != workers:
        raise ValueError(f"a position of {len(start.workers)} workers cannot start a loader of {workers}")
    worker = start.worker(loader_worker)
    return worker, start.workers[worker]


def window_coverage(shards: TokenShards, block_size: int, epoch: int = 0, world_size: int = 1, workers: int = 1,
                    seed: int = 0) -> EpochCoverage:
    """One epoch's coverage over every slot of a run: the training tokens and how many landed in a window."""
    total = EpochCoverage(epoch, 0, 0)
    for rank in range(world_size):
        dataset = TrainWindows(shards, block_size, rank, world_size, workers, seed, shuffle_buffer=0)
        for worker in range(workers):
            for window in dataset.epoch(epoch, worker, rank * workers + worker, world_size * workers):
                if window.coverage is not None:
                    total += window.coverage
    return total


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


def data_deal(cfg: DataConfig, sources: Sequence[TokenShards], world_size: int, seed: int) -> DataDeal:
    """What decides which windows each DataLoader worker of this run reads (see streaming/position.py)."""
    return DataDeal(world_size, max(1, cfg.num_workers), seed, cfg.shuffle_buffer,
                    tuple(len(s.train) for s in sources))


def build_train_loader(cfg: DataConfig, sources: Sequence[TokenShards], block_size: int, batch_size: int,
                       rank: int, world_size: int, seed: int, start: DataPosition | None = None) -> DataLoader:
    """Endless TrainBatch(x, y, coverage, worker, position) for this rank from one token folder or a weighted
    mix, from `start` (this rank's position of a run with the same `data_deal`) on: x, y int64
    [batch_size, block_size]; shards reshuffle every epoch.

    The loader already splits data by rank: do not pass it through `accelerator.prepare`.
    """
    if start is not None and start.deal != data_deal(cfg, sources, world_size, seed):
        raise ValueError(f"the position's data deal {start.deal} is not this loader's")
    parts = [TrainWindows(shards, block_size, rank, world_size, cfg.num_workers, seed, cfg.shuffle_buffer, start)
             for shards in sources]
    dataset = parts[0] if len(parts) == 1 else MixedWindows(parts, seed, start)
    # A generator of its own: the loader draws a seed for its workers from it, not from the global torch RNG,
    # which a resumed run restores for dropout and which must not move when a loader starts.
    return _Loader(dataset, batch_size=batch_size, collate_fn=_collate_train, num_workers=cfg.num_workers,
                   persistent_workers=cfg.num_workers > 0, pin_memory=torch.cuda.is_available(),
                   generator=torch.Generator().manual_seed(seed))


def val_windows(sources: TokenShards | Sequence[TokenShards], block_size: int, rank: int, world_size: int) -> np.ndarray:
    """This rank's validation windows [n, block_size + 1] of every source, in a fixed order.

    Rank r keeps windows i % world_size == r; when there are fewer windows than ranks, all of them.
    """
    sources = [sources] if isinstance(sources, TokenShards) else list(sources)
    windows = [w.tokens for shards in sources for w in shards.windows(shards.token_stream(shards.val, "val"), block_size)]
    if not windows:
        where = " and ".join(s.where for s in sources)
        raise NarratorError(f"{where}: the held-out tokens fill no validation window of {block_size + 1} "
                            "tokens; raise data.val_fraction or lower block_size")
    if len(windows) >= world_size:
        windows = windows[rank::world_size]
    return np.stack(windows).astype(np.int32)


def val_tokens_per_second(sources: Sequence[TokenShards]) -> float:
    """Tokens per second of held-out audio as the sources' layout packs it, boundaries left out: the token rate of
    a layout that has no fixed one (data.dedup_semantic), for bits per second."""
    counts = np.array([shards.held_out_counts() for shards in sources]).sum(0)
    tokens, slots = int(counts[0]), int(counts[1])
    if not slots:
        raise NarratorError(f"{' and '.join(s.where for s in sources)}: no held-out tokens")
    return tokens / (slots * SLOT_SECONDS)


def build_val_loader(sources: Sequence[TokenShards], block_size: int, batch_size: int, rank: int,
                     world_size: int) -> DataLoader:
    """Finite (x, y) batches over this rank's validation windows, identical on every iteration.

    The windows are read once, here, and held in memory (int32), so repeated evaluations cost no I/O.
    """
    windows = val_windows(sources, block_size, rank, world_size)
    return DataLoader(windows, batch_size=batch_size, shuffle=False, collate_fn=_collate_val,
                      generator=torch.Generator())  # leaves the global torch RNG (dropout's) alone
