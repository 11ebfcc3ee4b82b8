"""Training-loader throughput (tokens/s per process) on synthetic token shards.

    python benchmarks/loader_speed.py [--chunks 200] [--seconds 30] [--codebooks 4] [--workers 0] [--layout flat]

Writes random int16 codes as real shards + manifest in a temporary folder (with a semantic stream
of random ids beside the acoustic one when --layout needs it), then times the batches
of `build_train_loader` (after the first one, so worker start-up is not counted) and prints a
markdown table row.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from narrator.streaming.config import DataConfig
from narrator.streaming.dataset import TokenShards, build_train_loader, build_val_loader
from narrator.streaming.layout import LAYOUTS
from narrator.tokenfolder.manifest import (ACOUSTIC, BookEntry, Manifest, ShardEntry, ShardFile, StreamInfo, WeightsIdentity,
                                          write_book_index)
from narrator.tokenfolder.shards import ChunkRecord, ShardWriter
from narrator.tokenfolder.split import split_span, val_window

FRAME_RATE = 75


def write_synthetic(out: Path, chunks: int, seconds: float, codebooks: int, chunks_per_shard: int = 64,
                    streams: tuple[str, ...] = (ACOUSTIC,)) -> Manifest:
    """One book of `chunks` chunks of random codes, in shards of `chunks_per_shard` (consecutive slices of it)."""
    weights = WeightsIdentity(mode="random", source="synthetic", sha256="0")
    infos = {ACOUSTIC: StreamInfo(name=ACOUSTIC, kind="encodec", sample_rate=24000, frame_rate=FRAME_RATE,
                                  n_codebooks=codebooks, codebook_size=1024, config={}, config_hash="synthetic",
                                  weights=weights, bandwidth=3.0),
             "semantic": StreamInfo(name="semantic", kind="whisper-kmeans", sample_rate=16000, frame_rate=50.0,
                                    n_codebooks=1, codebook_size=1024, config={}, config_hash="synthetic-semantic",
                                    weights=weights)}
    manifest, rng = Manifest(streams=[infos[s] for s in streams]), np.random.default_rng(0)
    slots = round(seconds / 0.04)
    held = val_window(chunks * slots, manifest.split.val_center, manifest.split.val_fraction)  # one long book
    for part, first in enumerate(range(0, chunks, chunks_per_shard)):
        files = {}
        for stream in streams:
            path = f"shards/{stream}/{part:06d}.tar"
            frames = slots * (3 if stream == ACOUSTIC else 2)
            with ShardWriter(out / path) as writer:
                for c in range(first, min(first + chunks_per_shard, chunks)):
                    record = ChunkRecord("book", c, c * seconds, (c + 1) * seconds, frames, stream)
                    shape = (codebooks, frames) if stream == ACOUSTIC else frames  # semantic ids are 1-D
                    writer.write(record, rng.integers(0, 1024, shape, dtype=np.int16))
                shard = writer.close()
            files[stream] = ShardFile(path, shard.tokens, shard.bytes, shard.sha256)
        count = min(chunks_per_shard, chunks - first)
        book = BookEntry("book", "synthetic", chunks * seconds, chunks * slots, chunks, first, count, held)
        split = split_span(first * slots, count * slots, held)
        manifest.shards.append(ShardEntry(part, count, sum(s.frames for s in split if s.split == "train"),
                                          sum(s.frames for s in split if s.split == "val"), files,
                                          write_book_index(out, part, [book])))
    manifest.save(out / "manifest.json")
    return manifest


@dataclass
class LoaderSpeed:
    tokens_per_s: float  # training batches' tokens per second, after the first batch
    total_tokens: int  # in the synthetic folder
    val_windows: int
    val_s: float  # opening the shards and building the validation loader


def measure(layout: str = "flat", chunks: int = 200, seconds: float = 30.0, codebooks: int = 4, block: int = 1024,
            batch: int = 16, workers: int = 0, batches: int = 400) -> LoaderSpeed:
    """Tokens/s of `build_train_loader` on a synthetic folder of `chunks` chunks, in this process (+ `workers`)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        manifest = write_synthetic(out, chunks, seconds, codebooks, streams=LAYOUTS[layout])
        cfg = DataConfig(manifest=str(out), num_workers=workers, layout=layout)
        t0 = time.perf_counter()
        shards = [TokenShards.open(cfg, manifest, out)]
        val = build_val_loader(shards, block, batch, rank=0, world_size=1)
        val_s = time.perf_counter() - t0
        it = iter(build_train_loader(cfg, shards, block, batch, rank=0, world_size=1, seed=0))
        next(it)
        t0 = time.perf_counter()
        for _ in range(batches):
            x = next(it).x
        elapsed = time.perf_counter() - t0
    return LoaderSpeed(batches * x.numel() / elapsed, manifest.total_tokens, len(val.dataset), val_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--codebooks", type=int, default=4)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--layout", default="flat", choices=list(LAYOUTS))
    args = ap.parse_args()
    s = measure(args.layout, args.chunks, args.seconds, args.codebooks, args.block, args.batch, args.workers, args.batches)
    print("| data | layout | block x batch | workers | train tokens/s | val windows | val build s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.chunks} chunks x {args.seconds:g} s x {args.codebooks} cb ({s.total_tokens / 1e6:.1f} M tokens) "
          f"| {args.layout} | {args.block} x {args.batch} | {args.workers} | {s.tokens_per_s / 1e6:.2f} M | {s.val_windows} "
          f"| {s.val_s:.2f} |")


if __name__ == "__main__":
    main()
