"""The arithmetic of judging a model: bits per second of audio, unigram references, pair accuracy with its interval.

Pure numbers in, numbers out: the trainer's evaluation (trainer/evaluate.py) feeds them log-likelihoods
and token counts, so the definitions can be read, and tested, without a model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from narrator.streaming.layout import dedup_runs

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def bits_per_second(nats_per_token: float, tokens_per_second: float) -> float:
    """A cross-entropy in nats per token as bits per second of audio: what makes layouts and bandwidths comparable."""
    return nats_per_token * tokens_per_second / math.log(2)


def entropy_bits(ids: np.ndarray) -> float:
    """The plug-in entropy (bits per id) of the ids' own frequencies: a unigram model fit to the very same ids."""
    ids = np.asarray(ids).reshape(-1)
    if not len(ids):
        return 0.0
    counts = np.unique(ids, return_counts=True)[1].astype(np.float64)
    p = counts / counts.sum()
    return max(0.0, float(-(p * np.log2(p)).sum()))  # one id alone: 0, not -0


def unigram_bits_per_second(codebooks: Sequence[np.ndarray], seconds: float) -> float:
    """Bits per second of a unigram model per codebook: each codebook's entropy x its ids per second, summed.

    `codebooks`: every id of codebook k over `seconds` of audio (codebook k's ids are told apart by position,
    so it is not charged for which codebook an id belongs to).
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return sum(entropy_bits(ids) * len(ids) / seconds for ids in codebooks)


def dedup_unigram_bits_per_second(runs: Iterable[np.ndarray], seconds: float) -> float:
    """Unigram bits per second of semantic ids after collapsing repeats within each run (recording): what is
    left once run length is not counted. `seconds`: the audio the runs cover before collapsing."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    kept = [dedup_runs(run) for run in runs]
    ids = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    return entropy_bits(ids) * len(ids) / seconds


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); unlike the normal one it stays inside [0, 1]
    and is not empty at 0 or n successes. n 0: the whole [0, 1]."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class PairScore:
    """How often the real item of a minimal pair beats the fake one, with n and the 95% interval.

    `length_baseline` is the accuracy of "the shorter item wins": a summed log-likelihood leans that way,
    so it is the figure a model that knows nothing but length would reach.
    """

    accuracy: float
    n: int
    ci95: tuple[float, float]
    length_baseline: float

    @property
    def above_chance(self) -> bool:
        return self.ci95[0] > 0.5

    def as_dict(self) -> dict:
        return {"accuracy": round(self.accuracy, 4), "n": self.n, "ci95": [round(v, 4) for v in self.ci95],
                "length_baseline": round(self.length_baseline, 4)}


def _wins(a: np.ndarray, b: np.ndarray) -> float:
    """Pairs where a > b, a tie counting half (a model that cannot tell the two apart scores 0.5)."""
    return float((a > b).sum() + 0.5 * (a == b).sum())


def pair_score(real: Sequence[float], fake: Sequence[float], real_tokens: Sequence[int],
               fake_tokens: Sequence[int]) -> PairScore:
    """Accuracy of summed log-likelihoods (real beats fake; ties count half), its Wilson interval and the length
    baseline from each side's token count."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.shape != fake.shape or real.ndim != 1:
        raise ValueError(f"expected two equal 1-D score lists, got {real.shape} and {fake.shape}")
    n = len(real)
    wins = _wins(real, fake)
    shorter = _wins(-np.asarray(real_tokens, np.float64), -np.asarray(fake_tokens, np.float64))
    return PairScore(wins / n if n else 0.0, n, wilson_interval(wins, n), shorter / n if n else 0.0)
