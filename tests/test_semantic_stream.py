"""The semantic stream in `narrator tokenize`: added to a folder of acoustic tokens without touching
them, k-means fit once on a sample, ids aligned with the acoustic frames slot by slot, same keys."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from narrator.config import load_config
from narrator.errors import NarratorError
from narrator.tokenizers.config import TokenizeConfig
from narrator.tokenizers.inspect import inspect_tokens
from narrator.tokenfolder.manifest import Manifest
from narrator.tokenizers.pipeline import tokenize
from narrator.tokenfolder.shards import file_sha256

REPO = Path(__file__).resolve().parents[1]
OFFLINE = ["whisper.weights.mode=random", "encodec.weights.mode=random", "kmeans.k=16", "kmeans.sample_frames=4000",
           "ray.concurrency=2", "ray.batch_size=2", "shards.target_mb=0.02"]


def config(*overrides: str) -> TokenizeConfig:
    return load_config(TokenizeConfig, REPO / "configs/tokenize/semantic_acoustic.yaml", [*OFFLINE, *overrides])


def samples(path: Path) -> dict[str, np.ndarray]:
    with tarfile.open(path) as tar:
        return {m.name.split(".")[0]: np.load(io.BytesIO(tar.extractfile(m).read()), allow_pickle=False)
                for m in tar.getmembers() if m.name.endswith(".npy")}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, ray_local, speech_wav):
    d = tmp_path_factory.mktemp("audio")
    inputs = [str(speech_wav(d / "utt1.flac", 4.0, seed=1, sample_rate=16_000)),
              str(speech_wav(d / "utt2.wav", 7.3, seed=2)),
              str(speech_wav(d / "book.wav", 62.0, seed=3))]
    out = tmp_path_factory.mktemp("tokens")
    tokenize(config("streams=[acoustic]"), out, inputs)
    acoustic = {p.name: (file_sha256(p), p.stat().st_mtime_ns) for p in (out / "shards/acoustic").glob("*.tar")}
    report = tokenize(config(), out, inputs)  # streams: [semantic, acoustic]
    return out, inputs, acoustic, report


def test_adding_the_semantic_stream_leaves_the_acoustic_shards_byte_identical(folder):
    out, _, acoustic, report = folder
    assert {p.name: (file_sha256(p), p.stat().st_mtime_ns) for p in (out / "shards/acoustic").glob("*.tar")} == acoustic
    m = Manifest.load(out)
    assert [s.name for s in m.streams] == ["acoustic", "semantic"]
    assert report.added == [] and report.shards_written == len(m.shards) == len(acoustic) > 1
    assert all(set(s.files) == {"acoustic", "semantic"} for s in m.shards)


def test_both_streams_hold_the_same_chunks_aligned_slot_by_slot(folder):
    out, *_ = folder
    m = Manifest.load(out)
    semantic = m.stream("semantic")
    assert (semantic.kind, semantic.frame_rate, semantic.n_codebooks, semantic.codebook_size) == ("whisper-kmeans", 50.0, 1, 16)
    for shard in m.shards:
        acoustic_ids, semantic_ids = (samples(out / shard.files[name].path) for name in ("acoustic", "semantic"))
        assert list(acoustic_ids) == list(semantic_ids)  # same keys, same order
        for key, codes in acoustic_ids.items():
            ids = semantic_ids[key]
            assert codes.shape[0] == 2 and ids.ndim == 1 and ids.dtype == np.int16
            assert codes.shape[1] % 3 == 0 and ids.shape[0] == codes.shape[1] // 3 * 2  # 3 frames, 2 ids per 40 ms
            assert 0 <= ids.min() and ids.max() < 16
    ids = np.concatenate([v for s in m.shards for v in samples(out / s.files["semantic"].path).values()])
    print(f"semantic ids used: {len(np.unique(ids))} of 16")
    assert len(np.unique(ids)) >= 4
    assert m.tokens("semantic") * 3 == m.tokens("acoustic")  # 2 ids vs 2 codebooks x 3 frames per slot


def test_the_kmeans_fit_is_recorded_and_reused(folder):
    out, inputs, _, _ = folder
    semantic = Manifest.load(out).stream("semantic")
    meta = json.loads((out / "kmeans/semantic.json").read_text())
    assert semantic.kmeans["file"] == "kmeans/semantic.json" and semantic.kmeans["k"] == meta["k"] == 16
    assert semantic.kmeans["centroids_sha256"] == meta["centroids"]["sha256"] == file_sha256(out / "kmeans/semantic.npy")
    assert semantic.weights.file == "whisper_tiny.en_random_seed0.safetensors"
    before = (out / "kmeans/semantic.npy").stat().st_mtime_ns
    again = tokenize(config(), out, inputs)
    assert (again.added, again.shards_written, again.chunks_encoded) == ([], 0, 0)
    assert (out / "kmeans/semantic.npy").stat().st_mtime_ns == before


def test_inspect_reports_each_stream(folder):
    out, *_ = folder
    text = inspect_tokens(out)
    assert "stream:    semantic: whisper-kmeans, 1 x 16 ids at 50 Hz" in text and "(0.18 M per hour)" in text
    assert "stream:    acoustic: encodec 1.5 kbps, 2 x 1024 ids at 75 Hz" in text and "(0.54 M per hour)" in text
    used = [line for line in text.splitlines() if line.startswith("  ids:")]
    assert len(used) == 2 and all("of the vocabulary used, entropy" in line for line in used)
    assert "k-means: kmeans/semantic.json, k=16, layer 3" in text
    stats = {t["name"]: t["stats"] for t in json.loads(inspect_tokens(out, as_json=True))["streams"]}
    assert stats["semantic"]["max_entropy_bits"] == 4.0 and 0 < stats["semantic"]["entropy_bits"][0] <= 4.0
    assert len(stats["acoustic"]["usage"]) == 2


def test_another_semantic_config_is_refused(folder):
    out, inputs, _, _ = folder
    with pytest.raises(NarratorError, match=r"holds semantic tokens made with another whisper config"):
        tokenize(config("whisper.layer=1"), out, inputs)


def test_kmeans_report_compares_layers_and_k(tmp_path, speech_wav, capsys):
    from narrator.cli import main

    audio = speech_wav(tmp_path / "a.wav", 40.0, seed=5)
    assert main(["kmeans-report", str(audio), "--config", str(REPO / "configs/tokenize/semantic_acoustic.yaml"),
                 "--set", "whisper.weights.mode=random", "--layers=-1,1", "--k", "8,32", "--seconds", "30",
                 "--abx-pairs", "0"]) == 0  # the ABX columns: tests/test_kmeans_report.py
    text = capsys.readouterr().out
    assert "Whisper tiny.en (random weights), 30 s of audio from 1 files" in text
    rows = [line.split() for line in text.splitlines() if line.split()[:1] in (["final"], ["1"])]
    assert [(r[0], r[2]) for r in rows] == [("final", "8"), ("final", "32"), ("1", "8"), ("1", "32")]
    assert all(0 <= float(r[5]) for r in rows)  # held-out relative error
    assert main(["kmeans-report", str(audio), "--k", "8,x"]) == 1
    assert "--k '8,x': expected whole numbers separated by commas" in capsys.readouterr().err


def test_an_interleaved_model_trains_and_continues_a_prompt_to_a_wav(folder, tmp_path, capsys):
    """tokenize (both streams) -> train (`interleaved`) -> generate: the prompt's semantic ids and codes are
    made by the tokenizers rebuilt from the checkpoint alone (the token folder's files moved away)."""
    import soundfile as sf

    from narrator.cli import main
    from narrator.trainer.checkpoint import latest_checkpoint
    from narrator.trainer.generate import BOUNDARY_SILENCE_S

    out, inputs, _, _ = folder
    train = tmp_path / "train"
    assert main(["train", "--config", str(REPO / "configs/train/semantic_acoustic.yaml"), "--set", f"data.manifest={out}",
                 "--set", f"out={train}", "--set", "max_steps=6", "--set", "eval_every=3", "--set", "checkpoint_every=3",
                 "--set", "log_every=1", "--set", "data.num_workers=0", "--set", "eval_batches=1"]) == 0
    checkpoint = latest_checkpoint(train)
    carried = {"whisper_tiny.en_random_seed0.safetensors", "encodec_random_seed0.safetensors", "semantic.json", "semantic.npy"}
    assert carried <= {p.name for p in checkpoint.iterdir()}
    records = [json.loads(line) for line in (train / "metrics.jsonl").read_text().splitlines()]
    assert set(records[-1]["val_loss_per_stream"]) == {"semantic", "acoustic"}

    moved = tmp_path / "moved"
    moved.mkdir()
    for rel in ("kmeans", "whisper_tiny.en_random_seed0.safetensors", "encodec_random_seed0.safetensors"):
        (out / rel).rename(moved / rel)
    try:
        capsys.readouterr()
        wav = tmp_path / "sample.wav"
        assert main(["generate", "--checkpoint", str(train), "--prompt", inputs[2], "--prompt-seconds", "1",
                     "--seconds", "1", "--out", str(wav)]) == 0
    finally:
        for rel in ("kmeans", "whisper_tiny.en_random_seed0.safetensors", "encodec_random_seed0.safetensors"):
            (moved / rel).rename(out / rel)
    printed = capsys.readouterr().out
    boundaries = int(printed.split("the model sampled ")[1].split()[0]) if "the model sampled" in printed else 0
    audio, rate = sf.read(wav)
    assert rate == 24000 and abs(len(audio) / rate - (2.0 + boundaries * (BOUNDARY_SILENCE_S - 0.04))) < 0.05


def test_two_stage_generation_chains_a_semantic_and_a_prefix_model(folder, tmp_path, capsys):
    """AudioLM's stages: a `semantic` model continues the prompt's ids, a `prefix` model voices them, EnCodec decodes."""
    import soundfile as sf

    from narrator.cli import main

    out, inputs, _, _ = folder
    runs = {}
    for layout in ("semantic", "prefix"):
        runs[layout] = tmp_path / layout
        assert main(["train", "--config", str(REPO / "configs/train/semantic_acoustic.yaml"), "--set", f"data.manifest={out}",
                     "--set", f"out={runs[layout]}", "--set", f"data.layout={layout}", "--set", "max_steps=4",
                     "--set", "eval_every=4", "--set", "checkpoint_every=4", "--set", "data.num_workers=0",
                     "--set", "eval_batches=1", "--set", "model.block_size=64"]) == 0  # prefix: 8 slots a window
    wav = tmp_path / "two_stage.wav"
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(runs["prefix"]), "--semantic-checkpoint", str(runs["semantic"]),
                 "--prompt", inputs[2], "--prompt-seconds", "0.4", "--seconds", "0.8", "--out", str(wav)]) == 0
    printed = capsys.readouterr().out
    assert "s of semantic ids continued by" in printed
    with capsys.disabled():
        print("\n" + printed.strip().splitlines()[-1])
    audio, rate = sf.read(wav)
    assert rate == 24000 and 0.4 - 1e-3 <= len(audio) / rate <= 1.2 + 1e-3  # the prompt, and up to 0.8 s more
    # The stages swapped: one line naming the checkpoint and what it should be.
    assert main(["generate", "--checkpoint", str(runs["semantic"]), "--semantic-checkpoint", str(runs["prefix"]),
                 "--prompt", inputs[2], "--out", str(tmp_path / "x.wav")]) == 1
    assert "--checkpoint must be a 'prefix' model, this one has layout 'semantic'" in capsys.readouterr().err
