"""Checkpoints: OUT/checkpoints/step_XXXXXXX, written under a temporary name and renamed when complete.

A checkpoint folder holds:
  accelerate/             accelerator.save_state: model, optimizer, RNG states (for resume; the lr
                          schedule is rebuilt from the step, see schedule.build_scheduler)
  model.safetensors       the unwrapped model's weights, tied embedding stored once (for generation)
  model_config.json       GPTConfig
  trainer_state.json      TrainerState: step, tokens seen, config and tokenizer hashes, data layout, special tokens
  process_N.json          ProcessState of process N: its loader's data position, epoch coverage and losses
                          not yet reported (so a resumed run goes on exactly as an uninterrupted one)
  streams.json            the manifest's entries of the streams trained on } so a copied checkpoint
  config.yaml             the resolved training config             } stands alone
  encodec_random_*.safetensors  random-init codec weights, when the tokens were made with them
                          (a hard link to the token folder's copy where the filesystem allows; a copy from a URL folder)
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from narrator.config import from_dict, save_config, to_dict
from narrator.errors import ConfigError, NarratorError
from narrator.streaming.dataset import EpochCoverage
from narrator.streaming.position import DataPosition
from narrator.tokenfolder import storage
from narrator.tokenfolder.manifest import ACOUSTIC, StreamInfo
from narrator.trainer.model import GPT, GPTConfig

CHECKPOINTS = "checkpoints"
STATE_NAME = "trainer_state.json"
STREAMS_NAME = "streams.json"
# The output embedding is the input embedding (model.py ties them): safetensors stores it once.
TIED = {"lm_head.weight": "transformer.wte.weight"}
_STEP_DIR = re.compile(r"step_(\d{7,})")
_INCOMPLETE_DIR = re.compile(r"step_\d{7,}\.(tmp|old)")
_PROCESS_FILE = re.compile(r"process_(\d+)\.json")


@dataclass
class TrainerState:
    step: int  # optimizer steps done
    tokens_seen: int  # over all processes
    world_size: int
    config_hash: str  # of the resolved TrainConfig
    tokenizer_config_hash: str  # of the tokens trained on; resume refuses other tokens
    layout: str  # data.layout ("flat", "semantic", ...) and data.shared_vocab: how tokens map back to streams
    shared_vocab: bool
    boundary_token: int  # the id that separates recordings (streaming.layout.Layout.boundary_token)
    separator_token: int | None = None  # the prefix layout's separator (Layout.special.separator); None for others
    dedup_semantic: bool = False  # data.dedup_semantic: the semantic ids' repeats were collapsed


@dataclass
class ProcessState:
    """What one process carries from step to step besides the model, optimizer and RNG states (accelerate
    saves those): where its loader is, and what it has not reported yet. `loop_state.LoopState` gives and
    takes it (state_dict / load_state_dict); each process's is its process_N.json."""

    data: DataPosition
    coverage_parts: list[EpochCoverage] = field(default_factory=list)  # epochs some, not all, workers finished
    coverage_unlogged: list[EpochCoverage] = field(default_factory=list)  # finished, not yet in metrics.jsonl
    losses: list[float] = field(default_factory=list)  # train losses the next metrics record averages
    tokens: int = 0  # trained since the last metrics record
    seconds: float = 0.0
    skipped: int = 0  # updates skipped for a non-finite loss so far (optim.skip_nonfinite)
    unlogged_skips: int = 0  # of which not yet in metrics.jsonl


@dataclass
class CheckpointMeta:
    """What `narrator generate` needs besides the model: where it came from and how tokens map to codes."""

    path: Path
    state: TrainerState
    streams: list[StreamInfo]

    def stream(self, name: str = ACOUSTIC) -> StreamInfo:
        found = [s for s in self.streams if s.name == name]
        if not found:
            raise NarratorError(f"{self.path}: the model was not trained on a {name!r} stream "
                                f"(streams: {', '.join(s.name for s in self.streams)})")
        return found[0]


