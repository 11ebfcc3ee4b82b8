"""`narrator estimate`: each memory term against what torch really keeps, and against measured peaks."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from narrator.cli import main as cli_main
from narrator.errors import NarratorError
from narrator.trainer.estimate import (RECIPES, GiB, Workload, activation_bytes, estimate_memory, load_train_config,
                                       parse_size, workload_from_config)
from narrator.trainer.model import GPT, GPTConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"
DDP, OFFLOAD = RECIPES[0], next(r for r in RECIPES if r.name == "zero2-offload")


def test_sizes_parse_with_their_units():
    assert parse_size("16GiB") == 16 * 2**30
    assert parse_size("16GB") == 16 * 10**9
    assert parse_size("80 gib") == 80 * 2**30
    assert parse_size("1.5TB") == 1_500_000_000_000
    for bad in ("16", "sixteen GiB", "16 GiBs", ""):
        with pytest.raises(NarratorError, match="expected a size with a unit"):
            parse_size(bad)


@pytest.mark.parametrize("bias", [False, True])
def test_counted_parameters_equal_the_model(bias):
    w = Workload(n_layer=3, n_head=4, n_embd=64, vocab_size=4097, block_size=128, batch_size=1, bias=bias)
    with torch.device("meta"):
        model = GPT(GPTConfig(block_size=128, vocab_size=4097, n_layer=3, n_head=4, n_embd=64, bias=bias))
    assert w.params == model.num_params()
    assert w.matmul_params == sum(p.numel() for p in model.parameters() if p.dim() == 2) - 128 * 64  # all but wpe


@pytest.mark.parametrize("precision", ["fp32", "autocast"])
def test_saved_activations_match_what_autograd_keeps(precision):
    """Sum the distinct storages autograd saves in one forward (saved-tensor hooks), parameters excluded:
    activations + autocast's bf16 weight copies + the loss's fp32 log-probabilities. Attention dropout
    is 0: with dropout the CPU takes SDPA's math kernel, which keeps the T x T matrix the GPU does not."""
    torch.manual_seed(0)
    L, H, D, V, T, B = 2, 4, 128, 4097, 256, 2
    model = GPT(GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=H, n_embd=D, dropout=0.0)).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "autocast" else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        model(x, y)
    w = Workload(L, H, D, V, T, B, dropout=0.0)
    expected = activation_bytes(w, precision) + (2 * w.matmul_params if precision == "autocast" else 0) + B * T * V * 4
    print(f"saved tensors, {precision}: estimate {expected:,} B, autograd keeps {sum(saved.values()):,} B")
    assert sum(saved.values()) == pytest.approx(expected, rel=0.01)


# One process per measurement: the real train_step (Accelerate, AdamW foreach, grad_accum 2) on the CPU.
# With glibc's mmap threshold fixed, every large tensor is its own mapping, so anonymous resident memory
# follows the live tensors; a tiny run first loads every kernel. The peak is sampled from RssAnon: the
# process's total RSS (ru_maxrss) also counts shared-library pages, which the kernel drops and re-reads
# when other processes need memory (that made the difference 10x too large on a busy machine).
MEASURE_CHILD = textwrap.dedent("""
    import json, os, sys, threading, time
    import torch
    from accelerate import Accelerator
    from narrator.config import load_config
    from narrator.trainer.config import TrainConfig
    from narrator.trainer.model import GPT
    from narrator.trainer.optim import build_optimizer
    from narrator.trainer.run import train_step
    from narrator.trainer.schedule import build_scheduler

    def run(overrides):
        cfg = load_config(TrainConfig, None, ["data.manifest=unused", "cpu=true", *overrides])
        accelerator = Accelerator(cpu=True, gradient_accumulation_steps=cfg.grad_accum)
        model = GPT(cfg.model.gpt_config(4097))
        model, opt = accelerator.prepare(model, build_optimizer(model, cfg.optim, torch.device("cpu")))
        sched = build_scheduler(opt, cfg.schedule, cfg.optim.lr, cfg.max_steps)
        g = torch.Generator().manual_seed(0)
        B, T = cfg.batch_size, cfg.model.block_size
        batches = iter([(torch.randint(0, 4097, (B, T), generator=g),) * 2 for _ in range(2 * cfg.grad_accum)])
        for _ in range(2):  # the second step runs with AdamW's moments allocated
            train_step(accelerator, model, opt, sched, batches, cfg)

    def rss_anon():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))

    def sample(peak, stop):
        while not stop.is_set():
            peak[0] = max(peak[0], rss_anon())
            time.sleep(0.0002)

    run(["model.preset=tiny", "model.block_size=64", "batch_size=2"])
    peaks = {}
    for overrides in json.loads(sys.argv[1]):
        base = rss_anon()
        peak, stop = [base], threading.Event()
        sampler = threading.Thread(target=sample, args=(peak, stop))
        sampler.start()
        run(overrides)
        stop.set()
        sampler.join()
        peaks[" ".join(overrides)] = peak[0] - base
    print(json.dumps(peaks))
""")


