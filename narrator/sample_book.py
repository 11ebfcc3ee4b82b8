"""The built-in sample book: our own short story spoken by espeak-ng, so the demo needs no download.

espeak-ng comes from the espeakng-loader wheel (the library and its voice data) and is driven
through ctypes: no executable, no network. Rate and pitch change per paragraph and sentence
(seeded), so the book is not one monotone voice repeated and the same seed gives the same audio.
"""

from __future__ import annotations

import ctypes
import itertools
import multiprocessing
import re
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from narrator.config import save_config
from narrator.errors import ConfigError, NarratorError
from narrator.espeak import load_espeak


@dataclass
class SampleBookConfig:
    """How the sample book is spoken. Ranges are (low, high), drawn with `seed`."""

    minutes: float = 5.0  # exact length of the wav; the text loops if it is shorter
    seed: int = 0
    voice: str = "en-us"  # an espeak-ng voice name (en-us, en-gb, en-gb-scotland, ...)
    sample_rate: int = 24000
    rate_wpm: tuple[int, int] = (140, 185)  # words per minute, drawn per paragraph
    rate_jitter_wpm: int = 10  # each sentence moves this far at most from its paragraph's rate
    pitch: tuple[int, int] = (30, 70)  # espeak base pitch 0-100, drawn per paragraph
    pitch_range: tuple[int, int] = (40, 90)  # espeak intonation 0 (monotone) - 100, drawn per sentence
    sentence_pause_s: tuple[float, float] = (0.15, 0.45)
    paragraph_pause_s: tuple[float, float] = (0.8, 1.5)

    def __post_init__(self) -> None:
        for name, low in (("minutes", 1e-9), ("sample_rate", 1), ("rate_jitter_wpm", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"'{name}': must be {'positive' if low else 'zero or more'}, got {getattr(self, name)}")
        bounds = {"rate_wpm": (80, 450), "pitch": (0, 100), "pitch_range": (0, 100),
                  "sentence_pause_s": (0, 10), "paragraph_pause_s": (0, 10)}
        for name, (lo, hi) in bounds.items():
            value = getattr(self, name)
            if len(value) != 2 or not lo <= value[0] <= value[1] <= hi:
                raise ConfigError(f"'{name}': expected [low, high] within [{lo}, {hi}], got {list(value)}")


@dataclass(frozen=True)
class _Line:
    """One sentence with the voice settings it is spoken with and the silence after it."""

    text: str
    rate: int
    pitch: int
    pitch_range: int
    pause_s: float


class _Espeak:
    """libespeak-ng through ctypes. Its state is global to the process: build one per process."""

    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
    _CHARS_UTF8, _POS_CHARACTER = 1, 1
    _RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4  # espeak_PARAMETER values from speak_lib.h
    _VOLUME_PERCENT = 75  # at its default of 100 espeak's loudest sentences touch full scale

    def __init__(self) -> None:
        self.lib, self.data_path, self.sample_rate = load_espeak("the sample book")
        self._chunks: list[np.ndarray] = []
        self._callback = self._CALLBACK(self._collect)  # kept on self: C holds only a raw pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n: int, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = keep synthesizing

    def set_voice(self, name: str) -> None:
        if self.lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise NarratorError(f"espeak-ng voice '{name}' not found in {self.data_path} (try en-us or en-gb)")

    def seed(self, value: int) -> None:
        """Seed the noise of breathy and Klatt voices (espeak seeds it from the clock)."""
        self.lib.espeak_ng_SetRandSeed(ctypes.c_long(value))

    def speak(self, line: _Line) -> np.ndarray:
        """The sentence as int16 samples at `self.sample_rate`."""
        settings = ((self._RATE, line.rate), (self._VOLUME, self._VOLUME_PERCENT),
                    (self._PITCH, line.pitch), (self._RANGE, line.pitch_range))
        for param, value in settings:
            self.lib.espeak_SetParameter(param, value, 0)
        text = line.text.encode()
        self._chunks = []
        if self.lib.espeak_Synth(text, len(text) + 1, 0, self._POS_CHARACTER, 0, self._CHARS_UTF8, None, None):
            raise NarratorError(f"espeak-ng failed to speak {line.text[:40]!r}")
        self.lib.espeak_Synchronize()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def _paragraphs() -> list[list[str]]:
    """The sample text as paragraphs of sentences."""
    text = resources.files("narrator").joinpath("sample_text.txt").read_text(encoding="utf-8")
    paragraphs = (" ".join(p.split()) for p in text.split("\n\n"))
    return [re.split(r"(?<=[.!?])\s+", p) for p in paragraphs if p]


def _script(cfg: SampleBookConfig, rng: np.random.Generator) -> Iterator[_Line]:
    """The sentences of the sample text, looping forever, each with its own voice settings."""
    for sentences in itertools.cycle(_paragraphs()):
        rate = int(rng.integers(cfg.rate_wpm[0], cfg.rate_wpm[1], endpoint=True))
        pitch = int(rng.integers(cfg.pitch[0], cfg.pitch[1], endpoint=True))
        for i, text in enumerate(sentences):
            jitter = int(rng.integers(-cfg.rate_jitter_wpm, cfg.rate_jitter_wpm, endpoint=True))
            pause = cfg.paragraph_pause_s if i == len(sentences) - 1 else cfg.sentence_pause_s
            yield _Line(text, rate=max(80, rate + jitter), pitch=pitch,
                        pitch_range=int(rng.integers(cfg.pitch_range[0], cfg.pitch_range[1], endpoint=True)),
                        pause_s=float(rng.uniform(*pause)))


def write_sample_book(out: Path, cfg: SampleBookConfig) -> Path:
    """Speak the sample text into `out` (a mono 16-bit wav exactly `cfg.minutes` long) and print one line."""
    out = Path(out)
    if out.suffix.lower() != ".wav":
        raise NarratorError(f"{out}: the sample book is written as a .wav file")
    out.parent.mkdir(parents=True, exist_ok=True)
    # espeak-ng keeps state across utterances (pitch flutter phase, gain control) that not even
    # espeak_Terminate resets, so every book is spoken by a fresh process: same seed, same audio.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            pool.submit(_render, out, cfg).result()
        except BrokenProcessPool:
            raise NarratorError(f"{out}: espeak-ng crashed while speaking the sample book") from None
    save_config(cfg, out.with_suffix(".yaml"))
    print(f"{out}: {cfg.minutes:g} minutes of speech, {cfg.sample_rate} Hz mono")
    return out


def _render(out: Path, cfg: SampleBookConfig) -> None:
    """Speak, resample, cut to length and write the wav (runs in its own process)."""
    tts = _Espeak()
    tts.set_voice(cfg.voice)
    tts.seed(cfg.seed)
    need = round(cfg.minutes * 60 * tts.sample_rate)
    pieces, have = [], 0
    for line in _script(cfg, np.random.default_rng(cfg.seed)):
        if have >= need:
            break
        speech = tts.speak(line)
        pieces += [speech, np.zeros(round(line.pause_s * tts.sample_rate), np.int16)]
        have += len(speech) + len(pieces[-1])

    audio = soxr.resample(np.concatenate(pieces), tts.sample_rate, cfg.sample_rate)
    n = round(cfg.minutes * 60 * cfg.sample_rate)
    audio = np.pad(audio[:n], (0, max(0, n - len(audio))))  # the last sentence is cut at `minutes`
    tmp = out.with_name(out.name + ".tmp")
    sf.write(tmp, audio, cfg.sample_rate, subtype="PCM_16", format="WAV")
    tmp.replace(out)
