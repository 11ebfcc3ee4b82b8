"""manifest.json: what a token folder holds, readable without opening a shard.

This module and shards.py define the on-disk format; the tokenizer writes it and the loader reads
it, and neither imports the other. A token folder holds one or more named token streams (say
`acoustic`: EnCodec codes [K, T] at 75 Hz; `semantic`: k-means ids [1, T] at 50 Hz). Every stream
has its own shard set, `shards/<stream>/<index:06d>.tar`, cut by one shard plan: shard i of every
stream holds the same chunks under the same sample keys, so streams are joined by key when read
and a stream can be added to tokenized books without touching the others. Each stream's entry
identifies exactly how its tokens were made (config, its hash, the weights' checksum), so the
trainer and `generate` can refuse tokens that do not fit a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from narrator.config import from_dict, to_dict
from narrator.errors import ConfigError, NarratorError
from narrator.tokenfolder import storage
from narrator.tokenfolder.split import SplitConfig

FORMAT = "narrator-tokens/2"  # /2: named streams; shards of many books, one plan for all streams
MANIFEST_NAME = "manifest.json"
SLOT_SECONDS = 0.04  # lcm of EnCodec's 75 Hz and Whisper's 50 Hz frame periods: chunks and books are whole slots
ACOUSTIC = "acoustic"  # the stream of EnCodec codes, int16 [n_codebooks, frames] per chunk
SEMANTIC = "semantic"  # the stream of k-means ids of Whisper encoder frames, int16 [frames] per chunk


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
    """One recording: a long book or a short utterance. Its chunks are consecutive in `shards`."""

    id: str
    source: str  # absolute path of the audio
    duration_s: float
    slots: int  # 40 ms slots tokenized (the tail shorter than one slot is dropped)
    chunks: int
    shards: list[int]  # plan indices of the shards holding its chunks, in chunk order
    meta: dict[str, str] = field(default_factory=dict)  # catalog columns beyond id and audio (reader, licence, ...)


@dataclass
class ShardFile:
    """One stream's tar of one planned shard."""

    path: str  # relative to the manifest's folder
    tokens: int
    bytes: int
    sha256: str


@dataclass
class ShardEntry:
    """One shard of the plan: consecutive chunks of one or more books, in `books` order, in every stream."""

    index: int
    books: list[str]
    samples: int  # chunks
    files: dict[str, ShardFile]  # stream name -> its tar


@dataclass
class FailedBook:
    source: str
    error: str


@dataclass
class BookWarning:
    """A book tokenized as decoded although its audio is faulty (damaged MP3 frames the decoder concealed)."""

    source: str
    warning: str


@dataclass
class Manifest:
    streams: list[StreamInfo]
    books: list[BookEntry] = field(default_factory=list)
    shards: list[ShardEntry] = field(default_factory=list)
    failed: list[FailedBook] = field(default_factory=list)
    warnings: list[BookWarning] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # planned shard files not written yet (an interrupted run)
    # Which frames are validation, fixed at tokenize time (a folder without it predates the key: it used these defaults).
    split: SplitConfig = field(default_factory=SplitConfig)
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
    def total_tokens(self) -> int:
        return sum(self.tokens(s.name) for s in self.streams)

    def save(self, path: storage.Location) -> None:
        storage.write_text(storage.root(path), json.dumps(to_dict(self), indent=1) + "\n")

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
            raise NarratorError(f"{path}: token folder format {data.get('format')!r} is not {FORMAT!r}, which this "
                                "version reads; re-tokenize the audio into a new --out folder")
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
