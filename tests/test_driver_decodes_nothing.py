"""The driver plans from headers alone; the actors decode each chunk once and judge its book as they go.

Decoding calls fail in the driver process here (the Ray actors are processes of their own), so a
tokenize that completes shows the driver decoded nothing. Books found bad by the actors are named
in one line each, left out of the manifest and their shards, and a rerun does not read them again.
"""

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from narrator.config import load_config
from narrator.tokenfolder.manifest import Manifest
from narrator.tokenizers.audio import read_segment
from narrator.tokenizers.chunking import plan_chunks
from narrator.tokenizers.config import TokenizeConfig
from narrator.tokenizers.encodec import EncodecTokenizer
from narrator.tokenizers.pipeline import tokenize
from narrator.tokenizers.plan import ShardPlan

SMALL = ["chunking.chunk_seconds=2.0", "shards.target_mb=0.009", "ray.concurrency=2", "ray.batch_size=2",
         "encodec.weights.mode=random"]


def no_decoding(*args, **kwargs):
    raise AssertionError("the driver decoded audio")


@pytest.fixture
def driver_cannot_decode(monkeypatch):
    for name in ("read", "blocks"):
        monkeypatch.setattr(sf, name, no_decoding)
        monkeypatch.setattr(sf.SoundFile, name, no_decoding)


def undecodable_in_the_middle(path: Path, speech_wav) -> Path:
    """A FLAC whose header and first seconds are fine and whose middle is garbage."""
    speech_wav(path, 8.0, seed=7, fmt="FLAC")
    data = bytearray(path.read_bytes())
    data[len(data) // 2:] = np.random.default_rng(0).integers(0, 256, len(data) - len(data) // 2, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def run(out: Path, inputs: list[str], allow_outside_root: bool = False) -> tuple[object, str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = tokenize(load_config(TokenizeConfig, None, SMALL), out, inputs, allow_outside_root)
    return report, printed.getvalue()


def test_the_driver_decodes_nothing_and_bad_books_found_by_the_actors_are_dropped(
        tmp_path, ray_local, speech_wav, driver_cannot_decode, monkeypatch):
    d = tmp_path / "books"
    d.mkdir()
    good = [speech_wav(d / "a.wav", 5.0, seed=1), speech_wav(d / "b.mp3", 4.0, seed=2, fmt="MP3")]
    sf.write(d / "silent.wav", np.zeros(3 * 24_000, dtype=np.float32), 24_000)
    broken = undecodable_in_the_middle(d / "broken.flac", speech_wav)
    vanishing = speech_wav(d / "vanishing.wav", 3.0, seed=3)
    saved = ShardPlan.save

    def save_then_lose_a_book(plan):  # the plan is fixed, then the book is deleted before it is encoded
        saved(plan)
        vanishing.unlink(missing_ok=True)

    monkeypatch.setattr(ShardPlan, "save", save_then_lose_a_book)
    inputs = [str(good[0]), str(d / "silent.wav"), str(broken), str(vanishing), str(good[1])]
    report, printed = run(tmp_path / "tokens", inputs)
    manifest = Manifest.load(tmp_path / "tokens")
    books = list(manifest.iter_books(tmp_path / "tokens"))
    assert [b.id for b in books] == ["a", "b"]
    assert report.added == ["a", "silent", "broken", "vanishing", "b"]
    skipped = [line for line in printed.splitlines() if line.startswith("skipped ")]
    assert [line.split(":")[0] for line in skipped] == [f"skipped {d / n}" for n in ("silent.wav", "broken.flac", "vanishing.wav")]
    assert "silent (peak -inf dBFS" in skipped[0] and "unreadable audio at" in skipped[1] and "file not found" in skipped[2]
    assert {Path(f.source).name for f in manifest.failed} == {"silent.wav", "broken.flac", "vanishing.wav"}
    # Every shard in the manifest holds exactly its samples; the bad books' chunks are nowhere.
    for shard in manifest.shards:
        with tarfile_names(tmp_path / "tokens" / shard.files["acoustic"].path) as names:
            assert len(names) == shard.samples and all(n.split("/")[0] in ("a", "b") for n in names)
    assert sum(s.samples for s in manifest.shards) == sum(b.chunks for b in books)

    monkeypatch.setattr(ShardPlan, "save", saved)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "tokens" / "shards" / "acoustic").glob("*.tar")}
    again, printed = run(tmp_path / "tokens", inputs[:3] + [str(good[1])])  # not read again, still named
    assert again.chunks_encoded == 0 and again.shards_written == 0
    assert sorted(Path(f.source).name for f in again.failed) == ["broken.flac", "silent.wav"]
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


@contextlib.contextmanager
def tarfile_names(path: Path):
    import tarfile

    with tarfile.open(path) as tar:
        yield sorted({m.name.split(".")[0] for m in tar.getmembers()})


def test_a_segment_book_is_tokenized_from_its_offset(tmp_path, ray_local, speech_wav):
    """A lhotse cut is a stretch of its recording: planned from its start and duration, read from there."""
    recording = speech_wav(tmp_path / "rec.wav", 9.0, seed=4)
    lhotse = pytest.importorskip("lhotse")
    rec = lhotse.Recording.from_file(str(recording), recording_id="rec")
    cut = lhotse.MonoCut(id="rec-cut1", start=3.0, duration=4.5, channel=0, recording=rec)
    manifest_path = tmp_path / "cuts.jsonl.gz"
    lhotse.CutSet.from_cuts([cut]).to_file(str(manifest_path))
    cfg = load_config(TokenizeConfig, None, SMALL)
    run(tmp_path / "tokens", [str(manifest_path)], allow_outside_root=True)  # lhotse stores absolute paths
    [book] = Manifest.load(tmp_path / "tokens").iter_books(tmp_path / "tokens")
    assert (book.id, book.duration_s, book.meta["recording"]) == ("rec-cut1", 4.5, "rec")
    specs = plan_chunks("rec-cut1", 4.5, cfg.chunking)
    assert book.chunks == len(specs)
    codec = EncodecTokenizer.from_weights_file(cfg.encodec, next((tmp_path / "tokens").glob("encodec_random*.safetensors")))
    with tarfile_arrays(tmp_path / "tokens" / "shards/acoustic/000000.tar") as arrays:
        first = arrays["rec-cut1/000000"]
    direct = codec.encode_chunk(read_segment(recording, 3.0 + specs[0].ctx_start_s, 3.0 + specs[0].ctx_end_s), specs[0])
    assert (first == direct).mean() > 0.97


@contextlib.contextmanager
def tarfile_arrays(path: Path):
    import tarfile

    with tarfile.open(path) as tar:
        yield {m.name.split(".")[0]: np.load(io.BytesIO(tar.extractfile(m).read()), allow_pickle=False)
               for m in tar.getmembers() if m.name.endswith(".npy")}
