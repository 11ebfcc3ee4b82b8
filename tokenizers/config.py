"""What `narrator tokenize` reads from configs/tokenize/*.yaml."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from narrator.errors import ConfigError
from narrator.tokenfolder.manifest import SLOT_SECONDS
from narrator.tokenfolder.split import SplitConfig

SAMPLE_RATE = 24_000
FRAME_GRID_SECONDS = SLOT_SECONDS  # the 40 ms grid every chunk is cut on
ENCODEC_BANDWIDTHS = {1.5: 2, 3.0: 4, 6.0: 8, 12.0: 16, 24.0: 32}  # kbps -> codebooks
# What a tokenizer model computes in: fp32, or its convolutions and matmuls under fp16/bf16 autocast (GPUs: several
# times faster). Half-precision tokens differ from fp32 ones, so it is part of the stream's config.
Precision = Literal["fp32", "bf16", "fp16"]


@dataclass
class WeightsConfig:
    """Where the codec's weights come from. `random` is for tests and offline demos only."""

    mode: Literal["pretrained", "random"] = "pretrained"
    checkpoint: str | None = None  # local state_dict file; None: EnCodec's own download and torch.hub cache
    seed: int = 0  # random mode: the seed that fixes every weight and codebook


@dataclass
class EncodecConfig:
    bandwidth: float = 3.0  # kbps: 1.5 -> 2 codebooks, 3.0 -> 4 codebooks (x 1024 codes, 75 Hz)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    precision: Precision = "fp32"  # the encoder's; bf16/fp16 for GPU actors (ray.num_gpus > 0); code search in fp32

    def __post_init__(self) -> None:
        if self.bandwidth not in ENCODEC_BANDWIDTHS:
            raise ConfigError(f"'encodec.bandwidth': {self.bandwidth} is not one of {sorted(ENCODEC_BANDWIDTHS)}")

    @property
    def n_codebooks(self) -> int:
        return ENCODEC_BANDWIDTHS[self.bandwidth]


# whisper.available_models(); tokenizers/whisper.py holds each one's encoder size.
WHISPER_MODELS = ("tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en", "large-v1",
                  "large-v2", "large-v3", "large", "large-v3-turbo", "turbo")


@dataclass
class WhisperWeightsConfig:
    """Where the encoder's weights come from. `random` is for tests and offline demos only."""

    mode: Literal["pretrained", "random"] = "pretrained"
    checkpoint: str | None = None  # local .pt in openai-whisper's format; None: whisper's own download
    seed: int = 0  # random mode: the seed that fixes every weight
    download_root: str | None = None  # whisper's download cache; None: ~/.cache/whisper


@dataclass
class WhisperConfig:
    model: str = "tiny"  # one of whisper.available_models()
    layer: int = -1  # -1: final output after ln_post; i in [0, n_layer): output of block i (before ln_post)
    weights: WhisperWeightsConfig = field(default_factory=WhisperWeightsConfig)
    precision: Precision = "fp32"  # the encoder's; bf16/fp16 for GPU actors (ray.num_gpus > 0); k-means in fp32

    def __post_init__(self) -> None:
        if self.model not in WHISPER_MODELS:
            raise ConfigError(f"'whisper.model': {self.model!r} is not one of {', '.join(WHISPER_MODELS)}")
        if self.layer < -1:
            raise ConfigError(f"'whisper.layer': {self.layer} is not -1 (final) or a block index >= 0")


