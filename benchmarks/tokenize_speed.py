"""Tokenization speed: real-time factor of one EnCodec actor, and of `tokenize` with 1 and 2 Ray actors.

    python benchmarks/tokenize_speed.py [--minutes 3] [--gpu]

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
from narrator.tokenizers.pipeline import tokenize

SHARED_BOOKS = Path(__file__).resolve().parents[2] / "shared" / "audio" / "books" / "librivox_dickinson_becky_miller"


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


def one_actor_rtf(cfg: TokenizeConfig, paths: list[str], device: str) -> float:
    """Audio seconds per wall second for one tokenizer on `cfg.ray.torch_threads` threads, reading included."""
    torch.set_num_threads(cfg.ray.torch_threads)
    tokenizer = EncodecTokenizer(cfg.encodec, device)
    audio_s, start = 0.0, time.perf_counter()
    for path in paths:
        info = probe(path)
        specs = plan_chunks(Path(path).stem, info.duration_s, cfg.chunking)
        for i in range(0, len(specs), cfg.ray.batch_size):
            batch = specs[i: i + cfg.ray.batch_size]
            tokenizer.encode_chunks([read_segment(info, s.ctx_start_s, s.ctx_end_s) for s in batch], batch)
            audio_s += sum(s.end_s - s.start_s for s in batch)
    return audio_s / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--gpu", action="store_true", help="one GPU per actor")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tokenize-speed-"))
    paths, what = pick_audio(args.minutes, tmp)
    checkpoint = tmp / "encodec_random.pt"
    torch.save(EncodecTokenizer(load_config(TokenizeConfig, None, ["encodec.weights.mode=random"]).encodec).model.state_dict(), checkpoint)
    gpu = ["ray.num_gpus=1", "ray.num_cpus=1"] if args.gpu else []

    def cfg(actors: int) -> TokenizeConfig:
        return load_config(TokenizeConfig, None, [f"encodec.weights.checkpoint={checkpoint}", f"ray.concurrency={actors}", *gpu])

    audio_s = sum(probe(p).duration_s for p in paths)
    per_actor = one_actor_rtf(cfg(1), paths, "cuda" if args.gpu else "cpu")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    walls = {}
    for actors in (1, 2):
        start = time.perf_counter()
        tokenize(cfg(actors), tmp / f"out-{actors}", paths)
        walls[actors] = time.perf_counter() - start
    ray.shutdown()
    shutil.rmtree(tmp)
    device = torch.cuda.get_device_name() if args.gpu else f"CPU, {os.cpu_count()} cores"
    print("\n| audio | device | 1 actor, in-process (x real time) | tokenize, 1 actor: wall s (x real time) | tokenize, 2 actors: wall s (x real time) |")
    print("|---|---|---|---|---|")
    print(f"| {what} | {device} | {per_actor:.1f}x | {walls[1]:.1f} s ({audio_s / walls[1]:.1f}x) | {walls[2]:.1f} s ({audio_s / walls[2]:.1f}x) |")


if __name__ == "__main__":
    main()