def checkpoint_dir(out: Path, step: int) -> Path:
    return Path(out) / CHECKPOINTS / f"step_{step:07d}"


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints in OUT, oldest first.

    Complete means renamed: a checkpoint is written as step_X.tmp and renamed to step_X only after
    every file of every process is in it, and it is renamed to step_X.old before it is deleted. So a
    save or a deletion killed at any moment leaves no step_X folder that is not whole.
    """
    root = Path(out) / CHECKPOINTS
    found = [p for p in root.iterdir() if _STEP_DIR.fullmatch(p.name) and (p / STATE_NAME).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(out: Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1] if found else None


def save_checkpoint(accelerator: Accelerator, model: torch.nn.Module, out: Path, state: TrainerState,
                    streams: list[StreamInfo], train_config: Any, keep: int, files: Sequence[Path] = (),
                    process: ProcessState | None = None) -> Path:
    """Save the full training state plus inference files; every process must call this, with its `process` state.

    The main process renames step_X.tmp to step_X once all processes wrote their part, then keeps
    only the newest `keep` checkpoints. A full disk (or a file-size limit) stops the run with one
    NarratorError that names the file, after removing the partial step_X.tmp.
    """
    final = checkpoint_dir(out, state.step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        _remove_incomplete(final.parent)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp / "accelerate"))
        if process is not None:
            _write_json(tmp / f"process_{accelerator.process_index}.json", to_dict(process))
        weights = accelerator.get_state_dict(model)  # collective under DeepSpeed ZeRO-3
        # Every process writes its own files (RNG states, DeepSpeed's optimizer partitions): rename only
        # once all are written. A slower rank (ZeRO-2 offload) otherwise wrote into a renamed folder.
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            weights = {k: v.detach().cpu().contiguous() for k, v in weights.items() if k not in TIED}
            save_file(weights, str(tmp / "model.safetensors"))
            _write_json(tmp / "model_config.json", asdict(accelerator.unwrap_model(model).config))
            _write_json(tmp / STATE_NAME, asdict(state))
            _write_json(tmp / STREAMS_NAME, to_dict(streams))
            save_config(train_config, tmp / "config.yaml")
            for file in files:
                _link_or_copy(file, tmp / storage.name(file))
    except Exception as e:  # torch, safetensors and yaml each report a full disk their own way
        reason = storage.write_fault(e, tmp)
        if reason is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        kept = latest_checkpoint(out)
        kept = f"the last complete checkpoint {kept} is kept" if kept else "no earlier checkpoint exists"
        raise NarratorError(f"{tmp}: cannot write the checkpoint ({reason}); removed it, {kept}; "
                            "free space and rerun the same command to resume") from None
    if accelerator.is_main_process:
        if final.exists():  # the same step saved again (a resumed run stopped at once)
            _delete(final)
        os.replace(tmp, final)
        for old in list_checkpoints(out)[:-keep]:
            _delete(old)
    accelerator.wait_for_everyone()
    return final


def _delete(checkpoint: Path) -> None:
    """Remove a checkpoint so that a kill midway leaves no partial step_X: renamed first, then deleted."""
    trash = checkpoint.with_name(checkpoint.name + ".old")
    os.replace(checkpoint, trash)
    shutil.rmtree(trash)


def _remove_incomplete(folder: Path) -> None:
    """Delete what a killed save or deletion left behind (step_X.tmp, step_X.old), saying so once per folder."""
    for stale in sorted(folder.glob("step_*.tmp")) + sorted(folder.glob("step_*.old")):
        what = "an incomplete checkpoint of a killed save" if stale.suffix == ".tmp" else "a half-deleted checkpoint"
        print(f"removed {stale}: {what} (never loaded)", flush=True)
        shutil.rmtree(stale)


def layout_name(name: str) -> str:
    """A layout's canonical name: "acoustic" is "flat"."""
    return "flat" if name == "acoustic" else name


def read_state(path: Path) -> TrainerState:
    return _read(Path(path) / STATE_NAME, TrainerState)


def read_process_states(path: Path) -> list[ProcessState]:
    """The ProcessState of each process of the run that wrote checkpoint `path`, by process index; [] when it
    holds none for some process (a checkpoint written before they existed)."""
    path = Path(path)
    files = {int(m.group(1)): f for f in path.iterdir() if (m := _PROCESS_FILE.fullmatch(f.name))}
    if sorted(files) != list(range(read_state(path).world_size)):
        return []
    return [_read(files[i], ProcessState) for i in range(len(files))]


