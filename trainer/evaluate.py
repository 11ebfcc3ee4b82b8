"""`narrator eval`: judge a checkpoint the way spoken-LM papers do.

- bits: bits per second of audio on the checkpoint's validation split, per stream and in total, beside a
  unigram model of the same tokens (eval_bits.py).
- lexical, syntactic: spoken minimal pairs (narrator.evaluation), scored by the model's summed log-likelihood
  of each side's tokens; accuracy with n and a 95% Wilson interval (eval_pairs.py).

`SuiteEval` runs a small subset of the same at each training evaluation (`eval_suite`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from accelerate import Accelerator

from narrator.config import load_config
from narrator.errors import ConfigError, NarratorError
from narrator.evaluation import DEFAULT_CACHE, SUITES as ITEM_SUITES, ItemSet, load_or_build
from narrator.evaluation.scores import PairScore
from narrator.streaming.dataset import TokenShards, open_folder, open_sources, val_tokens_per_second, val_windows
from narrator.streaming.layout import Layout
from narrator.tokenfolder import storage
from narrator.tokenfolder.manifest import SEMANTIC, StreamInfo
from narrator.trainer.checkpoint import CheckpointMeta, load_for_inference
from narrator.trainer.config import EVAL_SUITES, TrainConfig
from narrator.trainer.eval_bits import Bits, measure_bits
from narrator.trainer.eval_pairs import (PairTokens, cannot_score_pairs, load_audio_tokenizer, random_weights_line,
                                         tokenizer_files_missing)
from narrator.trainer.generate import checkpoint_layout, token_folder
from narrator.trainer.metrics import StepMetrics
from narrator.trainer.model import GPT

BITS = "bits"
RESULTS = "eval"  # under a training output folder: eval/step_NNNNNNN.json, which `narrator report` shows


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
    def start(cls, cfg: TrainConfig, accelerator: Accelerator, sources: Sequence[TokenShards],
              streams: list[StreamInfo], folder: storage.Location) -> SuiteEval | None:
        """The evaluator of this run (reading `sources`, the run's opened token folders), its items tokenized; None
        where eval_suite is off or this is not the main process. A suite that cannot run is left out with one line."""
        layout = sources[0].layout
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
