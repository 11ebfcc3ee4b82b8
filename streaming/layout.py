"""Codebook layouts: how K parallel codebook streams become one token sequence, and back.

Each layout is a small class with one interface (after audiocraft's codebooks_patterns), so a
delay or parallel pattern can be added beside `FlatLayout` without touching the data pipeline.
Every layout has one extra id, the boundary token: a whole frame of it separates recordings (or
two parts of a book that do not join) inside a training window, and `generate` splits there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from narrator.errors import ConfigError


class Layout(ABC):
    """Maps codes [n_codebooks, frames] to a 1-D token sequence and back."""

    n_codebooks: int
    codebook_size: int

    @property
    @abstractmethod
    def code_ids(self) -> int:
        """How many ids the codes use (0 .. code_ids - 1)."""

    @property
    def boundary_token(self) -> int:
        """The id that marks a boundary between recordings: the first id after the codes'."""
        return self.code_ids

    @property
    def vocab_size(self) -> int:
        return self.code_ids + 1  # the codes and the boundary token

    @property
    @abstractmethod
    def tokens_per_frame(self) -> int: ...

    @property
    def boundary_frame(self) -> np.ndarray:
        """One frame of boundary tokens: inserted whole, so windows still start on a frame."""
        return np.full(self.tokens_per_frame, self.boundary_token, dtype=np.int64)

    @abstractmethod
    def to_tokens(self, codes: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _frames_to_codes(self, frames: np.ndarray) -> np.ndarray:
        """Tokens [frames, tokens_per_frame] without boundary tokens -> codes [n_codebooks, frames]."""

    def split_codes(self, tokens: np.ndarray) -> list[np.ndarray]:
        """1-D tokens -> the codes between boundary frames: len(result) - 1 boundaries were crossed.

        A frame holding any boundary token counts as a boundary (a model may sample one mid-frame);
        a trailing partial frame is dropped. Runs between adjacent boundaries are empty [n_codebooks, 0].
        """
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        n = len(tokens) // self.tokens_per_frame
        frames = tokens[: n * self.tokens_per_frame].reshape(n, self.tokens_per_frame)
        cuts = np.flatnonzero((frames == self.boundary_token).any(axis=1))
        starts, ends = np.concatenate([[0], cuts + 1]), np.concatenate([cuts, [n]])
        return [self._frames_to_codes(frames[a:b]) for a, b in zip(starts, ends)]

    def to_codes(self, tokens: np.ndarray) -> np.ndarray:
        """1-D tokens without boundaries -> int64 codes [n_codebooks, frames]; a trailing partial frame is dropped."""
        runs = self.split_codes(tokens)
        if len(runs) > 1:
            raise ValueError(f"tokens hold {len(runs) - 1} boundary frame(s); use split_codes")
        return runs[0]


class FlatLayout(Layout):
    """Codebooks interleaved frame by frame: [c0(t0), c1(t0), .., cK-1(t0), c0(t1), ...].

    By default codebook k owns ids [k * codebook_size, (k + 1) * codebook_size), so the model can
    tell the codebooks apart; `shared_vocab=True` keeps raw codes (ids 0..codebook_size-1).
    """

    def __init__(self, n_codebooks: int, codebook_size: int = 1024, shared_vocab: bool = False):
        if n_codebooks < 1 or codebook_size < 1:
            raise ValueError(f"need n_codebooks >= 1 and codebook_size >= 1, got {n_codebooks}, {codebook_size}")
        self.n_codebooks = n_codebooks
        self.codebook_size = codebook_size
        self.shared_vocab = shared_vocab
        steps = np.zeros(n_codebooks, np.int64) if shared_vocab else np.arange(n_codebooks, dtype=np.int64)
        self._offsets = steps[:, None] * codebook_size  # [n_codebooks, 1], added to each frame's codes

    @property
    def code_ids(self) -> int:
        return self.codebook_size if self.shared_vocab else self.n_codebooks * self.codebook_size

    @property
    def tokens_per_frame(self) -> int:
        return self.n_codebooks

    def to_tokens(self, codes: np.ndarray) -> np.ndarray:
        """codes [n_codebooks, frames] -> int64 tokens [n_codebooks * frames]."""
        if codes.ndim != 2 or codes.shape[0] != self.n_codebooks:
            raise ValueError(f"expected codes of shape [{self.n_codebooks}, frames], got {list(codes.shape)}")
        return (codes.astype(np.int64) + self._offsets).T.reshape(-1)

    def _frames_to_codes(self, frames: np.ndarray) -> np.ndarray:
        """Every token maps to `token % codebook_size`: a token from the wrong codebook's range (a model
        may sample one) wraps to a valid code instead of failing, and in-range tokens lose their offset."""
        return (frames.T % self.codebook_size).copy()


def make_layout(name: str, n_codebooks: int, codebook_size: int = 1024, shared_vocab: bool = False) -> Layout:
    if name == "flat":
        return FlatLayout(n_codebooks, codebook_size, shared_vocab)
    raise ConfigError(f"'data.layout': unknown layout {name!r} (known: flat)")
