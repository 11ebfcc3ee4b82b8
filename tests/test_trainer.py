"""The training loop end to end on a tiny token folder (2 recordings x 20 s, 4 codebooks), in this process."""

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from narrator.config import load_config
from narrator.errors import NarratorError
from narrator.streaming.dataset import EpochCoverage, TrainBatch
from narrator.tokenfolder.manifest import Manifest
from narrator.trainer import run
from narrator.trainer.checkpoint import (TrainerState, latest_checkpoint, list_checkpoints, load_for_inference,
                                         read_state, resume_checkpoint, save_checkpoint)
from narrator.trainer.config import TrainConfig
from narrator.trainer.metrics import drop_after, read_metrics
from narrator.trainer.model import GPT
from narrator.trainer.schedule import lr_at

TINY = Path(__file__).resolve().parent.parent / "configs" / "train" / "tiny.yaml"
TOKENS_PER_STEP = 4 * 64  # batch_size x block_size in tiny.yaml


def train(tokens: Path, out: Path, *overrides: str, resume: str | None = None) -> int:
    argv = ["--config", str(TINY), "--set", f"data.manifest={tokens}", "--set", f"out={out}"]
    argv += [x for o in overrides for x in ("--set", o)]
    return run.main(argv + (["--resume", resume] if resume else []))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "narrator train: error:" in line]


def test_trains_on_a_token_folder(token_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(token_folder, out) == 0

    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 21))
    assert all({"step", "train_loss", "lr", "tokens_per_s"} <= r.keys() for r in records)
    assert [r["step"] for r in records if "val_loss" in r] == [10, 20]
    losses = [r["train_loss"] for r in records]
    assert sum(losses[-3:]) / 3 < losses[0] - 1.5, losses  # starts at ln(4096) = 8.3
    assert records[-1]["val_loss"] < records[9]["val_loss"]
    per_codebook = records[-1]["val_loss_per_codebook"]  # 4 codebooks; their mean is the val loss
    assert len(per_codebook) == 4 and sum(per_codebook) / 4 == pytest.approx(records[-1]["val_loss"], abs=1e-3)
    cfg = load_config(TrainConfig, TINY, ["data.manifest=x"])
    assert [r["lr"] for r in records] == pytest.approx([lr_at(s, cfg.schedule, cfg.optim.lr, 20) for s in range(20)])
    assert (out / "train_loss.png").stat().st_size > 1000 and (out / "val_loss.png").stat().st_size > 1000

    assert [p.name for p in list_checkpoints(out)] == ["step_0000010", "step_0000020"]  # keep_checkpoints: 2
    last = latest_checkpoint(out)
    assert {p.name for p in last.iterdir()} == {"accelerate", "model.safetensors", "model_config.json",
                                                "trainer_state.json", "streams.json", "config.yaml", "process_0.json"}
    assert read_state(last) == TrainerState(step=20, tokens_seen=20 * TOKENS_PER_STEP, world_size=1,
                                            config_hash=read_state(last).config_hash,
                                            tokenizer_config_hash="test-tokens", layout="flat", shared_vocab=False,
                                            boundary_token=4096)
    assert "lm_head.weight" not in load_file(last / "model.safetensors")  # the tied weight is stored once
    assert load_config(TrainConfig, out / "config.yaml").model.vocab_size == 4097  # 4 x 1024 codes + boundary
    assert json.loads((out / "streams.json").read_text())[0]["config_hash"] == "test-tokens"

    model, config, meta = load_for_inference(out)
    assert meta.path == last and meta.state.step == 20 and meta.stream().n_codebooks == 4
    assert model.transformer.wte.weight is model.lm_head.weight and not model.training
    assert config.vocab_size == 4097 and config.block_size == 64
    assert model.generate(torch.zeros(1, 4, dtype=torch.long), 8).shape == (1, 12)
    assert "done: 20 steps" in capsys.readouterr().out


def test_each_epoch_reports_the_share_of_training_tokens_that_landed_in_a_window(token_folder, tmp_path, capsys):
    out = tmp_path / "run"  # one 20 s recording trains (the other is held out): ~93 windows of 65 tokens an epoch
    assert train(token_folder, out, "max_steps=60", "checkpoint_every=60", "eval_every=60", "log_every=7") == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    print("\n".join(lines))
    assert len(lines) >= 2 and all(f"epoch {i}: " in line for i, line in enumerate(lines))
    assert lines[0].endswith("of 6,000 training tokens landed in a window (block 64)")
    reports = [c for r in read_metrics(out / "metrics.jsonl") for c in r.get("epoch_coverage", [])]
    assert [c["epoch"] for c in reports] == list(range(len(lines)))
    assert all(c["tokens"] == 6000 and 6000 - 65 < c["covered"] <= 6000 for c in reports)
    assert f"{reports[0]['share']:.2%} of 6,000" in lines[0]


def test_an_epoch_is_reported_once_every_worker_finished_it():
    log = run.CoverageLog(workers=2, block_size=64, rank=None)
    x = torch.zeros(1, 64, dtype=torch.long)
    batches = [TrainBatch(x, x, [EpochCoverage(0, 1000, 990)]), TrainBatch(x, x, []),
               TrainBatch(x, x, [EpochCoverage(1, 1000, 1000), EpochCoverage(0, 3000, 2990)])]
    it = log.strip(batches)
    next(it)
    assert log.lines() == [] and log.records() == []  # one of two workers finished epoch 0
    next(it), next(it)
    assert log.lines() == ["epoch 0: 99.50% of 4,000 training tokens landed in a window (block 64)"]
    assert log.records() == [{"epoch": 0, "tokens": 4000, "covered": 3980, "share": 0.995}]
    assert log.lines() == [] and log.records() == []


