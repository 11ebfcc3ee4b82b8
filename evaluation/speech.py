"""Speak evaluation items with espeak-ng: plain text or espeak phoneme mnemonics, 24 kHz mono float32.

espeak-ng keeps state across utterances within a process (pitch flutter phase, gain) that nothing
resets, so every call speaks its whole list, in order, in one fresh process: the same list
gives byte-identical audio. espeak also reports each phoneme it speaks (phoneme events), which is
how a caller checks that a pseudoword spoken from phonemes sounds the phonemes intended.
This wrapper is its own (not sample_book's) because it needs phoneme input and phoneme events.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from narrator.errors import NarratorError
from narrator.espeak import load_espeak

SAMPLE_RATE = 24000  # EnCodec's rate; the semantic tokenizer resamples by itself


@dataclass(frozen=True)
class Utterance:
    """One thing to say. `phonemes`: `text` is espeak phoneme mnemonics (spoken as [[text]])."""

    text: str
    voice: str  # an espeak-ng voice, a variant after '+': en-us, en-us+f2, en-us+m3, ...
    rate: int  # words per minute
    phonemes: bool = False


@dataclass(frozen=True)
class Spoken:
    """An utterance's audio and the phonemes espeak says it spoke (IPA, stress marks kept)."""

    audio: np.ndarray  # float32, mono, at the sample rate asked for
    phonemes: tuple[str, ...]


class _EspeakEvent(ctypes.Structure):
    """espeak_EVENT from speak_lib.h; `id` is the union, read as its 8-byte phoneme-name member."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


class _Espeak:
    """libespeak-ng through ctypes with phoneme input and phoneme events. Global state: one per process."""

    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                 ctypes.POINTER(_EspeakEvent))
    _CHARS_UTF8, _PHONEME_INPUT, _POS_CHARACTER = 1, 0x100, 1
    _EVENT_END, _EVENT_PHONEME = 0, 7
    _RATE, _VOLUME = 1, 2  # espeak_PARAMETER values
    _VOLUME_PERCENT = 75  # at 100 espeak's loudest utterances touch full scale

    def __init__(self) -> None:
        self.lib, self.data_path, self.sample_rate = load_espeak("the evaluation item set")
        self.lib.espeak_ng_SetPhonemeEvents(1, 1)  # in IPA: one symbol per sound, whatever espeak's mnemonic
        self._chunks: list[np.ndarray] = []
        self._phonemes: list[str] = []
        self._callback = self._CALLBACK(self._collect)  # kept on self: C holds only a raw pointer
        self.lib.espeak_SetSynthCallback(self._callback)
        self._voice = ""

    def _collect(self, wav, n: int, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != self._EVENT_END:
            if events[i].type == self._EVENT_PHONEME:
                name = events[i].id.decode("utf-8", errors="replace")
                if name:  # pauses have no IPA
                    self._phonemes.append(name)
            i += 1
        return 0  # 0 = keep synthesizing

    def speak(self, u: Utterance) -> tuple[np.ndarray, tuple[str, ...]]:
        """int16 samples at `self.sample_rate` and the phonemes spoken."""
        if u.voice != self._voice:
            if self.lib.espeak_SetVoiceByName(u.voice.encode()) != 0:
                raise NarratorError(f"espeak-ng voice '{u.voice}' not found in {self.data_path}")
            self._voice = u.voice
        self.lib.espeak_SetParameter(self._RATE, u.rate, 0)
        self.lib.espeak_SetParameter(self._VOLUME, self._VOLUME_PERCENT, 0)
        text = (f"[[{u.text}]]" if u.phonemes else u.text).encode()
        flags = self._CHARS_UTF8 | (self._PHONEME_INPUT if u.phonemes else 0)
        self._chunks, self._phonemes = [], []
        if self.lib.espeak_Synth(text, len(text) + 1, 0, self._POS_CHARACTER, 0, flags, None, None):
            raise NarratorError(f"espeak-ng failed to speak {u.text[:40]!r}")
        self.lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return audio, tuple(self._phonemes)


def _speak_all(request: Path) -> None:
    """Runs in the fresh process: speak each utterance of request.json in order; audio.npy and spoken.json beside it."""
    import soxr

    job = json.loads(request.read_text())
    sample_rate = job["sample_rate"]
    tts = _Espeak()
    tts.lib.espeak_ng_SetRandSeed(ctypes.c_long(job["seed"]))  # breathy and Klatt voices mix in noise
    pieces, spoken = [], []
    for fields in job["utterances"]:
        u = Utterance(**fields)
        audio, phonemes = tts.speak(u)
        audio = audio.astype(np.float32) / np.float32(32768)
        if tts.sample_rate != sample_rate:
            audio = soxr.resample(audio, tts.sample_rate, sample_rate).astype(np.float32, copy=False)
        if not len(audio):
            raise NarratorError(f"espeak-ng said nothing for {u.text[:40]!r} (voice {u.voice})")
        pieces.append(audio)
        spoken.append({"samples": len(audio), "phonemes": list(phonemes)})
    np.save(request.with_name("audio.npy"), np.concatenate(pieces), allow_pickle=False)
    request.with_name("spoken.json").write_text(json.dumps(spoken))


def speak(utterances: Sequence[Utterance], sample_rate: int = SAMPLE_RATE, seed: int = 0) -> list[Spoken]:
    """Speak every utterance, in order, in one fresh process (so the same list gives the same audio).

    A plain subprocess, not multiprocessing: nothing is pickled, and a caller's script without a
    __main__ guard is not re-run.
    """
    if not utterances:
        return []
    with tempfile.TemporaryDirectory(prefix="narrator-speak-") as tmp:
        request = Path(tmp) / "request.json"
        request.write_text(json.dumps({"sample_rate": sample_rate, "seed": seed,
                                       "utterances": [asdict(u) for u in utterances]}))
        code = "import sys, pathlib; from narrator.evaluation.speech import _speak_all; _speak_all(pathlib.Path(sys.argv[1]))"
        done = subprocess.run([sys.executable, "-c", code, str(request)], capture_output=True, text=True)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise NarratorError(f"espeak-ng failed while speaking {len(utterances)} evaluation items: {last}")
        audio = np.load(request.with_name("audio.npy"), allow_pickle=False)
        spoken = json.loads(request.with_name("spoken.json").read_text())
    ends = np.cumsum([s["samples"] for s in spoken])
    return [Spoken(piece.copy(), tuple(s["phonemes"])) for piece, s in zip(np.split(audio, ends[:-1]), spoken)]
