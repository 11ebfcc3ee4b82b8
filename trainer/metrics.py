"""Training metrics: OUT/metrics.jsonl (the record), Accelerate trackers (TensorBoard), and loss plots."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker, TensorBoardTracker, WandBTracker
from matplotlib.figure import Figure

from narrator.errors import ConfigError

METRICS_NAME = "metrics.jsonl"


@dataclass
class StepMetrics:
    step: int
    train_loss: float  # mean over processes and over the steps since the previous record
    lr: float  # used by this step's update
    tokens_per_s: float  # all processes together, training time only
    tflops: float | None = None  # achieved TFLOP/s, all processes: tokens_per_s x 6N + 12 L d T (estimate.py)
    mfu: float | None = None  # tflops over the GPUs' dense bf16 peak; None off CUDA or on a GPU without a known peak
    val_loss: float | None = None  # when evaluated at this step
    val_loss_per_group: dict[str, float] | None = None  # per layout group: "semantic", "acoustic/cb0", ...
    val_loss_per_stream: dict[str, float] | None = None  # per token stream the layout reads
    val_loss_per_codebook: list[float] | None = None  # flat layout only: codebook 0 (coarsest) first
    epoch_coverage: list[dict] | None = None  # epochs finished since the last record: {epoch, tokens, covered, share}
    skipped_nonfinite: int | None = None  # updates skipped for a non-finite loss since the last record
    sample: str | None = None  # audio generated at this evaluation, relative to OUT (eval_audio.py)


WANDB_ID_NAME = "wandb_run_id.txt"  # OUT/: a resumed run goes on logging to the same W&B run


def make_trackers(names: list[str], out: Path, wandb_project: str) -> list[GeneralTracker]:
    """What Accelerate logs to besides metrics.jsonl (`trackers` in the config). They start on the main process only
    (Accelerator.init_trackers): TensorBoard writes OUT/tensorboard; W&B logs to `wandb_project`, in a run named
    after OUT whose id is kept in OUT, and keeps its files in OUT/wandb (WANDB_MODE=offline: nothing leaves the
    machine; `wandb sync OUT/wandb/offline-run-*` uploads later)."""
    made: list[GeneralTracker] = []
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"'trackers': {name} is not installed (pip install {name}), or leave it out of 'trackers'")
        if name == "tensorboard":
            made.append(TensorBoardTracker("tensorboard", out))
        elif name == "wandb":
            made.append(WandBTracker(wandb_project, name=out.resolve().name, id=wandb_run_id(out), resume="allow",
                                     dir=str(out)))
    return made


def wandb_run_id(out: Path) -> str:
    """The W&B run id of OUT: made by the first run, read back by every resume. Every process asks (only the main
    one's tracker starts), so the file appears whole or not at all: written aside, then linked into place."""
    path = Path(out) / WANDB_ID_NAME
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        aside.write_text(secrets.token_hex(8) + "\n")
        with contextlib.suppress(FileExistsError):  # another process was first: its id stands
            os.link(aside, path)
        aside.unlink()
    return path.read_text().strip()


class MetricsLog:
    """Appends StepMetrics to OUT/metrics.jsonl and the trackers; redraws the plots. Main process only writes."""

    def __init__(self, accelerator: Accelerator, out: Path, start_step: int):
        self.accelerator = accelerator
        self.out = Path(out)
        self.path = self.out / METRICS_NAME
        if accelerator.is_main_process:
            drop_after(self.path, start_step)  # a resumed run rewrites the steps after its checkpoint

    def log(self, record: StepMetrics) -> None:
        values = {k: v for k, v in asdict(record).items() if v is not None}
        if self.accelerator.is_main_process:
            with open(self.path, "a") as f:
                f.write(json.dumps(values) + "\n")
        scalars = {k: v for k, v in values.items() if not isinstance(v, (list, dict)) and k not in ("step", "sample")}
        scalars.update({f"val_loss_group/{k}": v for k, v in (record.val_loss_per_group or {}).items()})
        scalars.update({f"val_loss_stream/{k}": v for k, v in (record.val_loss_per_stream or {}).items()})
        scalars.update({f"val_loss_codebook_{k}": v for k, v in enumerate(record.val_loss_per_codebook or [])})
        if record.epoch_coverage:
            scalars["window_coverage"] = record.epoch_coverage[-1]["share"]
        self.accelerator.log(scalars, step=record.step)

    def log_audio(self, tag: str, audio: np.ndarray, sample_rate: int, step: int) -> None:
        """Mono float audio to the trackers that play it: TensorBoard, and W&B where it is the tracker. Main process."""
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.tracker.add_audio(tag, torch.from_numpy(np.clip(audio, -1.0, 1.0))[None], step, sample_rate)
                tracker.tracker.flush()
            elif tracker.name == "wandb":
                import wandb

                tracker.tracker.log({tag: wandb.Audio(audio, sample_rate=sample_rate)}, step=step)

    def plot(self) -> None:
        if self.accelerator.is_main_process:
            plot_losses(self.path, self.out)


def read_metrics(path: Path) -> list[dict]:
    """The records of metrics.jsonl; a last line without its newline (a run killed while writing it) is left out."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")[:-1]  # each record is written with its newline in one write
    return [json.loads(line) for line in lines if line.strip()]


def drop_after(path: Path, step: int) -> None:
    """Keep only the records of steps <= `step` (atomically)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if r["step"] <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    tmp.replace(path)


def plot_losses(metrics_path: Path, out: Path) -> None:
    """Draw train_loss.png and val_loss.png (once there is a validation loss) from metrics.jsonl.

    val_loss.png also draws each group's loss (per stream and codebook), thin, under the overall one.
    """
    records = read_metrics(metrics_path)
    for key, name in (("train_loss", "train_loss.png"), ("val_loss", "val_loss.png")):
        points = _points(records, lambda r: r.get(key))
        if not points:
            continue
        groups = sorted({g for r in records for g in r.get("val_loss_per_group") or {}}) if key == "val_loss" else []
        extra = {g: _points(records, lambda r: (r.get("val_loss_per_group") or {}).get(g)) for g in groups}
        _plot(points, key.replace("_", " "), Path(out) / name, extra if len(extra) > 1 else {})


def _points(records: list[dict], value) -> list[tuple[int, float]]:
    return [(r["step"], v) for r in records if (v := value(r)) is not None and math.isfinite(v)]


def _plot(points: list[tuple[int, float]], label: str, path: Path, extra: dict[str, list] | None = None) -> None:
    fig = Figure(figsize=(6, 4), dpi=100)  # the Agg canvas, without pyplot's global state
    ax = fig.add_subplot()
    steps, values = zip(*points)
    ax.plot(steps, values, marker="." if len(points) < 50 else None, color="black", label="all", zorder=3)
    for name, series in (extra or {}).items():
        if series:
            ax.plot(*zip(*series), linewidth=0.8, alpha=0.8, label=name)
    if extra:
        ax.legend(fontsize="x-small", ncol=2)
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.set_title(f"{label}: {values[-1]:.4f} at step {steps[-1]}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
