"""Tokenization speed: real-time factor of the bare models in one process, and of `tokenize` with 1 and 2 Ray actors.

    python benchmarks/tokenize_speed.py [--minutes 3] [--gpu] [--semantic]

Uses ~3 minutes of real speech from ../shared/audio when present (synthetic speech otherwise), and a
random EnCodec saved as a local checkpoint (same architecture and cost as the pretrained one; nothing
to download). Ray starts once, before the timed runs. Each `tokenize` run's start-up (the driver's
models and plan, the actors' start and their models) is measured apart, as the wall time of the same
command on five 1 s clips (two actor calls, so both actors start), so the steady-state rate is (audio -
clips) / (wall - start-up). Prints one markdown row.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import soundfile as sf
import torch

from narrator.config import load_config
from narrator.tokenizers.audio import probe, read_segment
from narrator.tokenizers.chunking import plan_chunks
from narrator.tokenizers.config import SAMPLE_RATE, TokenizeConfig
from narrator.tokenizers.encodec import EncodecTokenizer, synthetic_speech
from narrator.tokenizers.kmeans import load_kmeans
from narrator.tokenizers.pipeline import tokenize
from narrator.tokenizers.semantic import SemanticTokenizer
from narrator.tokenizers.stderr_filter import MPG123_NOTICE, drop_stderr_lines
from narrator.tokenizers.whisper import WhisperEmbedder

REPO = Path(__file__).resolve().parents[1]
SHARED_BOOKS = REPO.parent / "shared" / "audio" / "books" / "librivox_dickinson_becky_miller"
SHARED_WHISPER = REPO.parent / "shared" / "weights" / "whisper-tiny.en.pt"
CLIPS, CLIP_SECONDS = 5, 1.0  # the start-up probe: 5 one-chunk recordings = 2 actor calls at ray.batch_size 4


@dataclass
class TokenizeSpeed:
    """Audio seconds per wall second of the bare models and of `tokenize` with 1 and 2 actors."""

    what: str  # the audio
    streams: str
    device: str
    audio_s: float
    chunks: int
    bare: float  # x real time, models only, one process
    walls: dict[int, float]  # actors -> `tokenize` wall seconds, start-up included
    startups: dict[int, float]  # actors -> wall seconds of the same command on the CLIPS clips
    fit_s: float | None = None  # semantic: the first run, with the k-means fit (2 actors)
    batch_size: int = 4  # ray.batch_size: chunks per actor call
    bare_two: float | None = None  # x real time of the bare models in 2 processes at once (the machine's ceiling)

    def rtf(self, actors: int) -> float:
        """End to end, start-up included."""
        return self.audio_s / self.walls[actors]

    @property
    def ceiling(self) -> float | None:
        """What this machine gives 2 processes over 1 (cores, memory bandwidth, turbo): the best 2 actors can do."""
        return self.bare_two / self.bare if self.bare_two else None

    def best_split(self, actors: int, batch_size: int) -> float:
        """The most `actors` can do over 1 given the calls they split: chunks / the busiest actor's chunks."""
        calls = [min(batch_size, self.chunks - i) for i in range(0, self.chunks, batch_size)]
        loads = [0] * actors
        for call in calls:  # each call to the actor free first
            loads[loads.index(min(loads))] += call
        return self.chunks / max(loads)

    def steady(self, actors: int) -> float:
        """With each run's start-up taken out (the clips' audio is not counted either)."""
        return (self.audio_s - CLIPS * CLIP_SECONDS) / max(self.walls[actors] - self.startups[actors], 1e-9)


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
    sf.write(path, synthetic_speech(minutes * 60, seed=1).astype(np.float32), SAMPLE_RATE)
    return [str(path)], f"{minutes:.1f} min synthetic speech"


