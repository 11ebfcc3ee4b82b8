"""The `data:` section of a training config: which tokens, how they are laid out, how they are split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from narrator.errors import ConfigError
from narrator.tokenfolder.split import SplitConfig, check_split


@dataclass
class MixSource:
    """One token folder of a mix, drawn in proportion to its weight."""

    manifest: str  # token folder or its manifest.json
    weight: float = 1.0


@dataclass
class DataConfig:
    manifest: str = ""  # token folder or its manifest.json (this, or `mix`)
    # Several token folders trained together: each training window comes from folder i with probability
    # weight_i / sum(weights). Their streams must be the same tokens (config and weights); every folder
    # keeps its own books' validation windows, and validation reads them all.
    mix: list[MixSource] = field(default_factory=list)
    # How the token streams become one sequence (streaming/layout.py): "flat" (alias "acoustic"): EnCodec
    # codebooks interleaved frame by frame; "semantic": k-means ids only; "interleaved": per 40 ms slot its
    # 2 semantic ids then its 3 acoustic frames; "prefix": per window the semantic ids, a separator, the
    # acoustic tokens of the same slots. All but flat need a `semantic` stream in the token folder.
    layout: Literal["flat", "acoustic", "semantic", "interleaved", "prefix"] = "flat"
    shared_vocab: bool = False  # flat only; true: all codebooks share ids 0..1023 (no per-codebook offsets)
    # semantic only; true: each run of repeated ids is collapsed to one (GSLM's units), so the model reads what is
    # said, not how long each sound lasts; its ids hold no durations, so it cannot drive the prefix stage or be
    # voiced. Measured against false in benchmarks/RESULTS.md ("Layouts on one scale").
    dedup_semantic: bool = False
    # The validation split is the token folder's (`split:` of its tokenize config, recorded in manifest.json).
    # Set here, it is re-derived for this run, with one line saying so (a semantic stream's k-means was fit
    # away from the folder's split, not from this one). None: the folder's.
    val_center: float | None = None  # where a long book's validation window sits, as a fraction of its duration
    val_fraction: float | None = None  # held out: this share of each long book, and of the short recordings
    long_book_seconds: float | None = None  # shorter recordings are held out whole (by a hash of their id), not cut
    shuffle_buffer: int = 256  # training windows held for shuffling
    num_workers: int = 1  # DataLoader workers per process
    # Read manifest entries (shards, weights, k-means files) that lie outside their token folder: absolute
    # paths, '..' paths, symlinks pointing out, http(s) URLs. Off: a manifest from elsewhere reads only its folder.
    allow_outside_root: bool = False
    seed: int = 1337

    @property
    def sources(self) -> list[MixSource]:
        """The token folders to read: `mix`, or `manifest` alone with weight 1."""
        return list(self.mix) if self.mix else [MixSource(self.manifest)] if self.manifest else []

    def split_overrides(self) -> dict[str, float]:
        """The split keys this config sets, to apply over a token folder's own split."""
        keys = ("val_center", "val_fraction", "long_book_seconds")
        return {key: getattr(self, key) for key in keys if getattr(self, key) is not None}

    def split_of(self, folder: SplitConfig) -> SplitConfig:
        """The split this run uses for a folder whose own split is `folder`."""
        return folder.with_overrides(self.split_overrides())

    @property
    def layout_name(self) -> str:
        """The layout's canonical name, as checkpoints record it ("acoustic" is "flat")."""
        return "flat" if self.layout == "acoustic" else self.layout

    def __post_init__(self) -> None:
        check_split(self.val_center, self.val_fraction, self.long_book_seconds, "data")
        if self.manifest and self.mix:
            raise ConfigError("'data.manifest' and 'data.mix' are both set: list every token folder under data.mix")
        for i, source in enumerate(self.mix):
            if not source.weight > 0:
                raise ConfigError(f"'data.mix[{i}].weight': {source.weight} must be > 0 ({source.manifest})")
        if len({s.manifest for s in self.mix}) != len(self.mix):
            raise ConfigError("'data.mix' lists a token folder twice")
