"""Train the GPT on a token folder, on one process or many.

    python trainer/run.py --config configs/train/demo.yaml --set data.manifest=runs/tokens
    accelerate launch --config_file launch/accelerate/multi_gpu.yaml trainer/run.py --config ... --set ...

The steps read top to bottom in `train`: config -> accelerator -> data check -> model and optimizer
-> resume -> loaders -> loop (step, eval, log, plot, checkpoint) -> summary. SIGTERM or Ctrl-C
finishes the current step, saves a checkpoint and exits; rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import logging
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed
from tqdm import tqdm

from narrator.config import config_hash, load_config, save_config, to_dict
from narrator.errors import ConfigError, NarratorError
from narrator.streaming.dataset import (build_train_loader, build_val_loader, data_deal, data_vocab, open_folder,
                                        open_sources)
from narrator.streaming.layout import FlatLayout, Layout
from narrator.streaming.position import DataDeal, DataPosition, carry_over
from narrator.tokenfolder.manifest import MANIFEST_NAME, Manifest
from narrator.trainer.checkpoint import (ProcessState, TrainerState, check_complete, latest_checkpoint,
                                         list_checkpoints, read_process_states, read_state, resume_checkpoint,
                                         save_checkpoint)
from narrator.trainer.config import TrainConfig
from narrator.trainer.estimate import peak_tflops, workload_from_config
from narrator.trainer.eval_audio import EvalAudio
from narrator.trainer.evaluate import SuiteEval
from narrator.trainer.metrics import MetricsLog, make_trackers
from narrator.trainer.model import GPT
from narrator.trainer.optim import build_optimizer
from narrator.trainer.schedule import build_scheduler
from narrator.trainer.loop_state import CoverageLog, LoopState, Window


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="narrator train", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML training config (configs/train/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set data.manifest=runs/tokens (repeatable)")
    p.add_argument("--resume", nargs="?", const="auto", help="resume from OUT's latest checkpoint, or from PATH")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(TrainConfig, args.config, args.overrides)
        if args.resume is not None:
            cfg.resume = args.resume
        return train(cfg)
    except NarratorError as e:
        tqdm.write(f"narrator train: error: {e}", file=sys.stderr)  # below a progress bar, not glued to it
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C: stop without saving
        print("narrator train: interrupted; the last saved checkpoint is kept", file=sys.stderr)
        return 130


def train(cfg: TrainConfig) -> int:
    """Run (or resume) training to cfg.max_steps; returns 0, or 128 + signal number when stopped by a signal."""
    # save_state warns at every checkpoint that the tied lm_head.weight is stored once: that is intended.
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    out = Path(cfg.out)
    accelerator = make_accelerator(cfg, out)
    try:
        return _train(cfg, out, accelerator)
    finally:
        accelerator.end_training()


def _train(cfg: TrainConfig, out: Path, accelerator: Accelerator) -> int:
    set_seed(cfg.seed)
    main_process = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    print(f"rank {rank}/{world}: device {accelerator.device}, {accelerator.distributed_type.value}", flush=True)

    # Data first: the model's vocabulary must match the tokens (of every folder of a mix: open_sources checks).
    folders = [open_folder(source.manifest) for source in cfg.data.sources]
    manifest, manifest_dir = folders[0]
    cfg.model.vocab_size = check_vocab(cfg, manifest, manifest_dir / MANIFEST_NAME)
    layout, _ = data_vocab(cfg.data, manifest, manifest_dir / MANIFEST_NAME)
    streams = [manifest.stream(s, manifest_dir / MANIFEST_NAME) for s in layout.streams]  # what the layout reads
    tokens_hash = "+".join(s.config_hash for s in streams)
    # Files beside the shards (random-init weights, k-means centroids) go into every checkpoint for generate.
    codec_files = [manifest_dir / f for s in streams for f in s.files()]
    sources = open_sources(cfg.data, folders)  # every folder's shards checked, and a mix checked to be one kind
    for folder_manifest, folder in folders:
        split = cfg.data.split_of(folder_manifest.split)
        if split != folder_manifest.split and accelerator.is_main_process:
            print(f"data: {folder / MANIFEST_NAME}: validation split re-derived from data: {to_dict(split)} (the token "
                  f"folder's, fixed at tokenize time: {to_dict(folder_manifest.split)})", flush=True)
    model_config = cfg.model.gpt_config(cfg.model.vocab_size)
    start = resume_point(cfg, out)

    # Model and optimizer.
    model = GPT(model_config)
    n_params = model.num_params()  # counted before prepare(): ZeRO-3 leaves each rank a shard
    if cfg.model.compile:  # in place (nn.Module.compile): the wrappers and checkpoints see the same module and keys
        model.compile()
    optimizer = build_optimizer(model, cfg.optim, accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)

    # Resume: the run's step, and this process's loop state (LoopState), from the checkpoint if there is one
    # (checked against the data and model first); the schedule is rebuilt at that step.
    state = TrainerState(step=0, tokens_seen=0, world_size=world, config_hash=config_hash(cfg),
                         tokenizer_config_hash=tokens_hash, layout=cfg.data.layout_name,
                         shared_vocab=cfg.data.shared_vocab, boundary_token=layout.boundary_token,
                         separator_token=layout.special.separator, dedup_semantic=cfg.data.dedup_semantic)
    deal = data_deal(cfg.data, sources, world, cfg.data.seed)
    block = model_config.block_size
    peak = peak_tflops(accelerator.device)
    loop_state = LoopState(DataPosition.fresh(deal),
                             Window(flops_per_token=workload_from_config(cfg).train_flops_per_token,
                                    peak_tflops=peak * world if peak is not None else None),
                             CoverageLog(max(1, cfg.data.num_workers), block, rank if world > 1 else None,
                                         [s.manifest for s in cfg.data.sources] if len(folders) > 1 else None))
    if start is not None:
        resumed = resume_checkpoint(accelerator, start, model_config, tokens_hash, manifest_dir / MANIFEST_NAME,
                                    layout.boundary_token, layout=state.layout, separator_token=state.separator_token,
                                    dedup_semantic=state.dedup_semantic)
        state = dataclasses.replace(state, step=resumed.step, tokens_seen=resumed.tokens_seen)
        accelerator.print(f"resumed from {start} at step {state.step}")
        saved, note = carry_on(start, read_process_states(start), rank, deal, state.step)
        loop_state.load_state_dict(saved)
        if note:
            accelerator.print(note)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.optim.lr, cfg.max_steps, start_step=state.step)
    if state.step >= cfg.max_steps:
        accelerator.print(f"{out}: already trained to step {state.step} (max_steps {cfg.max_steps}); nothing to do")
        return 0
    if main_process:
        save_config(cfg, out / "config.yaml")
        (out / "streams.json").write_text(json.dumps(to_dict(streams), indent=1) + "\n")
        print(f"model: {cfg.model.preset} preset, {n_params / 1e6:.2f} M parameters, "
              f"vocab {model_config.vocab_size}, block {model_config.block_size}; "
              f"{sum(m.total_tokens for m, _ in folders):,} tokens in {sum(m.books for m, _ in folders)} books"
              f"{f' of {len(folders)} token folders' if len(folders) > 1 else ''}; "
              f"{world} process(es) x batch {cfg.batch_size} x grad_accum {cfg.grad_accum}")

    # Data, from where the checkpoint's loader was: the batches an uninterrupted run would see next.
    train_loader = build_train_loader(cfg.data, sources, block, cfg.batch_size, rank, world,
                                      seed=cfg.data.seed, start=loop_state.position)
    train_loader.worker_init_fn = functools.partial(shield_worker, train_loader.worker_init_fn)
    # The same eval_batches batches at every evaluation, on every process (a short val set is cycled).
    val_loader = build_val_loader(sources, block, cfg.batch_size, rank, world)
    val_batches = list(itertools.islice(itertools.cycle(val_loader), cfg.eval_batches))
    tokens_per_step = cfg.batch_size * cfg.grad_accum * world * block

    metrics = MetricsLog(accelerator, out, state.step)
    accelerator.init_trackers(cfg.wandb_project, config=flat_hparams(to_dict(cfg)))  # the trackers were named in make_trackers
    # Audio at each evaluation: the first validation window's start continued (main process; None if off or unable).
    eval_audio = EvalAudio.start(cfg, out, accelerator, layout, val_batches[0][0][0], streams, manifest_dir, metrics)
    # eval_suite: bits/s and spoken minimal pairs at each evaluation (main process; None if off or unable).
    suite_eval = SuiteEval.start(cfg, accelerator, sources, streams, manifest_dir)
    last_checkpoint = start
    progress = tqdm(total=cfg.max_steps, initial=state.step, disable=not main_process, unit="step", dynamic_ncols=True)
    val_loss = None
    with StopSignal() as stop:
        batches = loop_state.batches(train_loader)
        while state.step < cfg.max_steps:
            lr = optimizer.param_groups[0]["lr"]
            t0 = time.perf_counter()
            loss, stepped = train_step(accelerator, model, optimizer, scheduler, batches, cfg)
            if not stepped:  # a non-finite loss or gradient norm: nothing was updated
                skipped = loop_state.skip()
                if skipped > cfg.optim.skip_nonfinite:
                    raise NarratorError(f"non-finite loss ({loss}) at step {state.step + 1}: training diverged (lower "
                                        f"optim.lr, check the data); last good checkpoint: {last_checkpoint or 'none'}"
                                        + (f" ({skipped - 1} non-finite steps skipped before, optim.skip_nonfinite "
                                           f"{cfg.optim.skip_nonfinite})" if cfg.optim.skip_nonfinite else ""))
                if main_process:
                    progress.write(f"step {state.step + 1}: non-finite loss ({loss}) or gradient norm; skipped the "
                                   f"update ({skipped} of optim.skip_nonfinite {cfg.optim.skip_nonfinite})")
                continue
            loop_state.window.add(loss, tokens_per_step, time.perf_counter() - t0)
            state.step += 1
            state.tokens_seen += tokens_per_step
            final = state.step == cfg.max_steps
            val = (evaluate(accelerator, model, val_batches, layout)
                   if final or state.step % cfg.eval_every == 0 else None)
            val_loss = val.overall if val is not None else val_loss
            sample = (eval_audio.sample(accelerator.unwrap_model(model), state.step)
                      if val is not None and eval_audio is not None else None)
            progress.set_postfix(loss=f"{loss:.3f}", **loop_state.window.postfix(), refresh=False)
            for line in loop_state.coverage.lines():
                if main_process:
                    progress.write(line)
            if final or val is not None or state.step % cfg.log_every == 0:
                record = loop_state.record(state.step, lr, val, layout)
                record.sample = sample
                if val is not None and suite_eval is not None:
                    record = suite_eval.record(record, accelerator.unwrap_model(model), val_batches)
                metrics.log(record)
            if state.step % cfg.plot_every == 0:
                metrics.plot()
            stopping = stop.agreed(accelerator)
            if final or stopping or state.step % cfg.checkpoint_every == 0:
                last_checkpoint = save_checkpoint(accelerator, model, out, state, streams, cfg, cfg.keep_checkpoints,
                                                  files=codec_files, process=loop_state.state_dict())
            progress.update(1)
            if stopping:
                progress.close()
                metrics.plot()
                accelerator.print(f"stopped by {stop.name} at step {state.step}; saved {last_checkpoint}; "
                                  "rerun the same command to resume")
                return 128 + stop.signum
    progress.close()
    metrics.plot()
    if main_process:
        print(f"done: {state.step} steps, {state.tokens_seen / 1e6:.2f} M tokens; final train loss "
              f"{loop_state.window.last_loss:.4f}, val loss {val_loss:.4f}; checkpoint {last_checkpoint}; "
              f"metrics {out / 'metrics.jsonl'}, plots {out / 'train_loss.png'}, {out / 'val_loss.png'}")
    return 0


def make_accelerator(cfg: TrainConfig, out: Path) -> Accelerator:
    """The Accelerator for this config; the launcher (accelerate launch) decides DDP or DeepSpeed."""
    # Without CUDA (or with cpu: true) processes talk over gloo: `accelerate launch --multi_gpu
    # --num_processes 2` then gives 2-process CPU DDP (`--cpu --num_processes 2` starts one process).
    # A lone process must not ask for a backend: Accelerate would then expect a process group.
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not torch.cuda.is_available():  # what DeepSpeed would detect anyway, without its warning that it did
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if cfg.cpu and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise ConfigError("cpu: true would silently drop the DeepSpeed launch (Accelerate runs DDP instead); "
                          "set cpu: false (on a machine without GPUs, with DS_ACCELERATOR=cpu)")
    gloo = launched and (cfg.cpu or not torch.cuda.is_available())
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        quiet_deepspeed()
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        cpu=cfg.cpu,
        log_with=make_trackers(cfg.trackers, out, cfg.wandb_project),
        project_dir=str(out),
        kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if gloo else None,
    )
    if accelerator.gradient_accumulation_steps != cfg.grad_accum:
        raise ConfigError(f"the accelerate config sets gradient_accumulation_steps={accelerator.gradient_accumulation_steps} "
                          f"but the training config has grad_accum={cfg.grad_accum}; remove it from the accelerate config")
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None and cfg.optim.skip_nonfinite:
        raise ConfigError("optim.skip_nonfinite cannot be used under DeepSpeed: its engine steps the optimizer inside "
                          "backward, before the loss can be checked; set it to 0")
    if plugin is not None:  # the training config, not the launcher's file, sets these
        ds = plugin.deepspeed_config
        ds.update(deepspeed_batch(ds, cfg, accelerator.num_processes))
        ds["gradient_clipping"] = cfg.optim.grad_clip
        ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True  # model.safetensors under ZeRO-3
        offload = ds["zero_optimization"].get("offload_optimizer") or {}
        if offload.get("device", "none") != "none":  # pinned host memory: faster copies to and from the GPU
            offload.setdefault("pin_memory", True)
    return accelerator


def deepspeed_batch(ds: dict, cfg: TrainConfig, world: int) -> dict[str, int]:
    """DeepSpeed's batch keys as the training config sets them; a DeepSpeed config that fixes one otherwise is refused.

    Absent or "auto" keys are filled here: our loaders are not passed to prepare(), so Accelerate cannot.
    """
    total = cfg.batch_size * cfg.grad_accum * world
    wanted = {"train_micro_batch_size_per_gpu": (cfg.batch_size, f"batch_size {cfg.batch_size}"),
              "gradient_accumulation_steps": (cfg.grad_accum, f"grad_accum {cfg.grad_accum}"),
              "train_batch_size": (total, f"batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum} x {world} "
                                          f"processes = {total}")}
    file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")  # the accelerate config's deepspeed_config_file
    source, written = "the accelerate config's deepspeed_config", ds
    if file != "none" and Path(file).is_file():
        # Read the file itself: Accelerate adds gradient_accumulation_steps: 1 where it has none.
        source, written = file, json.loads(Path(file).read_text())
    for key, (value, why) in wanted.items():
        given = written.get(key, "auto")
        if given != "auto" and given != value:
            raise ConfigError(f'{source}: {key}={given}, but the training config gives {why}; set it to "auto" '
                              "or remove it")
    return {key: value for key, (value, _) in wanted.items()}


def quiet_deepspeed() -> None:
    """Keep a clean DeepSpeed run free of lines that look like faults and are not: DeepSpeed calls collectives
    torch deprecated (a FutureWarning per call, every step), and loading its C++ ops on a machine without
    CUDA makes torch warn in every process that there is no CUDA runtime."""
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def check_vocab(cfg: TrainConfig, manifest: Manifest, manifest_file: Path) -> int:
    """The model's vocabulary size: the layout's (stream ids + special tokens), refusing a configured size that differs."""
    layout, vocab = data_vocab(cfg.data, manifest, manifest_file)
    if cfg.model.vocab_size is not None and cfg.model.vocab_size != vocab:
        raise ConfigError(f"config model.vocab_size={cfg.model.vocab_size} does not match tokens in {manifest_file} "
                          f"read with layout {cfg.data.layout_name!r} ({describe_vocab(layout, cfg.data.shared_vocab)})")
    return vocab


def describe_vocab(layout: Layout, shared_vocab: bool = False) -> str:
    """'vocab 4097: acoustic ids 0-4095 (4 codebooks x 1024, per-codebook offsets), boundary token 4096'."""
    parts = []
    for name, ids in layout.stream_ranges.items():
        info = layout.infos[name]
        books = ("" if info.n_codebooks == 1 else
                 f", {'shared ids' if shared_vocab else 'per-codebook offsets'}")
        parts.append(f"{name} ids {ids.start}-{ids.stop - 1} ({info.n_codebooks} codebook"
                     f"{'s' if info.n_codebooks > 1 else ''} x {info.codebook_size}{books})")
    parts.append(f"boundary token {layout.special.boundary}")
    if layout.special.separator is not None:
        parts.append(f"separator token {layout.special.separator}")
    return f"vocab {layout.vocab_size}: " + ", ".join(parts)


def resume_point(cfg: TrainConfig, out: Path) -> Path | None:
    """The checkpoint to resume from, or None to start fresh, following cfg.resume."""
    latest = latest_checkpoint(out)
    if cfg.resume == "never":
        if latest is not None:
            raise NarratorError(f"{out}: already holds checkpoints (latest {latest.name}) and resume=never; "
                                "resume it (resume=auto) or train into another out folder")
        return None
    if cfg.resume == "auto":
        return latest
    path = Path(cfg.resume)
    check_complete(path)
    checkpoint = path if (path / "trainer_state.json").is_file() else latest_checkpoint(path)
    if checkpoint is None:
        raise NarratorError(f"{path}: resume path is neither a checkpoint nor a folder with checkpoints")
    step = read_state(checkpoint).step
    newer = [p.name for p in list_checkpoints(out) if read_state(p).step > step]
    if newer:
        raise NarratorError(f"{out}: holds checkpoints newer than {checkpoint} ({', '.join(newer)}); "
                            "remove them or train into another out folder")
    return checkpoint


def carry_on(checkpoint: Path, saved: list[ProcessState], rank: int, deal: DataDeal,
             step: int) -> tuple[ProcessState, str | None]:
    """This process's state from the checkpoint, and None; or, where its data position cannot carry over, a
    fresh one past every epoch the checkpoint's loaders began, and the line that says so."""
    if not saved:
        note = (f"data position: {checkpoint} holds none (an older checkpoint), so every token folder starts "
                f"afresh at epoch {step}; the batches differ from an uninterrupted run's")
        return ProcessState(DataPosition.fresh(deal, epoch=step)), note
    mine = saved[min(rank, len(saved) - 1)]
    position, changed = carry_over([s.data for s in saved], rank, deal)
    if changed is None:
        return dataclasses.replace(mine, data=position), None
    note = (f"data position: {checkpoint} was read with {changed}, so its position does not carry over: every "
            f"token folder starts afresh at epoch {position.workers[0].sources[0].epoch}; the batches differ from "
            "an uninterrupted run's")
    return dataclasses.replace(mine, data=position, coverage_parts=[]), note


