"""k-means tokenizer: fit time and thread-count determinism, assignment speed, and layer quality on real Whisper.

    python benchmarks/kmeans_speed.py fit [--frames 200000 --dims 384 --k 1024 --passes 5] [--threads 1 2]
    python benchmarks/kmeans_speed.py assign [--frames 200000 --k 1024]        # CPU, and CUDA when present
    python benchmarks/kmeans_speed.py layers [--minutes 10] [--ks 64 256 1024] [--standardize]

`fit` runs each thread count in a fresh subprocess (OMP_NUM_THREADS / OPENBLAS_NUM_THREADS set before
import) on the same synthetic frames and prints the centroids' sha256 per count: equal hashes mean
the fit does not depend on the thread count. `layers` embeds real speech from ../shared/audio with
the tiny.en weights in ../shared/weights (skipped when absent) and prints the `compare_layers` table.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"


def synthetic(n: int, dims: int, seed: int = 0) -> np.ndarray:
    """Frames around 512 centres with unequal spreads: cluster structure, but not trivially separable."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((512, dims)).astype(np.float32)
    x = centres[rng.integers(0, 512, n)]
    x += rng.standard_normal((n, dims)).astype(np.float32) * rng.uniform(0.3, 1.0, (n, 1)).astype(np.float32)
    return x


def fit_once(args) -> None:
    from narrator.tokenizers.config import KmeansConfig
    from narrator.tokenizers.kmeans import EmbeddingSource, fit_kmeans

    x = synthetic(args.frames, args.dims)
    cfg = KmeansConfig(k=args.k, passes=args.passes, standardize=args.standardize, heldout_fraction=0.05)
    n_fit = int(len(x) * 0.95)
    t0 = time.perf_counter()
    model = fit_kmeans(x[:n_fit], x[n_fit:], cfg, EmbeddingSource("synthetic", -1, args.dims, "-"))
    total = time.perf_counter() - t0
    q = model.meta.quality_heldout
    print(f"threads={os.environ.get('OMP_NUM_THREADS', 'default')} fit_s={model.meta.fit.seconds:.1f} "
          f"fit+quality_s={total:.1f} sha256={hashlib.sha256(model.centroids.tobytes()).hexdigest()[:16]} "
          f"rel_err={q.relative_error:.4f} perplexity={q.perplexity:.1f} dead_fit={model.meta.quality_fit.dead_clusters}",
          flush=True)


def fit(args) -> None:
    for threads in args.threads:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
               "MKL_NUM_THREADS": str(threads)}
        cmd = [sys.executable, __file__, "fit-once", "--frames", str(args.frames), "--dims", str(args.dims),
               "--k", str(args.k), "--passes", str(args.passes)] + (["--standardize"] if args.standardize else [])
        subprocess.run(cmd, env=env, check=True)


def assign(args) -> None:
    import torch
    from sklearn.cluster import MiniBatchKMeans

    from narrator.tokenizers.kmeans import CentroidAssigner

    x = synthetic(args.frames, args.dims, seed=1)
    km = MiniBatchKMeans(n_clusters=args.k, n_init=1, random_state=0, batch_size=4096, max_iter=1).fit(x[:50_000])
    t0 = time.perf_counter()
    ref = km.predict(x)
    print(f"sklearn predict: {len(x) / (time.perf_counter() - t0):,.0f} frames/s")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        a = CentroidAssigner(km.cluster_centers_, device=device)
        ids = a.assign(x)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        ids = a.assign(x)
        big = time.perf_counter() - t0
        chunk = torch.as_tensor(x[:1500], device=device)  # one 30 s chunk at 50 Hz, already on the device
        t0 = time.perf_counter()
        for _ in range(20):
            a.assign(chunk)
        per_chunk = (time.perf_counter() - t0) / 20
        print(f"{device}: {len(x) / big:,.0f} frames/s in blocks of {a.block_rows}; one 1500-frame chunk "
              f"{per_chunk * 1e3:.2f} ms; agreement with sklearn {np.mean(ids == ref):.5f}", flush=True)
        ints = np.random.default_rng(2).integers(-4, 5, (args.k, args.dims)).astype(np.float32)  # exact arithmetic
        ties = CentroidAssigner(np.concatenate([ints, ints]), device=device).assign(ints)
        print(f"{device}: exact ties (integer data) go to the lower id: {bool(np.array_equal(ties, np.arange(args.k)))}")
        if device == "cuda":
            cpu_ids = CentroidAssigner(km.cluster_centers_).assign(x)
            print(f"cuda vs cpu agreement {np.mean(ids == cpu_ids):.5f}")


def whisper_layers(minutes: float) -> dict[str, np.ndarray]:
    """Per encoder block (and the final output after ln_post): frames [T, 384] of real speech, in time order."""
    import soundfile as sf
    import soxr
    import torch
    import whisper

    model = whisper.load_model(str(SHARED / "weights" / "whisper-tiny.en.pt"), device="cpu").float()
    enc = model.encoder
    outs: dict[str, list[np.ndarray]] = {f"block{i}": [] for i in range(len(enc.blocks))} | {"final": []}
    grabbed: dict[str, torch.Tensor] = {}
    for i, block in enumerate(enc.blocks):
        block.register_forward_hook(lambda m, inp, out, i=i: grabbed.__setitem__(f"block{i}", out))
    budget = minutes * 60 * 16_000
    for path in sorted((SHARED / "audio" / "books").rglob("*")):
        if budget <= 0 or path.suffix not in (".mp3", ".flac", ".wav", ".ogg"):
            continue
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
        audio = soxr.resample(audio.mean(1), sr, 16_000).astype(np.float32)[: int(budget)]
        budget -= len(audio)
        for start in range(0, len(audio), 480_000):
            piece = audio[start: start + 480_000]
            frames = (len(piece) + 319) // 320
            mel = whisper.log_mel_spectrogram(torch.from_numpy(whisper.pad_or_trim(piece)))
            with torch.inference_mode():
                final = enc(mel[None])
            outs["final"].append(final[0, :frames].numpy())
            for key, value in grabbed.items():
                outs[key].append(value[0, :frames].numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


def layers(args) -> None:
    from narrator.tokenizers.config import KmeansConfig
    from narrator.tokenizers.kmeans import compare_layers, format_table

    if not (SHARED / "weights" / "whisper-tiny.en.pt").is_file():
        print("no ../shared/weights/whisper-tiny.en.pt: skipped")
        return
    t0 = time.perf_counter()
    frames = whisper_layers(args.minutes)
    n = len(next(iter(frames.values())))
    print(f"embedded {n:,} frames ({n / 50 / 60:.1f} min) per layer in {time.perf_counter() - t0:.0f} s")
    cfg = KmeansConfig(heldout_fraction=0.1, passes=args.passes, standardize=args.standardize)
    print(format_table(compare_layers(frames, args.ks, seed=0, cfg=cfg)))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["fit", "fit-once", "assign", "layers"])
    p.add_argument("--frames", type=int, default=200_000)
    p.add_argument("--dims", type=int, default=384)
    p.add_argument("--k", type=int, default=1024)
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--standardize", action="store_true")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--ks", type=int, nargs="+", default=[64, 256, 1024])
    args = p.parse_args()
    {"fit": fit, "fit-once": fit_once, "assign": assign, "layers": layers}[args.mode](args)


if __name__ == "__main__":
    main()
