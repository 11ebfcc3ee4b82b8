"""Spoken minimal pairs: each side's audio tokenized with the checkpoint's own tokenizer files, laid out as in
training after one boundary unit (a recording's start), and scored by the model's summed log-likelihood of its
tokens; accuracy is the share of pairs the real item wins (narrator.evaluation.scores)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from narrator.errors import NarratorError
from narrator.evaluation import ItemSet
from narrator.evaluation.scores import PairScore, pair_score
from narrator.streaming.layout import SLOT_SECONDS, Layout, PrefixLayout
from narrator.tokenfolder import storage
from narrator.tokenfolder.manifest import ACOUSTIC, SEMANTIC, StreamInfo
from narrator.trainer.checkpoint import CheckpointMeta
from narrator.trainer.generate import load_codec, token_folder
from narrator.trainer.model import GPT

if TYPE_CHECKING:
    from narrator.tokenizers.encodec import EncodecTokenizer
    from narrator.tokenizers.semantic import SemanticTokenizer

SAMPLE_RATE = 24_000  # what the item sets are spoken at and both tokenizers read
SLOT_SAMPLES = round(SLOT_SECONDS * SAMPLE_RATE)


@torch.no_grad()
def summed_log_likelihoods(model: GPT, sequences: Sequence[np.ndarray], score_from: Sequence[int],
                           align: int, batch_size: int = 32) -> np.ndarray:
    """Per sequence, the sum of log p(token i | the tokens before it) over i >= score_from, in nats.

    A sequence longer than the block is read in windows that start on a unit (`align`), as training
    windows do; each scores the tokens the one before did not reach, with at least half a block of
    context (as generate moves its context).
    """
    block = model.config.block_size
    if align > block // 2:
        raise ValueError(f"a unit of {align} tokens is longer than half the block ({block}): no room for context")
    pieces = []  # (sequence, window start, window end, first position scored)
    for j, (seq, first) in enumerate(zip(sequences, score_from, strict=True)):
        start, done = 0, max(first, 1)  # the first token has nothing before it to be predicted from
        while done < len(seq):
            if done - start > block:
                start = -(-(done - block // 2) // align) * align
            end = min(start + block + 1, len(seq))
            pieces.append((j, start, end, done))
            done = end
    totals = np.zeros(len(sequences), np.float64)
    device = next(model.parameters()).device
    pieces.sort(key=lambda p: p[2] - p[1])  # similar lengths share a batch: less padding
    for i in range(0, len(pieces), batch_size):
        batch = pieces[i: i + batch_size]
        length = max(end - start for _, start, end, _ in batch) - 1
        x = torch.zeros(len(batch), length, dtype=torch.long)
        y = torch.zeros(len(batch), length, dtype=torch.long)
        scored = torch.zeros(len(batch), length, dtype=torch.bool)
        for row, (j, start, end, done) in enumerate(batch):
            window = torch.from_numpy(np.asarray(sequences[j][start:end], np.int64))
            x[row, : end - start - 1], y[row, : end - start - 1] = window[:-1], window[1:]
            scored[row, done - start - 1: end - start - 1] = True  # target t is token start + 1 + t
        logits, _ = model(x.to(device))  # causal: the padding after a window changes none of its logits
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, y.to(device)[..., None])[..., 0]
        sums = (logp * scored.to(device)).sum(1).double().cpu().numpy()
        for row, (j, *_) in enumerate(batch):
            totals[j] += sums[row]
    return totals


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op torch thread for a while: an item is under a second of audio, too little work to split, and on a
    busy 2-core machine a second thread mostly waits (32 words: 1.6-1.9 s on one thread, 15-22 s on two while
    other processes ran)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class AudioTokenizer:
    """24 kHz audio -> the token sequence a layout reads, made as the checkpoint's tokens were: its EnCodec for
    the acoustic stream, its Whisper and k-means for the semantic one."""

    layout: Layout
    codec: EncodecTokenizer | None = None
    semantic: SemanticTokenizer | None = None

    def tokens(self, audio: np.ndarray) -> np.ndarray:
        """Audio padded with silence to whole 40 ms slots (the grid every layout lies on), then laid out."""
        slots = max(1, -(-len(audio) // SLOT_SAMPLES))
        padded = np.zeros(slots * SLOT_SAMPLES, np.float32)
        padded[: len(audio)] = audio
        streams = {}
        if ACOUSTIC in self.layout.streams:
            streams[ACOUSTIC] = self.codec.encode(padded).astype(np.int64)[:, : 3 * slots]
        if SEMANTIC in self.layout.streams:
            embedded = self.semantic.embedder.embed(padded)
            streams[SEMANTIC] = self.semantic.assigner.assign(embedded).astype(np.int64)[: 2 * slots]
        return self.layout.encode(streams)


def cannot_score_pairs(layout: Layout, block_size: int) -> str | None:
    """Why this model cannot give an item's likelihood, or None."""
    if isinstance(layout, PrefixLayout):
        return ("a prefix model reads windows of a fixed number of slots (the separator always at the same place), "
                "so an item of another length has no likelihood under it; score the semantic model of the pair")
    if 2 * layout.unit_tokens > block_size:
        return (f"block_size {block_size} holds less than two units of {layout.unit_tokens} tokens: an item longer "
                "than the block cannot be read on with context")
    return None