def train_step(accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler, batches: Iterator, cfg: TrainConfig) -> tuple[float, bool]:
    """One optimizer step over grad_accum micro-batches: the loss averaged over them and all processes, and
    whether the update was made. A non-finite loss or gradient norm (both reduced, so every process agrees)
    steps neither the optimizer nor the schedule; its gradients are dropped."""
    losses = []
    for _ in range(cfg.grad_accum):
        x, y = (t.to(accelerator.device, non_blocking=True) for t in next(batches))
        with accelerator.accumulate(model):
            _, loss = model(x, y)
            accelerator.backward(loss)
            losses.append(loss.detach())
            if accelerator.sync_gradients:
                checks = [accelerator.reduce(torch.stack(losses).mean(), "mean")]
                if cfg.optim.grad_clip > 0:  # None or a float under DeepSpeed, which clips in its own step
                    norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                    checks += [torch.as_tensor(norm).to(checks[0])] if norm is not None else []
                # One read-back per step (each one stalls the GPU's queue); non-finite grads are never applied.
                mean, *rest = torch.stack(checks).tolist()
                finite = all(math.isfinite(v) for v in (mean, *rest))
                if finite:
                    optimizer.step()
                    scheduler.step()  # not prepared by Accelerate: stepped here, once per optimizer step
                optimizer.zero_grad(set_to_none=True)
    return mean, finite


