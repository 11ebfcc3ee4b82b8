"""`narrator tokenize` end to end on a local 2-CPU Ray: shards, manifest, failures, resume, refusal, inspect."""

import contextlib
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
from narrator.tokenizers.encodec import EncodecTokenizer
from narrator.tokenizers.weights import state_dict_sha256
from narrator.tokenizers import pipeline
from narrator.tokenizers.inspect import inspect_tokens
from narrator.tokenfolder.manifest import Manifest
from narrator.tokenizers.pipeline import ChunkEncoderActor, resolve_inputs, tokenize
from narrator.tokenfolder.shards import decode_npy, file_sha256
import sys  # noqa: E402
sys.path.insert(0, str(Path(__file__).parent))
from conftest import book_shards, folder_books, shard_books  # noqa: E402

SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"

# Chunks of 2 s; shards of ~9 KB: a 2 s chunk is costed 1920 + 2 * 600 = 3120 bytes, so a shard takes
# about three chunks and books share shards.
SMALL = ["chunking.chunk_seconds=2.0", "shards.target_mb=0.009", "ray.concurrency=2", "ray.batch_size=2"]


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
    books = [speech_wav(d / "a.wav", 7.0, seed=1), speech_wav(d / "b.flac", 5.0, seed=2, sample_rate=44_100, channels=2),
             speech_wav(d / "short.wav", 1.0, seed=3)]  # shorter than a chunk: one chunk of 1 s
    (d / "corrupt.mp3").write_bytes(b"ID3 but then nothing that decodes\n" * 100)
    sf.write(d / "silent.wav", np.zeros(5 * 24_000, dtype=np.float32), 24_000)
    speech_wav(d / "tiny.wav", 0.3)
    (d / "empty.wav").write_bytes(b"")
    inputs = [str(p) for p in [*books, d / "corrupt.mp3", d / "silent.wav", d / "tiny.wav", d / "missing.wav", d / "empty.wav"]]
    cfg = config(f"encodec.weights.checkpoint={checkpoint}")
    out = tmp_path_factory.mktemp("tokens")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = tokenize(cfg, out, inputs)
    return cfg, out, inputs, report, printed.getvalue()


def shard_mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "shards" / "acoustic").glob("*.tar")}


def read_shard(path: Path) -> dict[str, dict]:
    samples: dict[str, dict] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, field = member.name.split(".", 1)
            data = tar.extractfile(member).read()
            samples.setdefault(key, {})[field] = np.load(io.BytesIO(data), allow_pickle=False) if field.endswith("npy") else json.loads(data)
    return samples


def test_books_share_shards_in_input_order_and_held_out_recordings_get_their_own(first_run, checkpoint):
    cfg, out, inputs, report, _ = first_run
    # The silent book is planned from its header (shard 3) and found silent by the actors: that shard is an empty tar.
    assert report.added == ["a", "b", "short", "silent"] and report.chunks_encoded == 11 and report.shards_written == 4
    m = Manifest.load(out)
    shards = book_shards(out)
    assert [(b.id, b.chunks, b.slots, shards[b.id], b.held_out) for b in folder_books(out)] == [
        ("a", 4, 175, [0, 1], (0, 0)), ("short", 1, 25, [1], (0, 0)), ("b", 3, 125, [3], (0, 125))]
    # a0 a1 | a2 a3 short0 | silent0 (an empty tar) | b0 b1 b2: each shard as full as ~9 KB allows; b, the short
    # recording held out whole (all are under long_book_seconds: none has an id_hash < 0.05, so the smallest's is),
    # last, in a shard of its own
    assert [(s.index, shard_books(out)[s.index], s.samples, s.train_slots, s.val_slots) for s in m.shards] == [
        (0, ["a"], 2, 100, 0), (1, ["a", "short"], 3, 100, 0), (3, ["b"], 3, 0, 125)]
    files = [s.files["acoustic"] for s in m.shards]
    assert [(f.path, f.tokens) for f in files] == [(f"shards/acoustic/{i:06d}.tar", t)
                                                   for i, t in zip([0, 1, 3], [1200, 1200, 1500])]
    assert all(f.sha256 == file_sha256(out / f.path) and f.bytes == (out / f.path).stat().st_size for f in files)
    assert m.total_tokens == (525 + 375 + 75) * 4 == report.tokens and m.pending == []
    assert [s.name for s in m.streams] == ["acoustic"]
    weights = m.stream("acoustic").weights
    assert (weights.mode, weights.source, weights.file) == ("pretrained", str(checkpoint), None)
    assert weights.sha256 == state_dict_sha256(torch.load(checkpoint, weights_only=True))
    assert json.loads((out / "shards/acoustic/stream.json").read_text())["weights"]["sha256"] == weights.sha256
    assert load_config(TokenizeConfig, out / "tokenize_config.yaml") == cfg


