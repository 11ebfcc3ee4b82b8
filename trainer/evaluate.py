"""`narrator eval`: judge a checkpoint the way spoken-LM papers do.

- bits: bits per second of audio on the checkpoint's validation split, per stream and in total (nats per
  token x tokens per second / ln 2), beside a unigram model of the same tokens. Every layout and bandwidth
  lands on this one scale, which nats per token cannot give.
- lexical, syntactic: spoken minimal pairs (narrator.evaluation). Each side's audio is tokenized with the
  checkpoint's own tokenizer files, laid out as in training after one boundary unit (a recording's start),
  and the model's summed log-likelihood of its tokens decides; accuracy is the share of pairs the real
  item wins, with n and a 95% Wilson interval.

`SuiteEval` runs a small subset of the same at each training evaluation (`eval_suite`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from narrator.config import load_config
from narrator.errors import ConfigError, NarratorError
from narrator.evaluation import DEFAULT_CACHE, SUITES as ITEM_SUITES, ItemSet, load_or_build
from narrator.evaluation.scores import (PairScore, bits_per_second, dedup_unigram_bits_per_second, pair_score,
                                        unigram_bits_per_second)
from narrator.streaming.dataset import open_folder, open_sources, val_tokens_per_second, val_windows
from narrator.streaming.layout import SLOT_SECONDS, Layout, PrefixLayout
from narrator.tokenfolder import storage
from narrator.tokenfolder.manifest import ACOUSTIC, SEMANTIC, StreamInfo
from narrator.trainer.checkpoint import CheckpointMeta, load_for_inference
from narrator.trainer.config import EVAL_SUITES, TrainConfig
from narrator.trainer.generate import checkpoint_layout, load_codec, token_folder
from narrator.trainer.metrics import StepMetrics
from narrator.trainer.model import GPT

if TYPE_CHECKING:
    from narrator.tokenizers.encodec import EncodecTokenizer
    from narrator.tokenizers.semantic import SemanticTokenizer

BITS = "bits"
RESULTS = "eval"  # under a training output folder: eval/step_NNNNNNN.json, which `narrator report` shows
SAMPLE_RATE = 24_000  # what the item sets are spoken at and both tokenizers read
SLOT_SAMPLES = round(SLOT_SECONDS * SAMPLE_RATE)


@dataclass
class EvalConfig:
    checkpoint: str = ""  # training output folder (its latest checkpoint) or one checkpoint folder
    suites: list[str] = field(default_factory=lambda: list(EVAL_SUITES))  # bits, lexical, syntactic
    lexical_n: int = 200  # pairs; the 95% interval is about +-0.07 wide at 200
    syntactic_n: int = 100
    seed: int = 0  # of the item sets
    cache: str = str(DEFAULT_CACHE)  # where item sets are kept once built
    val_windows: int = 0  # validation windows read for bits; 0: all of them
    batch_size: int = 32
    device: Literal["auto", "cpu", "cuda"] = "auto"
    json: str = ""  # also write the results here

    def __post_init__(self) -> None:
        unknown = [s for s in self.suites if s not in EVAL_SUITES]
        if unknown:
            raise ConfigError(f"unknown evaluation suite {', '.join(map(repr, unknown))} "
                              f"(known: {', '.join(EVAL_SUITES)})")
        if not self.suites:
            raise ConfigError(f"no evaluation suite given (known: {', '.join(EVAL_SUITES)})")
        if min(self.lexical_n, self.syntactic_n, self.batch_size) < 1 or self.val_windows < 0:
            raise ConfigError(f"lexical_n {self.lexical_n}, syntactic_n {self.syntactic_n} and batch_size "
                              f"{self.batch_size} must be >= 1, val_windows {self.val_windows} >= 0")


# --- the model's log-likelihoods ----------------------------------------------------------------------------------

def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


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
    device = _device(model)
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
    device = _device(model)
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


# --- spoken minimal pairs -----------------------------------------------------------------------------------------

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


# --- narrator eval ------------------------------------------------------------------------------------------------

@dataclass
class EvalResult:
    checkpoint: str
    step: int
    layout: str
    bits: Bits | None = None
    pairs: dict[str, PairScore] = field(default_factory=dict)
    items: dict[str, ItemSet] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # suite -> why
    random_weights: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # what each suite took
    dedup_semantic: bool = False  # the layout collapses repeated semantic ids (data.dedup_semantic)

    def as_dict(self) -> dict:
        """The JSON written by --json and to RUN/eval/: bits_per_second*, and lexical / syntactic as
        {accuracy, n, ci95, length_baseline, items}."""
        out: dict = {"checkpoint": self.checkpoint, "step": self.step, "layout": self.layout,
                     "dedup_semantic": self.dedup_semantic}
        if self.bits is not None:
            out.update(self.bits.as_dict())
        for suite, score in self.pairs.items():
            items = self.items[suite]
            out[suite] = {**score.as_dict(), "items": {"sha256": items.sha256, "version": items.version,
                                                       "seed": items.seed, "source": items.source}}
        out["skipped"] = self.skipped
        out["random_weights"] = self.random_weights
        out["seconds"] = {k: round(v, 1) for k, v in self.seconds.items()}
        return out


def verdict(score: PairScore) -> str:
    """Above, below or near chance, and whether length alone does as well (a summed likelihood favours the shorter side)."""
    low, high = score.ci95
    where = "above chance" if low > 0.5 else "below chance" if high < 0.5 else "near chance (the interval includes 0.5)"
    if low <= score.length_baseline <= high and score.length_baseline != 0.5:
        where += f", as length alone ({score.length_baseline:.3f})"
    return where


def format_result(result: EvalResult) -> str:
    """The table `narrator eval` prints."""
    collapsed = ", semantic repeats collapsed" if result.dedup_semantic else ""
    lines = [f"checkpoint {result.checkpoint} (step {result.step}, layout {result.layout}{collapsed})"]
    if result.random_weights:
        lines.append(result.random_weights)
    bits = result.bits
    if bits is not None:
        lines.append(f"bits per second of audio, validation split ({bits.windows} windows, {bits.seconds:.1f} s of "
                     "audio); unigram: each codebook's own id frequencies in these windows")
        lines.append(f"  {'stream':<10} {'model':>9} {'unigram':>9} {'nats/token':>10} {'tokens/s':>9}")
        for name, value in bits.per_stream.items():
            lines.append(f"  {name:<10} {value:>9.1f} {bits.unigram_per_stream.get(name, math.nan):>9.1f} "
                         f"{bits.nats_per_token[name]:>10.3f} {bits.tokens_per_second[name]:>9g}")
        lines.append(f"  {'total':<10} {bits.total:>9.1f} {bits.unigram_total:>9.1f}")
        if result.dedup_semantic:
            lines.append("  (tokens/s: the collapsed ids per second of the validation audio; durations are not modelled)")
        if bits.dedup_unigram is not None:
            lines.append(f"  semantic ids with repeats collapsed: unigram {bits.dedup_unigram:.1f} bits/s")
        few = {n: r for n, r in bits.ids_per_code.items() if r < 10}
        if few:
            lines.append("  (the unigram is fit to the ids it scores, so it reads low where a codebook holds few ids per "
                         f"code: {', '.join(f'{n} {r:.1f}' for n, r in few.items())})")
    if result.pairs:
        lines.append("spoken minimal pairs: real beats fake by summed log-likelihood (ties half); length-only: the "
                     "accuracy of 'the shorter side wins'")
        lines.append(f"  {'suite':<10} {'accuracy':>8} {'95% interval':>14} {'n':>5} {'length-only':>11}  verdict")
        for suite, s in result.pairs.items():
            lines.append(f"  {suite:<10} {s.accuracy:>8.3f} {f'{s.ci95[0]:.3f}-{s.ci95[1]:.3f}':>14} {s.n:>5} "
                         f"{s.length_baseline:>11.3f}  {verdict(s)}")
        for suite, s in result.pairs.items():
            items = result.items[suite]
            lines.append(f"  {suite} items: v{items.version} seed {items.seed} sha256 {items.sha256[:16]}")
    for suite, why in result.skipped.items():
        lines.append(f"{suite}: skipped: {why}")
    lines.append("took " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()))
    return "\n".join(lines)


def validation_windows(meta: CheckpointMeta, block_size: int, limit: int = 0) -> tuple[np.ndarray, dict[str, float] | None]:
    """The validation windows the checkpoint's run evaluated on (every token folder of its config), read with the
    streaming loader, and the semantic ids' rate on the same audio where the layout has no fixed one
    (data.dedup_semantic); refused in one line when its token folder is not here or holds other tokens now."""
    config_file = meta.path / "config.yaml"
    cfg = load_config(TrainConfig, config_file)
    folders = []
    for source in cfg.data.sources:
        try:
            folders.append(open_folder(source.manifest))
        except (NarratorError, OSError) as e:
            raise NarratorError(f"the token folder its config.yaml names is not readable here ({e})") from None
    sources = open_sources(cfg.data, folders)
    made = "+".join(folders[0][0].stream(s).config_hash for s in sources[0].layout.streams)
    if made != meta.state.tokenizer_config_hash:
        raise NarratorError(f"{cfg.data.sources[0].manifest} now holds tokens of config_hash {made}, the model was "
                            f"trained on {meta.state.tokenizer_config_hash}")
    windows = val_windows(sources, block_size, 0, 1)
    rate = {SEMANTIC: val_tokens_per_second(sources)} if sources[0].layout.dedup_semantic else None
    return (windows[:limit] if limit else windows), rate


def evaluate_checkpoint(cfg: EvalConfig) -> EvalResult:
    """Every suite of `cfg` on one checkpoint; a suite the layout or the data cannot give is skipped with its
    reason, a checkpoint without the tokenizer files a pair suite needs is refused before anything runs."""
    if not cfg.checkpoint:
        raise NarratorError("eval needs --checkpoint")
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    model, model_cfg, meta = load_for_inference(Path(cfg.checkpoint), device)
    layout = checkpoint_layout(meta, model_cfg)
    result = EvalResult(str(meta.path), meta.state.step, meta.state.layout, dedup_semantic=meta.state.dedup_semantic)
    pair_suites = [s for s in cfg.suites if s in ITEM_SUITES]
    why = cannot_score_pairs(layout, model_cfg.block_size)
    if why is not None:
        result.skipped.update({s: why for s in pair_suites})
        pair_suites = []
    if pair_suites:
        missing = tokenizer_files_missing(meta, layout)
        if missing:
            raise NarratorError(f"{meta.path}: the {' and '.join(pair_suites)} suite{'s' if len(pair_suites) > 1 else ''} "
                                f"need {', '.join(missing)} to tokenize their audio as the model's tokens were, and "
                                "neither the checkpoint nor its token folder holds it; copy it into the checkpoint "
                                "from the token folder, or give --suite bits")
    streams = [meta.stream(s) for s in layout.streams]
    if BITS in cfg.suites:
        start = time.perf_counter()
        try:
            windows, rate = validation_windows(meta, model_cfg.block_size, cfg.val_windows)
        except NarratorError as e:
            result.skipped[BITS] = str(e)
        else:
            result.bits = measure_bits(model, layout, windows, cfg.batch_size, rate)
            result.seconds[BITS] = time.perf_counter() - start
    if pair_suites:
        result.random_weights = random_weights_line(streams)
        start = time.perf_counter()
        tokenizer = load_audio_tokenizer(layout, streams, device, [meta.path, *token_folder(meta.path)])
        result.seconds["tokenizer"] = time.perf_counter() - start
        for suite in pair_suites:
            start = time.perf_counter()
            n = cfg.lexical_n if suite == "lexical" else cfg.syntactic_n
            items = load_or_build(suite, n, cfg.seed, Path(cfg.cache) if cfg.cache else None)
            result.items[suite] = items
            result.pairs[suite] = PairTokens.of(items, tokenizer).score(model, cfg.batch_size)
            result.seconds[suite] = time.perf_counter() - start
    return result


def results_file(meta_path: Path, step: int) -> Path | None:
    """RUN/eval/step_NNNNNNN.json for a checkpoint inside a training output folder (RUN/checkpoints/step_X), else None."""
    if meta_path.parent.name != "checkpoints":
        return None
    return meta_path.parent.parent / RESULTS / f"step_{step:07d}.json"


def run_eval(cfg: EvalConfig) -> EvalResult:
    """`narrator eval`: evaluate, print the table, write the JSON beside the run (and to --json)."""
    result = evaluate_checkpoint(cfg)
    print(format_result(result))
    data = json.dumps(result.as_dict(), indent=1) + "\n"
    for path in (results_file(Path(result.checkpoint), result.step), Path(cfg.json) if cfg.json else None):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(data)
            tmp.replace(path)
            print(f"wrote {path}")
    return result


# --- at each training evaluation ----------------------------------------------------------------------------------

@dataclass
class SuiteMetrics(StepMetrics):
    """A metrics record with eval_suite's figures; flat numbers, so the trackers plot them like val_loss."""

    bits_per_second: float | None = None
    bits_per_second_per_stream: dict[str, float] | None = None
    lexical_accuracy: float | None = None
    lexical_ci95: list[float] | None = None
    syntactic_accuracy: float | None = None
    syntactic_ci95: list[float] | None = None


