"""Weights & Biases as a tracker (`trackers: [tensorboard, wandb]`), offline: the curves and every evaluation's audio
reach the W&B run beside TensorBoard, a resume logs on to the same run, and a tracker that is unknown or not
installed is refused in one line before training starts."""

import json
import struct
import sys
from pathlib import Path

import pytest
import soundfile as sf

from narrator.errors import ConfigError
from narrator.trainer import metrics
from narrator.trainer.metrics import WANDB_ID_NAME, read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from test_eval_audio import TINY, speech_tokens, train  # noqa: E402


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    """W&B with nothing leaving the machine and nothing written outside tmp_path."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))


def test_curves_and_evaluation_audio_reach_the_wandb_run_and_a_resume_logs_on_to_it(
        tmp_path_factory, ray_local, speech_wav, tmp_path, wandb_offline):
    tokens = speech_tokens(tmp_path_factory, speech_wav)
    out = tmp_path / "run"
    both = ["trackers=[tensorboard,wandb]", "wandb_project=narrator-test", "eval_audio_seconds=0.5",
            "eval_every=5", "checkpoint_every=5", "log_every=5"]
    assert train(tokens, out, *both, "max_steps=5") == 0
    run_id = (out / WANDB_ID_NAME).read_text().strip()
    assert train(tokens, out, *both, "max_steps=10") == 0  # resumed from step 5
    assert (out / WANDB_ID_NAME).read_text().strip() == run_id

    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)  # one W&B run, logged to twice
    assert (out / "tensorboard").is_dir()  # TensorBoard still written beside it

    # What the run recorded, step by step: the same losses as metrics.jsonl, each evaluation's continuation
    # beside them, and the prompt once, at the start (not again on the resume: W&B would drop a step below 10).
    logged: dict[int, dict] = {}
    for run in runs:
        for items in history(next(run.glob("run-*.wandb"))):
            logged.setdefault(items["_step"], {}).update(items)
    expected = {r["step"]: r for r in read_metrics(out / "metrics.jsonl")}
    assert sorted(logged) == [0, 5, 10] and sorted(expected) == [5, 10]
    assert "eval_audio/prompt/path" in logged[0]
    for step, record in expected.items():
        assert logged[step]["train_loss"] == pytest.approx(record["train_loss"])
        assert logged[step]["val_loss"] == pytest.approx(record["val_loss"])
        assert logged[step]["eval_audio/continuation/_type"] == "audio-file"
        assert "eval_audio/prompt/path" not in logged[step]

    # Each continuation is a wav in the run's media, decodable, at EnCodec's rate.
    wavs = sorted(p for r in runs for p in (r / "files" / "media" / "audio" / "eval_audio").glob("continuation_*.wav"))
    assert len(wavs) == 2
    for wav in wavs:
        audio, rate = sf.read(wav)
        assert rate == 24_000 and len(audio) > 0.4 * rate


def history(path: Path):
    """The history rows ({key: value}) of an offline W&B run file: LevelDB's log format (32 KiB blocks of records,
    each a 7-byte header, crc32, length and type, then its bytes; a record split across blocks is FIRST, MIDDLE...,
    LAST) after W&B's 7-byte file header, each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the block's zero padding
            pos += left
            continue
        chunk = data[pos + 7: pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL, FIRST start a record
        if kind in (1, 4):  # FULL, LAST end one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                yield {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}


def test_an_unknown_tracker_is_refused_in_one_line(tmp_path_factory, ray_local, speech_wav, tmp_path, capsys):
    tokens = speech_tokens(tmp_path_factory, speech_wav)
    capsys.readouterr()  # the tokenize run's output, when this test made the tokens
    assert train(tokens, tmp_path / "run", "trackers=[tensorboard,mlflow]") != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"narrator train: error: {TINY}: 'trackers': 'mlflow' is not one of tensorboard, wandb"]
    assert not (tmp_path / "run").exists()


def test_a_tracker_that_is_not_installed_is_refused_in_one_line(tmp_path, monkeypatch):
    real = metrics.importlib.util.find_spec
    monkeypatch.setattr(metrics.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ConfigError, match=r"'trackers': wandb is not installed \(pip install wandb\)"):
        metrics.make_trackers(["tensorboard", "wandb"], tmp_path, "narrator")
    assert not (tmp_path / WANDB_ID_NAME).exists()