def test_sigterm_saves_a_checkpoint_and_a_rerun_resumes(token_folder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    calls = []

    def step_then_sigterm(*args):
        loss = real_step(*args)
        calls.append(loss)
        if len(calls) == 7:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would, in the middle of step 7
        return loss

    real_step = run.train_step
    monkeypatch.setattr(run, "train_step", step_then_sigterm)
    before = signal.getsignal(signal.SIGTERM)  # not always SIG_DFL: ray.init installs its own
    assert train(token_folder, out) == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    assert [p.name for p in list_checkpoints(out)] == ["step_0000007"]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, 8))
    assert "stopped by SIGTERM at step 7" in capsys.readouterr().out

    monkeypatch.setattr(run, "train_step", real_step)
    assert train(token_folder, out) == 0  # resume: auto
    assert "resumed from" in capsys.readouterr().out
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 21))
    cfg = load_config(TrainConfig, TINY, ["data.manifest=x"])
    assert [r["lr"] for r in records] == pytest.approx([lr_at(s, cfg.schedule, cfg.optim.lr, 20) for s in range(20)])
    assert records[7]["train_loss"] < records[0]["train_loss"] - 0.8  # step 8 starts from the trained weights
    assert read_state(latest_checkpoint(out)).tokens_seen == 20 * TOKENS_PER_STEP

    assert train(token_folder, out) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_resume_restores_weights_and_optimizer_state(token_folder, tmp_path):
    manifest = Manifest.load(token_folder)
    cfg = load_config(TrainConfig, TINY, [f"data.manifest={token_folder}"])
    gpt = cfg.model.gpt_config(4097)

    def prepared(seed):
        torch.manual_seed(seed)
        accelerator = Accelerator(cpu=True)
        model = GPT(gpt)
        return (accelerator, *accelerator.prepare(model, torch.optim.AdamW(model.param_groups(0.1), lr=1e-3)))

    accelerator, model, optimizer = prepared(0)
    for _ in range(3):
        x = torch.randint(0, 4097, (2, 64))
        model(x, x)[1].backward()
        optimizer.step()
        optimizer.zero_grad()
    state = TrainerState(3, 3 * 128, 1, "cfg", "test-tokens", "flat", False, boundary_token=4096)
    path = save_checkpoint(accelerator, model, tmp_path / "run", state, manifest.streams, cfg, keep=1)

    accelerator2, model2, optimizer2 = prepared(1)
    with pytest.raises(NarratorError) as e:  # the same tokens read with another boundary id (shared_vocab)
        resume_checkpoint(accelerator2, path, gpt, "test-tokens", token_folder, boundary_token=1024)
    assert "boundaries with token 4096" in str(e.value) and "gives 1024" in str(e.value)
    assert resume_checkpoint(accelerator2, path, gpt, "test-tokens", token_folder, boundary_token=4096) == state
    for a, b in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(a, b)
    saved, restored = optimizer.state_dict()["state"], optimizer2.state_dict()["state"]
    assert saved.keys() == restored.keys() and len(saved) > 0
    for k in saved:
        torch.testing.assert_close(saved[k]["exp_avg_sq"], restored[k]["exp_avg_sq"])
        torch.testing.assert_close(saved[k]["step"], restored[k]["step"])
    assert model2.transformer.wte.weight is model2.lm_head.weight


def test_non_finite_loss_stops_with_one_line_error(token_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(token_folder, out, "optim.lr=1.0e+30", "checkpoint_every=1", "schedule.warmup_steps=0") == 1
    [line] = error_lines(capsys.readouterr().err)
    assert "non-finite loss" in line and "at step 2" in line
    assert f"last good checkpoint: {out / 'checkpoints' / 'step_0000001'}" in line
    assert [p.name for p in list_checkpoints(out)] == ["step_0000001"]  # the broken state is not saved


def test_vocab_mismatch_is_a_one_line_error(token_folder, tmp_path, capsys):
    assert train(token_folder, tmp_path / "run", "model.vocab_size=1024") == 1
    [line] = error_lines(capsys.readouterr().err)
    assert f"config model.vocab_size=1024 does not match tokens in {token_folder / 'manifest.json'}" in line
    assert ("read with layout 'flat' (vocab 4097: acoustic ids 0-4095 (4 codebooks x 1024, per-codebook offsets), "
            "boundary token 4096)") in line


def test_resume_refuses_other_tokens_and_resume_never_refuses_old_checkpoints(token_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(token_folder, out, "max_steps=2") == 0
    assert train(token_folder, out, "max_steps=4", "resume=never") == 1
    assert "already holds checkpoints" in error_lines(capsys.readouterr().err)[0]

    other = shutil.copytree(token_folder, tmp_path / "other-tokens")  # the same codes, made another way
    manifest = Manifest.load(other)
    manifest.streams[0].config_hash = "other-tokens"
    manifest.save(other / "manifest.json")
    assert train(other, out, "max_steps=4") == 1
    [line] = error_lines(capsys.readouterr().err)
    assert "tokenizer config_hash test-tokens" in line and "other-tokens" in line
    assert json.loads((out / "streams.json").read_text())[0]["config_hash"] == "test-tokens"  # left as it was

    assert train(token_folder, tmp_path / "elsewhere", resume=str(tmp_path / "missing")) == 1
    assert "resume path" in error_lines(capsys.readouterr().err)[0]


def test_metrics_after_the_resumed_step_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "train_loss": 1.0, "lr": 0.1, "tokens_per_s": 5.0}) + "\n"
                            for s in range(1, 6)))
    drop_after(path, 3)  # a run killed at step 5 whose last checkpoint was step 3
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
