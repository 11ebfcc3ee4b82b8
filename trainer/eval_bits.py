"""Bits per second of audio: a model's cross-entropy on a run's validation windows, per stream and in total,
beside a unigram model of the same tokens (nats per token x tokens per second / ln 2). Every layout and bandwidth
lands on this one scale, which nats per token cannot give."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from narrator.evaluation.scores import bits_per_second, dedup_unigram_bits_per_second, unigram_bits_per_second
from narrator.streaming.layout import SLOT_SECONDS, Layout
from narrator.tokenfolder.manifest import SEMANTIC
from narrator.trainer.model import GPT


def stream_tokens_per_second(layout: Layout) -> dict[str, float]:
    """Tokens per second of audio of each stream the layout reads: frames per second x codebooks. A layout without a
    fixed rate (data.dedup_semantic) has its rate measured on the audio instead (`val_tokens_per_second`)."""
    if layout.dedup_semantic:
        raise ValueError("a dedup_semantic layout's tokens have no fixed rate: measure it on the audio")
    return {name: info.frames_per_slot / SLOT_SECONDS * info.n_codebooks for name, info in layout.infos.items()}


@dataclass
class Bits:
    """Bits per second of audio: the model's, and a unigram model's of the same tokens, per stream and in total."""

    per_stream: dict[str, float]
    unigram_per_stream: dict[str, float]
    dedup_unigram: float | None  # the semantic ids' unigram with repeats collapsed (None: no semantic stream)
    nats_per_token: dict[str, float]
    tokens_per_second: dict[str, float]
    targets: dict[str, int]  # tokens scored per stream
    seconds: float  # audio the windows hold
    windows: int
    ids_per_code: dict[str, float]  # ids each codebook's unigram was fit to, per code it could hold

    @property
    def total(self) -> float:
        return sum(self.per_stream.values())

    @property
    def unigram_total(self) -> float:
        return sum(self.unigram_per_stream.values())

    def as_dict(self) -> dict:
        r = lambda d: {k: round(v, 2) for k, v in d.items()}  # noqa: E731
        return {"bits_per_second": round(self.total, 2), "bits_per_second_per_stream": r(self.per_stream),
                "unigram_bits_per_second": round(self.unigram_total, 2),
                "unigram_bits_per_second_per_stream": r(self.unigram_per_stream),
                "dedup_unigram_bits_per_second": None if self.dedup_unigram is None else round(self.dedup_unigram, 2),
                "nats_per_token_per_stream": {k: round(v, 4) for k, v in self.nats_per_token.items()},
                "tokens_per_second_per_stream": self.tokens_per_second, "targets_per_stream": self.targets,
                "val_seconds": round(self.seconds, 2), "val_windows": self.windows,
                "unigram_ids_per_code": {k: round(v, 2) for k, v in self.ids_per_code.items()}}


@torch.no_grad()
def measure_bits(model: GPT, layout: Layout, windows: np.ndarray, batch_size: int = 32,
                 tokens_per_second: dict[str, float] | None = None) -> Bits:
    """Bits per second on windows [n, block_size + 1] (a training run's validation windows); `tokens_per_second`
    per stream where the layout has no fixed rate (data.dedup_semantic: measured on the same audio).

    Each target counts for the stream whose id range holds it: boundary, separator and padding tokens
    are no audio and count for none. The unigram reference is each codebook's own frequencies over the
    windows' decoded codes, so it knows no more than which ids are common.
    """
    windows = np.asarray(windows, np.int64)
    names = list(layout.stream_ranges)
    stream_of = np.full(layout.vocab_size, -1, np.int64)
    for i, ids in enumerate(layout.stream_ranges.values()):
        stream_of[ids.start: ids.stop] = i
    stream_of = torch.from_numpy(stream_of)
    sums, counts = torch.zeros(len(names) + 1, dtype=torch.float64), torch.zeros(len(names) + 1, dtype=torch.float64)
    device = next(model.parameters()).device
    for i in range(0, len(windows), batch_size):
        w = torch.from_numpy(windows[i: i + batch_size])
        logits, _ = model(w[:, :-1].to(device))
        nats = F.cross_entropy(logits.float().transpose(1, 2), w[:, 1:].to(device), reduction="none").cpu().double()
        which = stream_of[w[:, 1:]].reshape(-1) % (len(names) + 1)  # -1 (no stream) goes to the last slot
        sums.index_add_(0, which, nats.reshape(-1))
        counts.index_add_(0, which, torch.ones_like(nats.reshape(-1)))
    rates = tokens_per_second or stream_tokens_per_second(layout)
    per_token = {n: sums[i].item() / counts[i].item() for i, n in enumerate(names) if counts[i] > 0}

    codes: dict[str, list[list[np.ndarray]]] = {n: [[] for _ in range(layout.infos[n].n_codebooks)] for n in names}
    semantic_runs = []
    for window in windows:
        for run in layout.decode(window):
            for n in names:
                frames = np.asarray(run[n]).reshape(layout.infos[n].n_codebooks, -1)
                for k, row in enumerate(frames):
                    codes[n][k].append(row)
                if n == SEMANTIC:
                    semantic_runs.append(frames[0])
    unigram, seconds = {}, {}
    for n in names:
        books = [np.concatenate(rows) if rows else np.zeros(0, np.int64) for rows in codes[n]]
        seconds[n] = len(books[0]) * layout.infos[n].n_codebooks / rates[n]
        if seconds[n] > 0:
            unigram[n] = unigram_bits_per_second(books, seconds[n])
    dedup = (dedup_unigram_bits_per_second(semantic_runs, seconds[SEMANTIC])
             if SEMANTIC in names and seconds[SEMANTIC] > 0 else None)
    return Bits(per_stream={n: bits_per_second(v, rates[n]) for n, v in per_token.items()},
                unigram_per_stream=unigram, dedup_unigram=dedup, nats_per_token=per_token,
                tokens_per_second={n: rates[n] for n in names},
                targets={n: int(counts[i].item()) for i, n in enumerate(names)},
                seconds=max(seconds.values(), default=0.0), windows=len(windows),
                ids_per_code={n: len(np.concatenate(codes[n][0] or [np.zeros(0)])) / layout.infos[n].codebook_size
                              for n in names})
