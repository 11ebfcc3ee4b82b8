"""Make item sets: choose the pairs from a seed, speak them, and check that espeak said what was meant.

Every pair is spoken by one voice at one rate, the voices and rates taking turns in a seeded
order so that no voice belongs to the real or the fake side. Words and pseudowords alike are
spoken from phonemes, so the only difference within a pair is the phonemes that were changed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from narrator.errors import NarratorError

from .items import LEXICAL, SYNTACTIC, VERSION, Item, ItemSet, content_sha256
from .lexicon import fair_word, load_lexicon, strip_stress
from .phonemes import espeak_phonemes, respell, spoken_count
from .pseudowords import Phonotactics, Pseudoword
from .sentences import sentence_pairs
from .speech import SAMPLE_RATE, Spoken, Utterance, speak

# en-us with espeak's voice variants: one phoneme table (what [[...]] means), several speakers
VOICES = ("en-us", "en-us+f2", "en-us+m3", "en-us+f4", "en-us+m7")
RATES = (135, 165, 195)  # words per minute
FREQUENT = 10000  # real words are drawn from this many of the most frequent (zipf >= ~3.3)
# Separate random streams per suite, so a seed's lexical and syntactic sets are unrelated.
LEXICAL_STREAM, SYNTACTIC_STREAM, WORDS_STREAM = 1, 2, 3


@functools.lru_cache(maxsize=1)
def phonotactics() -> Phonotactics:
    """The lexicon's segment bigrams, learned once per process."""
    return Phonotactics(load_lexicon())


def _source() -> str:
    return f"{load_lexicon().source}, espeakng-loader {importlib.metadata.version('espeakng-loader')}"


