"""manifest.json: what a token folder holds, readable without opening a shard.

The tokenizer section identifies exactly how tokens were made (config, its hash, the codec weights'
checksum), so the trainer and `generate` can refuse tokens that do not fit a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from narrator.config import from_dict, to_dict
from narrator.errors import ConfigError, NarratorError

FORMAT = "narrator-tokens/2"  # /2: shards hold chunks of many books (ShardEntry.books)
MANIFEST_NAME = "manifest.json"


@dataclass
class WeightsIdentity:
    mode: str  # "pretrained" or "random"
    source: str  # checkpoint path, download URL, or "random-init seed=N"
    sha256: str  # of the model's state_dict tensors, in key order
    seed: int | None = None
    file: str | None = None  # random mode: the weights as built, saved beside the tokens (relative to their folder)


@dataclass
class TokenizerInfo:
    kind: str  # "encodec"
    stream: str  # field name in the shards: "<stream>.npy"
    sample_rate: int
    frame_rate: float
    bandwidth: float
    n_codebooks: int
    codebook_size: int
    config: dict[str, Any]  # the token-relevant part of TokenizeConfig
    config_hash: str
    weights: WeightsIdentity


@dataclass
class BookEntry:
    """One recording: a long book or a short utterance. Its chunks are consecutive in `shards`."""

    id: str
    source: str  # absolute path of the audio
    duration_s: float
    frames: int  # at the tokenizer's frame rate, over all chunks
    chunks: int
    shards: list[str]  # the shards holding its chunks, in chunk order


@dataclass
class ShardEntry:
    """One tar of the shard plan: consecutive chunks of one or more books, in `books` order."""

    path: str  # relative to the manifest's folder
    books: list[str]
    samples: int  # chunks
    tokens: int
    bytes: int
    sha256: str


@dataclass
class FailedBook:
    source: str
    error: str


@dataclass
class Manifest:
    tokenizer: TokenizerInfo
    books: list[BookEntry] = field(default_factory=list)
    shards: list[ShardEntry] = field(default_factory=list)
    failed: list[FailedBook] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # planned shards not written yet (an interrupted run)
    format: str = FORMAT

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(to_dict(self), indent=1) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        """Read a manifest from its file or its folder."""
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        if not path.is_file():
            raise NarratorError(f"{path}: no token manifest here (run `narrator tokenize` first)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise NarratorError(f"{path}: manifest is not valid JSON ({e})") from None
        if data.get("format") != FORMAT:
            raise NarratorError(f"{path}: token folder format {data.get('format')!r} is not {FORMAT!r}, which this "
                                "version reads; re-tokenize the audio into a new --out folder")
        try:
            return from_dict(cls, data)
        except ConfigError as e:
            raise NarratorError(f"{path}: malformed manifest ({e})") from None
