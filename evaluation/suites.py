"""The item sets a scorer asks for by name, built once and then read from a cache folder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from narrator.errors import NarratorError

from .build import build_lexical, build_lexical_for_words, build_syntactic, words_key
from .items import LEXICAL, SYNTACTIC, VERSION, ItemSet
from .store import INDEX, read_item_set, write_item_set

DEFAULT_CACHE = Path("~/.cache/narrator/eval")
BUILDERS: dict[str, Callable[[int, int], ItemSet]] = {LEXICAL: build_lexical, SYNTACTIC: build_syntactic}
SUITES = tuple(BUILDERS)


def _cached(folder: Path | None, build: Callable[[], ItemSet]) -> ItemSet:
    if folder is None:
        return build()
    if (folder / INDEX).is_file():
        return read_item_set(folder)
    return write_item_set(folder, build())


def load_or_build(suite: str, n: int, seed: int = 0, cache: Path | None = DEFAULT_CACHE) -> ItemSet:
    """The `suite` item set of n pairs for `seed`: read from `cache` if built before, else built and cached there.

    cache None: built in memory, nothing written.
    """
    if suite not in BUILDERS:
        raise NarratorError(f"unknown evaluation suite '{suite}' (item suites: {', '.join(SUITES)})")
    if n < 1:
        raise NarratorError(f"{suite} items: n must be at least 1, got {n}")
    folder = None if cache is None else Path(cache).expanduser() / f"{suite}-v{VERSION}-n{n}-seed{seed}"
    return _cached(folder, lambda: BUILDERS[suite](n, seed))


def lexical_items_for_words(words: Sequence[str], seed: int = 0, renditions: int = 1,
                            cache: Path | None = None) -> ItemSet:
    """Lexical pairs for exactly these words (each against its own pseudoword), `renditions` voices each.

    For a learning test: train on one seed's `real_audio` (the words' speech), score another
    seed's pairs (other pseudowords, the voices in another order). cache None: nothing written.
    """
    if not words:
        raise NarratorError("lexical items for words: the word list is empty")
    words = list(words)
    name = f"{LEXICAL}-words{len(words)}-{words_key(words)}-v{VERSION}-r{renditions}-seed{seed}"
    folder = None if cache is None else Path(cache).expanduser() / name
    return _cached(folder, lambda: build_lexical_for_words(words, seed, renditions))
