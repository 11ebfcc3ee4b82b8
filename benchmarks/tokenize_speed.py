"""Tokenization speed: real-time factor of the bare models in one process, and of `tokenize` with 1 and 2 Ray actors.

    python benchmarks/tokenize_speed.py [--minutes 3] [--gpu] [--semantic]

Uses ~3 minutes of real speech from ../shared/audio when present (synthetic speech otherwise), and a
random EnCodec saved as a local checkpoint (same architecture and cost as the pretrained one; nothing
to download). Prints one markdown row; the end-to-end times include Ray Data and actor start-up.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import soundfile as sf
import torch

from narrator.config import load_config
from narrator.tokenizers.audio import probe, read_segment
from narrator.tokenizers.chunking import plan_chunks
from narrator.tokenizers.config import TokenizeConfig
from narrator.tokenizers.encodec import EncodecTokenizer, synthetic_speech
from narrator.tokenizers.kmeans import load_kmeans
from narrator.tokenizers.pipeline import tokenize
from narrator.tokenizers.semantic import SemanticTokenizer
from narrator.tokenizers.whisper import WhisperEmbedder

REPO = Path(__file__).resolve().parents[1]
SHARED_BOOKS = REPO.parent / "shared" / "audio" / "books" / "librivox_dickinson_becky_miller"
SHARED_WHISPER = REPO.parent / "shared" / "weights" / "whisper-tiny.en.pt"


def pick_audio(minutes: float, tmp: Path) -> tuple[list[str], str]:
    """Real poems adding up to `minutes` if the shared recordings exist, else one synthetic book."""
    if SHARED_BOOKS.is_dir():
        paths, total = [], 0.0
        for p in sorted(SHARED_BOOKS.glob("*.mp3")):
            if total >= minutes * 60:
                break
            paths.append(str(p))
            total += probe(p).duration_s
        return paths, f"{total / 60:.1f} min real speech (mp3, 22.05 kHz)"
    path = tmp / "synthetic.wav"
    sf.write(path, synthetic_speech(minutes * 60, seed=1).astype(np.float32), 24_000)
    return [str(path)], f"{minutes:.1f} min synthetic speech"


def one_actor_rtf(cfg: TokenizeConfig, paths: list[str], device: str, kmeans: Path | None = None) -> float:
    """Audio seconds per wall second for the tokenizers of `cfg.streams` in one process on
    `cfg.ray.torch_threads` threads, each chunk read once, reading included."""
    torch.set_num_threads(cfg.ray.torch_threads)
    tokenizers = []
    if "acoustic" in cfg.streams:
        tokenizers.append(EncodecTokenizer(cfg.encodec, device))
    if "semantic" in cfg.streams:
        tokenizers.append(SemanticTokenizer(WhisperEmbedder(cfg.whisper, device), load_kmeans(kmeans), device))
    audio_s, start = 0.0, time.perf_counter()
    for path in paths:
        info = probe(path)
        specs = plan_chunks(Path(path).stem, info.duration_s, cfg.chunking)
        for i in range(0, len(specs), cfg.ray.batch_size):
            batch = specs[i: i + cfg.ray.batch_size]
            windows = [read_segment(info, s.ctx_start_s, s.ctx_end_s) for s in batch]
            for tokenizer in tokenizers:
                tokenizer.encode_chunks(windows, batch)
            audio_s += sum(s.end_s - s.start_s for s in batch)
    return audio_s / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--gpu", action="store_true", help="one GPU per actor")
    parser.add_argument("--semantic", action="store_true",
                        help="both streams (configs/tokenize/semantic_acoustic.yaml; Whisper tiny.en from ../shared/weights "
                             "when there, else random): k-means fit once, then tokenize vs the bare models")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tokenize-speed-"))
    paths, what = pick_audio(args.minutes, tmp)
    checkpoint = tmp / "encodec_random.pt"
    torch.save(EncodecTokenizer(load_config(TokenizeConfig, None, ["encodec.weights.mode=random"]).encodec).model.state_dict(), checkpoint)
    gpu = ["ray.num_gpus=1", "ray.num_cpus=1"] if args.gpu else []
    base = []
    if args.semantic:
        base = [f"whisper.weights.checkpoint={SHARED_WHISPER}"] if SHARED_WHISPER.is_file() else ["whisper.weights.mode=random"]
    config = REPO / "configs/tokenize/semantic_acoustic.yaml" if args.semantic else None

    def cfg(actors: int, *more: str) -> TokenizeConfig:
        return load_config(TokenizeConfig, config, [f"encodec.weights.checkpoint={checkpoint}", "encodec.weights.mode=pretrained",
                                                    f"ray.concurrency={actors}", *gpu, *base, *more])

    audio_s = sum(probe(p).duration_s for p in paths)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    walls, fit = {}, None
    if args.semantic:  # the k-means fit, once, in its own run; the timed runs reuse its centroids
        start = time.perf_counter()
        tokenize(cfg(2), tmp / "fit", paths)
        fit = time.perf_counter() - start
    kmeans = tmp / "fit" / "kmeans" / "semantic.json"
    reuse = [f"kmeans.path={kmeans}"] if args.semantic else []
    for actors in (1, 2):
        start = time.perf_counter()
        tokenize(cfg(actors, *reuse), tmp / f"out-{actors}", paths)
        walls[actors] = time.perf_counter() - start
    ray.shutdown()
    per_actor = one_actor_rtf(cfg(1), paths, "cuda" if args.gpu else "cpu", kmeans if args.semantic else None)
    shutil.rmtree(tmp)
    device = torch.cuda.get_device_name() if args.gpu else f"CPU, {os.cpu_count()} cores"
    streams = "semantic + acoustic 1.5 kbps" if args.semantic else "acoustic 3 kbps"
    print("\n| audio | streams | device | bare models, 1 process (x real time) | tokenize, 1 actor: wall s (x real time) | "
          "tokenize, 2 actors: wall s (x real time) |" + (" first run with the k-means fit, 2 actors |" if fit else ""))
    print("|---|---|---|---|---|---|" + ("---|" if fit else ""))
    print(f"| {what} | {streams} | {device} | {per_actor:.1f}x | {walls[1]:.1f} s ({audio_s / walls[1]:.1f}x) | "
          f"{walls[2]:.1f} s ({audio_s / walls[2]:.1f}x) |" + (f" {fit:.1f} s |" if fit else ""))


if __name__ == "__main__":
    main()
