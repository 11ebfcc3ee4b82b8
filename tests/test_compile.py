"""model.compile: the trainer compiles the model in place (torch.compile, inductor on the CPU here), trains as the
eager model does, and saves a checkpoint whose keys are the plain model's: generate loads it and an eager run
resumes from it."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from narrator.trainer import run
from narrator.trainer.checkpoint import latest_checkpoint, load_for_inference
from narrator.trainer.metrics import read_metrics

TINY = Path(__file__).resolve().parent.parent / "configs" / "train" / "tiny.yaml"


def train(tokens: Path, out: Path, *overrides: str) -> int:
    argv = ["--config", str(TINY), "--set", f"data.manifest={tokens}", "--set", f"out={out}", "--set", "max_steps=3",
            "--set", "eval_every=3", "--set", "eval_batches=1", "--set", "checkpoint_every=3"]
    return run.main(argv + [x for o in overrides for x in ("--set", o)])


def test_a_compiled_model_trains_like_the_eager_one_and_saves_a_plain_checkpoint(token_folder, tmp_path):
    from torch._dynamo.utils import counters

    counters.clear()
    assert train(token_folder, tmp_path / "compiled", "model.compile=true") == 0
    assert counters["stats"]["unique_graphs"] > 0  # dynamo really captured the model
    assert train(token_folder, tmp_path / "eager") == 0
    compiled, eager = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("compiled", "eager"))
    # Same batches, same initial weights, dropout 0: only the kernels' float rounding differs.
    assert [r["train_loss"] for r in compiled] == pytest.approx([r["train_loss"] for r in eager], rel=1e-3)
    assert compiled[-1]["val_loss"] == pytest.approx(eager[-1]["val_loss"], rel=1e-3)

    checkpoint = latest_checkpoint(tmp_path / "compiled")
    keys = load_file(str(checkpoint / "model.safetensors")).keys()
    assert keys == load_file(str(latest_checkpoint(tmp_path / "eager") / "model.safetensors")).keys()
    assert not [k for k in keys if "_orig_mod" in k]
    model, _, _ = load_for_inference(tmp_path / "compiled")  # what narrator generate loads
    assert model.generate(torch.zeros(1, 4, dtype=torch.long), 4).shape == (1, 8)

    # The optimizer and model state (Accelerate's files) load into an eager run, which goes on from step 3.
    assert train(token_folder, tmp_path / "compiled", "max_steps=4") == 0
    assert [r["step"] for r in read_metrics(tmp_path / "compiled" / "metrics.jsonl")] == [1, 2, 3, 4]


def test_the_gpu_script_trains_each_preset_eager_and_compiled():
    """benchmarks/gpu_bench.py's plan (run on a GPU machine only): every 16 GB preset and base, eager and with
    model.compile; DeepSpeed eager only (its --dry-run: tests/test_estimate.py)."""
    import sys

    sys.path.insert(0, str(TINY.parents[2] / "benchmarks"))
    import gpu_bench

    runs = gpu_bench.planned_runs("presets", "both")
    ddp = [(r.config, r.overrides, r.compile) for r in runs if r.recipe == "ddp"]
    configs = {c for c, _, _ in ddp}
    assert configs == {"configs/train/gpu16gb.yaml", "configs/train/gpu16gb_700m.yaml"}
    assert sorted(ddp) == sorted({(c, o, flag) for c, o, _ in ddp for flag in (False, True)})  # each both ways
    assert [(r.config, r.compile) for r in runs if r.recipe != "ddp"] == [("configs/train/gpu16gb_1p5b_offload.yaml",
                                                                           False)]
    assert all(("model.compile=true" in r.all_overrides) == r.compile for r in runs)
    assert all(r.steps == 7 for r in gpu_bench.planned_runs("presets", "on", steps=7))
    # tokens/s over the steps after the first tenth: a compiling first step does not count
    records = [{"step": s, "tokens_per_s": 10.0 if s == 1 else 100.0 if s % 2 else 300.0} for s in range(1, 21)]
    assert gpu_bench.steady_rate(records, "tokens_per_s") == pytest.approx(150.0)  # steps 3-20: 100 and 300 by turns
