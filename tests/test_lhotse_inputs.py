"""Lhotse manifests as tokenize inputs: a RecordingSet's recordings and a CutSet's cuts (segments with their
text and speaker) become books, told from JSONL catalogs by their rows; bad rows are named by line."""

import gzip
import json
import sys

import numpy as np
import pytest
import soundfile as sf

from narrator.errors import NarratorError
from narrator.tokenizers.catalog import resolve_inputs

lhotse = pytest.importorskip("lhotse")
from lhotse import AudioSource, CutSet, MonoCut, Recording, RecordingSet, SupervisionSegment  # noqa: E402


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """corpus/ with two short wavs (one in a subfolder) and lhotse Recordings of them with relative paths."""
    folder = tmp_path / "corpus"
    (folder / "spk2").mkdir(parents=True)
    for name, seconds in [("a.wav", 2.0), ("spk2/b.wav", 3.0)]:
        sf.write(folder / name, np.zeros(int(16000 * seconds), np.float32), 16000)
    monkeypatch.chdir(folder)  # Recording.from_file keeps the path as given: relative to the manifest's folder
    return folder, [Recording.from_file("a.wav", recording_id="rec-a"), Recording.from_file("spk2/b.wav", recording_id="rec-b")]


def write_rows(path, *rows) -> str:
    """A gzip JSONL manifest of raw rows (lhotse dicts or anything else), for malformed-row tests."""
    with gzip.open(path, "wt") as f:
        f.writelines((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)
    return str(path)


def test_a_recording_set_is_one_book_per_recording_with_paths_from_the_manifests_folder(corpus, tmp_path):
    folder, recordings = corpus
    RecordingSet.from_recordings(recordings).to_file(folder / "recordings.jsonl.gz")
    RecordingSet.from_recordings(recordings[:1]).to_file(folder / "plain.jsonl")  # .jsonl too: told by its first row
    for manifest in ["recordings.jsonl.gz", "plain.jsonl"]:
        books = resolve_inputs([str(folder / manifest)])
        assert [(b.id, b.source, b.start_s, b.duration_s, b.meta) for b in books] == [
            ("rec-a", str(folder / "a.wav"), 0.0, None, {}), ("rec-b", str(folder / "spk2/b.wav"), 0.0, None, {})][:len(books)]
        assert books[0].given == f"{folder / manifest} line 1 (a.wav)"
    RecordingSet.from_recordings([recordings[0].resample(24000)]).to_file(folder / "resampled.jsonl.gz")
    assert [b.id for b in resolve_inputs([str(folder / "resampled.jsonl.gz")])] == ["rec-a"]  # we resample anyway


def test_a_cut_set_is_one_segment_book_per_cut_with_its_text_speaker_and_recording(corpus):
    folder, (a, b) = corpus
    cuts = [MonoCut("utt-1", start=0.5, duration=1.0, channel=0, recording=a, supervisions=[
                SupervisionSegment("s2", "rec-a", start=1.0, duration=0.5, text="world", speaker="ruth"),
                SupervisionSegment("s1", "rec-a", start=0.5, duration=0.5, text=" hello ", speaker="linda")]),
            MonoCut("utt-2", start=0.0, duration=3.0, channel=0, recording=b)]
    CutSet.from_cuts(cuts).to_file(folder / "cuts.jsonl.gz")
    books = resolve_inputs([str(folder / "cuts.jsonl.gz")])
    assert [(b.id, b.source, b.start_s, b.duration_s) for b in books] == [
        ("utt-1", str(folder / "a.wav"), 0.5, 1.0), ("utt-2", str(folder / "spk2/b.wav"), 0.0, 3.0)]
    assert books[0].meta == {"text": "hello world", "speaker": "linda", "recording": "rec-a"}  # in time order
    assert books[1].meta == {"recording": "rec-b"}


def test_manifest_paths_outside_its_folder_need_allow_outside_root(corpus, tmp_path):
    folder, (a, _) = corpus
    outside = Recording.from_file(str(folder / "a.wav"), recording_id="abs")  # an absolute path
    manifest = str(tmp_path / "elsewhere" / "recs.jsonl.gz")
    (tmp_path / "elsewhere").mkdir()
    RecordingSet.from_recordings([outside]).to_file(manifest)
    with pytest.raises(NarratorError) as raised:
        resolve_inputs([manifest])
    assert str(raised.value).startswith(f"{manifest} line 1: audio {str(folder / 'a.wav')!r} lies outside the catalog's folder")
    assert [b.source for b in resolve_inputs([manifest], allow_outside_root=True)] == [str(folder / "a.wav")]


def test_a_url_source_is_kept_as_given(tmp_path):
    remote = Recording("remote-1", [AudioSource("url", [0], "s3://bucket/books/ch01.flac")], 16000, 16000, 1.0)
    manifest = write_rows(tmp_path / "r.jsonl.gz", remote.to_dict())
    assert [(b.id, b.source) for b in resolve_inputs([manifest])] == [("remote-1", "s3://bucket/books/ch01.flac")]


def _bad_rows(a: Recording) -> list:
    two_sources = Recording("two", [AudioSource("file", [0], "a.wav"), AudioSource("file", [1], "b.wav")], 16000, 16000, 1.0)
    piped = Recording("piped", [AudioSource("command", [0], "ffmpeg -i x.mp3 -f wav -")], 16000, 16000, 1.0)
    stereo = Recording("st", [AudioSource("file", [0, 1], "a.wav")], 16000, 16000, 1.0, channel_ids=[0, 1])
    no_rate = a.to_dict()
    del no_rate["sampling_rate"], no_rate["num_samples"]
    return [
        ("{bad json", "line 2: not JSON (Expecting property name enclosed in double quotes"),
        (["a list"], "line 2: expected a JSON object (a lhotse Recording or Cut)"),
        ({"id": "x", "audio": "a.wav"}, "line 2: not a lhotse Recording or Cut (keys: id, audio)"),
        (no_rate, "line 2: a lhotse Recording without sampling_rate, num_samples"),
        ({**a.to_dict(), "id": "a.sp0.9"}, "line 2: id 'a.sp0.9' may hold only letters, digits, '_' and '-'"),
        (a.to_dict(), "line 2: id 'rec-a' is already used by line 1"),
        (two_sources.to_dict(), "line 2: recording 'two' has 2 audio sources; narrator reads recordings of one audio file"),
        (piped.to_dict(), "line 2: recording 'piped' has a 'command' audio source; narrator reads only 'file' and 'url'"),
        ({**a.perturb_speed(0.9).to_dict(), "id": "fast"}, "line 2: recording 'fast' has lhotse transforms (Speed)"),
        (MonoCut("c", 0, 1, channel=1, recording=stereo).to_dict(),
         "line 2: cut 'c' takes channel 1 of 2-channel recording 'st'; narrator reads all channels mixed down to mono"),
        ({"id": "c", "start": 0, "duration": 1, "channel": 0, "type": "MonoCut"}, "line 2: a lhotse MonoCut without recording"),
        ({"id": "m", "tracks": [], "type": "MixedCut"}, "line 2: a lhotse MixedCut; narrator reads RecordingSet and CutSet"),
        (SupervisionSegment("s", "rec-a", 0, 1, text="hi").to_dict(), "line 2: a lhotse SupervisionSegment; narrator reads"),
        ({"id": "c", "start": 0, "duration": 1, "channel": 0, "recording": {"id": "r", "sources": []}, "type": "MonoCut"},
         "line 2: not a valid lhotse MonoCut (TypeError: "),
    ]


def test_a_malformed_manifest_row_is_one_line_naming_the_file_and_line(corpus, tmp_path):
    _, (a, _) = corpus
    for number, (row, message) in enumerate(_bad_rows(a)):
        manifest = write_rows(tmp_path / f"bad{number}.jsonl.gz", a.to_dict(), row)
        with pytest.raises(NarratorError) as raised:
            resolve_inputs([manifest])
        assert str(raised.value).startswith(f"{manifest} {message}"), str(raised.value)
        assert "\n" not in str(raised.value)


def test_unreadable_manifests_are_one_line(tmp_path):
    (tmp_path / "fake.jsonl.gz").write_text('{"id": "x"}\n')
    with pytest.raises(NarratorError, match=r"fake.jsonl.gz: cannot read it as gzip-compressed JSONL"):
        resolve_inputs([str(tmp_path / "fake.jsonl.gz")])
    with pytest.raises(NarratorError, match=r"gone.jsonl.gz: manifest file not found"):
        resolve_inputs([str(tmp_path / "gone.jsonl.gz")])
    with pytest.raises(NarratorError, match=r"empty.jsonl.gz: empty lhotse manifest"):
        resolve_inputs([write_rows(tmp_path / "empty.jsonl.gz")])


def test_without_lhotse_a_manifest_is_one_line_naming_the_extra(corpus, monkeypatch):
    folder, recordings = corpus
    RecordingSet.from_recordings(recordings).to_file(folder / "recordings.jsonl")
    monkeypatch.setitem(sys.modules, "lhotse.serialization", None)  # import fails as when lhotse is not installed
    with pytest.raises(NarratorError) as raised:
        resolve_inputs([str(folder / "recordings.jsonl")])
    assert str(raised.value) == f"{folder / 'recordings.jsonl'}: a lhotse manifest; install narrator[lhotse] to read it"


def test_a_jsonl_catalog_with_its_own_columns_is_still_a_catalog(tmp_path):
    (tmp_path / "books.jsonl").write_text(json.dumps({"id": "b1", "audio": "b1.wav", "start": 3, "duration": 9}) + "\n")
    [book] = resolve_inputs([str(tmp_path / "books.jsonl")])
    assert (book.id, book.start_s, book.duration_s, book.meta) == ("b1", 0.0, None, {"start": "3", "duration": "9"})


def test_a_cut_and_its_recording_are_two_books_of_the_same_file(corpus):
    folder, (a, _) = corpus
    RecordingSet.from_recordings([a]).to_file(folder / "recs.jsonl.gz")
    CutSet.from_cuts([MonoCut("a-head", 0.0, 0.5, channel=0, recording=a)]).to_file(folder / "cuts.jsonl.gz")
    books = resolve_inputs([str(folder / "recs.jsonl.gz"), str(folder / "cuts.jsonl.gz"), str(folder / "recs.jsonl.gz")])
    assert [(b.id, b.source, b.duration_s) for b in books] == [("rec-a", str(folder / "a.wav"), None),
                                                              ("a-head", str(folder / "a.wav"), 0.5)]  # each id once
