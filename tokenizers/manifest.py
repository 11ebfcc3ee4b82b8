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

FORMAT = "narrator-tokens/1"
MANIFEST_NAME = "manifest.json"


@dataclass
class WeightsIdentity:
    mode: str  # "pretrained" or "random"
    source: str  # checkpoint path, download URL, or "random-init seed=N"
    sha256: str  # of the model's state_dict tensors, in key order
    seed: int | None = None


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
    id: str
    source: str
    duration_s: float
    frames: int
    chunks: int
    shards: list[str]


@dataclass
class ShardEntry:
    path: str  # relative to the manifest's folder
    book: str
    samples: int
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
            raise NarratorError(f"{path}: unsupported manifest format {data.get('format')!r} (expected {FORMAT!r})")
        try:
            return from_dict(cls, data)
        except ConfigError as e:
            raise NarratorError(f"{path}: malformed manifest ({e})") from None