@dataclass
class KmeansConfig:
    """How the k-means tokenizer is fit (or which fitted file it uses)."""

    k: int = 1024  # clusters = vocabulary of the semantic stream
    sample_frames: int = 200_000  # upper bound on sampled frames (fit + held out): bounds memory
    sample_fraction: float | None = None  # take this share of the eligible frames instead, still capped by sample_frames
    seed: int = 0  # fixes the sample, the held-out blocks and the fit
    standardize: bool = False  # divide each dimension by its std (after removing its mean) before clustering
    batch_size: int = 4096  # MiniBatchKMeans mini-batch
    passes: int = 5  # MiniBatchKMeans max_iter: full passes over the sample (no early stopping)
    heldout_fraction: float = 0.05  # share of the sample (in 1 s blocks) kept out of the fit for the quality report
    reassignment_ratio: float = 0.01  # MiniBatchKMeans: re-seed clusters that get fewer than this share of a batch
    path: str | None = None  # an existing k-means file (.json, .npy or their stem) to use instead of fitting

    def __post_init__(self) -> None:
        checks = [
            ("k", self.k >= 2, ">= 2"),
            ("sample_frames", self.sample_frames >= 2, ">= 2"),
            ("seed", self.seed >= 0, ">= 0"),
            ("sample_fraction", self.sample_fraction is None or 0 < self.sample_fraction <= 1, "in (0, 1]"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("passes", self.passes >= 1, ">= 1"),
            ("heldout_fraction", 0 <= self.heldout_fraction < 1, "in [0, 1)"),
            ("reassignment_ratio", self.reassignment_ratio >= 0, ">= 0"),
        ]
        for key, ok, want in checks:
            if not ok:
                raise ConfigError(f"'kmeans.{key}': {getattr(self, key)!r} must be {want}")


@dataclass
class ChunkingConfig:
    """Books are cut on the 0.04 s grid; each chunk is encoded with context that is trimmed away."""

    chunk_seconds: float = 30.0
    left_context_seconds: float = 2.0
    right_context_seconds: float = 0.2

    def __post_init__(self) -> None:
        for name in ("chunk_seconds", "left_context_seconds", "right_context_seconds"):
            value = getattr(self, name)
            steps = value / FRAME_GRID_SECONDS
            if value < 0 or abs(steps - round(steps)) > 1e-6:
                raise ConfigError(f"'chunking.{name}': {value} is not a non-negative multiple of {FRAME_GRID_SECONDS} s")
        if self.chunk_seconds <= 0:
            raise ConfigError("'chunking.chunk_seconds' must be > 0")


RAY_ADDRESS = re.compile(r"^(?P<host>\[[0-9A-Fa-f:]+\]|[^:/\s\[\]]+):(?P<port>\d{1,5})$")  # a head's host:port


@dataclass
class RayConfig:
    """Which Ray runs the encoder actors (tokenizers/ray_cluster.py) and what each actor asks of it."""

    # "local": a private Ray for this run, even if one runs on the machine (null means the same);
    # "auto": the Ray `ray start` runs on this machine (or RAY_ADDRESS, as `ray job submit` sets it);
    # "host:port": the GCS port of a cluster's head (6379 by default).
    address: str | None = "local"
    connect_timeout_s: float = 15.0  # an address that does not answer within this is refused
    concurrency: int = 2  # encoder actors, one EnCodec model each
    num_cpus: float = 1.0  # per actor
    num_gpus: float = 0.0  # per actor; > 0 runs the models on the GPU (with encodec/whisper.precision: bf16 there)
    resources: dict[str, float] = field(default_factory=dict)  # custom resources per actor: only nodes that have them run one
    batch_size: int = 4  # chunks per actor call
    torch_threads: int = 1  # intra-op threads per actor

    def __post_init__(self) -> None:
        self.address = (self.address or "local").strip()
        if self.address.startswith("ray://"):  # Ray Data's executor fails there ('Worker' object has no attribute 'core_worker')
            raise ConfigError(f"'ray.address': {self.address} is a Ray Client address, and the encoder actor pool (Ray "
                              "Data) does not run through Ray Client; give the head's host:6379, or run tokenize on "
                              "the head with `ray job submit` and ray.address=auto")
        if self.address not in ("local", "auto") and not RAY_ADDRESS.match(self.address):
            raise ConfigError(f"'ray.address': {self.address!r} is not local, auto or a head's host:port")
        if self.connect_timeout_s <= 0:
            raise ConfigError(f"'ray.connect_timeout_s': {self.connect_timeout_s} must be > 0")


@dataclass
class ShardConfig:
    """Shards are filled with consecutive chunks, book after book, up to about `target_mb` each."""

    target_mb: float = 256.0

    def __post_init__(self) -> None:
        if self.target_mb <= 0:
            raise ConfigError(f"'shards.target_mb': {self.target_mb} must be > 0")


STREAMS = ("acoustic", "semantic")  # EnCodec codes; k-means ids of Whisper encoder frames


@dataclass
class TokenizeConfig:
    streams: list[str] = field(default_factory=lambda: ["acoustic"])  # token streams to make, from STREAMS
    encodec: EncodecConfig = field(default_factory=EncodecConfig)
    whisper: WhisperConfig = field(default_factory=WhisperConfig)  # semantic stream: the embeddings
    kmeans: KmeansConfig = field(default_factory=KmeansConfig)  # semantic stream: their ids
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    silence_dbfs: float = -60.0  # a book whose peak stays below this is refused as silent
    min_seconds: float = 0.5  # shorter recordings are refused; longer ones shorter than a chunk are one chunk
    # Which frames training holds out for validation, fixed here for the folder's life (the semantic k-means is fit
    # away from them) and recorded in manifest.json; a training config may re-derive another (data.val_fraction, ...).
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        if self.min_seconds < FRAME_GRID_SECONDS:
            raise ConfigError(f"'min_seconds': {self.min_seconds} is shorter than one {FRAME_GRID_SECONDS} s grid step")
        unknown = [s for s in self.streams if s not in STREAMS]
        if unknown or not self.streams or len(set(self.streams)) != len(self.streams):
            raise ConfigError(f"'streams': {self.streams} must name each of {', '.join(STREAMS)} at most once, and one at least")
