"""What `narrator tokenize` reads from configs/tokenize/*.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from narrator.errors import ConfigError

SAMPLE_RATE = 24_000
FRAME_GRID_SECONDS = 0.04  # lcm of EnCodec's 75 Hz and Whisper's 50 Hz frame periods
ENCODEC_BANDWIDTHS = {1.5: 2, 3.0: 4, 6.0: 8, 12.0: 16, 24.0: 32}  # kbps -> codebooks


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

    def __post_init__(self) -> None:
        if self.bandwidth not in ENCODEC_BANDWIDTHS:
            raise ConfigError(f"'encodec.bandwidth': {self.bandwidth} is not one of {sorted(ENCODEC_BANDWIDTHS)}")

    @property
    def n_codebooks(self) -> int:
        return ENCODEC_BANDWIDTHS[self.bandwidth]


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


@dataclass
class RayConfig:
    address: str | None = None  # None: start a local Ray instance; "auto" or "ray://host:10001" for a cluster
    concurrency: int = 2  # encoder actors, one EnCodec model each
    num_cpus: float = 1.0  # per actor
    num_gpus: float = 0.0  # per actor; > 0 runs EnCodec on the GPU
    batch_size: int = 4  # chunks per actor call
    torch_threads: int = 1  # intra-op threads per actor


@dataclass
class ShardConfig:
    """Shards are filled with consecutive chunks, book after book, up to about `target_mb` each."""

    target_mb: float = 256.0

    def __post_init__(self) -> None:
        if self.target_mb <= 0:
            raise ConfigError(f"'shards.target_mb': {self.target_mb} must be > 0")


@dataclass
class TokenizeConfig:
    encodec: EncodecConfig = field(default_factory=EncodecConfig)
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    silence_dbfs: float = -60.0  # a book whose peak stays below this is refused as silent
    min_seconds: float = 0.5  # shorter recordings are refused; longer ones shorter than a chunk are one chunk

    def __post_init__(self) -> None:
        if self.min_seconds < FRAME_GRID_SECONDS:
            raise ConfigError(f"'min_seconds': {self.min_seconds} is shorter than one {FRAME_GRID_SECONDS} s grid step")