def _voice_turns(count: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """(voice, rate) for `count` items: every combination once, in a seeded order, then again."""
    grid = [(v, r) for v in VOICES for r in RATES]
    order = [int(i) for i in rng.permutation(len(grid))]
    return [grid[order[i % len(grid)]] for i in range(count)]


def heard(phonemes: tuple[str, ...]) -> list[str]:
    """espeak's IPA phonemes as a listener tells them apart: stress marks removed."""
    return [p.strip("ˈˌ") for p in phonemes]


@dataclass(frozen=True)
class _SpokenPair:
    pseudoword: Pseudoword
    voice: str
    rate: int
    real: Spoken
    fake: Spoken
    real_spoken: str  # the mnemonics espeak was given
    fake_spoken: str

    def problem(self) -> str | None:
        """Why espeak's speech does not carry the pair as meant, or None.

        Each mnemonic must come out as one phoneme (none dropped, merged or misread), and the
        pseudoword must not come out as the word's phonemes.
        """
        for given, said in ((self.real_spoken, self.real), (self.fake_spoken, self.fake)):
            if len(said.phonemes) != spoken_count(given):
                return f"espeak-ng spoke [[{given}]] as '{' '.join(said.phonemes)}', not one phoneme per phoneme given"
        if heard(self.real.phonemes) == heard(self.fake.phonemes):
            return f"espeak-ng spoke '{self.pseudoword.word}' and its pseudoword alike ('{' '.join(self.real.phonemes)}')"
        return None


def _speak_lexical(pairs: list[Pseudoword], voices: list[tuple[str, int]], seed: int) -> list[_SpokenPair]:
    """Speak each word and its pseudoword from phonemes, in order, in one process."""
    texts = [(espeak_phonemes(pw.word_syllables), espeak_phonemes(pw.syllables)) for pw in pairs]
    utterances = [Utterance(text, voice, rate, phonemes=True)
                  for (real, fake), (voice, rate) in zip(texts, voices) for text in (real, fake)]
    spoken = speak(utterances, SAMPLE_RATE, seed)
    return [_SpokenPair(pw, voice, rate, real, fake, real_text, fake_text)
            for pw, (voice, rate), (real_text, fake_text), real, fake
            in zip(pairs, voices, texts, spoken[0::2], spoken[1::2])]


def _lexical_set(seed: int, spoken: list[_SpokenPair]) -> ItemSet:
    items = tuple(Item(
        id=f"{LEXICAL}-{i:05d}", kind=LEXICAL, category=f"{len(s.pseudoword.syllables)}-syllable",
        real_text=s.pseudoword.word, real_phonemes=" ".join(p for syl in s.pseudoword.word_syllables for p in syl.phones),
        fake_text=respell(s.pseudoword.syllables), fake_phonemes=" ".join(s.pseudoword.phones),
        voice=s.voice, rate=s.rate, real_spoken=s.real_spoken, fake_spoken=s.fake_spoken) for i, s in enumerate(spoken))
    return _item_set(LEXICAL, seed, items, tuple(s.real.audio for s in spoken), tuple(s.fake.audio for s in spoken))


def _item_set(suite: str, seed: int, items: tuple[Item, ...], real: tuple[np.ndarray, ...],
              fake: tuple[np.ndarray, ...]) -> ItemSet:
    sha = content_sha256(suite, VERSION, seed, SAMPLE_RATE, items, real, fake)
    return ItemSet(suite, VERSION, seed, SAMPLE_RATE, _source(), items, real, fake, sha)


def build_lexical(n: int, seed: int) -> ItemSet:
    """n frequent words against pseudowords made from them, drawn with `seed`.

    A few spare pairs are made and spoken too, in the same fixed order, standing in for any
    pair espeak does not say as meant (rare), so the set still has n pairs and the same audio.
    """
    rng = np.random.default_rng([LEXICAL_STREAM, seed])
    lexicon, tactics = load_lexicon(), phonotactics()
    pool = [e for e in lexicon.entries[:FREQUENT] if fair_word(e)]
    want = n + max(2, n // 20)
    pairs: list[Pseudoword] = []
    taken: set[tuple[str, ...]] = set()
    for index in rng.permutation(len(pool)):
        entry = pool[int(index)]
        made = tactics.pseudoword(entry.word, entry.phones, rng, taken)
        if made is not None:
            pairs.append(made)
            taken.add(strip_stress(made.phones))
            if len(pairs) == want:
                break
    good = [s for s in _speak_lexical(pairs, _voice_turns(len(pairs), rng), seed) if s.problem() is None]
    if len(good) < n:
        raise NarratorError(f"lexical items: only {len(good)} of the {len(pool)} frequent words have a pseudoword "
                            f"espeak-ng says as meant; ask for at most {len(good)}")
    return _lexical_set(seed, good[:n])


def build_lexical_for_words(words: Sequence[str], seed: int, renditions: int = 1) -> ItemSet:
    """Each given word against a pseudoword made from it, spoken `renditions` times in other voices/rates."""
    lexicon, tactics = load_lexicon(), phonotactics()
    if renditions < 1 or renditions > len(VOICES) * len(RATES):
        raise NarratorError(f"renditions: expected 1 to {len(VOICES) * len(RATES)}, got {renditions}")
    prons = {e.word: e.phones for e in lexicon.entries}
    keys = [w.lower() for w in words]
    unknown = [w for w, k in zip(words, keys) if k not in prons]
    if unknown:
        raise NarratorError(f"not among the {len(prons)} frequent CMUdict words: {', '.join(unknown[:10])}")
    if len(set(keys)) != len(keys):
        raise NarratorError("the word list repeats a word")
    rng = np.random.default_rng([WORDS_STREAM, seed])
    made: list[Pseudoword] = []
    taken: set[tuple[str, ...]] = set()
    for word in keys:
        pw = tactics.pseudoword(word, prons[word], rng, taken)
        if pw is None:
            raise NarratorError(f"no pseudoword could be made from '{word}' (too short or too unusual); leave it out")
        made.append(pw)
        taken.add(strip_stress(pw.phones))
    turns = _voice_turns(len(VOICES) * len(RATES), rng)
    pairs = [pw for _ in range(renditions) for pw in made]
    voices = [turns[(i + r) % len(turns)] for r in range(renditions) for i in range(len(made))]  # r: another voice
    spoken = _speak_lexical(pairs, voices, seed)
    for s in spoken:
        if (problem := s.problem()) is not None:
            raise NarratorError(f"{problem}; leave '{s.pseudoword.word}' out of the word list")
    return _lexical_set(seed, spoken)


def build_syntactic(n: int, seed: int) -> ItemSet:
    """n grammatical/ungrammatical sentence pairs over the categories in turn, drawn with `seed`."""
    rng = np.random.default_rng([SYNTACTIC_STREAM, seed])
    pairs = sentence_pairs(n, rng)
    items, utterances = [], []
    for i, (pair, (voice, rate)) in enumerate(zip(pairs, _voice_turns(n, rng))):
        items.append(Item(id=f"{SYNTACTIC}-{i:05d}", kind=SYNTACTIC, category=pair.category,
                          real_text=pair.real, real_phonemes="", fake_text=pair.fake, fake_phonemes="",
                          voice=voice, rate=rate, real_spoken=pair.real, fake_spoken=pair.fake))
        utterances += [Utterance(pair.real, voice, rate), Utterance(pair.fake, voice, rate)]
    spoken = speak(utterances, SAMPLE_RATE, seed)
    return _item_set(SYNTACTIC, seed, tuple(items), tuple(s.audio for s in spoken[0::2]),
                     tuple(s.audio for s in spoken[1::2]))


def words_key(words: Sequence[str]) -> str:
    """A short name for a word list, for its cache folder."""
    return hashlib.sha256("\n".join(words).encode()).hexdigest()[:12]
