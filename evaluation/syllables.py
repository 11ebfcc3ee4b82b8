"""Syllabify ARPAbet pronunciations into onset, nucleus and coda, as Wuggy's segments.

Maximal onset: the consonants between two vowels go to the next syllable as far as they form an
onset that begins English words (learned from the lexicon), the rest close the previous syllable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from .lexicon import is_vowel

MIN_ONSET_WORDS = 3  # an onset seen at the start of fewer words is a loanword's, not English's


@dataclass(frozen=True)
class Syllable:
    onset: tuple[str, ...]
    nucleus: str  # one ARPAbet vowel with its stress digit
    coda: tuple[str, ...]

    @property
    def phones(self) -> tuple[str, ...]:
        return (*self.onset, self.nucleus, *self.coda)


def word_onsets(prons: Iterable[tuple[str, ...]]) -> frozenset[tuple[str, ...]]:
    """The consonant clusters that begin at least MIN_ONSET_WORDS of these words (the empty onset too)."""
    counts: Counter[tuple[str, ...]] = Counter()
    for phones in prons:
        first_vowel = next((i for i, p in enumerate(phones) if is_vowel(p)), None)
        if first_vowel is not None:
            counts[tuple(phones[:first_vowel])] += 1
    return frozenset(c for c, n in counts.items() if n >= MIN_ONSET_WORDS) | {()}


def syllabify(phones: tuple[str, ...], onsets: frozenset[tuple[str, ...]]) -> tuple[Syllable, ...]:
    """The syllables of a pronunciation; () for one without a vowel."""
    vowels = [i for i, p in enumerate(phones) if is_vowel(p)]
    if not vowels:
        return ()
    syllables = []
    start = 0  # where the current syllable's onset begins
    for n, v in enumerate(vowels):
        if n + 1 < len(vowels):
            between = phones[v + 1: vowels[n + 1]]
            split = next(i for i in range(len(between) + 1) if between[i:] in onsets)  # longest legal onset
            end = v + 1 + split
        else:
            end = len(phones)
        syllables.append(Syllable(tuple(phones[start:v]), phones[v], tuple(phones[v + 1:end])))
        start = end
    return tuple(syllables)
