"""What an item set is: minimal pairs with their audio, and the sha256 that identifies the whole set."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# Bump when anything that goes into a set changes (word lists' use, pseudoword or sentence
# generation, voices, rates, speech, file layout): cached sets of another version are not read.
VERSION = "1"
LEXICAL, SYNTACTIC = "lexical", "syntactic"


@dataclass(frozen=True)
class Item:
    """One minimal pair: a real item and a fake one, spoken by the same voice at the same rate."""

    id: str
    kind: str  # LEXICAL or SYNTACTIC
    category: str  # lexical: "2-syllable"; syntactic: "subject_verb_agreement", ...
    real_text: str  # the word or the grammatical sentence
    real_phonemes: str  # ARPAbet ("K AE1 T") for a word; "" for a sentence (spoken from its text)
    fake_text: str  # a pseudoword's rough respelling, syllables joined by "-" ("pah-ter"), or the ungrammatical sentence
    fake_phonemes: str
    voice: str  # espeak-ng voice
    rate: int  # words per minute
    real_spoken: str  # exactly what espeak-ng was given: phoneme mnemonics (spoken as [[...]]) or text
    fake_spoken: str


@dataclass(frozen=True)
class Pair:
    item: Item
    real: np.ndarray  # float32 mono at the set's sample rate
    fake: np.ndarray


@dataclass(frozen=True)
class ItemSet:
    """A versioned, seeded set of minimal pairs and their audio, identified by `sha256`."""

    suite: str
    version: str
    seed: int
    sample_rate: int
    source: str  # the word lists' and espeak-ng's versions it was made with
    items: tuple[Item, ...]
    real_audio: tuple[np.ndarray, ...]
    fake_audio: tuple[np.ndarray, ...]
    sha256: str
    path: Path | None = None  # the cache folder it was read from or written to

    def __len__(self) -> int:
        return len(self.items)

    def pairs(self) -> Iterator[Pair]:
        for item, real, fake in zip(self.items, self.real_audio, self.fake_audio):
            yield Pair(item, real, fake)


def content_sha256(suite: str, version: str, seed: int, sample_rate: int, items: tuple[Item, ...],
                   real_audio: tuple[np.ndarray, ...], fake_audio: tuple[np.ndarray, ...]) -> str:
    """sha256 of everything a scorer sees: the items' metadata (canonical JSON) and every clip's samples."""
    h = hashlib.sha256()
    head = {"suite": suite, "version": version, "seed": seed, "sample_rate": sample_rate,
            "items": [asdict(item) for item in items]}
    h.update(json.dumps(head, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode())
    for real, fake in zip(real_audio, fake_audio, strict=True):
        for clip in (real, fake):
            h.update(len(clip).to_bytes(8, "little"))
            h.update(np.ascontiguousarray(clip, dtype="<f4").tobytes())
    return h.hexdigest()
