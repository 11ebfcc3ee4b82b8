"""Pseudowords made as Wuggy makes them (Keuleers & Brysbaert 2010), from phonemes instead of letters.

A word is a chain of subsyllabic segments (onset, nucleus, coda per syllable, empty ones too).
The lexicon gives the transition counts between adjacent segments at each position of words
with the same number of syllables. A pseudoword keeps the word's chain but swaps a few segments
for others of the same length (and, for a vowel, the same stress) whose transitions into and out
of their neighbours occur in English words, choosing those whose transition counts are closest
to the word's own: same syllables, same phonemes, same stress, matched phonotactic probability.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from .lexicon import Lexicon, strip_stress
from .syllables import Syllable, syllabify, word_onsets

Segment = tuple[str, ...]  # an onset, a one-phone nucleus, or a coda; () where a syllable has none

CLOSEST = 4  # a replacement is drawn from the candidates whose transition counts are nearest the word's
TRIES = 40  # draws per word before it is given up as having no pseudoword


@dataclass(frozen=True)
class Pseudoword:
    """A pseudoword made from `word`: its syllables, and which segments were changed."""

    word: str
    word_syllables: tuple[Syllable, ...]
    syllables: tuple[Syllable, ...]
    changed: tuple[int, ...]  # indexes into the segment chain (3 per syllable)

    @property
    def phones(self) -> tuple[str, ...]:
        return tuple(p for s in self.syllables for p in s.phones)


def segments(syllables: tuple[Syllable, ...]) -> tuple[Segment, ...]:
    return tuple(seg for s in syllables for seg in (s.onset, (s.nucleus,), s.coda))


def from_segments(chain: tuple[Segment, ...]) -> tuple[Syllable, ...]:
    return tuple(Syllable(chain[i], chain[i + 1][0], chain[i + 2]) for i in range(0, len(chain), 3))


def max_changes(chain: tuple[Segment, ...]) -> int:
    """Wuggy's default overlap: at least two thirds of the (non-empty) segments stay the word's."""
    return max(1, sum(1 for seg in chain if seg) // 3)


class Phonotactics:
    """Position-specific segment bigrams of a lexicon: count[(syllables, position)][(left, right)]."""

    def __init__(self, lexicon: Lexicon) -> None:
        self.onsets = word_onsets(e.phones for e in lexicon.entries)
        self.lexicon = lexicon
        self.transitions: dict[tuple[int, int], Counter[tuple[Segment, Segment]]] = defaultdict(Counter)
        inventory: dict[tuple[int, int], set[Segment]] = defaultdict(set)
        for entry in lexicon.entries:
            chain = segments(syllabify(entry.phones, self.onsets))
            n = len(chain) // 3
            for i, seg in enumerate(chain):
                inventory[n, i].add(seg)
                if i:
                    self.transitions[n, i][chain[i - 1], seg] += 1
        # sorted once: candidates are tried in a fixed order, whatever the hash seed
        self.inventory = {key: sorted(segs) for key, segs in inventory.items()}

    def count(self, n: int, i: int, left: Segment, right: Segment) -> int:
        """How many words of n syllables have `left` at position i - 1 followed by `right` at i."""
        return self.transitions[n, i].get((left, right), 0)

    def syllabify(self, phones: tuple[str, ...]) -> tuple[Syllable, ...]:
        return syllabify(phones, self.onsets)

    def candidates(self, chain: tuple[Segment, ...], i: int, original: Segment) -> list[Segment]:
        """Segments that may replace `original` at position i given the neighbours in `chain`, best first."""
        n = len(chain) // 3
        left = chain[i - 1] if i else None
        right = chain[i + 1] if i + 1 < len(chain) else None

        def score(seg: Segment) -> float | None:
            links = []
            if left is not None:
                links.append((self.count(n, i, left, seg), self.count(n, i, left, original)))
            if right is not None:
                links.append((self.count(n, i + 1, seg, right), self.count(n, i + 1, original, right)))
            if any(new == 0 for new, _ in links):
                return None  # a transition no English word has
            return sum(abs(math.log(new) - math.log(max(old, 1))) for new, old in links)

        scored = []
        for seg in self.inventory.get((n, i), ()):
            if seg == original or len(seg) != len(original):
                continue
            if i % 3 == 1 and seg[0][-1] != original[0][-1]:
                continue  # a vowel keeps its stress
            s = score(seg)
            if s is not None:
                scored.append((s, seg))
        scored.sort()
        return [seg for _, seg in scored]

    def pseudoword(self, word: str, phones: tuple[str, ...], rng: np.random.Generator,
                   taken: set[tuple[str, ...]]) -> Pseudoword | None:
        """A pseudoword for this word that is no CMUdict word and not in `taken` (stress removed), or None after TRIES draws."""
        word_syllables = self.syllabify(phones)
        chain = segments(word_syllables)
        filled = [i for i, seg in enumerate(chain) if seg]
        if not filled:
            return None
        for _ in range(TRIES):
            k = int(rng.integers(1, max_changes(chain), endpoint=True))
            positions = sorted(int(p) for p in rng.choice(filled, size=min(k, len(filled)), replace=False))
            new = list(chain)
            for i in positions:  # left to right: each choice sees its final left neighbour
                options = self.candidates(tuple(new), i, chain[i])[:CLOSEST]
                if not options:
                    break
                new[i] = options[int(rng.integers(len(options)))]
            else:
                syllables = from_segments(tuple(new))
                candidate = Pseudoword(word, word_syllables, syllables, tuple(positions))
                if not self.lexicon.is_word(candidate.phones) and strip_stress(candidate.phones) not in taken:
                    return candidate
        return None