def test_bad_books_are_one_line_each_naming_the_path_given(first_run):
    _, out, inputs, report, printed = first_run
    reasons = {"corrupt.mp3": "unsupported or corrupt audio (wav, flac, ogg and mp3 are read)",
               "silent.wav": "silent (peak -inf dBFS is below silence_dbfs -60)",
               "tiny.wav": "too short: 0.30 s (min_seconds 0.5)", "missing.wav": "file not found",
               "empty.wav": "empty file (0 bytes)"}
    assert {Path(f.source).name: f.error for f in Manifest.load(out).failed} == reasons
    skipped = [line for line in printed.splitlines() if line.startswith("skipped ")]
    by_header = [path for path in inputs[3:] if not path.endswith("silent.wav")]  # planning reads headers only
    assert skipped == [f"skipped {path}: {reasons[Path(path).name]}" for path in by_header] + [
        f"skipped {inputs[4]}: {reasons['silent.wav']}; its chunks are left out of its shards"]


def test_shards_hold_each_chunks_tokens(first_run):
    cfg, out, inputs, _, _ = first_run
    tokenizer = EncodecTokenizer(cfg.encodec)
    samples = {k: v for i in (0, 1, 3) for k, v in read_shard(out / f"shards/acoustic/{i:06d}.tar").items()}
    assert list(samples) == [f"a/{c:06d}" for c in range(4)] + ["short/000000"] + [f"b/{c:06d}" for c in range(3)]
    same = []
    for source, book, duration in [(inputs[1], "b", 5.0), (inputs[2], "short", 1.0)]:
        for spec in plan_chunks(book, duration, cfg.chunking):
            sample = samples[f"{book}/{spec.chunk:06d}"]
            codes = sample["acoustic.npy"]
            assert sample["json"] == {"book": book, "chunk": spec.chunk, "start_s": spec.start_s, "end_s": spec.end_s,
                                      "frames": spec.frames, "stream": "acoustic"}
            assert codes.dtype == np.int16 and codes.shape == (4, spec.frames)
            direct = tokenizer.encode_chunk(read_segment(source, spec.ctx_start_s, spec.ctx_end_s), spec)
            same.append((codes == direct).mean())
    # Actors run one thread and batch windows, so float noise may flip a near-tie (measured 98.6%).
    assert np.mean(same) > 0.97


def test_a_rerun_does_nothing(first_run):
    cfg, out, inputs, _, _ = first_run
    index = {p: (p.read_bytes(), p.stat().st_mtime_ns) for folder in ("plan", "index") for p in (out / folder).iterdir()}
    before = shard_mtimes(out)
    report = tokenize(cfg, out, inputs)
    assert report.added == [] and report.chunks_encoded == 0 and report.shards_written == 0 and len(report.failed) == 5
    assert shard_mtimes(out) == before  # and the plan's parts and the shards' book indexes are left alone
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for folder in ("plan", "index") for p in (out / folder).iterdir()} == index


def test_a_killed_run_resumes_with_the_missing_shard_only(first_run):
    cfg, out, inputs, _, _ = first_run
    # What a kill leaves: a shard half-written under .tmp, never renamed nor logged.
    (out / "shards/acoustic/000001.tar").rename(out / "shards/acoustic/000001.tar.tmp")
    before = shard_mtimes(out)
    report = tokenize(cfg, out, inputs)
    assert report.added == [] and report.chunks_encoded == 3 and report.shards_written == 1
    after = shard_mtimes(out)
    assert {k: v for k, v in after.items() if k != "000001.tar"} == before
    assert not (out / "shards/acoustic/000001.tar.tmp").exists()
    m = Manifest.load(out)
    assert len(m.shards) == 3 and all(f.sha256 == file_sha256(out / f.path) for s in m.shards for f in s.files.values())


