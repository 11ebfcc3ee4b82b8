"""Probing and seeking reads: any stretch of a book as mono 24 kHz, equal to the same slice of a full read."""

import math

import numpy as np
import pytest
import soundfile as sf
import soxr

from narrator.errors import NarratorError
from narrator.tokenizers.audio import dbfs, probe, read_segment
from narrator.tokenizers.mp3 import _frame, _has_length_tag, _next_frame


def test_probe_reports_the_header(tmp_path, speech_wav):
    info = probe(speech_wav(tmp_path / "book.flac", 3.0, sample_rate=44_100, channels=2))
    assert (info.sample_rate, info.channels, info.frames) == (44_100, 2, 3 * 44_100)
    assert info.duration_s == pytest.approx(3.0)


def test_stereo_44k_becomes_mono_24k(tmp_path, speech_wav):
    path = speech_wav(tmp_path / "book.flac", 3.0, sample_rate=44_100, channels=2)
    audio = read_segment(path, 0.0, 3.0)
    assert audio.dtype == np.float32 and audio.shape == (72_000,)
    stereo, _ = sf.read(path, dtype="float32")
    expected = soxr.resample(stereo.mean(axis=1), 44_100, 24_000)
    assert np.abs(audio - expected).max() < 1e-4


@pytest.mark.parametrize("sample_rate, fmt", [(24_000, "WAV"), (44_100, "FLAC"), (22_050, "MP3"), (16_000, "OGG")])
def test_seek_read_equals_the_slice_of_a_full_read(tmp_path, speech_wav, sample_rate, fmt):
    path = speech_wav(tmp_path / f"book.{fmt.lower()}", 6.0, sample_rate=sample_rate, fmt=fmt)
    full = read_segment(path, 0.0, 6.0)
    for start, end in [(0.0, 1.0), (1.24, 3.0), (2.96, 5.04)]:
        part = read_segment(path, start, end)
        assert len(part) == round((end - start) * 24_000)
        assert np.abs(part - full[round(start * 24_000): round(end * 24_000)]).max() < 1e-4, (fmt, start)


def test_segments_are_clipped_at_the_end_of_the_file(tmp_path, speech_wav):
    path = speech_wav(tmp_path / "book.wav", 2.0, sample_rate=22_050)
    assert len(read_segment(path, 1.5, 9.0)) == 12_000
    assert len(read_segment(path, 5.0, 9.0)) == 0


def test_dbfs_of_a_peak():
    assert dbfs(0.0) == -math.inf
    assert dbfs(0.5) == pytest.approx(-6.02, abs=0.01)


def without_length_tag(path):
    """The MP3 at `path` with its first frame (LAME's Info tag: the exact length) cut out, as some encoders write it."""
    data = path.read_bytes()
    first = _next_frame(data, 0)
    assert _has_length_tag(data, first)
    untagged = path.with_name("untagged.mp3")
    untagged.write_bytes(data[:first] + data[first + _frame(data, first)[0]:])
    return untagged


def test_an_mp3_without_a_length_tag_is_probed_to_what_reading_gives_without_decoding(tmp_path, speech_wav):
    """libsndfile guesses an untagged MP3's length from its size and reads no further; probe counts its frames."""
    tagged = speech_wav(tmp_path / "book.mp3", 7.3, sample_rate=22_050, fmt="MP3")
    assert probe(tagged).frames == len(sf.read(tagged)[0]) and probe(tagged).unread_s == 0
    untagged = without_length_tag(tagged)
    info = probe(untagged)
    assert info.frames == sf.info(str(untagged)).frames == len(sf.read(untagged)[0])  # here the guess is short:
    assert info.unread_s == pytest.approx(7.3 - info.duration_s, abs=0.1)  # what the frames hold beyond it


def _missing(d):
    return d / "nope.wav"


def _empty(d):
    (d / "empty.mp3").write_bytes(b"")
    return d / "empty.mp3"


def _corrupt(d):
    (d / "corrupt.flac").write_bytes(b"this is not audio at all\n" * 200)
    return d / "corrupt.flac"


def _zero_length(d):
    sf.write(d / "zero.wav", np.zeros(0, dtype=np.float32), 24_000)
    return d / "zero.wav"


@pytest.mark.parametrize("make, reason", [(_missing, "file not found"), (_empty, "empty file"),
                                          (_corrupt, "unsupported or corrupt audio"), (_zero_length, "zero-length")])
def test_bad_inputs_are_one_line_errors_naming_the_file(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(NarratorError) as e:
        probe(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message