@torch.no_grad()
def evaluate(accelerator: Accelerator, model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
             layout: Layout) -> ValLoss:
    """Mean loss over the fixed validation batches of every process: overall, per group of
    `layout.group_names` (a stream, or one codebook of it) and per stream.

    Windows start on a unit, so `layout.target_groups` names the group of every target: a loss that
    rises in one codebook or stream only (audiocraft logs the same) shows here before the mean moves.
    """
    device = accelerator.device
    block = batches[0][1].shape[1]
    groups = torch.from_numpy(layout.target_groups(block)).to(device)  # of each target position
    n_groups = len(layout.group_names)
    sums = torch.zeros(n_groups, device=device, dtype=torch.float64)
    counts = torch.zeros(n_groups, device=device, dtype=torch.float64)
    model.eval()
    for x, y in batches:
        logits, _ = model(x.to(device))
        losses = F.cross_entropy(logits.float().transpose(1, 2), y.to(device), reduction="none")  # [B, T]
        sums.index_add_(0, groups, losses.sum(0).double())
        counts.index_add_(0, groups, torch.full_like(groups, y.shape[0], dtype=torch.float64))
    model.train()
    sums, counts = accelerator.reduce(sums, "sum"), accelerator.reduce(counts, "sum")
    return ValLoss.from_sums(layout, sums.tolist(), counts.tolist())