def resume_checkpoint(accelerator: Accelerator, path: Path, model_config: GPTConfig, tokenizer_config_hash: str,
                      manifest_path: Path, boundary_token: int, layout: str = "flat",
                      separator_token: int | None = None, dedup_semantic: bool = False) -> TrainerState:
    """Restore model, optimizer, scheduler and RNG states from `path`, after checking it fits this run."""
    path = Path(path)
    state = read_state(path)
    if layout_name(state.layout) != layout_name(layout):
        raise NarratorError(f"{path}: checkpoint was trained with data.layout {state.layout!r}, but this run reads "
                            f"{manifest_path} with layout {layout!r}; set data.layout={state.layout} or train into "
                            "a new out folder")
    if state.dedup_semantic != dedup_semantic:
        raise NarratorError(f"{path}: checkpoint was trained with data.dedup_semantic {str(state.dedup_semantic).lower()}, "
                            f"this run sets {str(dedup_semantic).lower()}; set it back or train into a new out folder")
    if state.tokenizer_config_hash != tokenizer_config_hash:
        raise NarratorError(f"{path}: checkpoint was trained on tokens with tokenizer config_hash "
                            f"{state.tokenizer_config_hash}, but {manifest_path} has {tokenizer_config_hash}; "
                            "train into a new out folder")
    saved = _read(path / "model_config.json", GPTConfig)
    # Dropout and activation checkpointing may change between runs: the weights are the same.
    wanted = {**asdict(model_config), "dropout": saved.dropout,
              "activation_checkpointing": saved.activation_checkpointing}
    if asdict(saved) != wanted:  # before the special tokens: another vocabulary moves them too
        diff = ", ".join(f"{k} {v} != {wanted[k]}" for k, v in asdict(saved).items() if v != wanted[k])
        raise NarratorError(f"{path}: checkpoint model differs from the one configured for {manifest_path} ({diff})")
    if state.boundary_token != boundary_token:
        raise NarratorError(f"{path}: checkpoint marks recording boundaries with token {state.boundary_token}, but "
                            f"{manifest_path} read with this data config gives {boundary_token}; train into a new out folder")
    if state.separator_token != separator_token:
        raise NarratorError(f"{path}: checkpoint's separator token is {state.separator_token}, but {manifest_path} "
                            f"read with this data config gives {separator_token}; train into a new out folder")
    accelerator.load_state(str(path / "accelerate"))
    return state


def check_complete(path: Path) -> None:
    """Refuse a folder that a killed save (step_X.tmp) or deletion (step_X.old) left: it may lack files."""
    if _INCOMPLETE_DIR.fullmatch(Path(path).name):
        raise NarratorError(f"{path}: an incomplete checkpoint (its save or deletion was killed), never loaded; "
                            "give a step_NNNNNNN folder or the training output folder")


def load_for_inference(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, GPTConfig, CheckpointMeta]:
    """The model of a checkpoint folder, or of the latest checkpoint in a training output folder, in eval mode."""
    path = Path(path)
    check_complete(path)
    if not (path / STATE_NAME).is_file():
        latest = latest_checkpoint(path)
        if latest is None:
            raise NarratorError(f"{path}: neither a checkpoint nor a training output folder with checkpoints")
        path = latest
    config = _read(path / "model_config.json", GPTConfig)
    meta = CheckpointMeta(path, read_state(path), _read_streams(path / STREAMS_NAME))
    weights_file = path / "model.safetensors"
    if not weights_file.is_file():
        raise NarratorError(f"{weights_file}: missing; the checkpoint is incomplete")
    weights = load_file(str(weights_file), device="cpu")
    for alias, source in TIED.items():
        weights[alias] = weights[source]
    model = GPT(config)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise NarratorError(f"{weights_file}: weights do not fit model_config.json ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), config, meta


def _link_or_copy(source: str | Path, target: Path) -> None:
    if storage.is_url(source):  # a token folder in an object store: the checkpoint keeps its own copy
        storage.download(source, target)
        return
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(source, target)


def _read_streams(path: Path) -> list[StreamInfo]:
    if not path.is_file():
        raise NarratorError(f"{path}: missing; the checkpoint is incomplete or older than the streams format")
    try:
        return [from_dict(StreamInfo, item) for item in json.loads(path.read_text())]
    except (json.JSONDecodeError, ConfigError, TypeError) as e:
        raise NarratorError(f"{path}: unreadable ({e})") from None


def _write_json(path: Path, data: dict | list) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


def _read(path: Path, cls: type):
    if not path.is_file():
        raise NarratorError(f"{path}: missing; the checkpoint is incomplete")
    try:
        return from_dict(cls, json.loads(path.read_text()))
    except (json.JSONDecodeError, ConfigError) as e:
        raise NarratorError(f"{path}: unreadable ({e})") from None
