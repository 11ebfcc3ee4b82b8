"""Training on a token folder with semantic and acoustic streams, in every layout: losses, metrics, checkpoints."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from narrator.errors import NarratorError
from narrator.streaming.layout import StreamShape, make_layout
from narrator.trainer import run
from narrator.trainer.checkpoint import latest_checkpoint, read_state
from narrator.trainer.generate import GenerateConfig, generate
from narrator.trainer.metrics import read_metrics
from narrator.trainer.model import GPT, PRESETS, GPTConfig

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_token_folder  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "train"
SHORT = ["max_steps=20", "data.num_workers=0", "eval_every=10", "eval_batches=2", "log_every=1", "plot_every=10",
         "checkpoint_every=10"]
TINY = ["batch_size=4", "model.preset=tiny", "model.block_size=64", "schedule.warmup_steps=5", "optim.lr=3.0e-3",
        "model.dropout=0.0"]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    """2 recordings x 20 s: semantic ids < 16 of 64 and 2 codebooks of acoustic codes < 16, random."""
    return make_token_folder(tmp_path_factory.mktemp("two"), n_codebooks=2, streams=("semantic", "acoustic"))


def train(config: str, tokens: Path, out: Path, *overrides: str, model: list[str] = TINY) -> int:
    argv = ["--config", str(CONFIGS / config), "--set", f"data.manifest={tokens}", "--set", f"out={out}"]
    return run.main(argv + [x for o in [*SHORT, *model, *overrides] for x in ("--set", o)])


def error_line(capsys) -> str:
    [line] = [line for line in capsys.readouterr().err.splitlines() if "narrator train: error:" in line]
    return line


@pytest.mark.parametrize("layout, groups, model", [
    ("interleaved", ["semantic", "acoustic/cb0", "acoustic/cb1"], []),  # the config's own model: ~9 s on 2 cores
    ("semantic", ["semantic"], TINY),
])
def test_semantic_layouts_train_and_log_a_loss_per_group_and_stream(tokens, tmp_path, layout, groups, model):
    out = tmp_path / "run"
    assert train("semantic_acoustic.yaml", tokens, out, f"data.layout={layout}", model=model) == 0
    records = read_metrics(out / "metrics.jsonl")
    losses = [r["train_loss"] for r in records]
    assert sum(losses[-3:]) / 3 < losses[0] - 1.0, losses
    last = records[-1]
    assert records[9]["val_loss"] > last["val_loss"]
    assert list(last["val_loss_per_group"]) == groups and "val_loss_per_codebook" not in last
    streams = ["semantic", "acoustic"] if layout == "interleaved" else ["semantic"]
    assert list(last["val_loss_per_stream"]) == streams
    assert (out / "val_loss.png").stat().st_size > 1000

    state = read_state(latest_checkpoint(out))
    layout_ = make_layout(layout, {"semantic": (1, 64), "acoustic": (2, 1024)})
    assert (state.layout, state.boundary_token, state.separator_token) == (layout, layout_.boundary_token, None)
    saved = json.loads((latest_checkpoint(out) / "streams.json").read_text())
    assert [s["name"] for s in saved] == streams
    assert state.tokenizer_config_hash == "+".join({"semantic": "test-semantic", "acoustic": "test-tokens"}[s]
                                                   for s in streams)
    assert f"layout: {layout}" in (out / "config.yaml").read_text()


def test_prefix_trains_and_records_its_separator_and_resume_refuses_another_layout(tokens, tmp_path, capsys):
    out = tmp_path / "run"
    assert train("semantic_acoustic.yaml", tokens, out, "data.layout=prefix", "max_steps=3") == 0
    state = read_state(latest_checkpoint(out))
    layout = make_layout("prefix", {"semantic": (1, 64), "acoustic": (2, 1024)})
    assert (state.layout, state.boundary_token, state.separator_token) == ("prefix", 2112, 2113)
    assert layout.special.separator == 2113
    assert {"separator", "padding"} & set(read_metrics(out / "metrics.jsonl")[-1]["val_loss_per_group"])

    assert train("semantic_acoustic.yaml", tokens, out, "data.layout=interleaved", "max_steps=6") == 1
    line = error_line(capsys)
    assert "trained with data.layout 'prefix'" in line and "with layout 'interleaved'" in line


def test_generate_asks_for_both_stages_of_a_prefix_model_with_one_line(tokens, tmp_path):
    out = tmp_path / "run"
    assert train("semantic_acoustic.yaml", tokens, out, "data.layout=prefix", "max_steps=1") == 0
    with pytest.raises(NarratorError) as e:
        generate(GenerateConfig(checkpoint=str(out), prompt=str(tmp_path / "never-read.wav"), device="cpu"))
    assert str(e.value) == (f"{out}: layout 'prefix' generates in two stages: give the prefix model as --checkpoint "
                            "and the semantic model as --semantic-checkpoint")


def test_flat_layout_reads_only_the_acoustic_stream_of_a_two_stream_folder(tokens, tmp_path):
    out = tmp_path / "run"
    assert train("tiny.yaml", tokens, out, "max_steps=2", "data.layout=acoustic") == 0
    state = read_state(latest_checkpoint(out))
    assert (state.layout, state.tokenizer_config_hash, state.boundary_token) == ("flat", "test-tokens", 2048)
    assert [s["name"] for s in json.loads((out / "streams.json").read_text())] == ["acoustic"]
    last = read_metrics(out / "metrics.jsonl")[-1]
    assert list(last["val_loss_per_group"]) == ["acoustic/cb0", "acoustic/cb1"]
    assert last["val_loss_per_codebook"] == list(last["val_loss_per_group"].values())
    assert last["val_loss_per_stream"] == {"acoustic": pytest.approx(last["val_loss"], abs=1e-3)}


def test_a_missing_stream_is_a_one_line_error_naming_it_and_the_streams_there(token_folder, tmp_path, capsys):
    assert train("semantic_acoustic.yaml", token_folder, tmp_path / "run") == 1
    assert error_line(capsys).endswith(f"{token_folder / 'manifest.json'}: layout 'interleaved' reads the semantic "
                                       "stream, which this token folder lacks (streams: acoustic); tokenize it first")


def test_vocab_mismatch_names_every_stream_and_special_token(tokens, tmp_path, capsys):
    assert train("semantic_acoustic.yaml", tokens, tmp_path / "run", "data.layout=prefix", "model.vocab_size=4097") == 1
    assert error_line(capsys).endswith(
        "read with layout 'prefix' (vocab 2114: semantic ids 0-63 (1 codebook x 64), acoustic ids 64-2111 "
        "(2 codebooks x 1024, per-codebook offsets), boundary token 2112, separator token 2113)")


@pytest.mark.parametrize("name, block", [("flat", 64), ("interleaved", 64), ("prefix", 60), ("semantic", 33)])
def test_per_group_losses_weighted_by_their_targets_make_the_overall_loss(name, block):
    layout = make_layout(name, {"semantic": StreamShape("semantic", 1, 64), "acoustic": StreamShape("acoustic", 2, 1024)})
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=block, vocab_size=layout.vocab_size, dropout=0.0, **PRESETS["tiny"]))
    windows = torch.randint(0, layout.vocab_size, (3, 4, block + 1))
    batches = [(w[:, :-1], w[:, 1:]) for w in windows]
    val = run.evaluate(Accelerator(cpu=True), model, batches, layout)

    with torch.no_grad():  # the plain mean over every target
        logits = torch.cat([model(x)[0] for x, _ in batches])
        y = torch.cat([y for _, y in batches])
        plain = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y).item()
    assert val.overall == pytest.approx(plain, rel=1e-5)
    assert sum(val.per_group[g] * val.targets[g] for g in val.per_group) / sum(val.targets.values()) == \
        pytest.approx(val.overall, rel=1e-9)
    groups = layout.target_groups(block)
    assert val.targets == {g: 12 * int(np.sum(groups == i)) for i, g in enumerate(layout.group_names)
                           if np.sum(groups == i)}
    for stream, loss in val.per_stream.items():
        mine = [g for g in val.per_group if g.split("/")[0] == stream]
        assert loss == pytest.approx(sum(val.per_group[g] * val.targets[g] for g in mine) /
                                     sum(val.targets[g] for g in mine))
    assert set(val.per_stream) == set(layout.streams) and all(math.isfinite(v) for v in val.per_group.values())


def test_dedup_semantic_trains_is_recorded_judged_at_its_measured_rate_and_never_mixed_up(tokens, tmp_path, capsys):
    """data.dedup_semantic: trained and recorded in the checkpoint; `narrator eval` gives bits/s at the collapsed ids'
    rate; a resume with the other setting, a dedup model as the semantic stage of generate, and dedup on another
    layout are each refused in one line."""
    from narrator.cli import main as narrator

    out = tmp_path / "dedup"
    assert train("semantic_acoustic.yaml", tokens, out, "data.layout=semantic", "data.dedup_semantic=true",
                 "max_steps=3", "eval_every=3", "eval_suite=[bits]") == 0
    [record] = [r for r in read_metrics(out / "metrics.jsonl") if "val_loss" in r]
    assert record["bits_per_second"] > 0  # eval_suite at the collapsed ids' measured rate
    state = read_state(latest_checkpoint(out))
    assert (state.layout, state.dedup_semantic, state.boundary_token) == ("semantic", True, 64)
    assert narrator(["eval", "--checkpoint", str(out), "--suite", "bits", "--json", str(tmp_path / "e.json")]) == 0
    printed = capsys.readouterr().out
    assert "layout semantic, semantic repeats collapsed" in printed and "durations are not modelled" in printed
    data = json.loads((tmp_path / "e.json").read_text())
    rate = data["tokens_per_second_per_stream"]["semantic"]
    assert data["dedup_semantic"] is True and 40 < rate < 50  # ids below 16: about 1 in 16 repeats
    assert data["bits_per_second"] == pytest.approx(data["nats_per_token_per_stream"]["semantic"] * rate / math.log(2),
                                                    abs=0.01)

    assert train("semantic_acoustic.yaml", tokens, out, "data.layout=semantic", "max_steps=6") == 1
    assert error_line(capsys).endswith("checkpoint was trained with data.dedup_semantic true, this run sets false; "
                                       "set it back or train into a new out folder")
    assert train("semantic_acoustic.yaml", tokens, tmp_path / "x", "data.dedup_semantic=true") == 1
    assert "'data.dedup_semantic': only the semantic layout collapses repeated ids, not 'interleaved'" in error_line(capsys)

    coarse = tmp_path / "prefix"
    assert train("semantic_acoustic.yaml", tokens, coarse, "data.layout=prefix", "max_steps=1") == 0
    with pytest.raises(NarratorError, match="trained with data.dedup_semantic: its ids hold no durations"):
        generate(GenerateConfig(checkpoint=str(coarse), semantic_checkpoint=str(out),
                                prompt=str(tmp_path / "never-read.wav"), device="cpu"))
