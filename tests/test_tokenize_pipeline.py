"""`narrator tokenize` end to end on a local 2-CPU Ray: shards, manifest, failures, resume, refusal, inspect."""

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from narrator.config import load_config, to_dict
from narrator.errors import NarratorError
from narrator.tokenizers.audio import read_segment
from narrator.tokenizers.chunking import ChunkSpec, plan_chunks
from narrator.tokenizers.config import TokenizeConfig
from narrator.tokenizers.encodec import EncodecTokenizer, state_dict_sha256
from narrator.tokenizers.inspect import inspect_tokens
from narrator.tokenizers.manifest import Manifest
from narrator.tokenizers.pipeline import ChunkEncoderActor, resolve_inputs, tokenize
from narrator.tokenizers.shards import decode_npy, file_sha256

SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"

SMALL = ["chunking.chunk_seconds=2.0", "shards.chunks_per_shard=2", "ray.concurrency=2", "ray.batch_size=2"]


def config(*overrides: str) -> TokenizeConfig:
    return load_config(TokenizeConfig, None, [*SMALL, *overrides])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random EnCodec with filled codebooks, saved as a local 'pretrained' checkpoint."""
    path = tmp_path_factory.mktemp("weights") / "encodec_random.pt"
    torch.save(EncodecTokenizer(config("encodec.weights.mode=random", "encodec.weights.seed=4").encodec).model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, ray_local, speech_wav, checkpoint):
    d = tmp_path_factory.mktemp("books")
    books = [speech_wav(d / "a.wav", 7.0, seed=1), speech_wav(d / "b.flac", 5.0, seed=2, sample_rate=44_100, channels=2)]
    (d / "corrupt.mp3").write_bytes(b"ID3 but then nothing that decodes\n" * 100)
    sf.write(d / "silent.wav", np.zeros(5 * 24_000, dtype=np.float32), 24_000)
    speech_wav(d / "short.wav", 1.0)
    inputs = [str(p) for p in [*books, d / "corrupt.mp3", d / "silent.wav", d / "short.wav", d / "missing.wav"]]
    cfg = config(f"encodec.weights.checkpoint={checkpoint}")
    out = tmp_path_factory.mktemp("tokens")
    report = tokenize(cfg, out, inputs)
    return cfg, out, inputs, report


def shard_mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")}


def read_shard(path: Path) -> dict[str, dict]:
    samples: dict[str, dict] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, field = member.name.split(".", 1)
            data = tar.extractfile(member).read()
            samples.setdefault(key, {})[field] = np.load(io.BytesIO(data), allow_pickle=False) if field.endswith("npy") else json.loads(data)
    return samples


def test_manifest_lists_books_shards_failures_and_the_checkpoint_sha(first_run, checkpoint):
    cfg, out, inputs, report = first_run
    assert sorted(report.done) == ["a", "b"] and report.skipped == [] and report.chunks_encoded == 7
    m = Manifest.load(out)
    assert [(b.id, b.chunks, b.frames, b.shards) for b in m.books] == [
        ("a", 4, 525, ["shards/a-00000.tar", "shards/a-00001.tar"]),
        ("b", 3, 375, ["shards/b-00000.tar", "shards/b-00001.tar"])]
    assert [(s.path, s.samples, s.tokens) for s in m.shards] == [
        ("shards/a-00000.tar", 2, 1200), ("shards/a-00001.tar", 2, 900), ("shards/b-00000.tar", 2, 1200), ("shards/b-00001.tar", 1, 300)]
    assert all(s.sha256 == file_sha256(out / s.path) and s.bytes == (out / s.path).stat().st_size for s in m.shards)
    assert m.total_tokens == (525 + 375) * 4 == report.tokens
    failed = {Path(f.source).name: f.error for f in m.failed}
    assert failed == {"corrupt.mp3": "unsupported or corrupt audio (wav, flac, ogg and mp3 are read)",
                      "silent.wav": "silent (peak -inf dBFS is below silence_dbfs -60)",
                      "short.wav": "too short: 1.0 s, one chunk is 2 s", "missing.wav": "file not found"}
    assert [Path(f.source).name for f in report.failed] == list(failed)
    weights = m.tokenizer.weights
    assert (weights.mode, weights.source) == ("pretrained", str(checkpoint))
    assert weights.sha256 == state_dict_sha256(torch.load(checkpoint, weights_only=True))
    assert json.loads((out / "tokenizer.json").read_text())["weights"]["sha256"] == weights.sha256
    assert load_config(TokenizeConfig, out / "tokenize_config.yaml") == cfg


def test_shards_hold_each_chunks_tokens(first_run):
    cfg, out, inputs, _ = first_run
    tokenizer = EncodecTokenizer(cfg.encodec)
    specs = plan_chunks("b", 5.0, cfg.chunking)
    samples = read_shard(out / "shards/b-00000.tar") | read_shard(out / "shards/b-00001.tar")
    assert list(samples) == ["b/000000", "b/000001", "b/000002"]
    same = []
    for spec, sample in zip(specs, samples.values()):
        codes = sample["encodec.npy"]
        assert sample["json"] == {"book": "b", "chunk": spec.chunk, "start_s": spec.start_s, "end_s": spec.end_s,
                                  "frames": spec.frames, "stream": "encodec"}
        assert codes.dtype == np.int16 and codes.shape == (4, spec.frames)
        direct = tokenizer.encode_chunk(read_segment(inputs[1], spec.ctx_start_s, spec.ctx_end_s), spec)
        same.append(codes == direct)
    # Actors run one thread and batch windows, so float noise may flip a near-tie (measured 98.6%).
    assert np.mean([x.mean() for x in same]) > 0.97


def test_a_rerun_skips_every_complete_book(first_run):
    cfg, out, inputs, _ = first_run
    before = shard_mtimes(out)
    report = tokenize(cfg, out, inputs)
    assert report.skipped == ["a", "b"] and report.done == [] and report.chunks_encoded == 0 and len(report.failed) == 4
    assert shard_mtimes(out) == before


def test_a_killed_run_resumes_with_the_missing_shard_only(first_run):
    cfg, out, inputs, _ = first_run
    # What a kill leaves: the book's last shard half-written under .tmp, and no books/a.json yet.
    (out / "shards/a-00001.tar").rename(out / "shards/a-00001.tar.tmp")
    (out / "books/a.json").unlink()
    before = shard_mtimes(out)
    report = tokenize(cfg, out, inputs)
    assert report.done == ["a"] and report.skipped == ["b"] and report.chunks_encoded == 2
    after = shard_mtimes(out)
    assert {k: v for k, v in after.items() if k != "a-00001.tar"} == before
    assert (out / "books/a.json").is_file() and not (out / "shards/a-00001.tar.tmp").exists()
    m = Manifest.load(out)
    assert len(m.shards) == 4 and all(s.sha256 == file_sha256(out / s.path) for s in m.shards)


def test_other_settings_or_weights_are_refused(first_run, tmp_path):
    cfg, out, inputs, _ = first_run
    with pytest.raises(NarratorError, match=f"^{out}: holds tokens made with another tokenize config"):
        tokenize(config("chunking.chunk_seconds=4.0", f"encodec.weights.checkpoint={cfg.encodec.weights.checkpoint}"), out, inputs)
    state = torch.load(cfg.encodec.weights.checkpoint, weights_only=True)
    state["decoder.model.0.conv.conv.bias"] += 1.0
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(NarratorError, match=f"^{out}: holds tokens made with other EnCodec weights"):
        tokenize(config(f"encodec.weights.checkpoint={tmp_path / 'other.pt'}"), out, inputs)
    with pytest.raises(NarratorError, match="shards hold 2 chunks each"):
        tokenize(config("shards.chunks_per_shard=8", f"encodec.weights.checkpoint={cfg.encodec.weights.checkpoint}"), out, inputs)
    elsewhere = tmp_path / "a.wav"
    shutil.copy(inputs[0], elsewhere)  # another book with the same id
    report = tokenize(cfg, shutil.copytree(out, tmp_path / "tokens"), [str(elsewhere)])
    assert [f.error for f in report.failed] == [f"book id a already holds the tokens of {inputs[0]}"]


def test_an_actor_reports_unreadable_audio_as_one_line(first_run, ray_local, tmp_path):
    cfg, _, inputs, _ = first_run
    tokenizer = EncodecTokenizer(cfg.encodec)
    actor = ChunkEncoderActor(to_dict(cfg.encodec), [ray_local.put(tokenizer.model.state_dict())],
                              to_dict(tokenizer.weights_identity()), torch_threads=1, device="cpu")
    specs = plan_chunks("a", 4.0, cfg.chunking)
    batch = {"path": np.array([inputs[0], str(tmp_path / "gone.wav")]), **{
        k: np.array([getattr(s, k) for s in specs]) for k in ChunkSpec.__dataclass_fields__}}
    result = actor(batch)
    assert list(result["error"]) == [f"{tmp_path / 'gone.wav'}: file not found"] * 2
    batch["path"][1] = inputs[0]
    result = actor(batch)
    assert list(result["error"]) == ["", ""] and decode_npy(result["codes"][1]).shape == (4, 150)


def test_inspect_summarizes_and_flags_damaged_shards(first_run, tmp_path):
    copy = tmp_path / "tokens"
    shutil.copytree(first_run[1], copy)
    text = inspect_tokens(copy)
    assert "books:     2 (0.003 h), 7 chunks, 4 shards" in text and "3,600 tokens" in text
    assert "encodec 3 kbps, 4 codebooks x 1024 codes" in text and "pretrained from" in text
    assert "failed:    4" in text and "shards:    all 4 present" in text
    (copy / "shards/a-00000.tar").unlink()
    with open(copy / "shards/b-00001.tar", "r+b") as f:
        f.truncate(100)
    summary = json.loads(inspect_tokens(copy / "manifest.json", as_json=True))
    assert [p["path"] for p in summary["shard_problems"]] == ["shards/a-00000.tar", "shards/b-00001.tar"]
    assert summary["shard_problems"][0]["problem"] == "missing" and "truncated" in summary["shard_problems"][1]["problem"]
    assert "PROBLEMS:  2 of 4 shards" in inspect_tokens(copy)


def test_catalogs_and_book_ids(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    catalog = tmp_path / "books.txt"
    catalog.write_text("# my books\none/chapter 1.mp3\n\ntwo/chapter 1.mp3  # same stem\n/abs/Ünïcode name!.flac\n")
    books = resolve_inputs([str(catalog), str(tmp_path / "one" / "chapter 1.mp3"), str(tmp_path / "x.wav")])
    assert [b.source for b in books] == [str(tmp_path / "one/chapter 1.mp3"), str(tmp_path / "two/chapter 1.mp3"),
                                         "/abs/Ünïcode name!.flac", str(tmp_path / "x.wav")]
    ids = [b.id for b in books]
    assert ids[0].startswith("chapter_1-") and ids[1].startswith("chapter_1-") and ids[0] != ids[1]
    assert ids[2:] == ["n_code_name", "x"]
    assert [b.id for b in resolve_inputs([str(tmp_path / "two/chapter 1.mp3"), str(catalog)])][0] == ids[1]  # order-free
    with pytest.raises(NarratorError, match="missing.txt: catalog file not found"):
        resolve_inputs([str(tmp_path / "missing.txt")])


@pytest.mark.skipif(not SHARED_AUDIO.is_dir(), reason=f"{SHARED_AUDIO} is absent (real recordings for this test)")
def test_tokenizes_twenty_seconds_of_a_real_recording_with_random_weights(tmp_path, ray_local):
    folder = SHARED_AUDIO / "books" / "ljspeech_LJ001"
    catalog = tmp_path / "lj.txt"
    catalog.write_text("".join(f"{folder}/LJ001-{i:04d}.wav\n" for i in (1, 2, 3)))  # 9.7 + 1.9 + 9.7 s
    cfg = config("chunking.chunk_seconds=4.0", "encodec.weights.mode=random", "ray.concurrency=1")
    report = tokenize(cfg, tmp_path / "tokens", [str(catalog)])
    m = Manifest.load(tmp_path / "tokens")
    assert sorted(report.done) == ["LJ001-0001", "LJ001-0003"] and [f.error for f in m.failed] == ["too short: 1.9 s, one chunk is 4 s"]
    assert sum(b.duration_s for b in m.books) > 19
    codes = np.concatenate([s["encodec.npy"] for shard in m.shards for s in read_shard(tmp_path / "tokens" / shard.path).values()], axis=1)
    distinct = [len(np.unique(row)) for row in codes]
    print(f"real speech, {codes.shape[1]} frames: distinct codes per codebook {distinct}")
    assert min(distinct) >= 100


def test_inspect_shows_the_validation_window_of_each_book(first_run, capsys):
    from narrator.cli import main

    out = first_run[1]
    assert main(["inspect", str(out), "--set", "data.val_fraction=0.25", "--set", "data.val_center=0.5"]) == 0
    text = capsys.readouterr().out
    assert "validation = 25% of each book centred at 50%" in text
    manifest = Manifest.load(out)
    book = manifest.books[0]
    start, end = (book.duration_s * 0.375, book.duration_s * 0.625)
    line = next(line for line in text.splitlines() if line.split()[:1] == [book.id])
    shown = line.split("val ", 1)[1].removesuffix(" s")
    assert [float(x) for x in shown.split("-")] == pytest.approx([start, end], abs=1 / 75)
