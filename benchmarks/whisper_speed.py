"""Whisper embedding speed: real-time factor of one embedder on 1 torch thread, 30 s windows.

    python benchmarks/whisper_speed.py [--models tiny base] [--windows 4] [--threads 1]

Random-init encoders (same architecture and cost as the pretrained ones; nothing to download) on
synthetic speech; resampling and log-mel included. Prints one markdown row per model.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from narrator.tokenizers.encodec import synthetic_speech
from narrator.tokenizers.config import WhisperConfig, WhisperWeightsConfig
from narrator.tokenizers.whisper import WhisperEmbedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "base"])
    parser.add_argument("--windows", type=int, default=4, help="30 s windows per measurement")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    audio = synthetic_speech(30.0 * args.windows, seed=1).astype(np.float32)
    print("| model | threads | s per 30 s window | real-time factor | machine |\n|---|---|---|---|---|")
    for model in args.models:
        embedder = WhisperEmbedder(WhisperConfig(model=model, weights=WhisperWeightsConfig(mode="random")))
        embedder.embed(audio[: 30 * 24_000])  # warm-up
        start = time.perf_counter()
        embedder.embed(audio, batch_size=1)
        seconds = time.perf_counter() - start
        print(f"| {model} | {args.threads} | {seconds / args.windows:.2f} | {30 * args.windows / seconds:.0f}x | "
              f"{platform.processor() or platform.machine()}, torch {torch.__version__} |")


if __name__ == "__main__":
    main()