def test_a_shard_whose_record_was_not_logged_is_hashed_on_the_next_run(first_run, tmp_path):
    cfg, out, inputs, _, _ = first_run
    copy = shutil.copytree(out, tmp_path / "tokens")
    (copy / "shards/acoustic/written.jsonl").write_text("{torn line\n")  # killed between rename and log
    tokenize(cfg, copy, inputs)
    assert to_dict(Manifest.load(copy)) == to_dict(Manifest.load(out))


def test_new_books_are_appended_in_new_shards(first_run, tmp_path, speech_wav):
    cfg, out, inputs, _, _ = first_run
    copy = shutil.copytree(out, tmp_path / "tokens")
    before = shard_mtimes(copy)
    more = [str(speech_wav(tmp_path / "c.wav", 3.0, seed=5)), str(speech_wav(tmp_path / "d.wav", 0.5, seed=6))]
    report = tokenize(cfg, copy, inputs[:3] + more)
    assert report.added == ["c", "d"] and report.shards_written == 1 and report.chunks_encoded == 3
    assert {k: v for k, v in shard_mtimes(copy).items() if k in before} == before
    m = Manifest.load(copy)
    assert [b.id for b in folder_books(copy)] == ["a", "short", "b", "c", "d"]
    # shard 3 is the silent book's empty tar
    assert (m.shards[-1].files["acoustic"].path, shard_books(copy)[4]) == ("shards/acoustic/000004.tar", ["c", "d"])
    report = tokenize(cfg, copy, more)  # the earlier books need not be named again
    assert report.added == [] and report.shards_written == 0 and Manifest.load(copy).books == 5


def test_other_settings_or_weights_are_refused(first_run, tmp_path):
    cfg, out, inputs, _, _ = first_run
    with pytest.raises(NarratorError, match=f"^{out}: holds acoustic tokens made with another tokenize config"):
        tokenize(config("chunking.chunk_seconds=4.0", f"encodec.weights.checkpoint={cfg.encodec.weights.checkpoint}"), out, inputs)
    state = torch.load(cfg.encodec.weights.checkpoint, weights_only=True)
    state["decoder.model.0.conv.conv.bias"] += 1.0
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(NarratorError, match=f"^{out}: holds tokens made with other EnCodec weights"):
        tokenize(config(f"encodec.weights.checkpoint={tmp_path / 'other.pt'}"), out, inputs)
    elsewhere = tmp_path / "a.wav"
    shutil.copy(inputs[0], elsewhere)  # another book with the same id
    report = tokenize(cfg, shutil.copytree(out, tmp_path / "tokens"), [str(elsewhere)])
    assert [f.error for f in report.failed] == [f"book id a already holds the tokens of {inputs[0]}"]


def test_an_actor_reports_unreadable_audio_per_chunk_and_encodes_the_others(first_run, ray_local, tmp_path):
    cfg, _, inputs, _, _ = first_run
    tokenizer = EncodecTokenizer(cfg.encodec)
    recipe = {"name": "acoustic", "config": to_dict(cfg.encodec), "identity": to_dict(tokenizer.weights_identity()),
              "weights": [ray_local.put(tokenizer.model.state_dict())]}
    actor = ChunkEncoderActor([recipe], torch_threads=1, device="cpu")
    specs = plan_chunks("a", 4.0, cfg.chunking)
    batch = {"path": np.array([inputs[0], str(tmp_path / "gone.wav")]), "offset_s": np.array([0.0, 0.0]),
             "streams": np.array(["acoustic", "acoustic"]), **{
                 k: np.array([getattr(s, k) for s in specs]) for k in ChunkSpec.__dataclass_fields__}}
    result = actor(batch)
    assert list(result["error"]) == ["", "file not found"] and result["tokens_acoustic"][1] == b""
    assert decode_npy(result["tokens_acoustic"][0]).shape == (4, 150) and 0.05 < result["peak"][0] <= 1.0
    batch["path"][1] = inputs[0]
    result = actor(batch)
    assert list(result["error"]) == ["", ""] and decode_npy(result["tokens_acoustic"][1]).shape == (4, 150)
    batch["streams"][0] = ""  # a chunk whose shard already has every stream: nothing computed for it
    assert actor(batch)["tokens_acoustic"][0] == b""


def test_the_validation_split_is_the_folders_and_fixed_at_tokenize_time(first_run, tmp_path):
    cfg, out, inputs, _, _ = first_run
    assert Manifest.load(out).split == cfg.split  # recorded
    copy = shutil.copytree(out, tmp_path / "tokens")
    with pytest.raises(NarratorError, match=r"manifest.json: its validation split is fixed \(.*'val_fraction': 0.05.*"
                                            r"this config asks for .*'val_fraction': 0.2"):
        tokenize(load_config(TokenizeConfig, None, [*SMALL, "split.val_fraction=0.2"]), copy, inputs[:3])


