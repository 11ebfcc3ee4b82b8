"""`narrator sample-book`: the built-in story spoken offline by espeak-ng into a 24 kHz mono wav."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from narrator.cli import main
from narrator.config import load_config
from narrator.sample_book import SampleBookConfig

FRAME = 480  # 20 ms at 24 kHz


def _speak(out: Path, *args: str) -> np.ndarray:
    assert main(["sample-book", str(out), "--minutes", "0.2", *args]) == 0
    audio, _ = sf.read(out, dtype="int16")
    return audio


def _quiet_runs(audio: np.ndarray) -> list[int]:
    """Lengths, in 20 ms frames, of the stretches whose RMS is under a tenth of the loudest frame's."""
    frames = audio[: len(audio) // FRAME * FRAME].reshape(-1, FRAME).astype(np.float64)
    rms = np.sqrt((frames**2).mean(axis=1))
    loud = "".join("1" if r > 0.1 * rms.max() else "0" for r in rms)
    return [len(run) for run in loud.split("1") if run]


def test_cli_writes_12_seconds_of_24khz_mono_speech_with_pauses(tmp_path, capsys):
    out = tmp_path / "book.wav"
    audio = _speak(out)

    info = sf.info(out)
    assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
    assert abs(info.frames - 12 * 24000) <= 1
    assert np.abs(audio).max() > 5000
    quiet = _quiet_runs(audio)
    n_frames = len(audio) // FRAME
    assert 0.1 < sum(quiet) / n_frames < 0.5  # mostly voiced, yet not one unbroken sound
    assert sum(run >= 7 for run in quiet) >= 3  # several pauses of 140 ms or more between sentences
    assert max(quiet) >= 25  # a paragraph pause (0.8 s or more) after the title
    assert capsys.readouterr().out.strip() == f"{out}: 0.2 minutes of speech, 24000 Hz mono"


def test_resolved_config_is_saved_beside_the_wav(tmp_path):
    out = tmp_path / "book.wav"
    _speak(out, "--seed", "4", "--set", "pitch=[20,40]")
    assert load_config(SampleBookConfig, out.with_suffix(".yaml")) == SampleBookConfig(minutes=0.2, seed=4, pitch=(20, 40))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["book.wav", "book.yaml"]  # no .tmp left behind


def test_same_seed_gives_identical_audio_and_another_seed_differs(tmp_path):
    a = _speak(tmp_path / "a.wav", "--seed", "7")
    b = _speak(tmp_path / "b.wav", "--seed", "7")
    c = _speak(tmp_path / "c.wav", "--seed", "8")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_unknown_config_key_fails_with_one_line_naming_it(tmp_path, capsys):
    out = tmp_path / "book.wav"
    assert main(["sample-book", str(out), "--set", "voise=en-gb"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'voise'" in err
    assert not out.exists()


def test_unknown_voice_fails_with_one_line_naming_it(tmp_path, capsys):
    out = tmp_path / "book.wav"
    assert main(["sample-book", str(out), "--minutes", "0.1", "--set", "voice=xx-nowhere"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'xx-nowhere'" in err
    assert not out.exists()
