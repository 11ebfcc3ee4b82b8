"""`narrator` command line: one subcommand per pipeline step.

Each subcommand owns a typed config dataclass. Its own flags (`--out`, `--minutes`, ...) are
shorthands for config keys; `--config FILE` and `--set dotted.key=value` reach every key. A
NarratorError is printed as one line and exits with status 1 (tokenize: 2 when some books were
skipped; inspect --verify: 3 when some file fails its checksum).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from narrator.errors import NarratorError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (keys of this command's config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set ray.concurrency=4 (repeatable)")


def _flag_overrides(args: argparse.Namespace, mapping: dict[str, str]) -> list[str]:
    """Turn explicit flags into overrides applied before --set (so --set has the last word)."""
    out = []
    for attr, key in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            out.append(f"{key}={value}")
    return out + list(args.overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="narrator", description=__doc__.splitlines()[0],
                                     epilog="docs: docs/*.md, one page per job; the walk-through is in README.md")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample-book", help="speak the built-in sample text to a 24 kHz mono wav (offline TTS)",
                       epilog="docs: docs/tokenize.md")
    p.add_argument("out", type=Path, help="wav file to write")
    p.add_argument("--minutes", type=float, help="length of the book (default 5)")
    p.add_argument("--seed", type=int, help="seed for the rate/pitch variation")
    _common(p)

    p = sub.add_parser("tokenize", help="quantize books into webdataset token shards with Ray",
                       epilog="docs: docs/tokenize.md")
    p.add_argument("inputs", nargs="+", help="audio files or URLs, or catalogs: .jsonl / .csv with columns id, audio "
                   "(path relative to the catalog, absolute, or URL), optional reader, licence, ...; .txt: one audio path per line")
    p.add_argument("--out", required=True, help="output folder or URL, e.g. s3://bucket/tokens (shards/, manifest.json)")
    p.add_argument("--allow-outside-root", dest="allow_outside_root", action="store_true",
                   help="read catalog rows whose audio lies outside the catalog's folder (absolute, '..' or symlinked paths)")
    _common(p)

    p = sub.add_parser("inspect", help="summarize a token folder: books, chunks, shards, tokens, splits, weights",
                       epilog="docs: docs/tokenize.md")
    p.add_argument("tokens", help="folder or URL holding manifest.json (or the manifest itself)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--verify", action="store_true",
                   help="read every shard (and weights / k-means file) and compare its size and sha256 with the manifest; "
                   "names each bad file and exits with status 3")
    _common(p)  # a training config: its data.val_center / data.val_fraction set the split shown

    p = sub.add_parser("kmeans-report", help="compare Whisper layers and k-means sizes on some audio, to choose the semantic tokens",
                       epilog="docs: docs/tokenize.md")
    p.add_argument("inputs", nargs="+", help="audio files, or catalog files (.txt: one audio path per line)")
    p.add_argument("--layers", default="-1", help="encoder layers, comma-separated (-1: final output; 0..n-1: blocks)")
    p.add_argument("--k", default="256,1024", help="k-means sizes, comma-separated")
    p.add_argument("--seconds", type=float, default=600.0, help="audio to read, at most (default 600)")
    p.add_argument("--standardize", help="k-means on raw and/or z-scored frames, comma-separated: false,true "
                   "(default: the config's kmeans.standardize)")
    p.add_argument("--abx-pairs", dest="abx_pairs", type=int, default=100,
                   help="minimal pairs of words, said by 5 espeak-ng voices, for the ABX error of each layer's ids and "
                   "embeddings (default 100; 0: no ABX)")
    p.add_argument("--abx-seed", dest="abx_seed", type=int, default=0, help="seed of the ABX word pairs (default 0)")
    p.add_argument("--allow-outside-root", dest="allow_outside_root", action="store_true",
                   help="read catalog rows whose audio lies outside the catalog's folder")
    _common(p)  # a tokenize config: its whisper and kmeans sections

    p = sub.add_parser("train", help="train the GPT (same as `python trainer/run.py`)", epilog="docs: docs/train.md")
    p.add_argument("--resume", nargs="?", const="auto", help="resume from OUT's latest checkpoint, or from PATH")
    _common(p)

    p = sub.add_parser("generate", help="continue a prompt recording with a trained model and write a wav",
                       epilog="docs: docs/train.md")
    p.add_argument("--checkpoint", type=Path, help="training output folder (latest checkpoint) or one checkpoint folder")
    p.add_argument("--semantic-checkpoint", type=Path, dest="semantic_checkpoint",
                   help="two-stage (AudioLM) generation: this semantic model continues the ids, --checkpoint's prefix model voices them")
    p.add_argument("--prompt", type=Path, help="audio file whose start is the prompt")
    p.add_argument("--prompt-seconds", type=float, dest="prompt_seconds")
    p.add_argument("--seconds", type=float, help="seconds of audio to generate after the prompt")
    p.add_argument("--out", type=Path, help="wav file to write")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int, dest="top_k")
    p.add_argument("--seed", type=int)
    _common(p)

    p = sub.add_parser("eval", help="judge a checkpoint: bits per second of audio, spoken minimal pairs (lexical, syntactic)",
                       epilog="docs: docs/train.md (Evaluate)")
    p.add_argument("--checkpoint", type=Path, help="training output folder (latest checkpoint) or one checkpoint folder")
    p.add_argument("--suite", help="comma-separated: bits, lexical, syntactic (default all)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file (RUN/eval/step_N.json is always written)")
    p.add_argument("--lexical-n", dest="lexical_n", type=int, help="lexical pairs (default 200)")
    p.add_argument("--syntactic-n", dest="syntactic_n", type=int, help="syntactic pairs (default 100)")
    p.add_argument("--seed", type=int, help="seed of the item sets (default 0)")
    _common(p)

    p = sub.add_parser("report", help="write RUN/report.html: a run's curves, config, tokens and audio in one file",
                       epilog="docs: docs/train.md")
    p.add_argument("run", type=Path, help="training output folder (config.yaml, metrics.jsonl, samples/)")
    p.add_argument("--max-audio", dest="max_audio", type=int, default=24,
                   help="continuations given a player, evenly spaced, the last always (default 24)")

    p = sub.add_parser("estimate", help="GPU memory of a training config per ZeRO stage / offload, and what fits",
                       epilog="docs: docs/scale.md")
    p.add_argument("--gpu-memory", dest="gpu_memory", default="16GiB", help="memory of one GPU, e.g. 16GiB, 16GB, 80GiB")
    p.add_argument("--num-gpus", dest="num_gpus", type=int, default=1, help="GPUs the state is spread over (default 1)")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    _common(p)  # a training config

    p = sub.add_parser("demo", help="the whole pipeline on the built-in sample book",
                       epilog="docs: README.md, docs/tokenize.md, docs/train.md")
    p.add_argument("--out", type=Path, help="output folder (default runs/demo)")
    p.add_argument("--minutes", type=float, help="length of the sample book")
    p.add_argument("--steps", type=int, help="training steps")
    _common(p)
    return parser


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise NarratorError(f"{flag} {text!r}: expected whole numbers separated by commas") from None


def _bool_list(text: str, flag: str) -> list[bool]:
    words = [x.strip().lower() for x in text.split(",") if x.strip()]
    if not words or any(w not in ("true", "false") for w in words):
        raise NarratorError(f"{flag} {text!r}: expected true and/or false separated by commas")
    return [w == "true" for w in words]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args) or 0
    except NarratorError as e:
        print(f"narrator {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"narrator {args.command}: interrupted; completed work is kept, rerun to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `narrator inspect ... | head`: the reader is gone, which is no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _dispatch(args: argparse.Namespace) -> int | None:
    from narrator.config import load_config

    if args.command == "sample-book":
        from narrator.sample_book import SampleBookConfig, write_sample_book

        cfg = load_config(SampleBookConfig, args.config, _flag_overrides(args, {"minutes": "minutes", "seed": "seed"}))
        write_sample_book(args.out, cfg)
    elif args.command == "tokenize":
        from narrator.tokenizers.config import TokenizeConfig
        from narrator.tokenizers.pipeline import tokenize

        cfg = load_config(TokenizeConfig, args.config, args.overrides)
        report = tokenize(cfg, args.out, args.inputs, allow_outside_root=args.allow_outside_root)
        return 0 if not report.failed else 2
    elif args.command == "kmeans-report":
        from narrator.tokenizers.config import TokenizeConfig
        from narrator.tokenizers.pipeline import resolve_inputs
        from narrator.tokenizers.semantic import kmeans_report

        cfg = load_config(TokenizeConfig, args.config, args.overrides)
        layers, ks = (_int_list(args.layers, "--layers"), _int_list(args.k, "--k"))
        standardize = None if args.standardize is None else _bool_list(args.standardize, "--standardize")
        books = resolve_inputs(args.inputs, allow_outside_root=args.allow_outside_root)
        measure = None
        if args.abx_pairs:  # built here: tokenizers/ does not import evaluation/
            from narrator.evaluation.abx import word_abx

            measure = word_abx(args.abx_pairs, args.abx_seed)
        print(kmeans_report(cfg, [b.source for b in books], layers, ks, args.seconds, standardize, measure))
    elif args.command == "inspect" and args.verify:
        from narrator.tokenizers.inspect import VERIFY_FAILED, verify_tokens

        bad, summary = verify_tokens(args.tokens).lines()
        for line in bad:
            print(line, file=sys.stderr)
        print(summary, file=sys.stderr if bad else sys.stdout)
        return VERIFY_FAILED if bad else 0
    elif args.command == "inspect":
        from narrator.tokenizers.inspect import inspect_tokens
        from narrator.trainer.config import TrainConfig

        train = load_config(TrainConfig, args.config, [f"data.manifest={args.tokens}", *args.overrides])
        print(inspect_tokens(args.tokens, as_json=args.json, split_overrides=train.data.split_overrides()))
    elif args.command == "train":
        from narrator.trainer.run import main as train_main

        argv = (["--config", args.config] if args.config else []) + [x for o in args.overrides for x in ("--set", o)]
        if args.resume is not None:
            argv += ["--resume", args.resume]
        return train_main(argv)
    elif args.command == "generate":
        from narrator.trainer.generate import GenerateConfig, generate

        cfg = load_config(GenerateConfig, args.config, _flag_overrides(args, {
            "checkpoint": "checkpoint", "semantic_checkpoint": "semantic_checkpoint", "prompt": "prompt", "prompt_seconds": "prompt_seconds",
            "seconds": "seconds", "out": "out", "temperature": "temperature", "top_k": "top_k", "seed": "seed"}))
        generate(cfg)
    elif args.command == "eval":
        from narrator.trainer.evaluate import EvalConfig, run_eval

        cfg = load_config(EvalConfig, args.config, _flag_overrides(args, {
            "checkpoint": "checkpoint", "json": "json", "lexical_n": "lexical_n", "syntactic_n": "syntactic_n",
            "seed": "seed"}))
        if args.suite is not None:  # replace() checks the names again
            cfg = dataclasses.replace(cfg, suites=[s.strip() for s in args.suite.split(",") if s.strip()])
        run_eval(cfg)
    elif args.command == "report":
        from narrator.trainer.report import write_report

        print(f"wrote {write_report(args.run, args.max_audio)}")
    elif args.command == "estimate":
        from narrator.trainer.estimate import run_estimate

        print(run_estimate(args.config, args.overrides, args.gpu_memory, args.num_gpus, as_json=args.json))
    elif args.command == "demo":
        from narrator.demo import DemoConfig, run_demo

        cfg = load_config(DemoConfig, args.config, _flag_overrides(args, {"out": "out", "minutes": "minutes", "steps": "steps"}))
        run_demo(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
