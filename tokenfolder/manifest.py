"""manifest.json: what a token folder holds, readable without opening a shard.

This module and shards.py define the on-disk format; the tokenizer writes it and the loader reads
it, and neither imports the other. A token folder holds one or more named token streams (say
`acoustic`: EnCodec codes [K, T] at 75 Hz; `semantic`: k-means ids [1, T] at 50 Hz). Every stream
has its own shard set, `shards/<stream>/<index:06d>.tar`, cut by one shard plan: shard i of every
stream holds the same chunks under the same sample keys, so streams are joined by key when read
and a stream can be added to tokenized books without touching the others. Each stream's entry
identifies exactly how its tokens were made (config, its hash, the weights' checksum), so the
trainer and `generate` can refuse tokens that do not fit a model.

The index grows with the shards, never with the recordings: manifest.json holds the streams, the
split, one record per shard and the corpus's totals; the recordings themselves are listed per
shard, in `index/<index:06d>.jsonl` (one line per book piece the shard holds, with the book's
held-out slots), written once with the shard and never again. Adding books writes new shards,
their index files and a new manifest.json of shard records; a loader reads only the index files of
the shards it reads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from narrator.config import from_dict, to_dict
from narrator.errors import ConfigError, NarratorError
from narrator.tokenfolder import storage
from narrator.tokenfolder.split import SplitConfig

FORMAT = "narrator-tokens/3"  # /3: a book index per shard (index/); /2: named streams, one plan for all streams
FORMAT_FIX = "re-tokenize its audio into a new --out folder with this version (`narrator tokenize --out NEW ...`)"
MANIFEST_NAME = "manifest.json"
INDEX_DIR = "index"  # index/<shard index:06d>.jsonl: the books of one shard
SLOT_SECONDS = 0.04  # lcm of EnCodec's 75 Hz and Whisper's 50 Hz frame periods: chunks and books are whole slots
ACOUSTIC = "acoustic"  # the stream of EnCodec codes, int16 [n_codebooks, frames] per chunk
SEMANTIC = "semantic"  # the stream of k-means ids of Whisper encoder frames, int16 [frames] per chunk


class FormatError(NarratorError):
    """A token folder of another format version: refused, never rewritten."""


@dataclass
class WeightsIdentity:
    mode: str  # "pretrained" or "random"
    source: str  # checkpoint path, download URL, or "random-init seed=N"
    sha256: str  # of the model's state_dict tensors, in key order
    seed: int | None = None
    file: str | None = None  # random mode: the weights as built, saved beside the tokens (relative to their folder)


@dataclass
class StreamInfo:
    """One token stream: what made it and how its samples are shaped."""

    name: str  # its shard folder and sample field: shards/<name>/, "<key>.<name>.npy"
    kind: str  # "encodec"
    sample_rate: int  # audio rate the tokenizer reads
    frame_rate: float  # token frames per second (a whole number per 40 ms slot)
    n_codebooks: int  # rows of each sample's int16 array (1: the array is 1-D)
    codebook_size: int  # ids per row: 0 .. codebook_size - 1
    config: dict[str, Any]  # the token-relevant part of the tokenize config
    config_hash: str
    weights: WeightsIdentity
    bandwidth: float | None = None  # EnCodec kbps
    kmeans: dict[str, Any] | None = None  # semantic: the centroids' file, sha256, k, layer, sample and quality

    @property
    def frames_per_slot(self) -> int:
        return round(self.frame_rate * SLOT_SECONDS)

    def files(self) -> list[str]:
        """Files beside the shards that decoding this stream needs (relative to the token folder):
        random-init weights kept with the tokens, the k-means centroids."""
        return ([self.weights.file] if self.weights.file else []) + list((self.kmeans or {}).get("files", []))


@dataclass
class BookEntry:
    """One recording's piece in one shard: a long book has a line in each shard holding its chunks."""

    id: str
    source: str  # absolute path of the audio
    duration_s: float
    slots: int  # 40 ms slots tokenized (the tail shorter than one slot is dropped)
    chunks: int  # in the whole book
    first_chunk: int  # this shard holds chunks [first_chunk, first_chunk + shard_chunks) of the book
    shard_chunks: int
    held_out: tuple[int, int]  # the book's validation slots [start, end) under the folder's split; (0, 0): none
    meta: dict[str, str] = field(default_factory=dict)  # catalog columns beyond id and audio (reader, licence, ...)
    warning: str = ""  # audio tokenized as decoded although faulty (damaged MP3 frames the decoder concealed)


@dataclass
class ShardFile:
    """One stream's tar of one planned shard."""

    path: str  # relative to the manifest's folder
    tokens: int
    bytes: int
    sha256: str


@dataclass
class BookIndex:
    """A shard's book index, index/<index:06d>.jsonl, and the totals of the books it starts."""

    path: str  # relative to the manifest's folder
    pieces: int  # lines: the books with chunks in the shard
    books: int  # of which start here (so each book is counted once, in the shard of its first chunk)
    seconds: float  # their audio
    warned: int  # of them tokenized with a warning
    bytes: int
    sha256: str


@dataclass
class ShardEntry:
    """One shard of the plan: consecutive chunks of one or more books in every stream, its books listed in `index`."""

    index: int
    samples: int  # chunks
    train_slots: int  # 40 ms slots of the shard's chunks outside the held-out slots of their books
    val_slots: int  # and inside them: a shard of none is never opened by validation
    files: dict[str, ShardFile]  # stream name -> its tar
    books: BookIndex


