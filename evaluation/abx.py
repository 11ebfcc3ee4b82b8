"""ABX discrimination of minimal pairs across voices: how much of a frame representation is the phonemes said, not
who said them.

Items: pairs of frequent words one phoneme apart (`bill` / `fill`), each word said by several espeak-ng
voices. X is a word in one voice, A the same word in another voice, B its partner in X's voice; the
ABX error is the share of (X, A, B) where X is not closer to A than to B (ties one half): 0 perfect,
0.5 chance, above 0.5 a representation of the speaker. Closeness is DTW with the frame distance
averaged along the path: id mismatch (0/1) for discrete tokens (all a language model sees of them),
angular distance for embeddings (ZeroSpeech's ABX). Every word is first stretched to the longest
word's frame count, so that length alone decides nothing (random frames score 0.5; unstretched, 0.31-0.41).
`narrator kmeans-report` scores each layer, k and standardization with a `WordAbx`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from narrator.errors import NarratorError

from .build import FREQUENT, VOICES, heard
from .lexicon import OFFENSIVE, fair_word, load_lexicon, sound_key
from .speech import SAMPLE_RATE, Spoken, Utterance, speak

RATE = 165  # words per minute, one rate for every voice: the voices are what differs
FRAME_RATE = 50  # frames per second of the representations scored (Whisper's encoder)
WINDOW_SECONDS = 30.0  # no word straddles a window of this length (Whisper's encoder window)
GAP_SECONDS = 0.3  # silence before each word
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
ABX_STREAM = 4  # random stream of the pair draw (evaluation/build.py uses 1-3)
SPARE = 1.5  # pairs drawn per pair wanted: espeak reads some words otherwise than CMUdict


@dataclass(frozen=True)
class WordAbx:
    """Minimal pairs of words (`words[2 i]`, `words[2 i + 1]`), each word said by each of `voices`, laid one
    after another in windows of WINDOW_SECONDS, and where each said word lies in the frames of that audio."""

    words: tuple[str, ...]
    voices: tuple[str, ...]
    seed: int
    audio: np.ndarray  # float32 mono at SAMPLE_RATE (24 kHz), a whole number of windows
    spans: np.ndarray  # int64 [words, voices, 2]: the word's frames [start, end) at FRAME_RATE

    @property
    def pairs(self) -> list[tuple[int, int]]:
        return [(i, i + 1) for i in range(0, len(self.words), 2)]

    @property
    def description(self) -> str:
        return (f"ABX: {len(self.words) // 2} minimal pairs of words (one phoneme apart) x {len(self.voices)} espeak-ng "
                "voices; X and B (the other word) one voice, A (X's word) another; DTW over id mismatch (ids) or "
                "angular distance (emb.); error ± 95% interval over pairs: 0 perfect, 0.5 chance, lower is better")

    def frames(self, representation: np.ndarray) -> list[np.ndarray]:
        """Each said word's frames of a representation of `audio` (ids [T] or embeddings [T, D]), words x voices in
        order, each stretched to the longest word's frame count."""
        rep = np.asarray(representation)
        if len(rep) < int(self.spans[..., 1].max()):
            raise ValueError(f"{len(rep)} frames, but the ABX audio holds {int(self.spans[..., 1].max())}")
        longest = int((self.spans[..., 1] - self.spans[..., 0]).max())
        return [stretch(rep[s:e], longest) for s, e in self.spans.reshape(-1, 2)]

    def score_ids(self, ids: np.ndarray) -> AbxError:
        """ABX error of discrete tokens of `audio` (one id per frame)."""
        return abx_error(self.frames(ids), len(self.voices), self.pairs, id_mismatch)

    def score_embeddings(self, embeddings: np.ndarray) -> AbxError:
        """ABX error of continuous frames [T, D] of `audio`."""
        return abx_error([unit(f) for f in self.frames(embeddings)], len(self.voices), self.pairs, angular_distance)