def bare_models(cfg: TokenizeConfig, paths: list[str], device: str, kmeans: Path | None = None) -> tuple[float, float]:
    """(audio seconds, wall seconds) of the tokenizers of `cfg.streams` in one process on
    `cfg.ray.torch_threads` threads, each chunk read once, reading included (building the models not)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.ray.torch_threads)
    tokenizers = []
    if "acoustic" in cfg.streams:
        tokenizers.append(EncodecTokenizer(cfg.encodec, device))
    if "semantic" in cfg.streams:
        tokenizers.append(SemanticTokenizer(WhisperEmbedder(cfg.whisper, device), load_kmeans(kmeans), device))
    audio_s, start = 0.0, time.perf_counter()
    with drop_stderr_lines(MPG123_NOTICE):  # a LibriVox poem holds a damaged MP3 frame: `tokenize` warns of it once
        for path in paths:
            info = probe(path)
            specs = plan_chunks(Path(path).stem, info.duration_s, cfg.chunking)
            for i in range(0, len(specs), cfg.ray.batch_size):
                batch = specs[i: i + cfg.ray.batch_size]
                windows = [read_segment(info, s.ctx_start_s, s.ctx_end_s) for s in batch]
                for tokenizer in tokenizers:
                    tokenizer.encode_chunks(windows, batch)
                audio_s += sum(s.end_s - s.start_s for s in batch)
    wall = time.perf_counter() - start
    torch.set_num_threads(threads)
    return audio_s, wall


def _bare_process(cfg: TokenizeConfig, chunks: list[tuple[str, dict]], kmeans: Path | None, barrier, results) -> None:
    """One of the processes of `bare_in_parallel`: its chunks, timed from when all processes are ready."""
    torch.set_num_threads(cfg.ray.torch_threads)
    tokenizers = [EncodecTokenizer(cfg.encodec, "cpu")] if "acoustic" in cfg.streams else []
    if "semantic" in cfg.streams:
        tokenizers.append(SemanticTokenizer(WhisperEmbedder(cfg.whisper, "cpu"), load_kmeans(kmeans), "cpu"))
    infos = {path: probe(path) for path, _ in chunks}
    barrier.wait()
    start, audio_s = time.perf_counter(), 0.0
    with drop_stderr_lines(MPG123_NOTICE):
        for path, spec in chunks:
            window = read_segment(infos[path], spec.ctx_start_s, spec.ctx_end_s)
            for tokenizer in tokenizers:
                tokenizer.encode_chunks([window], [spec])
            audio_s += spec.end_s - spec.start_s
    results.put((audio_s, time.perf_counter() - start))


def bare_in_parallel(cfg: TokenizeConfig, paths: list[str], kmeans: Path | None = None, processes: int = 2) -> float:
    """x real time of the bare models in `processes` processes at once, the chunks dealt round-robin: what the
    machine allows several actors, with no Ray in the way (CPU only)."""
    import multiprocessing

    chunks = [(path, spec) for path in paths for spec in plan_chunks(Path(path).stem, probe(path).duration_s, cfg.chunking)]
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_bare_process, args=(cfg, chunks[i::processes], kmeans, barrier, results))
             for i in range(processes)]
    for proc in procs:
        proc.start()
    done = [results.get(timeout=3600) for _ in procs]
    for proc in procs:
        proc.join()
    return sum(a for a, _ in done) / max(w for _, w in done)


def measure(minutes: float = 3.0, semantic: bool = False, gpu: bool = False,
            overrides: tuple[str, ...] = ()) -> TokenizeSpeed:
    """Bare models and `tokenize` with 1 and 2 actors on the same audio, in this process (Ray started here);
    `overrides` (`--set` keys) apply to both."""
    tmp = Path(tempfile.mkdtemp(prefix="tokenize-speed-"))
    try:
        return _measure(tmp, minutes, semantic, gpu, overrides)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(tmp)


def _measure(tmp: Path, minutes: float, semantic: bool, gpu: bool, overrides: tuple[str, ...]) -> TokenizeSpeed:
    paths, what = pick_audio(minutes, tmp)
    clips = [str(tmp / f"clip{i}.wav") for i in range(CLIPS)]
    for clip in clips:
        sf.write(clip, read_segment(probe(paths[0]), 10.0, 10.0 + CLIP_SECONDS), SAMPLE_RATE)  # speech, not the lead-in
    checkpoint = tmp / "encodec_random.pt"
    torch.save(EncodecTokenizer(load_config(TokenizeConfig, None, ["encodec.weights.mode=random"]).encodec)
               .model.state_dict(), checkpoint)
    devices = ["ray.num_gpus=1", "ray.num_cpus=1"] if gpu else []
    base = []
    if semantic:
        base = [f"whisper.weights.checkpoint={SHARED_WHISPER}"] if SHARED_WHISPER.is_file() else ["whisper.weights.mode=random"]
    config = REPO / "configs/tokenize/semantic_acoustic.yaml" if semantic else None

    def cfg(actors: int, *more: str) -> TokenizeConfig:
        return load_config(TokenizeConfig, config, [f"encodec.weights.checkpoint={checkpoint}",
                                                    "encodec.weights.mode=pretrained", f"ray.concurrency={actors}",
                                                    *devices, *base, *overrides, *more])

    def timed(actors: int, out: Path, inputs: list[str], *more: str) -> float:
        start = time.perf_counter()
        tokenize(cfg(actors, *more), out, inputs)
        return time.perf_counter() - start

    audio_s = sum(probe(p).duration_s for p in paths)
    chunks = sum(len(plan_chunks(Path(p).stem, probe(p).duration_s, cfg(1).chunking)) for p in paths)
    device = "cuda" if gpu else "cpu"
    # The bare models run on half the books before the pipeline's runs and on the other half after them
    # (the k-means they need first is fit in the first run), so a change of load on the machine meets both sides.
    half = max(1, len(paths) // 2) if not semantic else 0
    bare = [bare_models(cfg(1), paths[:half], device)] if half else []
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    fit = timed(2, tmp / "fit", paths) if semantic else None  # the k-means fit, once; the timed runs reuse it
    kmeans = tmp / "fit" / "kmeans" / "semantic.json"
    reuse = [f"kmeans.path={kmeans}"] if semantic else []
    walls, startups = {}, {}
    for actors in (1, 2):
        startups[actors] = timed(actors, tmp / f"clips-{actors}", clips, *reuse)
        walls[actors] = timed(actors, tmp / f"out-{actors}", paths, *reuse)
    ray.shutdown()
    bare.append(bare_models(cfg(1), paths[half:], device, kmeans if semantic else None))
    rate = sum(a for a, _ in bare) / sum(w for _, w in bare)
    two = bare_in_parallel(cfg(1), paths, kmeans if semantic else None) if not gpu else None
    where = torch.cuda.get_device_name() if gpu else f"CPU, {os.cpu_count()} cores"
    streams = "semantic + acoustic 1.5 kbps" if semantic else "acoustic 3 kbps"
    return TokenizeSpeed(what, streams, where, audio_s, chunks, rate, walls, startups, fit, cfg(1).ray.batch_size, two)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--gpu", action="store_true", help="one GPU per actor")
    parser.add_argument("--semantic", action="store_true",
                        help="both streams (configs/tokenize/semantic_acoustic.yaml; Whisper tiny.en from ../shared/weights "
                             "when there, else random): k-means fit once, then tokenize vs the bare models")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a tokenize config override for every run, e.g. ray.batch_size=1")
    args = parser.parse_args()
    s = measure(args.minutes, args.semantic, args.gpu, tuple(args.overrides))
    fit = s.fit_s is not None
    print("\n| audio | streams | device | bare models, 1 process (x real time) | tokenize, 1 actor: wall s (x real time; "
          "start-up s; steady x) | tokenize, 2 actors: same |" + (" first run with the k-means fit, 2 actors |" if fit else ""))
    print("|---|---|---|---|---|---|" + ("---|" if fit else ""))
    cells = [f"{s.walls[a]:.1f} s ({s.rtf(a):.1f}x; {s.startups[a]:.1f} s; {s.steady(a):.1f}x)" for a in (1, 2)]
    print(f"| {s.what} | {s.streams} | {s.device} | {s.bare:.1f}x | {cells[0]} | {cells[1]} |"
          + (f" {s.fit_s:.1f} s |" if fit else ""))
    if s.ceiling:
        print(f"\n2 actors / 1: {s.steady(2) / s.steady(1):.2f}x steady; the machine's ceiling (bare models in 2 processes "
              f"/ 1): {s.ceiling:.2f}x; {s.chunks} chunks in calls of ray.batch_size allow at most "
              f"{s.best_split(2, s.batch_size):.2f}x")


if __name__ == "__main__":
    main()
