"""Codebook layouts: how K parallel codebook streams become one token sequence, and back.

Each layout is a small class with one interface (after audiocraft's codebooks_patterns), so a
delay or parallel pattern can be added beside `FlatLayout` without touching the data pipeline.
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
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def tokens_per_frame(self) -> int: ...

    @abstractmethod
    def to_tokens(self, codes: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def to_codes(self, tokens: np.ndarray) -> np.ndarray: ...


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
    def vocab_size(self) -> int:
        return self.codebook_size if self.shared_vocab else self.n_codebooks * self.codebook_size

    @property
    def tokens_per_frame(self) -> int:
        return self.n_codebooks

    def to_tokens(self, codes: np.ndarray) -> np.ndarray:
        """codes [n_codebooks, frames] -> int64 tokens [n_codebooks * frames]."""
        if codes.ndim != 2 or codes.shape[0] != self.n_codebooks:
            raise ValueError(f"expected codes of shape [{self.n_codebooks}, frames], got {list(codes.shape)}")
        return (codes.astype(np.int64) + self._offsets).T.reshape(-1)

    def to_codes(self, tokens: np.ndarray) -> np.ndarray:
        """1-D tokens -> int64 codes [n_codebooks, frames]; a trailing partial frame is dropped.

        Every token maps to `token % codebook_size`: a token from the wrong codebook's range (a model
        may sample one) wraps to a valid code instead of failing, and in-range tokens lose their offset.
        """
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        frames = len(tokens) // self.n_codebooks
        return (tokens[: frames * self.n_codebooks].reshape(frames, self.n_codebooks).T % self.codebook_size).copy()


def make_layout(name: str, n_codebooks: int, codebook_size: int = 1024, shared_vocab: bool = False) -> Layout:
    if name == "flat":
        return FlatLayout(n_codebooks, codebook_size, shared_vocab)
    raise ConfigError(f"'data.layout': unknown layout {name!r} (known: flat)")
