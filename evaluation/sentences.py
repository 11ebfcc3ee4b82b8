"""Grammatical sentences and minimally changed ungrammatical twins, from small templates and word lists.

As in BLiMP (Warstadt et al. 2020), the two sentences of a pair differ in one word (or, for word
order, in two adjacent words swapped), so a model that prefers the grammatical one has learned
the rule, not the vocabulary. Everything is drawn from a seeded generator over fixed lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from narrator.errors import NarratorError


@dataclass(frozen=True)
class SentencePair:
    category: str
    real: str  # grammatical
    fake: str  # the same sentence with one word changed, or two adjacent words swapped


@dataclass(frozen=True)
class Noun:
    singular: str
    plural: str


@dataclass(frozen=True)
class Verb:
    """An intransitive verb in the present: `third` (he runs), `base` (they run)."""

    third: str
    base: str


NOUNS = tuple(Noun(s, p) for s, p in (
    ("dog", "dogs"), ("cat", "cats"), ("teacher", "teachers"), ("child", "children"), ("farmer", "farmers"),
    ("bird", "birds"), ("horse", "horses"), ("student", "students"), ("doctor", "doctors"), ("friend", "friends"),
    ("writer", "writers"), ("neighbour", "neighbours"), ("baby", "babies"), ("sailor", "sailors"),
    ("painter", "painters"), ("driver", "drivers"),
))
GENDERED = (  # (singular, plural, reflexive of the singular)
    ("man", "men", "himself"), ("woman", "women", "herself"), ("boy", "boys", "himself"),
    ("girl", "girls", "herself"), ("king", "kings", "himself"), ("queen", "queens", "herself"),
    ("father", "fathers", "himself"), ("mother", "mothers", "herself"), ("brother", "brothers", "himself"),
    ("sister", "sisters", "herself"), ("uncle", "uncles", "himself"), ("aunt", "aunts", "herself"),
)
VERBS = tuple(Verb(t, b) for t, b in (
    ("sleeps", "sleep"), ("runs", "run"), ("sings", "sing"), ("waits", "wait"), ("laughs", "laugh"),
    ("works", "work"), ("smiles", "smile"), ("jumps", "jump"), ("swims", "swim"), ("walks", "walk"),
    ("rests", "rest"), ("plays", "play"),
))
PLACES = ("in the garden", "near the river", "every morning", "at night", "after dinner", "on the hill",
          "by the door", "in the kitchen", "after school", "in the rain")
REFLEXIVE_VERBS = ("saw", "hurt", "praised", "blamed", "helped", "washed", "heard", "trusted", "fed", "taught")
ADJECTIVES = ("small", "old", "happy", "quiet", "tall", "young", "hungry", "tired", "brave", "clever")
IRREGULAR = (  # (past, past participle, an object that fits the verb)
    ("ate", "eaten", "the bread"), ("wrote", "written", "a letter"), ("broke", "broken", "the window"),
    ("drove", "driven", "the car"), ("drank", "drunk", "the water"), ("sang", "sung", "a song"),
    ("took", "taken", "the book"), ("knew", "known", "the answer"), ("stole", "stolen", "the money"),
    ("forgot", "forgotten", "the key"), ("chose", "chosen", "a coat"), ("threw", "thrown", "the ball"),
    ("spoke", "spoken", "French"), ("saw", "seen", "the ship"), ("began", "begun", "the lesson"),
)
NUMBERS = ("two", "three", "four", "five", "six")


def _pick(rng: np.random.Generator, options: tuple):
    return options[int(rng.integers(len(options)))]


def _subject(rng: np.random.Generator) -> tuple[str, bool]:
    """'the dog' or 'the dogs', and whether it is plural."""
    noun, plural = _pick(rng, NOUNS), bool(rng.integers(2))
    return f"the {noun.plural if plural else noun.singular}", plural


def _sentence(*words: str) -> str:
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def subject_verb_agreement(rng: np.random.Generator) -> tuple[str, str]:
    subject, plural = _subject(rng)
    verb, place = _pick(rng, VERBS), _pick(rng, PLACES)
    right, wrong = (verb.base, verb.third) if plural else (verb.third, verb.base)
    return _sentence(subject, right, place), _sentence(subject, wrong, place)


def agreement_across_phrase(rng: np.random.Generator) -> tuple[str, str]:
    """The verb agrees with the head noun, not with the nearer noun of the other number."""
    head, attractor = _pick(rng, NOUNS), _pick(rng, NOUNS)
    plural = bool(rng.integers(2))
    subject = f"the {head.plural if plural else head.singular} of the {attractor.singular if plural else attractor.plural}"
    verb, place = _pick(rng, VERBS), _pick(rng, PLACES)
    right, wrong = (verb.base, verb.third) if plural else (verb.third, verb.base)
    return _sentence(subject, right, place), _sentence(subject, wrong, place)


def determiner_noun_agreement(rng: np.random.Generator) -> tuple[str, str]:
    subject, _ = _subject(rng)
    noun, plural = _pick(rng, NOUNS), bool(rng.integers(2))
    near = bool(rng.integers(2))
    singular_det, plural_det = ("this", "these") if near else ("that", "those")
    right, wrong = (plural_det, singular_det) if plural else (singular_det, plural_det)
    obj = noun.plural if plural else noun.singular
    verb = _pick(rng, ("saw", "heard", "helped", "followed", "found"))
    return _sentence(subject, verb, right, obj), _sentence(subject, verb, wrong, obj)


def anaphor_agreement(rng: np.random.Generator) -> tuple[str, str]:
    """A reflexive agrees with its antecedent in gender (singular) or number (plural)."""
    singular, plural_form, reflexive = _pick(rng, GENDERED)
    verb = _pick(rng, REFLEXIVE_VERBS)
    if rng.integers(2):
        return _sentence("the", plural_form, verb, "themselves"), _sentence("the", plural_form, verb, reflexive)
    other = "herself" if reflexive == "himself" else "himself"
    return _sentence("the", singular, verb, reflexive), _sentence("the", singular, verb, other)


def adjective_noun_order(rng: np.random.Generator) -> tuple[str, str]:
    noun, plural = _pick(rng, NOUNS), bool(rng.integers(2))
    adjective, verb, place = _pick(rng, ADJECTIVES), _pick(rng, VERBS), _pick(rng, PLACES)
    form = noun.plural if plural else noun.singular
    agreeing = verb.base if plural else verb.third
    return _sentence("the", adjective, form, agreeing, place), _sentence("the", form, adjective, agreeing, place)


def irregular_past(rng: np.random.Generator) -> tuple[str, str]:
    """The simple past, not the past participle, without an auxiliary."""
    subject, _ = _subject(rng)
    past, participle, obj = _pick(rng, IRREGULAR)
    return _sentence(subject, past, obj), _sentence(subject, participle, obj)


def existential_there(rng: np.random.Generator) -> tuple[str, str]:
    noun, place = _pick(rng, NOUNS), _pick(rng, PLACES)
    if rng.integers(2):
        phrase = f"{_pick(rng, NUMBERS)} {noun.plural}"
        return _sentence("there are", phrase, place), _sentence("there is", phrase, place)
    article = "an" if noun.singular[0] in "aeiou" else "a"
    return _sentence("there is", article, noun.singular, place), _sentence("there are", article, noun.singular, place)


def modal_bare_verb(rng: np.random.Generator) -> tuple[str, str]:
    """After a modal the verb is bare: can swim, not can swims."""
    subject, _ = _subject(rng)
    modal, verb, place = _pick(rng, ("can", "will", "must", "should", "may")), _pick(rng, VERBS), _pick(rng, PLACES)
    return _sentence(subject, modal, verb.base, place), _sentence(subject, modal, verb.third, place)


CATEGORIES: dict[str, Callable[[np.random.Generator], tuple[str, str]]] = {
    "subject_verb_agreement": subject_verb_agreement,
    "agreement_across_phrase": agreement_across_phrase,
    "determiner_noun_agreement": determiner_noun_agreement,
    "anaphor_agreement": anaphor_agreement,
    "adjective_noun_order": adjective_noun_order,
    "irregular_past": irregular_past,
    "existential_there": existential_there,
    "modal_bare_verb": modal_bare_verb,
}
TRIES = 200  # draws for a category before it is out of new sentences


def sentence_pairs(n: int, rng: np.random.Generator) -> list[SentencePair]:
    """n distinct pairs, the categories taking turns so that every one is equally represented."""
    names = list(CATEGORIES)
    seen: set[str] = set()
    pairs = []
    for i in range(n):
        category = names[i % len(names)]
        for _ in range(TRIES):
            real, fake = CATEGORIES[category](rng)
            if real not in seen:
                break
        else:
            raise NarratorError(f"syntactic items: category '{category}' has no new sentence left after "
                                f"{len(pairs)} pairs; ask for fewer")
        seen.add(real)
        pairs.append(SentencePair(category, real, fake))
    return pairs