@dataclasses.dataclass
class ValLoss:
    """One evaluation: the mean loss over every target, and over the targets of each group and stream."""

    overall: float
    per_group: dict[str, float]  # layout.group_names order; groups without targets left out
    per_stream: dict[str, float]  # layout.streams order: the token-weighted mean of the stream's groups
    targets: dict[str, int]  # targets per group

    @classmethod
    def from_sums(cls, layout: Layout, sums: list[float], counts: list[float]) -> "ValLoss":
        names = layout.group_names
        per_group = {n: s / c for n, s, c in zip(names, sums, counts) if c > 0}
        per_stream = {}
        for stream in layout.streams:
            mine = [i for i, n in enumerate(names) if n.split("/")[0] == stream and counts[i] > 0]
            if mine:
                per_stream[stream] = sum(sums[i] for i in mine) / sum(counts[i] for i in mine)
        return cls(sum(sums) / sum(counts), per_group, per_stream,
                   {n: int(c) for n, c in zip(names, counts) if c > 0})

    def per_codebook(self, layout: Layout) -> list[float] | None:
        """The flat layout's groups, codebook 0 first (metrics.jsonl's val_loss_per_codebook); None for others."""
        if not isinstance(layout, FlatLayout):
            return None
        return [self.per_group[n] for n in layout.group_names]