def word_abx(n_pairs: int, seed: int = 0, voices: Sequence[str] = VOICES) -> WordAbx:
    """`n_pairs` minimal pairs of frequent words drawn with `seed`, each word said by every voice (one fresh espeak-ng
    process: the same arguments give the same audio), in a seeded order, no word straddling a window.

    A pair is kept only where espeak says both words alike in every voice and one phoneme apart.
    """
    voices = tuple(voices)
    if n_pairs < 1 or len(voices) < 2:
        raise NarratorError(f"ABX needs at least 1 pair of words and 2 voices, got {n_pairs} and {len(voices)}")
    drawn = _draw_pairs(math.ceil(n_pairs * SPARE) + 2, seed)
    spoken = speak([Utterance(w, v, RATE) for pair in drawn for w in pair for v in voices], SAMPLE_RATE, seed)
    per_word = [spoken[i: i + len(voices)] for i in range(0, len(spoken), len(voices))]
    kept = [(pair, per_word[2 * i] + per_word[2 * i + 1]) for i, pair in enumerate(drawn)
            if _one_phoneme_apart(per_word[2 * i], per_word[2 * i + 1])][:n_pairs]
    if len(kept) < n_pairs:
        raise NarratorError(f"ABX: espeak-ng says only {len(kept)} of {len(drawn)} drawn word pairs one phoneme apart, "
                            f"asked for {n_pairs}")
    words = tuple(w for pair, _ in kept for w in pair)
    clips = [s.audio for _, said in kept for s in said]
    order = np.random.default_rng([ABX_STREAM, seed, 1]).permutation(len(clips))
    audio, spans = lay_out([clips[int(i)] for i in order], SAMPLE_RATE)
    placed = np.empty_like(spans)
    placed[order] = spans
    return WordAbx(words, voices, seed, audio, placed.reshape(len(words), len(voices), 2))


def _one_phoneme_apart(a: Sequence[Spoken], b: Sequence[Spoken]) -> bool:
    """Whether espeak said each word alike in every voice, and the two words with one phoneme substituted."""
    pa, pb = {tuple(heard(s.phonemes)) for s in a}, {tuple(heard(s.phonemes)) for s in b}
    if len(pa) != 1 or len(pb) != 1:
        return False
    (x,), (y,) = pa, pb
    return len(x) == len(y) and sum(p != q for p, q in zip(x, y)) == 1


def _offensive(word: str) -> bool:
    """The lexicon's offensive words and their inflections (`fair_word` knows only the listed forms)."""
    return any(word == w + ending for w in OFFENSIVE for ending in ("", "s", "es", "ed", "er", "ers", "ing", "y"))


def _draw_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """n disjoint pairs of frequent words whose CMUdict sounds differ by one substituted phoneme, drawn with `seed`."""
    pool = [e for e in load_lexicon().entries[:FREQUENT] if fair_word(e) and not _offensive(e.word)]
    sounds = {e.word: sound_key(" ".join(e.phones)).split() for e in pool}
    groups = defaultdict(list)  # the sound with one position left open -> the words that fill it
    for e in pool:
        ph = sounds[e.word]
        for i in range(len(ph)):
            groups[(tuple(ph[:i]), len(ph), tuple(ph[i + 1:]))].append(e.word)
    candidates = sorted({(a, b) for words in groups.values() for a in words for b in words
                         if a < b and sounds[a] != sounds[b]})
    rng = np.random.default_rng([ABX_STREAM, seed])
    pairs, used = [], set()
    for index in rng.permutation(len(candidates)):
        a, b = candidates[int(index)]
        if a not in used and b not in used:
            pairs.append((a, b) if rng.random() < 0.5 else (b, a))
            used |= {a, b}
            if len(pairs) == n:
                return pairs
    raise NarratorError(f"ABX: only {len(pairs)} disjoint minimal pairs among the frequent words, asked for {n}")


