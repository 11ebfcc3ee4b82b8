"""MFU and achieved TFLOP/s: the FLOPs count (6N + 12 L d T) against a hand count, the GPU peak table, and
the trainer logging tflops on the CPU (where MFU has no peak and stays out of the record)."""

from pathlib import Path

import pytest

from narrator.trainer import run
from narrator.trainer.estimate import Workload, bf16_peak, peak_tflops
from narrator.trainer.metrics import read_metrics
from narrator.trainer.model import GPT, GPTConfig

TINY = Path(__file__).resolve().parent.parent / "configs" / "train" / "tiny.yaml"
# tiny.yaml on 4-codebook tokens: 2 layers, 64 wide, block 64, vocab 4 x 1024 + 1 (the boundary token)
TINY_SHAPE = dict(n_layer=2, n_head=2, n_embd=64, vocab_size=4097, block_size=64)
# By hand: tied embedding 4097 x 64 = 262,208; positions 64 x 64 = 4,096; per layer 4 matmuls 12 x 64^2 = 49,152
# and 2 LayerNorm weights 128, x 2 layers = 98,560; ln_f 64. N = 364,928.
TINY_PARAMS = 262_208 + 4_096 + 98_560 + 64
# 6 N (forward 2N, backward 4N) + 12 L d T (attention scores and weighted sum) = 2,189,568 + 98,304.
TINY_FLOPS = 2_287_872


def test_flops_per_token_is_6n_plus_the_attention_term_counted_by_hand():
    w = Workload(batch_size=4, **TINY_SHAPE)
    assert TINY_PARAMS == 364_928
    assert w.params == TINY_PARAMS == GPT(GPTConfig(**TINY_SHAPE)).num_params()  # the tied matrix once
    assert w.train_flops_per_token == 6 * TINY_PARAMS + 12 * 2 * 64 * 64 == TINY_FLOPS
    # Checkpointing recomputes the forward, which the model-FLOPs count leaves out; batch size does not enter.
    assert Workload(batch_size=32, activation_checkpointing=True, **TINY_SHAPE).train_flops_per_token == TINY_FLOPS


def test_window_turns_tokens_per_second_into_tflops_and_mfu():
    window = run.Window(flops_per_token=TINY_FLOPS, peak_tflops=989.4)
    window.add(2.0, tokens=60_000_000, seconds=0.5)
    window.add(1.0, tokens=40_000_000, seconds=0.5)  # 100 M tokens/s over the window
    record = window.record(step=2, lr=1e-3, val=None)
    assert record.tokens_per_s == 100_000_000
    assert record.tflops == pytest.approx(228.8, abs=0.05)  # 1e8 x 2,287,872 / 1e12 = 228.79
    assert record.mfu == pytest.approx(228.7872 / 989.4, abs=1e-4)  # 23.1%
    assert record.train_loss == 1.5

    off_gpu = run.Window(flops_per_token=TINY_FLOPS, peak_tflops=None)
    off_gpu.add(1.0, tokens=1000, seconds=1.0)
    record = off_gpu.record(step=1, lr=1e-3, val=None)
    assert record.mfu is None and record.tflops == pytest.approx(1000 * TINY_FLOPS / 1e12, rel=1e-3)  # 4 digits


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0),
                                        ("NVIDIA H200", 989.4), ("NVIDIA A100-SXM4-80GB", 312.0),
                                        ("NVIDIA L40S", 362.1), ("NVIDIA L4", 121.0), ("Tesla V100-SXM2-16GB", None)])
def test_bf16_peak_matches_the_most_specific_gpu_name(name, peak):
    assert bf16_peak(name) == peak


def test_metrics_jsonl_carries_tflops_on_cpu_and_no_mfu(token_folder, tmp_path):
    out = tmp_path / "run"
    argv = ["--config", str(TINY), "--set", f"data.manifest={token_folder}", "--set", f"out={out}",
            "--set", "max_steps=3", "--set", "eval_every=3", "--set", "checkpoint_every=3"]
    assert run.main(argv) == 0
    assert peak_tflops("cpu") is None
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert "mfu" not in r  # no peak on the CPU
        assert r["tflops"] == pytest.approx(r["tokens_per_s"] * TINY_FLOPS / 1e12, rel=2e-3), r
        assert r["tflops"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    tags = events.Tags()["scalars"]
    assert "tflops" in tags and "mfu" not in tags, tags