def test_inspect_summarizes_and_flags_damaged_shards(first_run, tmp_path):
    copy = tmp_path / "tokens"
    shutil.copytree(first_run[1], copy)
    text = inspect_tokens(copy)
    assert "books:     3 (0.004 h), 8 chunks, 3 shards, 3,900 tokens" in text
    assert "stream:    acoustic: encodec 3 kbps, 4 x 1024 ids at 75 Hz, 3,900 tokens (1.08 M per hour)" in text
    assert "weights: pretrained from" in text
    assert "failed:    5" in text and "check:     every shard file present" in text
    assert "shards:    3 written, 0 pending" in text
    assert any(line.split()[:5] == ["1", "2", "books", "3", "chunks"] and "shards/acoustic/000001.tar" in line
               for line in text.splitlines())
    (copy / "shards/acoustic/000000.tar").unlink()
    with open(copy / "shards/acoustic/000003.tar", "r+b") as f:
        f.truncate(100)
    summary = json.loads(inspect_tokens(copy / "manifest.json", as_json=True))
    assert [p["path"] for p in summary["shard_problems"]] == ["shards/acoustic/000000.tar", "shards/acoustic/000003.tar"]
    assert summary["shard_problems"][0]["problem"] == "missing" and "truncated" in summary["shard_problems"][1]["problem"]
    assert "PROBLEMS:  2 shard files" in inspect_tokens(copy)


