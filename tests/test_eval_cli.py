"""`narrator eval` on trained checkpoints: the table, the JSON keys, the report, eval_suite during training, and
the bad inputs (an unknown suite, missing tokenizer files, a layout that cannot score pairs)."""

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from narrator.cli import main as narrator
from narrator.trainer.checkpoint import latest_checkpoint
from narrator.trainer.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_token_folder  # noqa: E402
from test_eval_audio import speech_tokens, train  # noqa: E402


@pytest.fixture
def item_cache(tmp_path, monkeypatch) -> Path:
    """Item sets go under this test's HOME (~/.cache/narrator/eval), not the user's."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home" / ".cache" / "narrator" / "eval"


def test_eval_prints_the_table_writes_the_json_and_the_report_shows_it_and_eval_suite_logs_at_evaluation(
        tmp_path_factory, ray_local, speech_wav, tmp_path, item_cache, capsys):
    tokens = speech_tokens(tmp_path_factory, speech_wav)  # random-init EnCodec, 4 codebooks; its weights file kept
    out = tmp_path / "run"
    assert train(tokens, out, "max_steps=10", "eval_every=10", "eval_audio_seconds=0", "eval_suite=[bits,lexical]",
                 "eval_suite_n=4") == 0
    assert "eval suite: bits, lexical at each evaluation (4 pairs each)" in capsys.readouterr().out
    evaluated = [r for r in read_metrics(out / "metrics.jsonl") if "val_loss" in r]
    assert [r["step"] for r in evaluated] == [10]
    record = evaluated[0]
    assert record["bits_per_second"] == pytest.approx(record["bits_per_second_per_stream"]["acoustic"])
    assert 0 <= record["lexical_accuracy"] <= 1 and len(record["lexical_ci95"]) == 2
    assert "syntactic_accuracy" not in record

    result = tmp_path / "eval.json"
    assert narrator(["eval", "--checkpoint", str(out), "--lexical-n", "6", "--syntactic-n", "3",
                     "--json", str(result)]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM-INIT weights" in printed  # one line says the tokens come from random-init weights
    assert "bits per second of audio" in printed and "lexical " in printed and "syntactic " in printed
    data = json.loads(result.read_text())
    assert data == json.loads((out / "eval" / "step_0000010.json").read_text())
    assert data["step"] == 10 and data["layout"] == "flat" and data["skipped"] == {}
    stream = data["bits_per_second_per_stream"]["acoustic"]
    assert data["bits_per_second"] == stream
    assert stream == pytest.approx(data["nats_per_token_per_stream"]["acoustic"] * 300 / math.log(2), rel=1e-3)
    assert data["unigram_bits_per_second_per_stream"]["acoustic"] > 0
    for suite, n in (("lexical", 6), ("syntactic", 3)):
        score = data[suite]
        assert score["n"] == n and 0 <= score["accuracy"] <= 1
        assert score["ci95"][0] <= score["accuracy"] <= score["ci95"][1]
        assert len(score["items"]["sha256"]) == 64
    assert (item_cache / "lexical-v1-n6-seed0" / "index.json").is_file()  # built once, then read from the cache

    assert narrator(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    section = page[page.index('id="evaluation"'):page.index('id="audio"')]
    assert "step 10" in section and data["lexical"]["items"]["sha256"][:16] in section
    assert "lexical_accuracy" in page  # eval_suite's curve


def test_eval_refuses_an_unknown_suite_and_a_checkpoint_without_its_codec_weights_in_one_line(
        tmp_path_factory, ray_local, speech_wav, tmp_path, item_cache, capsys):
    tokens = speech_tokens(tmp_path_factory, speech_wav)
    out = tmp_path / "run"
    assert train(tokens, out, "max_steps=2", "eval_every=2", "eval_audio_seconds=0") == 0
    capsys.readouterr()
    assert narrator(["eval", "--checkpoint", str(out), "--suite", "bits,wuggy"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["narrator eval: error: unknown evaluation suite 'wuggy' (known: bits, lexical, syntactic)"]

    # A copied checkpoint whose token folder is gone, without the codec weights it was trained with.
    copy = tmp_path / "copy"
    shutil.copytree(latest_checkpoint(out), copy)
    weights = next(copy.glob("encodec_random_*.safetensors"))
    weights.unlink()
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["data"]["manifest"] = str(tmp_path / "gone")
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    assert narrator(["eval", "--checkpoint", str(copy), "--suite", "lexical"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and weights.name in err[0] and "lexical" in err[0]
    assert narrator(["eval", "--checkpoint", str(copy), "--suite", "bits"]) == 0  # no tokenizer needed: only skipped
    assert "bits: skipped:" in capsys.readouterr().out


def test_eval_skips_the_pair_suites_of_a_prefix_model_in_one_line_and_runs_bits(tmp_path, item_cache, capsys):
    tokens = make_token_folder(tmp_path / "tokens", books=2, seconds=20.0, n_codebooks=2,
                               streams=("acoustic", "semantic"), semantic_k=64)
    out = tmp_path / "run"
    assert train(tokens, out, "data.layout=prefix", "model.block_size=96", "max_steps=2", "eval_every=2") == 0
    capsys.readouterr()
    assert narrator(["eval", "--checkpoint", str(out), "--suite", "bits,lexical", "--json",
                     str(tmp_path / "e.json")]) == 0
    printed = capsys.readouterr().out
    assert [line for line in printed.splitlines() if line.startswith("lexical: skipped: a prefix model")]
    data = json.loads((tmp_path / "e.json").read_text())
    assert set(data["bits_per_second_per_stream"]) == {"semantic", "acoustic"}
    assert data["bits_per_second"] == pytest.approx(sum(data["bits_per_second_per_stream"].values()), abs=0.02)
    assert data["dedup_unigram_bits_per_second"] < data["unigram_bits_per_second_per_stream"]["semantic"]
    assert "lexical" not in data and set(data["skipped"]) == {"lexical"}