@dataclass
class PairTokens:
    """An item set's pairs as tokens: each side after one boundary unit (a recording starts there in training)."""

    item_set: ItemSet
    real: list[np.ndarray]
    fake: list[np.ndarray]
    context: int  # tokens before each side, not scored
    align: int

    @classmethod
    def of(cls, item_set: ItemSet, tokenizer: AudioTokenizer) -> PairTokens:
        if item_set.sample_rate != SAMPLE_RATE:
            raise NarratorError(f"{item_set.suite} items are at {item_set.sample_rate} Hz, the tokenizers read "
                                f"{SAMPLE_RATE} Hz")
        layout = tokenizer.layout
        head = layout.boundary_unit
        side = lambda audio: np.concatenate([head, tokenizer.tokens(audio)])  # noqa: E731
        with one_thread():
            real, fake = [side(a) for a in item_set.real_audio], [side(a) for a in item_set.fake_audio]
        return cls(item_set, real, fake, len(head), layout.unit_tokens)

    def score(self, model: GPT, batch_size: int = 32) -> PairScore:
        """Real vs fake by the model's summed log-likelihood of each side's own tokens."""
        sequences = self.real + self.fake
        ll = summed_log_likelihoods(model, sequences, [self.context] * len(sequences), self.align, batch_size)
        n = len(self.real)
        return pair_score(ll[:n], ll[n:], [len(t) - self.context for t in self.real],
                          [len(t) - self.context for t in self.fake])


def tokenizer_files_missing(meta: CheckpointMeta, layout: Layout) -> list[str]:
    """The files beside the tokens (random-init weights, k-means) that neither the checkpoint nor its token folder
    holds, for the streams the layout reads."""
    folders = token_folder(meta.path)
    missing = []
    for name in layout.streams:
        for rel in meta.stream(name).files():
            found = (meta.path / Path(rel).name).is_file() or any((f / rel).is_file() for f in folders)
            if not found:
                missing.append(rel)
    return missing


def random_weights_line(streams: Sequence[StreamInfo]) -> str | None:
    """One line when some stream's tokens come from random-init weights, else None."""
    random = [f"{s.name} ({s.kind}, {s.weights.source})" for s in streams if s.weights.mode == "random"]
    if not random:
        return None
    return (f"NOTE: the tokens come from RANDOM-INIT weights ({', '.join(random)}), as this model's training tokens "
            "did: the pairs test how it ranks these codes of the speech, not what a real codec or Whisper would carry")


def load_audio_tokenizer(layout: Layout, streams: Sequence[StreamInfo], device: torch.device,
                         weights_dirs: Sequence[storage.Location]) -> AudioTokenizer:
    """The tokenizers of the streams the layout reads, rebuilt from their files and checked against their records."""
    infos = {s.name: s for s in streams}
    tokenizer = AudioTokenizer(layout)
    with torch.random.fork_rng(devices=[]):  # building EnCodec draws from the global RNG (a run's dropout)
        if ACOUSTIC in layout.streams:
            tokenizer.codec = load_codec(infos[ACOUSTIC], device, list(weights_dirs))
        if SEMANTIC in layout.streams:
            from narrator.tokenizers.semantic import load_semantic_tokenizer  # Whisper: only when needed

            tokenizer.semantic = load_semantic_tokenizer(infos[SEMANTIC], str(device), list(weights_dirs))
    return tokenizer