def test_catalogs_and_book_ids(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    catalog = tmp_path / "books.txt"
    catalog.write_text("# my books\none/chapter 1.mp3\n\ntwo/chapter 1.mp3  # same stem\n/abs/Ünïcode name!.flac\n")
    books = resolve_inputs([str(catalog), str(tmp_path / "one" / "chapter 1.mp3"), str(tmp_path / "x.wav")],
                           allow_outside_root=True)  # the catalog names an absolute path
    assert [b.source for b in books] == [str(tmp_path / "one/chapter 1.mp3"), str(tmp_path / "two/chapter 1.mp3"),
                                         "/abs/Ünïcode name!.flac", str(tmp_path / "x.wav")]
    ids = [b.id for b in books]
    assert ids[0].startswith("chapter_1-") and ids[1].startswith("chapter_1-") and ids[0] != ids[1]
    assert ids[2:] == ["n_code_name", "x"]
    assert [b.id for b in resolve_inputs([str(tmp_path / "two/chapter 1.mp3"), str(catalog)],
                                         allow_outside_root=True)][0] == ids[1]  # order-free
    with pytest.raises(NarratorError, match="missing.txt: catalog file not found"):
        resolve_inputs([str(tmp_path / "missing.txt")])


@pytest.mark.skipif(not SHARED_AUDIO.is_dir(), reason=f"{SHARED_AUDIO} is absent (real recordings for this test)")
def test_tokenizes_twenty_seconds_of_a_real_recording_with_random_weights(tmp_path, ray_local):
    folder = SHARED_AUDIO / "books" / "ljspeech_LJ001"
    catalog = tmp_path / "lj.txt"
    catalog.write_text("".join(f"{folder}/LJ001-{i:04d}.wav\n" for i in (1, 2, 3)))  # 9.7 + 1.9 + 9.7 s
    cfg = config("chunking.chunk_seconds=4.0", "encodec.weights.mode=random", "ray.concurrency=1")
    report = tokenize(cfg, tmp_path / "tokens", [str(catalog)], allow_outside_root=True)  # absolute paths
    m = Manifest.load(tmp_path / "tokens")
    assert report.added == ["LJ001-0001", "LJ001-0002", "LJ001-0003"] and m.failed == []
    chunks = {b.id: b.chunks for b in folder_books(tmp_path / "tokens")}
    assert chunks == {"LJ001-0001": 3, "LJ001-0002": 1, "LJ001-0003": 3}  # the 1.9 s utterance is one short chunk
    assert m.seconds > 21
    codes = np.concatenate([s["acoustic.npy"] for shard in m.shards
                            for s in read_shard(tmp_path / "tokens" / shard.files["acoustic"].path).values()], axis=1)
    distinct = [len(np.unique(row)) for row in codes]
    print(f"real speech, {codes.shape[1]} frames: distinct codes per codebook {distinct}")
    assert min(distinct) >= 100


def test_inspect_shows_the_validation_window_of_each_book(first_run, capsys):
    from narrator.cli import main

    out = first_run[1]
    assert main(["inspect", str(out), "--set", "data.val_fraction=0.25", "--set", "data.val_center=0.5",
                 "--set", "data.long_book_seconds=4"]) == 0
    text = capsys.readouterr().out
    assert "2 books of >= 4 s hold out 25% centred at 50%" in text and "of 1 shorter recordings are held out whole" in text
    book = folder_books(out)[0]
    start, end = (book.duration_s * 0.375, book.duration_s * 0.625)
    line = next(line for line in text.splitlines() if line.split()[:1] == [book.id])
    shown = line.split("val ", 1)[1].removesuffix(" s")
    assert [float(x) for x in shown.split("-")] == pytest.approx([start, end], abs=0.04)  # whole 40 ms slots


def test_a_damaged_mp3_is_tokenized_with_one_line_naming_it_and_none_of_the_decoders_own(
        tmp_path, ray_local, speech_wav, checkpoint, capfd, monkeypatch):
    clean = speech_wav(tmp_path / "clean.mp3", 12.0, fmt="MP3")
    data = bytearray(clean.read_bytes())
    garbage = np.random.default_rng(0).integers(0, 256, 20, dtype=np.uint8).tobytes()
    for offset in range(len(data) // 3, len(data) // 2, len(data) // 30):  # a few frames' headers and bits
        data[offset: offset + 20] = garbage
    damaged, again = tmp_path / "damaged.mp3", tmp_path / "again.mp3"
    damaged.write_bytes(bytes(data))
    again.write_bytes(bytes(data))
    monkeypatch.setattr(pipeline, "SHOWN_WARNINGS", 1)  # at corpus scale: the first few lines, then a count
    tokenize(config(f"encodec.weights.checkpoint={checkpoint}"), tmp_path / "tokens", [str(damaged), str(clean), str(again)])
    out, err = capfd.readouterr()
    lines = (out + err).splitlines()
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 2 and warnings[0].startswith(
        f"warning: {damaged}: damaged MP3 data: the decoder skipped or concealed it (") and warnings[0].endswith(
        "); tokenized as decoded") and "error" not in warnings[0], "\n".join(warnings)
    assert warnings[1].startswith("warning: 1 more books with damaged MP3 data, tokenized as decoded (all 2 are listed")
    assert not [line for line in lines if ("libmpg123" in line or "Note: " in line) and not line.startswith("warning:")]
    manifest = Manifest.load(tmp_path / "tokens")
    books = folder_books(tmp_path / "tokens")
    assert [b.id for b in books] == ["damaged", "again", "clean"] and manifest.warned == 2  # clean: held out, last
    assert [Path(b.source).name for b in books if b.warning] == ["damaged.mp3", "again.mp3"]
    assert "warnings:  2" in inspect_tokens(tmp_path / "tokens") and f"  {again}: damaged MP3 data" in inspect_tokens(tmp_path / "tokens")


def test_a_token_folder_of_the_previous_format_is_refused_in_one_line_naming_the_fix(first_run, tmp_path):
    cfg, out, inputs, _, _ = first_run
    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((out / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format": "narrator-tokens/2"}))
    (old / "plan.json").write_text('{"books": [], "shards": [], "format": "narrator-plan/1"}\n')
    fix = "re-tokenize its audio into a new --out folder with this version"
    with pytest.raises(NarratorError) as raised:
        tokenize(cfg, old, inputs[:1])
    assert str(raised.value).startswith(f"{old / 'manifest.json'}: token folder format 'narrator-tokens/2' is not "
                                        "'narrator-tokens/3'") and fix in str(raised.value)
    assert "\n" not in str(raised.value) and not (old / "plan").exists()  # nothing written
    from narrator.cli import main
    assert main(["inspect", str(old)]) == 1
    (old / "manifest.json").unlink()  # a run killed before its first manifest: the old plan says what it is
    with pytest.raises(NarratorError, match=f"^{old / 'plan.json'}: a token folder of format narrator-tokens/2 .*{fix}"):
        tokenize(cfg, old, inputs[:1])
    assert sorted(p.name for p in old.iterdir()) == ["plan.json"]