def test_estimated_peak_matches_measured_cpu_memory_of_a_training_step():
    shape = ["model.preset=small", "model.n_layer=4", "model.n_embd=256", "model.n_head=4", "model.block_size=256",
             "batch_size=4", "grad_accum=2", "model.dropout=0.0"]  # fp32
    runs = [shape + ["model.activation_checkpointing=true"], shape]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", MEASURE_CHILD, json.dumps(runs)], check=False, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    for overrides in runs:
        cfg = load_train_config(None, overrides)
        w = workload_from_config(cfg)
        assert not w.fused_adamw or cfg.optim.fused == "auto"
        w = dataclasses.replace(w, fused_adamw=False)  # auto is foreach on the CPU
        estimate = estimate_memory(w, DDP).peak
        got = measured[" ".join(overrides)]
        print(f"cpu peak, checkpointing={w.activation_checkpointing}: estimate {estimate / 2**20:.1f} MiB, "
              f"measured {got / 2**20:.1f} MiB ({estimate / got:.3f})")
        assert estimate == pytest.approx(got, rel=0.15)


# Peaks measured on an H100 with torch.cuda.max_memory_allocated by benchmarks/gpu.sh, one process per run,
# grad_accum 2 (benchmarks/RESULTS.md, "GPU" section, 2026-11-26).
H100_PEAKS = [("gpu16gb.yaml", ["model.preset=base", "batch_size=8"], DDP, 8.02),
              ("gpu16gb.yaml", [], DDP, 12.92),
              ("gpu16gb_700m.yaml", [], DDP, 13.99),
              ("gpu16gb_1p5b_offload.yaml", [], OFFLOAD, 7.57),
              ("gpu16gb.yaml", [], RECIPES[1], 12.45),  # ZeRO-1, one rank
              ("gpu16gb.yaml", [], RECIPES[2], 12.15),  # ZeRO-2
              ("gpu16gb.yaml", [], RECIPES[4], 12.45)]  # ZeRO-3


@pytest.mark.parametrize("config,overrides,recipe,measured_gib", H100_PEAKS)
def test_estimate_is_within_15_percent_of_the_h100_peaks(config, overrides, recipe, measured_gib):
    cfg = load_train_config(str(CONFIGS / config), [*overrides, "grad_accum=2"])
    assert estimate_memory(workload_from_config(cfg), recipe).peak / GiB == pytest.approx(measured_gib, rel=0.15)


def test_16gb_presets_reach_their_sizes_and_fit_with_their_recipes():
    large = workload_from_config(load_train_config(str(CONFIGS / "gpu16gb_700m.yaml"), []))
    assert large.params >= 700e6 and large.activation_checkpointing and large.mixed_precision == "bf16"
    assert estimate_memory(large, DDP).total <= 16 * GiB  # no offload
    assert estimate_memory(dataclasses.replace(large, activation_checkpointing=False), DDP).total > 16 * GiB
    xl = workload_from_config(load_train_config(str(CONFIGS / "gpu16gb_1p5b_offload.yaml"), []))
    assert xl.params >= 1.5e9
    assert estimate_memory(xl, OFFLOAD).total <= 16 * GiB
    assert all(estimate_memory(xl, r).total > 16 * GiB for r in RECIPES if not r.offload_optimizer)


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_estimate_runs_for_every_train_config(config, capsys):
    assert cli_main(["estimate", "--config", str(CONFIGS / config), "--gpu-memory", "16GiB", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["recipes"]) == {r.name for r in RECIPES}
    for r in report["recipes"].values():
        assert r["peak"] == sum(r[k] for k in ("weights", "gradients", "optimizer", "weight_copies", "buckets",
                                               "activations", "logits"))
    assert cli_main(["estimate", "--config", str(CONFIGS / config), "--num-gpus", "8", "--gpu-memory", "80GiB"]) == 0
    assert "largest micro-batch" in capsys.readouterr().out


def test_more_gpus_shrink_the_sharded_state_only():
    w = workload_from_config(load_train_config(str(CONFIGS / "gpu16gb.yaml"), []))
    one, eight = dataclasses.replace(w, num_gpus=1), dataclasses.replace(w, num_gpus=8)
    zero3 = RECIPES[-1]
    assert estimate_memory(eight, zero3).optimizer == estimate_memory(one, zero3).optimizer // 8
    assert estimate_memory(eight, DDP).optimizer == estimate_memory(one, DDP).optimizer
    assert estimate_memory(eight, DDP).activations == estimate_memory(one, DDP).activations


@pytest.mark.parametrize("args,message", [
    (["--gpu-memory", "16"], "--gpu-memory '16': expected a size with a unit"),
    (["--set", "model.preset=huge"], "'model.preset': 'huge' is not one of"),
    (["--num-gpus", "0"], "--num-gpus 0: must be >= 1"),
])
def test_bad_input_is_one_line(args, message, capsys):
    assert cli_main(["estimate", "--config", str(CONFIGS / "gpu16gb.yaml"), *args]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_gpu_bench_dry_run_lists_every_16gb_config_with_its_estimate():
    """benchmarks/gpu_bench.py runs on a GPU machine only; its plan and estimates must work anywhere."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_bench.py"
    out = subprocess.run([sys.executable, str(bench), "--dry-run"], check=False, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| train configs/")]
    for config in CONFIGS.glob("gpu16gb*.yaml"):  # as shipped (no overrides), with the estimated peak
        shipped = f"| train configs/train/{config.name}, "
        assert any(row.startswith(shipped) and " GiB) |" in row for row in rows), config.name
    assert any("gpu16gb_1p5b_offload.yaml, zero2-offload," in row for row in rows)