@dataclass
class FailedBook:
    source: str
    error: str


@dataclass
class Manifest:
    streams: list[StreamInfo]
    shards: list[ShardEntry] = field(default_factory=list)
    failed: list[FailedBook] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # planned shard files not written yet (an interrupted run)
    split: SplitConfig = field(default_factory=SplitConfig)  # which frames are validation, fixed at tokenize time
    format: str = FORMAT

    def stream(self, name: str, where: str | Path = MANIFEST_NAME) -> StreamInfo:
        """The stream called `name`, or a one-line error naming the streams there are."""
        for info in self.streams:
            if info.name == name:
                return info
        raise NarratorError(f"{where}: no token stream {name!r} here (streams: {', '.join(s.name for s in self.streams)})")

    def tokens(self, stream: str) -> int:
        return sum(s.files[stream].tokens for s in self.shards if stream in s.files)

    @property
    def books(self) -> int:
        """Recordings in the shards (a long book spans several)."""
        return sum(s.books.books for s in self.shards)

    @property
    def seconds(self) -> float:
        return sum(s.books.seconds for s in self.shards)

    @property
    def warned(self) -> int:
        """Books tokenized with a warning (listed with their books in index/)."""
        return sum(s.books.warned for s in self.shards)

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens(s.name) for s in self.streams)

    def save(self, path: storage.Location) -> None:
        storage.write_text(storage.root(path), json.dumps(to_dict(self), indent=1) + "\n")

    def book_index(self, folder: storage.Location, shard: ShardEntry) -> list[BookEntry]:
        """The books of one shard, from its index file."""
        return read_shard_books(self.index_file(folder, shard), shard.books.sha256)

    def index_file(self, folder: storage.Location, shard: ShardEntry) -> storage.Location:
        """Where shard `shard`'s book index is: inside the token folder, or the manifest is refused."""
        outside = storage.escape(folder, shard.books.path)
        if outside:
            raise NarratorError(f"{storage.join(folder, MANIFEST_NAME)}: shard {shard.index}'s book index "
                                f"{shard.books.path!r} lies outside the token folder ({outside})")
        return storage.join(folder, shard.books.path)

    def iter_books(self, folder: storage.Location) -> Iterator[BookEntry]:
        """Every book once (its first piece), shard by shard: reads every index file."""
        for shard in self.shards:
            yield from (b for b in self.book_index(folder, shard) if b.first_chunk == 0)

    @classmethod
    def load(cls, path: storage.Location) -> "Manifest":
        """Read a manifest from its file or its folder (a local path or a URL)."""
        path = manifest_file(path)
        if not storage.exists(path):
            if storage.is_url(path):
                storage.check_bucket(path)  # a missing bucket says so, not "no manifest"
            raise NarratorError(f"{path}: no token manifest here (run `narrator tokenize` first)")
        try:
            data = json.loads(storage.read_text(path))
        except json.JSONDecodeError as e:
            raise NarratorError(f"{path}: manifest is not valid JSON ({e})") from None
        if data.get("format") != FORMAT:
            raise FormatError(f"{path}: token folder format {data.get('format')!r} is not {FORMAT!r}, which this "
                                f"version reads: {FORMAT_FIX}")
        try:
            return from_dict(cls, data)
        except ConfigError as e:
            raise NarratorError(f"{path}: malformed manifest ({e})") from None


def manifest_file(path: storage.Location) -> storage.Location:
    """The manifest.json of a token folder given as the folder or the file itself.

    A URL names the file when it ends in .json (an object store has no folders to ask about).
    """
    path = storage.root(path)
    if storage.is_url(path):
        return path if str(path).endswith(".json") else storage.join(path, MANIFEST_NAME)
    return path / MANIFEST_NAME if path.is_dir() else path


def token_folder(path: storage.Location) -> storage.Location:
    """The token folder of a manifest given as the folder or the file itself (a Path, or a URL string)."""
    return storage.parent(manifest_file(path))


def index_path(index: int) -> str:
    """A shard's book index file, relative to the token folder."""
    return f"{INDEX_DIR}/{index:06d}.jsonl"


def write_book_index(folder: storage.Location, shard: int, books: list[BookEntry]) -> BookIndex:
    """Write shard `shard`'s book index (a JSON line per book piece, in chunk order) once; return its record."""
    data = "".join(json.dumps(to_dict(b), separators=(",", ":")) + "\n" for b in books).encode()
    firsts = [b for b in books if b.first_chunk == 0]
    record = BookIndex(index_path(shard), len(books), len(firsts), sum(b.duration_s for b in firsts),
                       sum(bool(b.warning) for b in firsts), len(data), hashlib.sha256(data).hexdigest())
    storage.write_bytes(storage.join(folder, record.path), data)
    return record


def read_shard_books(path: storage.Location, sha256: str) -> list[BookEntry]:
    """A shard's index file, refused in one line if it is missing or changed since it was written."""
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise NarratorError(f"{path}: a shard's book index that {MANIFEST_NAME} lists is missing") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise NarratorError(f"{path}: book index sha256 mismatch (the file changed after tokenize); "
                            "narrator inspect --verify lists every bad file")
    try:
        return [from_dict(BookEntry, json.loads(line)) for line in data.decode().splitlines()]
    except (ValueError, ConfigError) as e:
        raise NarratorError(f"{path}: malformed book index ({str(e).splitlines()[0]})") from None
