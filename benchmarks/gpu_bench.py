"""GPU measurements, one table: tokenize both streams with GPU actors in half precision (end to end and the
bare models), and the 16 GB presets' tokens/s, MFU and peak memory (vs `narrator estimate`) with and without
torch.compile.

    bash benchmarks/gpu.sh                     # on a GPU machine (sets up PYTHONPATH and runs this): ~8 min on an H100
    python benchmarks/gpu_bench.py --dry-run   # anywhere: the runs it would make, their steps and estimates

Tokenize: a synthetic book of --tokenize-minutes (5 minutes of synthetic speech repeated, 16-bit wav),
configs/tokenize/semantic_acoustic.yaml with random-init weights, --actors Ray actors sharing the GPU
(ray.num_gpus 1/actors each), ray.batch_size --tokenize-batch, encodec/whisper.precision --precision.
The k-means is fit once on 5 minutes first (not timed) and reused (kmeans.path). As in
benchmarks/tokenize_speed.py, a run's start-up (driver models and plan, actor start and their models) is
the wall time of the same command on one 2 s clip per actor at ray.batch_size 1, so that every actor starts
and builds its models, as in the timed run; "steady" is (audio) / (wall - start-up). The bare models
(EnCodec + Whisper + k-means on the same chunks, reading included, one process) run in fp32 and --precision
(fp16 by default: on the CPU it kept 10x closer to fp32 than bf16, tests/test_tokenizer_precision.py), and
the row says the share of acoustic codes and semantic ids that precision leaves equal to fp32 (random
weights: EnCodec's codes move far more than a trained model's would).

Training: each run is the real trainer (`trainer/run.py`'s `train`) for its steps on a synthetic token
folder, in a process of its own so one run's memory never counts in the next: every
configs/train/gpu16gb*.yaml (a config named *offload* under DeepSpeed ZeRO-2 with optimizer offload,
set up in-process as one rank) and gpu16gb.yaml with the base preset (GPT-2 small's size), each with
model.compile off and on (--compile). grad_accum is cut to 2 to keep runs short: memory only depends
on it being > 1, and the estimate is made with the same override. Peak memory is
torch.cuda.max_memory_allocated over the run (what the estimate's `peak` predicts); tokens/s is over the
steps after the first tenth (compilation and warm-up left out); MFU is the trainer's own
(estimate.Workload.train_flops_per_token x tokens/s over estimate.BF16_PEAK_TFLOPS; with activation
checkpointing the recomputed forward is not counted).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEASURE = ["grad_accum=2"]  # see the module docstring
SEMANTIC_ACOUSTIC = REPO / "configs" / "tokenize" / "semantic_acoustic.yaml"
CLIP_SECONDS = 2.0  # the start-up probe
TOKENIZE_NEEDS = ("ray", "pyarrow", "whisper", "sklearn", "encodec", "soxr", "soundfile")  # import names
# Steps per preset: a few hundred where a step is short; the whole plan stays near 8 minutes on an H100.
STEPS = {"base": 200, "medium": 120, "large": 50, "xl": 10}
HEADER = ["| run | precision | size | batch | speed | MFU | peak memory (estimate) | wall |",
          "|---|---|---|---|---|---|---|---|"]


@dataclass(frozen=True)
class Run:
    """One training run of the plan."""

    config: str
    overrides: tuple[str, ...]
    recipe: str  # estimate.RECIPES name
    steps: int
    compile: bool

    @property
    def name(self) -> str:
        return f"{self.config}{' ' + ' '.join(self.overrides) if self.overrides else ''}, {self.recipe}"

    @property
    def all_overrides(self) -> list[str]:
        return [*self.overrides, *(["model.compile=true"] if self.compile else [])]


def planned_runs(which: str = "presets", compile_modes: str = "both", steps: int | None = None,
                 presets: set[str] | None = None) -> list[Run]:
    """Every run: each 16 GB preset as shipped and base for comparison, eager and compiled (`compile_modes`);
    or ("zero") gpu16gb.yaml under ZeRO-1, 2 and 3 on one rank, to check the estimate's DeepSpeed terms.
    The DeepSpeed offload preset is run eager only unless --compile on; `presets` keeps only those presets."""
    from narrator.trainer.estimate import load_train_config

    modes = {"both": (False, True), "off": (False,), "on": (True,)}[compile_modes]
    if which == "zero":
        shapes = [("configs/train/gpu16gb.yaml", (), f"zero{stage}") for stage in (1, 2, 3)]
    else:
        shapes = [("configs/train/gpu16gb.yaml", ("model.preset=base", "batch_size=8"), "ddp")]
        for path in sorted((REPO / "configs" / "train").glob("gpu16gb*.yaml")):
            shapes.append((str(path.relative_to(REPO)), (), "zero2-offload" if "offload" in path.name else "ddp"))
    runs = []
    for config, overrides, recipe in shapes:
        preset = load_train_config(str(REPO / config), list(overrides)).model.preset
        if presets is not None and preset not in presets:
            continue
        for compiled in modes:
            if compiled and recipe != "ddp" and compile_modes == "both":
                continue
            runs.append(Run(config, overrides, recipe, steps or STEPS.get(preset, 50), compiled))
    return sorted(runs, key=lambda run: run.recipe != "ddp")  # DeepSpeed last: the others are measured even if it fails


def estimate(run: Run):
    from narrator.trainer.estimate import RECIPES, estimate_memory, load_train_config, workload_from_config

    cfg = load_train_config(str(REPO / run.config), [*run.overrides, *MEASURE])
    return estimate_memory(workload_from_config(cfg), next(r for r in RECIPES if r.name == run.recipe))


def one_rank_deepspeed_env(recipe: str, port: int = 29517) -> dict[str, str]:
    """What `accelerate launch --config_file launch/accelerate/deepspeed_zero2_offload.yaml --num_processes 1`
    sets (for "zero2-offload"; the stage and offload follow `recipe`)."""
    return {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": recipe[4],
            "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu" if recipe.endswith("offload") else "none",
            "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none", "ACCELERATE_DEEPSPEED_ZERO3_INIT": "false"}


def steady_rate(records: list[dict], key: str) -> float:
    """`key` over the steps after the first tenth (compilation, warm-up): tokens over seconds, i.e. the
    harmonic mean of the per-step values, as every step holds the same tokens."""
    steps = max(r["step"] for r in records)
    values = [r[key] for r in records if r["step"] > max(2, steps // 10) and r.get(key)]
    return len(values) / sum(1 / v for v in values) if values else float("nan")


def train_run(tokens: Path, out: Path, config: str, overrides: list[str], steps: int) -> dict:
    """In this process: train `config` for `steps` steps and return its measurements."""
    import torch

    from narrator.trainer.estimate import load_train_config
    from narrator.trainer.metrics import read_metrics
    from narrator.trainer.run import train

    cfg = load_train_config(str(REPO / config), [f"data.manifest={tokens}", f"out={out}", f"max_steps={steps}",
                                                 "eval_every=100000", "eval_batches=1", "log_every=1",
                                                 "plot_every=100000", "checkpoint_every=100000", "keep_checkpoints=1",
                                                 "data.num_workers=2", *overrides, *MEASURE])
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    assert train(cfg) == 0
    wall = time.perf_counter() - t0
    records = read_metrics(out / "metrics.jsonl")
    return {"peak_bytes": torch.cuda.max_memory_allocated(), "reserved_bytes": torch.cuda.max_memory_reserved(),
            "host_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "tokens_per_s": steady_rate(records, "tokens_per_s"), "mfu": steady_rate(records, "mfu"),
            "tflops": steady_rate(records, "tflops"), "wall_s": wall,
            "batch": f"{cfg.batch_size} x {cfg.grad_accum} x {cfg.model.block_size}"}


def child(args: argparse.Namespace) -> None:
    if args.recipe != "ddp":
        os.environ.update(one_rank_deepspeed_env(args.recipe))
    result = train_run(Path(args.tokens), Path(args.out), args.config, args.overrides, args.steps)
    print("RESULT " + json.dumps(result), flush=True)


def training_row(run: Run, tokens: Path, out: Path, timeout: int) -> str:
    """Run one training run in a child process; its table row (or a row saying why it failed)."""
    from narrator.trainer.estimate import load_train_config, workload_from_config

    precision = "bf16, compile" if run.compile else "bf16"
    if run.recipe != "ddp" and importlib.util.find_spec("deepspeed") is None:
        return f"| train {run.name} | {precision} | skipped: deepspeed not installed |"
    est = estimate(run)
    params = workload_from_config(load_train_config(str(REPO / run.config), list(run.overrides))).params
    cmd = [sys.executable, __file__, "--child", "--config", run.config, "--recipe", run.recipe, "--tokens", str(tokens),
           "--out", str(out), "--steps", str(run.steps), *(x for o in run.all_overrides for x in ("--set", o))]
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""  # bytes, despite text=True
        proc = subprocess.CompletedProcess(cmd, -1, stdout, f"timed out after {timeout} s")
    found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not found:
        print(proc.stderr[-3000:], file=sys.stderr, flush=True)
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"| train {run.name} | {precision} | {params / 1e6:,.0f} M | failed: {last[:300]} |"
    r = json.loads(found[-1][len("RESULT "):])
    mfu = f"{r['mfu']:.1%}" if r["mfu"] == r["mfu"] else "(no peak known)"
    row = (f"| train {run.name}, {run.steps} steps | {precision} | {params / 1e6:,.0f} M | {r['batch']} | "
           f"{r['tokens_per_s']:,.0f} tokens/s ({r['tflops']:.0f} TFLOP/s) | {mfu} | "
           f"{r['peak_bytes'] / 2**30:.2f} GiB ({est.peak / 2**30:.2f}; reserved {r['reserved_bytes'] / 2**30:.2f}) | "
           f"{r['wall_s']:.0f} s |")
    if run.recipe.endswith("offload"):
        row += f" host peak RSS {r['host_peak_bytes'] / 2**30:.1f} GiB (offload state {est.host / 2**30:.1f} GiB)"
    return row


def tokenize_config(precision: str, batch: int, actors: int, *more: str):
    """configs/tokenize/semantic_acoustic.yaml with random weights, GPU actors in `precision`."""
    from narrator.config import load_config
    from narrator.tokenizers.config import TokenizeConfig

    return load_config(TokenizeConfig, SEMANTIC_ACOUSTIC, [
        "whisper.weights.mode=random", "encodec.weights.mode=random", f"encodec.precision={precision}",
        f"whisper.precision={precision}", f"ray.concurrency={actors}", f"ray.num_gpus={1 / actors:.4f}",
        "ray.num_cpus=2", "ray.torch_threads=2", f"ray.batch_size={batch}", *more])


def tokenize_rows(minutes: float, precision: str, batch: int, actors: int) -> list[str]:
    """The tokenize rows: `tokenize` end to end with GPU actors, and the bare models in fp32 and `precision`."""
    import numpy as np
    import ray
    import soundfile as sf
    import torch

    from narrator.tokenizers.config import SAMPLE_RATE
    from narrator.tokenizers.encodec import synthetic_speech
    from narrator.tokenizers.pipeline import tokenize

    work = Path(tempfile.mkdtemp(prefix="gpu-tokenize-"))
    piece = synthetic_speech(300.0, seed=1).astype(np.float32)
    book, fit = work / "book.wav", work / "fit.wav"
    clips = [work / f"clip{i}.wav" for i in range(actors)]
    with sf.SoundFile(book, "w", SAMPLE_RATE, 1, "PCM_16") as f:
        for _ in range(max(1, round(minutes / 5))):
            f.write(piece)
    sf.write(fit, piece, SAMPLE_RATE, subtype="PCM_16")
    for clip in clips:
        sf.write(clip, piece[: int(CLIP_SECONDS * SAMPLE_RATE)], SAMPLE_RATE, subtype="PCM_16")
    audio_s = sf.info(book).duration

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count(), include_dashboard=False,
             log_to_driver=False, logging_level=logging.WARNING)
    try:
        # The fit embeds on the driver's CPU, where fp16 autocast is slow: fp32 there (the k-means file records the
        # encoder's weights and layer, not its precision, so the timed runs reuse it).
        tokenize(tokenize_config("fp32", batch, actors, "kmeans.sample_frames=20000"), work / "fit", [str(fit)])
        kmeans = work / "fit" / "kmeans" / "semantic.json"

        def timed(out: Path, paths: list[Path], *more: str) -> float:
            start = time.perf_counter()
            tokenize(tokenize_config(precision, batch, actors, f"kmeans.path={kmeans}", *more), out, [str(p) for p in paths])
            return time.perf_counter() - start

        startup = timed(work / "clips", clips, "ray.batch_size=1")  # one call per actor: all of them start
        wall = timed(work / "book", [book])
    finally:
        ray.shutdown()
    steady = (audio_s - actors * CLIP_SECONDS) / max(wall - startup, 1e-9)
    setting = f"{precision}, {actors} actors x {1 / actors:g} GPU, batch {batch} chunks"
    rows = [f"| tokenize, semantic + acoustic | {setting} | {audio_s / 60:.0f} min audio | {batch} x 32.2 s | "
            f"{audio_s / wall:,.0f}x real time end to end ({wall:.1f} s; start-up {startup:.1f} s, steady "
            f"{steady:,.0f}x) | | | {wall:.0f} s |"]
    codes = {}
    for p in ("fp32", precision) if precision != "fp32" else ("fp32",):
        rate, codes[p] = bare_models(tokenize_config(p, batch, 1), book, kmeans)
        agree = ""
        if p != "fp32":
            same = [float(np.mean(np.concatenate([a.ravel() for a in codes[p][s]]) ==
                                  np.concatenate([a.ravel() for a in codes["fp32"][s]]))) for s in (0, 1)]
            agree = f" (equal to fp32: {same[0]:.1%} of acoustic codes, {same[1]:.1%} of semantic ids)"
        rows.append(f"| bare models (EnCodec + Whisper + k-means), 1 process | {p}, batch {batch} chunks | "
                    f"{audio_s / 60:.0f} min audio | {batch} x 32.2 s | {rate:,.0f}x real time{agree} | | | "
                    f"{audio_s / rate:.0f} s |")
        torch.cuda.empty_cache()
    return rows


def bare_models(cfg, book: Path, kmeans: Path) -> tuple[float, tuple[list, list]]:
    """Audio seconds per wall second of both tokenizers on the GPU, chunk after chunk as an actor reads them
    (reading included, after one warm-up batch), and their tokens (acoustic, semantic)."""
    import torch

    from narrator.tokenizers.audio import probe, read_segment
    from narrator.tokenizers.chunking import plan_chunks
    from narrator.tokenizers.encodec import EncodecTokenizer
    from narrator.tokenizers.kmeans import load_kmeans
    from narrator.tokenizers.semantic import SemanticTokenizer
    from narrator.tokenizers.whisper import WhisperEmbedder

    models = [EncodecTokenizer(cfg.encodec, "cuda"),
              SemanticTokenizer(WhisperEmbedder(cfg.whisper, "cuda"), load_kmeans(kmeans), "cuda")]
    info = probe(book)
    specs = plan_chunks(book.stem, info.duration_s, cfg.chunking)
    batches = [specs[i: i + cfg.ray.batch_size] for i in range(0, len(specs), cfg.ray.batch_size)]
    warm = [read_segment(info, s.ctx_start_s, s.ctx_end_s) for s in batches[0]]
    for model in models:
        model.encode_chunks(warm, batches[0])
    torch.cuda.synchronize()
    tokens: tuple[list, list] = ([], [])
    start = time.perf_counter()
    for batch in batches:
        windows = [read_segment(info, s.ctx_start_s, s.ctx_end_s) for s in batch]
        for model, out in zip(models, tokens):
            out.extend(model.encode_chunks(windows, batch))  # numpy on return: synchronized
    wall = time.perf_counter() - start
    return sum(s.end_s - s.start_s for s in specs) / wall, tokens


def dry_run(args: argparse.Namespace) -> None:
    print("\n".join(HEADER))
    if not args.skip_tokenize:
        print(f"| tokenize, semantic + acoustic | {args.precision}, {args.actors} actors x {1 / args.actors:g} GPU, "
              f"batch {args.tokenize_batch} chunks | {args.tokenize_minutes:g} min audio | (not run) |")
        for p in dict.fromkeys(("fp32", args.precision)):
            print(f"| bare models (EnCodec + Whisper + k-means), 1 process | {p}, batch {args.tokenize_batch} chunks | "
                  f"{args.tokenize_minutes:g} min audio | (not run) |")
    for run in planned_runs(args.runs, args.compile, args.steps, args.presets):
        precision = "bf16, compile" if run.compile else "bf16"
        peak = estimate(run).peak / 2**30
        print(f"| train {run.name}, {run.steps} steps | {precision} | | | (not run) | | ({peak:.2f} GiB) | |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print the runs and their estimates; no GPU needed")
    ap.add_argument("--steps", type=int, default=None, help=f"steps of every training run (default: {STEPS})")
    ap.add_argument("--compile", choices=["both", "off", "on"], default="both",
                    help="train each preset eager and with model.compile (both; DeepSpeed eager only), or one way")
    ap.add_argument("--presets", type=lambda v: set(v.split(",")), default=None,
                    help="train only these presets, e.g. base,medium (default: all)")
    ap.add_argument("--runs", choices=["presets", "zero"], default="presets",
                    help="presets: every gpu16gb*.yaml (and base); zero: gpu16gb.yaml under ZeRO-1/2/3 on one rank")
    ap.add_argument("--run-timeout", type=int, default=300, help="seconds one training run may take")
    ap.add_argument("--skip-tokenize", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--tokenize-minutes", type=float, default=60.0, help="audio of the synthetic book (5 min repeated)")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp16", help="of the tokenizers' models")
    ap.add_argument("--tokenize-batch", type=int, default=16, help="ray.batch_size: chunks per actor call")
    ap.add_argument("--actors", type=int, default=4, help="tokenize actors sharing the GPU")
    ap.add_argument("--results", default="gpu_results.md", help="file under $OUT the table is written to after each row")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--recipe", default="ddp", help=argparse.SUPPRESS)
    ap.add_argument("--tokens", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.dry_run:
        return dry_run(args)

    import torch

    from narrator.trainer.estimate import peak_tflops

    lines = [f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 peak "
             f"{peak_tflops('cuda') or 'unknown'} TFLOP/s, {os.cpu_count()} CPUs", "", *HEADER]
    print("\n".join(lines), flush=True)

    def add(row: str) -> None:
        lines.append(row)
        print(row, flush=True)
        if os.environ.get("OUT"):  # after every row: a later run that hangs leaves the earlier rows
            Path(os.environ["OUT"], args.results).write_text("\n".join(lines) + "\n")

    missing = [m for m in TOKENIZE_NEEDS if importlib.util.find_spec(m) is None]
    if not args.skip_tokenize and missing:
        add(f"| tokenize | {args.precision} | skipped: {', '.join(missing)} not installed (their wheels go in .whl/) |")
    elif not args.skip_tokenize:
        try:
            for row in tokenize_rows(args.tokenize_minutes, args.precision, args.tokenize_batch, args.actors):
                add(row)
        except Exception as e:  # the training rows are still worth having
            add(f"| tokenize | {args.precision} | failed: {type(e).__name__}: {str(e).splitlines()[0][:300]} |")
    if not args.skip_train:
        sys.path.insert(0, str(Path(__file__).parent))
        from loader_speed import write_synthetic

        work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
        tokens = work / "tokens"
        write_synthetic(tokens, chunks=200, seconds=30.0, codebooks=4)
        for i, run in enumerate(planned_runs(args.runs, args.compile, args.steps, args.presets)):
            add(training_row(run, tokens, work / f"train{i}", args.run_timeout))
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