class SuiteEval:
    """`eval_suite` at each evaluation: bits/s on the evaluation batches and `eval_suite_n` pairs of each pair
    suite, tokenized once at the start. Main process only, in eval mode, drawing no random numbers: a run
    trains exactly as it would without it."""

    def __init__(self, suites: list[str], layout: Layout, pairs: dict[str, PairTokens],
                 tokens_per_second: dict[str, float] | None = None):
        self.suites, self.layout, self.pairs, self.tokens_per_second = suites, layout, pairs, tokens_per_second

    @classmethod
    def start(cls, cfg: TrainConfig, accelerator: Accelerator, layout: Layout, streams: list[StreamInfo],
              folder: storage.Location) -> SuiteEval | None:
        """The evaluator of this run, its items tokenized; None where eval_suite is off or this is not the main
        process. A suite that cannot run is left out with one line."""
        if not accelerator.is_main_process or not cfg.eval_suite:
            return None
        plugin = accelerator.state.deepspeed_plugin
        if plugin is not None and plugin.zero_stage == 3:
            print("eval suite: none in this run: under DeepSpeed ZeRO-3 the parameters are sharded", flush=True)
            return None
        suites, pairs = [s for s in cfg.eval_suite if s == BITS], {}
        wanted = [s for s in cfg.eval_suite if s in ITEM_SUITES]
        why = cannot_score_pairs(layout, cfg.model.block_size) if wanted else None
        if wanted and why is None:
            try:
                tokenizer = load_audio_tokenizer(layout, streams, accelerator.device, [folder])
            except NarratorError as e:
                why = f"the tokenizer cannot be loaded ({e})"
        if wanted and why is not None:
            print(f"eval suite: {' and '.join(wanted)} left out: {why}", flush=True)
        elif wanted:
            if (line := random_weights_line(streams)) is not None:
                print(f"eval suite: {line}", flush=True)
            for suite in wanted:
                pairs[suite] = PairTokens.of(load_or_build(suite, cfg.eval_suite_n, 0, DEFAULT_CACHE), tokenizer)
                suites.append(suite)
        print(f"eval suite: {', '.join(suites) or 'nothing'} at each evaluation"
              f"{f' ({cfg.eval_suite_n} pairs each)' if pairs else ''}", flush=True)
        rate = None
        if BITS in suites and layout.dedup_semantic:
            sources = open_sources(cfg.data, [open_folder(s.manifest) for s in cfg.data.sources])
            rate = {SEMANTIC: val_tokens_per_second(sources)}
        return cls(suites, layout, pairs, rate) if suites else None

    def record(self, record: StepMetrics, model: GPT, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> SuiteMetrics:
        """`record` with this evaluation's figures; `model` is the unwrapped module."""
        was_training = model.training
        model.eval()
        try:
            with torch.compiler.set_stance("force_eager"):  # a compiled model would recompile for every length
                out = SuiteMetrics(**{f.name: getattr(record, f.name) for f in dataclasses.fields(record)})
                if BITS in self.suites:
                    windows = np.concatenate([torch.cat([x, y[:, -1:]], 1).numpy() for x, y in batches])
                    bits = measure_bits(model, self.layout, windows, tokens_per_second=self.tokens_per_second)
                    out.bits_per_second = round(bits.total, 2)
                    out.bits_per_second_per_stream = {k: round(v, 2) for k, v in bits.per_stream.items()}
                for suite, tokens in self.pairs.items():
                    score = tokens.score(model)
                    setattr(out, f"{suite}_accuracy", round(score.accuracy, 4))
                    setattr(out, f"{suite}_ci95", [round(v, 4) for v in score.ci95])
        finally:
            model.train(was_training)
        return out
