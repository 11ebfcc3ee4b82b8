"""Spoken minimal pairs for judging a model (ZeroSpeech's sWUGGY and sBLIMP, made here offline).

A lexical pair is a frequent English word against a pseudoword matched to it (Wuggy's method);
a syntactic pair is a grammatical sentence against a minimally changed ungrammatical one. Both
are spoken by espeak-ng in several voices and rates, deterministically from a seed, and cached
with a sha256 of the whole set. A scorer asks `load_or_build("lexical", n, seed, cache)`.
"""

from .items import LEXICAL, SYNTACTIC, VERSION, Item, ItemSet, Pair
from .suites import DEFAULT_CACHE, SUITES, lexical_items_for_words, load_or_build

__all__ = ["DEFAULT_CACHE", "LEXICAL", "SUITES", "SYNTACTIC", "VERSION", "Item", "ItemSet", "Pair",
           "lexical_items_for_words", "load_or_build"]
