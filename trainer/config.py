"""What `narrator train` reads from configs/train/*.yaml: one typed dataclass per section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from narrator.errors import ConfigError
from narrator.evaluation import SUITES as ITEM_SUITES
from narrator.streaming.config import DataConfig
from narrator.trainer.model import PRESETS, GPTConfig

TRACKERS = ("tensorboard", "wandb")  # what `trackers` may name
EVAL_SUITES = ("bits", *ITEM_SUITES)  # what `narrator eval --suite` and `eval_suite` may name


@dataclass
class ModelConfig:
    preset: str = "demo"  # one of model.PRESETS: tiny, demo, small, base, medium, large, xl
    n_layer: int | None = None  # None: the preset's value
    n_head: int | None = None
    n_embd: int | None = None
    block_size: int = 256  # tokens per training window (4 codebooks x 64 frames = 0.85 s at 75 Hz)
    dropout: float = 0.1
    bias: bool = False
    vocab_size: int | None = None  # None: taken from the data (codebooks x codebook size)
    activation_checkpointing: bool = False  # recompute each block in backward: less memory, ~1/3 more compute
    # torch.compile the model (in place, before Accelerate wraps it; checkpoints keep their keys). The first steps
    # compile (seconds to minutes) and the GPU steps get faster; needs a C++ compiler for the CPU.
    compile: bool = False

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"'model.preset': {self.preset!r} is not one of {', '.join(PRESETS)}")

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        """The preset with this section's overrides applied."""
        sizes = dict(PRESETS[self.preset])
        sizes.update({k: getattr(self, k) for k in sizes if getattr(self, k) is not None})
        if sizes["n_embd"] % sizes["n_head"]:
            raise ConfigError(f"'model.n_embd' {sizes['n_embd']} is not divisible by 'model.n_head' {sizes['n_head']}")
        return GPTConfig(block_size=self.block_size, vocab_size=vocab_size, dropout=self.dropout, bias=self.bias,
                         activation_checkpointing=self.activation_checkpointing, **sizes)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    fused: bool | Literal["auto"] = "auto"  # true: AdamW's fused kernel; false: foreach; auto: fused on CUDA only
    skip_nonfinite: int = 0  # updates with a non-finite loss or gradient norm skipped (each logged) before a stop

    def __post_init__(self) -> None:
        if len(self.betas) != 2:
            raise ConfigError(f"'optim.betas': expected two values, got {self.betas}")
        if self.skip_nonfinite < 0:
            raise ConfigError(f"'optim.skip_nonfinite': {self.skip_nonfinite} must be >= 0")


@dataclass
class ScheduleConfig:
    kind: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine ends at min_lr_ratio * lr


@dataclass
class TrainConfig:
    out: str = "runs/train"  # checkpoints/, metrics.jsonl, plots, config.yaml
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    max_steps: int = 500  # optimizer steps
    batch_size: int = 8  # sequences per process per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    eval_every: int = 100
    eval_batches: int = 10  # the same validation batches every time
    # At each evaluation, a fixed validation prompt continued by the model, heard in OUT/samples and the trackers.
    eval_audio_seconds: float = 2.0  # audio generated after the prompt; 0: none
    eval_audio_prompt_seconds: float = 1.0  # the start of the first validation window (at most the whole window)
    eval_audio_temperature: float = 1.0
    eval_audio_top_k: int | None = 250
    eval_audio_seed: int = 0  # the same at every evaluation: successive samples differ only by the model
    # At each evaluation, a small `narrator eval` too, logged in metrics.jsonl beside val_loss: "bits" (bits per
    # second of audio on the eval_batches), "lexical" and "syntactic" (eval_suite_n spoken minimal pairs each,
    # tokenized once at the start with the token folder's codec). Empty: off.
    eval_suite: list[str] = field(default_factory=list)
    eval_suite_n: int = 32
    log_every: int = 10
    # Where the curves and the evaluation audio go besides OUT/metrics.jsonl: "tensorboard" (OUT/tensorboard) and/or
    # "wandb" (Weights & Biases, project `wandb_project`; files in OUT/wandb; WANDB_MODE=offline keeps them there).
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    wandb_project: str = "narrator"
    plot_every: int = 100
    checkpoint_every: int = 100
    keep_checkpoints: int = 3  # newest checkpoints kept on disk
    resume: str = "auto"  # "auto": latest checkpoint in out if any; "never"; or a checkpoint folder
    seed: int = 1337
    cpu: bool = False  # train on the CPU even when a GPU is present

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "eval_every", "eval_batches", "log_every",
                     "plot_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"'{name}': {getattr(self, name)} must be >= 1")
        if self.eval_audio_seconds < 0 or self.eval_audio_prompt_seconds <= 0 or self.eval_audio_temperature < 0:
            raise ConfigError(f"'eval_audio_seconds' {self.eval_audio_seconds} must be >= 0, "
                              f"'eval_audio_prompt_seconds' {self.eval_audio_prompt_seconds} > 0 and "
                              f"'eval_audio_temperature' {self.eval_audio_temperature} >= 0")
        if self.eval_audio_top_k is not None and self.eval_audio_top_k < 1:
            raise ConfigError(f"'eval_audio_top_k': {self.eval_audio_top_k} must be >= 1 (or null: no limit)")
        unknown = [name for name in self.eval_suite if name not in EVAL_SUITES]
        if unknown or self.eval_suite_n < 1:
            raise ConfigError(f"'eval_suite': {', '.join(map(repr, unknown))} is not one of {', '.join(EVAL_SUITES)}"
                              if unknown else f"'eval_suite_n': {self.eval_suite_n} must be >= 1")
        unknown = [name for name in self.trackers if name not in TRACKERS]
        if unknown:
            raise ConfigError(f"'trackers': {', '.join(map(repr, unknown))} is not one of {', '.join(TRACKERS)}")
        if not self.data.sources:
            raise ConfigError("'data.manifest' is required: the token folder made by `narrator tokenize` "
                              "(or data.mix: several folders with weights)")