class StopSignal:
    """SIGTERM / SIGINT ask the loop to stop after the current step; a second Ctrl-C stops at once."""

    def __init__(self):
        self.signum = 0
        self._previous: dict[int, object] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint", file=sys.stderr, flush=True)

    def agreed(self, accelerator: Accelerator) -> bool:
        """True on every process once any process was signalled, so all save and stop at the same step."""
        if accelerator.num_processes == 1:
            return self.signum != 0
        flags = accelerator.gather(torch.tensor([self.signum], device=accelerator.device))
        if not self.signum and flags.max() > 0:
            self.signum = int(flags.max())
        return self.signum != 0

    def __enter__(self) -> "StopSignal":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def shield_worker(init_fn: Callable[[int], None] | None, worker_id: int) -> None:
    """DataLoader worker start-up: ignore SIGINT and SIGTERM, which the main process turns into a clean stop.

    Ctrl-C and launchers (torchrun kills each rank's process group) signal the workers too; a dead
    worker would make torch raise in the main process before its checkpoint is written. Workers
    still exit when the main process does.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if init_fn is not None:
        init_fn(worker_id)


def flat_hparams(tree: dict, prefix: str = "") -> dict:
    """Nested config -> {"optim.lr": 0.001, ...} with only the scalar types trackers accept."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


if __name__ == "__main__":
    sys.exit(main())