def lay_out(clips: Sequence[np.ndarray], sample_rate: int, frame_rate: int = FRAME_RATE,
            window_seconds: float = WINDOW_SECONDS, gap_seconds: float = GAP_SECONDS) -> tuple[np.ndarray, np.ndarray]:
    """Clips one after another, each after a gap of silence and starting on a frame, in windows they never straddle.

    Returns the audio (a whole number of windows) and each clip's frames [start, end), int64 [clips, 2].
    """
    hop = sample_rate // frame_rate
    window, gap = round(window_seconds * sample_rate), round(gap_seconds * sample_rate)
    starts, at = [], 0
    for clip in clips:
        need = gap + len(clip)
        if need > window:
            raise ValueError(f"a clip of {len(clip) / sample_rate:.1f} s does not fit a {window_seconds:g} s window")
        begin = -(-(at + gap) // hop) * hop  # on a frame boundary
        if begin // window != (begin + len(clip) - 1) // window:  # it would straddle: start the next window
            begin = (begin // window + 1) * window + -(-gap // hop) * hop
        starts.append(begin)
        at = begin + len(clip)
    audio = np.zeros(max(1, -(-at // window)) * window, np.float32)
    spans = np.empty((len(clips), 2), np.int64)
    for i, (begin, clip) in enumerate(zip(starts, clips)):
        audio[begin: begin + len(clip)] = clip
        spans[i] = begin // hop, -(-(begin + len(clip)) // hop)
    return audio, spans


# --- distances and the error ---------------------------------------------------------------------

def stretch(frames: np.ndarray, n: int) -> np.ndarray:
    """`frames` (at most n) stretched to n by repeating frames evenly (nearest frame, integer arithmetic)."""
    if not 0 < len(frames) <= n:
        raise ValueError(f"cannot stretch {len(frames)} frames to {n}")
    return frames[(2 * np.arange(n) + 1) * len(frames) // (2 * n)]


def id_mismatch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Frame distances of id sequences, batched: a [P, La], b [P, Lb] -> [P, La, Lb], 0 where equal, else 1."""
    return (a[:, :, None] != b[:, None, :]).astype(np.float64)


def angular_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Frame distances of unit vectors (`unit`), batched: a [P, La, D], b [P, Lb, D] -> [P, La, Lb], the angle / pi
    (0 to 1). Zero padding rows give 0.5: they are never on a path that ends inside both sequences."""
    return np.arccos(np.clip(np.matmul(a, b.transpose(0, 2, 1)), -1.0, 1.0)) / math.pi


def unit(x: np.ndarray) -> np.ndarray:
    """Rows of x scaled to length 1 (float64; a zero row stays zero)."""
    x = np.asarray(x, np.float64)
    norm = np.sqrt((x * x).sum(-1, keepdims=True))
    return x / np.where(norm > 0, norm, 1.0)


def dtw(pairs: Sequence[tuple[np.ndarray, np.ndarray]], distance: Callable[[np.ndarray, np.ndarray], np.ndarray],
        batch: int = 512) -> np.ndarray:
    """For each (a, b): the frame distance averaged along the cheapest DTW path from the first frames to the last
    (steps: diagonal, down, right; ties taken in that order), float64 [pairs]. Pairs run in batches,
    anti-diagonal by anti-diagonal; no reduction depends on the thread count but the embeddings' dot products."""
    out = np.empty(len(pairs), np.float64)
    by_size = sorted(range(len(pairs)), key=lambda p: (len(pairs[p][0]), len(pairs[p][1])))
    for lo in range(0, len(pairs), batch):
        idx = by_size[lo: lo + batch]
        la = np.array([len(pairs[p][0]) for p in idx])
        lb = np.array([len(pairs[p][1]) for p in idx])
        if la.min() == 0 or lb.min() == 0:
            raise ValueError("dtw: an empty sequence")
        d = distance(_pad([pairs[p][0] for p in idx], la.max()), _pad([pairs[p][1] for p in idx], lb.max()))
        cost, steps = _dtw_batch(d)
        rows = np.arange(len(idx))
        out[idx] = cost[rows, la, lb] / steps[rows, la, lb]
    return out


def _pad(seqs: list[np.ndarray], length: int) -> np.ndarray:
    first = np.asarray(seqs[0])
    out = np.zeros((len(seqs), length, *first.shape[1:]), first.dtype)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def _dtw_batch(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative cost and path length [P, La + 1, Lb + 1] (row and column 0: the start) of distances d [P, La, Lb]."""
    p, na, nb = d.shape
    cost = np.full((p, na + 1, nb + 1), np.inf)
    steps = np.zeros((p, na + 1, nb + 1), np.int64)
    cost[:, 0, 0] = 0.0
    for s in range(2, na + nb + 1):  # cells (i, j), 1-based, with i + j = s
        i = np.arange(max(1, s - nb), min(na, s - 1) + 1)
        j = s - i
        prev_cost = np.stack([cost[:, i - 1, j - 1], cost[:, i - 1, j], cost[:, i, j - 1]])
        prev_steps = np.stack([steps[:, i - 1, j - 1], steps[:, i - 1, j], steps[:, i, j - 1]])
        best = np.argmin(prev_cost, axis=0)  # first of equals: diagonal, then down, then right
        take = np.take_along_axis
        cost[:, i, j] = d[:, i - 1, j - 1] + take(prev_cost, best[None], 0)[0]
        steps[:, i, j] = take(prev_steps, best[None], 0)[0] + 1
    return cost, steps


class AbxError(NamedTuple):
    """An ABX error and the half-width of its 95% interval, pairs of words taken as the sampled units."""

    error: float
    ci95: float


def abx_error(frames: Sequence[np.ndarray], n_voices: int, pairs: Sequence[tuple[int, int]],
              distance: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> AbxError:
    """ABX error over every X (word w, voice v), A (w, voice u != v), B (w's partner y, voice v), both ways round
    each pair of words, ties one half. `frames`: each said word's frames, word by word, voices in order within
    a word (WordAbx.frames); `pairs`: the word indices contrasted.
    """
    n_words = len(frames) // n_voices
    if len(frames) != n_words * n_voices or n_voices < 2 or not pairs:
        raise ValueError(f"{len(frames)} sequences, {n_voices} voices, {len(pairs)} pairs: not an ABX design")
    at = lambda w, v: frames[w * n_voices + v]
    words = sorted({w for pair in pairs for w in pair})
    same_word = [(w, v, u) for w in words for v in range(n_voices) for u in range(v + 1, n_voices)]
    other_word = [(w, y, v) for w, y in pairs for v in range(n_voices)]
    d = dtw([(at(w, v), at(w, u)) for w, v, u in same_word] + [(at(w, v), at(y, v)) for w, y, v in other_word], distance)
    xa = {}  # (w, v, u): X (w, v) to A (w, u)
    for (w, v, u), value in zip(same_word, d[: len(same_word)]):
        xa[w, v, u] = xa[w, u, v] = value
    per_pair = np.zeros(len(pairs))  # every pair has 2 n_voices (n_voices - 1) triplets
    for n, ((w, y, v), xb) in enumerate(zip(other_word, d[len(same_word):])):
        for x in (w, y):  # X is either word of the pair, B the other (one DTW per pair of clips)
            for u in range(n_voices):
                if u != v:
                    per_pair[n // n_voices] += 1.0 if xa[x, v, u] > xb else 0.5 if xa[x, v, u] == xb else 0.0
    per_pair /= 2 * n_voices * (n_voices - 1)
    spread = float(per_pair.std(ddof=1)) if len(pairs) > 1 else 0.0
    return AbxError(float(per_pair.mean()), Z95 * spread / math.sqrt(len(pairs)))
