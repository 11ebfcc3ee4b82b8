"""`narrator demo` (`make demo`): the whole pipeline on the built-in sample book.

sample-book -> tokenize (Ray, 2 actors) -> train a small GPT on the CPU -> plots -> generate -> eval.
Each step is skipped when its output is already complete, so a rerun resumes. This is the one
command that may fall back to random-init EnCodec weights, and it says so plainly when it does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from narrator.config import load_config, save_config
from narrator.errors import NarratorError
from narrator.sample_book import SampleBookConfig, write_sample_book


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    minutes: float = 5.0
    steps: int = 300
    weights: Literal["auto", "pretrained", "random"] = "auto"  # auto: pretrained if it can be had
    tokenize_config: str = "configs/tokenize/encodec_3kbps.yaml"
    train_config: str = "configs/train/demo.yaml"
    actors: int = 2
    prompt_seconds: float = 3.0
    generate_seconds: float = 10.0
    eval_lexical_n: int = 100  # spoken minimal pairs `narrator eval` scores the model on (0: that suite left out)
    eval_syntactic_n: int = 50


def _banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _choose_weights(cfg: DemoConfig, tokenize_cfg) -> str:
    """Try the pretrained EnCodec; on a machine that cannot get it, say so and use random init."""
    if cfg.weights != "auto":
        return cfg.weights
    from narrator.tokenizers.encodec import EncodecTokenizer

    try:
        EncodecTokenizer(tokenize_cfg.encodec)
        return "pretrained"
    except NarratorError as e:
        print(f"NOTE: pretrained EnCodec weights are not available here ({e}).\n"
              "NOTE: the demo goes on with RANDOM-INIT EnCodec weights (seed 0): every step runs end to end,\n"
              "NOTE: but the generated audio will not sound like speech. Other commands refuse instead.", flush=True)
        return "random"


def run_demo(cfg: DemoConfig) -> None:
    import ray

    from narrator.tokenizers.config import TokenizeConfig
    from narrator.tokenizers.pipeline import tokenize
    from narrator.trainer.checkpoint import latest_checkpoint, read_state
    from narrator.trainer.evaluate import EvalConfig, results_file, run_eval
    from narrator.trainer.generate import GenerateConfig, generate
    from narrator.trainer.report import write_report
    from narrator.trainer.run import main as train_main

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo_config.yaml")
    book, tokens, train, sample = out / "book.wav", out / "tokens", out / "train", out / "sample.wav"
    started = time.time()

    _banner(f"1/5 sample book: {cfg.minutes:g} minutes of offline TTS -> {book}")
    if book.exists():
        print(f"{book} exists, kept")
    else:
        write_sample_book(book, SampleBookConfig(minutes=cfg.minutes))

    _banner(f"2/5 tokenize with Ray ({cfg.actors} actors) -> {tokens}")
    tokenize_cfg = load_config(TokenizeConfig, cfg.tokenize_config)
    mode = _choose_weights(cfg, tokenize_cfg)
    tokenize_cfg = load_config(TokenizeConfig, cfg.tokenize_config,
                               [f"encodec.weights.mode={mode}", f"ray.concurrency={cfg.actors}"])
    report = tokenize(tokenize_cfg, tokens, [str(book)])
    if report.failed:
        raise NarratorError(f"{book}: tokenization failed ({report.failed[0].error})")
    ray.shutdown()  # give the cores back to training

    _banner(f"3/5 train a small GPT for {cfg.steps} steps on the CPU -> {train}")
    status = train_main(["--config", cfg.train_config, "--set", f"data.manifest={tokens}",
                         "--set", f"out={train}", "--set", f"max_steps={cfg.steps}"])
    if status != 0:
        raise NarratorError(f"{train}: training failed (exit status {status}); rerun `make demo` to resume")

    _banner(f"4/5 generate {cfg.generate_seconds:g} s after a {cfg.prompt_seconds:g} s prompt -> {sample}")
    generate(GenerateConfig(checkpoint=str(train), prompt=str(book), prompt_seconds=cfg.prompt_seconds,
                            seconds=cfg.generate_seconds, out=str(sample)))

    _banner("5/5 eval: bits per second of audio and spoken minimal pairs (a model this small is expected near chance)")
    checkpoint = latest_checkpoint(train)
    results = results_file(checkpoint, read_state(checkpoint).step)
    if results.is_file():
        print(f"{results} exists, kept")
    else:
        pairs = {"lexical": cfg.eval_lexical_n, "syntactic": cfg.eval_syntactic_n}
        run_eval(EvalConfig(checkpoint=str(checkpoint), suites=["bits", *(s for s, n in pairs.items() if n > 0)],
                            lexical_n=max(1, cfg.eval_lexical_n), syntactic_n=max(1, cfg.eval_syntactic_n)))

    page = write_report(train)  # the curves, the evaluation samples and the eval results in one file

    minutes = (time.time() - started) / 60
    outputs = [(book, "the sample book (24 kHz mono)"),
               (f"{tokens}/", f"shards/acoustic/*.tar, manifest.json, index/, plan/ (see `narrator inspect {tokens}`)"),
               (f"{train}/", "metrics.jsonl, train_loss.png, val_loss.png, samples/, checkpoints/"),
               (page, "curves, config, tokenizer identity, every evaluation sample and the eval results (`narrator report`)"),
               (results, "`narrator eval`: bits/s on the validation split, lexical and syntactic pair accuracy"),
               (sample, f"{cfg.prompt_seconds:g} s prompt + {cfg.generate_seconds:g} s continuation")]
    width = max(len(str(path)) for path, _ in outputs)
    print(f"\nDemo finished in {minutes:.1f} min (EnCodec weights: {mode}). Outputs:")
    for path, what in outputs:
        print(f"  {str(path):<{width}}  {what}")
