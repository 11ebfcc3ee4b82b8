"""Every layout trained on the same tokens, judged on one scale: bits per second and spoken minimal pairs.

    python benchmarks/layout_eval.py [--out runs/layout_eval] [--steps 600] [--layouts flat,semantic,interleaved,prefix]
        [--whisper-checkpoint ../shared/weights/whisper-tiny.en.pt] [--encodec random|pretrained] [BOOKS ...]

1. `narrator tokenize` BOOKS (default: the LibriVox chapters of ../shared/audio/books) with
   configs/tokenize/semantic_acoustic.yaml: Whisper from --whisper-checkpoint (a local checkpoint, the
   normal path), EnCodec from --encodec (random: the real architecture with seeded random weights, as
   nothing can be downloaded here; the eval output says so).
2. For each layout, `narrator train` with configs/train/semantic_acoustic.yaml and the same model, batch,
   block, schedule and steps; a layout name with `+dedup` sets data.dedup_semantic.
3. `narrator eval` on each last checkpoint: bits/s on the validation split, lexical and syntactic pairs.
4. Prints the markdown table benchmarks/RESULTS.md keeps, and writes OUT/table.md.

Every step is skipped when its output is complete, so a rerun resumes and an added layout trains alone.
Minutes on 2 cores per layout; the command and machine go beside the table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_BOOKS = sorted(str(p) for p in (SHARED / "audio" / "books").glob("librivox_*.mp3"))
DEFAULT_WHISPER = SHARED / "weights" / "whisper-tiny.en.pt"
LAYOUTS = ("flat", "semantic", "interleaved", "prefix")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("books", nargs="*", default=DEFAULT_BOOKS)
    p.add_argument("--out", default="runs/layout_eval")
    p.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated; NAME+dedup sets data.dedup_semantic")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--train-set", action="append", default=[], help="KEY=VALUE for every training run")
    p.add_argument("--whisper-checkpoint", default=str(DEFAULT_WHISPER))
    p.add_argument("--encodec", choices=("random", "pretrained"), default="random")
    p.add_argument("--lexical-n", type=int, default=200)
    p.add_argument("--syntactic-n", type=int, default=100)
    return p.parse_args(argv)


def tokenize_books(args: argparse.Namespace, tokens: Path) -> None:
    import ray

    from narrator.config import load_config
    from narrator.tokenizers.config import TokenizeConfig
    from narrator.tokenizers.pipeline import tokenize

    cfg = load_config(TokenizeConfig, REPO / "configs/tokenize/semantic_acoustic.yaml",
                      [f"whisper.weights.checkpoint={args.whisper_checkpoint}", f"encodec.weights.mode={args.encodec}"])
    report = tokenize(cfg, tokens, list(args.books))
    ray.shutdown()  # the cores go back to training
    if report.failed:
        sys.exit(f"layout_eval: {report.failed[0].source}: tokenization failed ({report.failed[0].error})")


def train_layout(args: argparse.Namespace, name: str, tokens: Path, run: Path) -> float:
    """Train one layout to --steps; the minutes it took (0 when it was already done)."""
    from narrator.trainer.checkpoint import latest_checkpoint, read_state
    from narrator.trainer.run import main as train_main

    done = latest_checkpoint(run) if (run / "checkpoints").is_dir() else None
    if done is not None and read_state(done).step >= args.steps:
        return 0.0
    layout, _, dedup = name.partition("+")
    sets = [f"data.manifest={tokens}", f"data.layout={layout}", f"out={run}", f"max_steps={args.steps}",
            *([f"data.dedup_semantic=true"] if dedup == "dedup" else []), *args.train_set]
    start = time.perf_counter()
    status = train_main(["--config", str(REPO / "configs/train/semantic_acoustic.yaml"),
                         *(a for s in sets for a in ("--set", s))])
    if status != 0:
        sys.exit(f"layout_eval: {run}: training failed (exit status {status}); rerun to resume")
    return (time.perf_counter() - start) / 60


def evaluate(args: argparse.Namespace, run: Path, results: Path) -> dict:
    from narrator.trainer.checkpoint import latest_checkpoint
    from narrator.trainer.evaluate import EvalConfig, run_eval

    if not results.is_file():
        run_eval(EvalConfig(checkpoint=str(latest_checkpoint(run)), lexical_n=args.lexical_n,
                            syntactic_n=args.syntactic_n, json=str(results)))
    return json.loads(results.read_text())


def last_val_loss(run: Path) -> float | None:
    losses = [r["val_loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if r.get("val_loss") is not None]
    return losses[-1] if losses else None


def table(rows: list[tuple[str, dict, float | None, float]], seen: dict[str, float]) -> str:
    """One row per layout: bits/s per stream and in total beside the unigram's, the pairs with their intervals;
    `seen`: the audio its training windows held, in passes over the corpus (the same steps read more audio in a
    layout with fewer tokens per second)."""
    def pairs(result: dict, suite: str) -> str:
        if suite in result:
            s = result[suite]
            return f"{s['accuracy']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] (n {s['n']})"
        return "skipped" if suite in result.get("skipped", {}) else "-"

    lines = ["| layout | tokens/s | audio seen (corpus passes) | val loss (nats/token) | bits/s semantic | bits/s acoustic | bits/s total "
             "| unigram bits/s total | semantic unigram, repeats collapsed | lexical | syntactic | train min |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r, val, minutes in rows:
        per, rate = r.get("bits_per_second_per_stream", {}), r.get("tokens_per_second_per_stream", {})
        cell = lambda d, k: f"{d[k]:.1f}" if d.get(k) is not None else "-"  # noqa: E731
        lines.append(f"| {name} | {sum(rate.values()):.4g} | {seen.get(name, math.nan):.1f} | "
                     f"{'-' if val is None else f'{val:.3f}'} | "
                     f"{cell(per, 'semantic')} | {cell(per, 'acoustic')} | {cell(r, 'bits_per_second')} | "
                     f"{cell(r, 'unigram_bits_per_second')} | {cell(r, 'dedup_unigram_bits_per_second')} | {pairs(r, 'lexical')} | {pairs(r, 'syntactic')} | "
                     f"{'-' if not minutes else f'{minutes:.1f}'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.books:
        sys.exit("layout_eval: no books given (../shared/audio/books is not here)")
    if not Path(args.whisper_checkpoint).is_file():
        sys.exit(f"layout_eval: {args.whisper_checkpoint}: no such Whisper checkpoint (give --whisper-checkpoint)")
    out = Path(args.out)
    tokens = out / "tokens"
    tokenize_books(args, tokens)
    rows = []
    minutes_file = out / "train_minutes.json"
    minutes = json.loads(minutes_file.read_text()) if minutes_file.is_file() else {}
    for name in args.layouts.split(","):
        run = out / name.replace("+", "_")
        took = train_layout(args, name, tokens, run)
        if took:
            minutes[name] = took
            minutes_file.write_text(json.dumps(minutes, indent=1) + "\n")
        rows.append((name, evaluate(args, run, out / f"eval_{run.name}.json"), last_val_loss(run), minutes.get(name, 0.0)))
    from narrator.config import load_config
    from narrator.streaming.dataset import open_folder
    from narrator.trainer.config import TrainConfig

    corpus_s = open_folder(tokens)[0].seconds
    seen = {}
    for name, result, _, _ in rows:
        cfg = load_config(TrainConfig, out / name.replace("+", "_") / "config.yaml")
        rate = sum(result.get("tokens_per_second_per_stream", {}).values())
        if rate:
            window_s = cfg.model.block_size / rate
            seen[name] = args.steps * cfg.batch_size * cfg.grad_accum * window_s / corpus_s
    text = table(rows, seen)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
