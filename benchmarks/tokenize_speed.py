"""Tokenization speed: real-time factor of the bare models in one process, and of `tokenize` with 1 and 2 Ray actors.

    python benchmarks/tokenize_speed.py [--minutes 3] [--gpu] [--semantic]
    python benchmarks/tokenize_speed.py --short 250 [--formats mp3,flac]   # 250 recordings of 2 s vs one of 500 s

Uses ~3 minutes of real speech from ../shared/audio when present (synthetic speech otherwise), and a
random EnCodec saved as a local checkpoint (same architecture and cost as the pretrained one; nothing
to download). Ray starts once, before the timed runs. Each `tokenize` run's start-up (the driver's
models and plan, the actors' start and their models) is measured apart, as the wall time of the same
command on five 1 s clips (two actor calls, so both actors start), so the steady-state rate is (audio -
clips) / (wall - start-up). Prints one markdown row.

`--short N` (`measure_short`): N recordings of 2 s, given as a JSONL catalog, against one recording of
N x 2 s made of the same audio (the LibriVox chapters of ../shared/audio/books joined, else synthetic
speech), in each format, with 2 actors and start-up taken out the same way: what a corpus of
utterances costs per recording. The long side is encoded in 32.2 s windows (30 s chunks with their
context), the short one in 2 s windows; on a 2-core EPYC (32 MB L3) EnCodec's full-rate layers cost
~2.5x more per second of audio on a 32 s window than on a 2 s one, so the long side is the slower.
"""

from __future__ import annotations

import argparse
import json
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
SHARED_CHAPTERS = REPO.parent / "shared" / "audio" / "books"  # librivox_*_64kb.mp3: LibriVox chapters, 22.05 kHz mono
WRITE = {"mp3": dict(format="MP3", subtype="MPEG_LAYER_III"), "flac": dict(format="FLAC")}  # --short's formats
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


@dataclass
class ShortSpeed:
    """`tokenize` on `pieces` recordings of `piece_s` each (a catalog) vs one recording of the same audio, one format."""

    fmt: str  # mp3 or flac
    what: str  # the audio
    pieces: int
    piece_s: float
    startup: float  # wall seconds of the same command on the CLIPS clips, in this format
    walls: dict[str, float]  # "short" / "long" -> wall seconds, start-up included
    windows_s: dict[str, float]  # "short" / "long" -> seconds of audio encoded, context windows included
    calls: dict[str, list[int]]  # "short" / "long" -> chunks per actor call
    actors: int = 2
    failed: int = 0  # pieces the short run refused (silent: LibriVox has stretches of digital silence)

    @property
    def audio_s(self) -> float:
        return self.pieces * self.piece_s

    def steady(self, side: str) -> float:
        """Audio seconds per wall second, start-up (and the clips' audio) taken out."""
        return (self.audio_s - CLIPS * CLIP_SECONDS) / max(self.walls[side] - self.startup, 1e-9)

    @property
    def ratio(self) -> float:
        return self.steady("short") / self.steady("long")

    def best_split(self, side: str) -> float:
        """The most the actors can do over 1 given the calls they split (as TokenizeSpeed.best_split)."""
        loads = [0] * self.actors
        for call in self.calls[side]:
            loads[loads.index(min(loads))] += call
        return sum(self.calls[side]) / max(loads)


def speech_for(seconds: float) -> tuple[np.ndarray, int, str]:
    """`seconds` of mono speech and its sample rate: LibriVox chapters from ../shared/audio joined end to end
    when present (22.05 kHz, so every read is resampled, as for real books), else synthetic speech at 24 kHz."""
    chapters = sorted(SHARED_CHAPTERS.glob("librivox_*_64kb.mp3")) if SHARED_CHAPTERS.is_dir() else []
    # libmpg123's notes on the chapters' ID3 tags and on a damaged frame (re-encoding the audio leaves it behind)
    with drop_stderr_lines(MPG123_NOTICE):
        rates = {sf.info(str(p)).samplerate for p in chapters}
        if chapters and len(rates) == 1:
            parts, total, rate = [], 0, rates.pop()
            while total < seconds * rate:
                for path in chapters:
                    audio, _ = sf.read(str(path), dtype="float32", always_2d=True)
                    parts.append(audio.mean(axis=1))
                    total += len(parts[-1])
                    if total >= seconds * rate:
                        break
            return np.concatenate(parts)[: round(seconds * rate)], rate, f"real speech (LibriVox chapters, {rate / 1000:g} kHz)"
    return synthetic_speech(seconds, seed=1).astype(np.float32), SAMPLE_RATE, "synthetic speech (24 kHz)"


def write_recordings(audio: np.ndarray, rate: int, pieces: int, piece_s: float, folder: Path, fmt: str) -> tuple[Path, Path]:
    """The whole `audio` as one file, and `pieces` consecutive cuts of `piece_s` listed in a JSONL catalog
    (ids piece00000, ...; paths relative to it): (long file, catalog)."""
    folder.mkdir(parents=True)
    long = folder / f"long.{fmt}"
    sf.write(str(long), audio, rate, **WRITE[fmt])
    (folder / "pieces").mkdir()
    step, rows = round(piece_s * rate), []
    for i in range(pieces):
        name = f"pieces/piece{i:05d}.{fmt}"
        sf.write(str(folder / name), audio[i * step: (i + 1) * step], rate, **WRITE[fmt])
        rows.append(json.dumps({"id": f"piece{i:05d}", "audio": name}))
    catalog = folder / "pieces.jsonl"
    catalog.write_text("\n".join(rows) + "\n")
    return long, catalog


def measure_short(pieces: int = 250, piece_seconds: float = 2.0, formats: tuple[str, ...] = ("mp3", "flac"),
                  actors: int = 2, overrides: tuple[str, ...] = ()) -> list[ShortSpeed]:
    """`tokenize` (acoustic, random EnCodec, `actors` actors) of `pieces` recordings of `piece_seconds` vs one
    recording of the same audio, per format, each run's start-up measured apart as in `measure`. Uses the Ray this
    process is connected to (a test's), else starts one here and stops it after."""
    tmp = Path(tempfile.mkdtemp(prefix="short-speed-"))
    started = not ray.is_initialized()
    try:
        audio, rate, what = speech_for(pieces * piece_seconds)
        checkpoint = tmp / "encodec_random.pt"
        torch.save(EncodecTokenizer(load_config(TokenizeConfig, None, ["encodec.weights.mode=random"]).encodec)
                   .model.state_dict(), checkpoint)
        cfg = load_config(TokenizeConfig, None, [f"encodec.weights.checkpoint={checkpoint}", "encodec.weights.mode=pretrained",
                                                 f"ray.concurrency={actors}", *overrides])
        if started:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)

        def timed(out: Path, inputs: list[str]) -> tuple[float, int]:
            """Wall seconds of `tokenize`, and the books it refused."""
            start = time.perf_counter()
            report = tokenize(cfg, out, inputs)
            return time.perf_counter() - start, len(report.failed)

        runs = []
        for fmt in formats:
            folder = tmp / fmt
            long, catalog = write_recordings(audio, rate, pieces, piece_seconds, folder, fmt)
            clips = [folder / f"clip{i}.{fmt}" for i in range(CLIPS)]  # the start-up probe, in this format
            first = round(10.0 * rate) if len(audio) > 12 * rate else 0  # speech, not the lead-in
            for clip in clips:
                sf.write(str(clip), audio[first: first + round(CLIP_SECONDS * rate)], rate, **WRITE[fmt])
            startup, _ = timed(folder / "out-clips", [str(c) for c in clips])
            walls = {"long": timed(folder / "out-long", [str(long)])[0]}
            walls["short"], failed = timed(folder / "out-short", [str(catalog)])
            long_specs = plan_chunks("long", probe(long).duration_s, cfg.chunking)
            short_specs = [s for i in range(pieces) for s in plan_chunks("p", probe(folder / f"pieces/piece{i:05d}.{fmt}")
                                                                        .duration_s, cfg.chunking)]
            b = cfg.ray.batch_size
            runs.append(ShortSpeed(
                fmt, what, pieces, piece_seconds, startup, walls,
                {side: sum(s.ctx_end_s - s.ctx_start_s for s in specs)
                 for side, specs in (("short", short_specs), ("long", long_specs))},
                {side: [min(b, n - i) for i in range(0, n, b)]
                 for side, n in (("short", len(short_specs)), ("long", len(long_specs)))},
                actors, failed))
            shutil.rmtree(folder)
        return runs
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--gpu", action="store_true", help="one GPU per actor")
    parser.add_argument("--semantic", action="store_true",
                        help="both streams (configs/tokenize/semantic_acoustic.yaml; Whisper tiny.en from ../shared/weights "
                             "when there, else random): k-means fit once, then tokenize vs the bare models")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a tokenize config override for every run, e.g. ray.batch_size=1")
    parser.add_argument("--short", type=int, default=0, metavar="N",
                        help="instead: N recordings of 2 s (a catalog) vs one of N x 2 s, same audio, 2 actors (make bench: 250)")
    parser.add_argument("--formats", default="mp3,flac", help="--short: the formats, comma-separated")
    args = parser.parse_args()
    if args.short:
        print("\n| format | audio | N x 2 s: steady x real time (wall s) | 1 x N*2 s: same | short / long | start-up s |")
        print("|---|---|---|---|---|---|")
        for r in measure_short(args.short, formats=tuple(args.formats.split(",")), overrides=tuple(args.overrides)):
            print(f"| {r.fmt} | {r.what}, {r.audio_s:g} s | {r.steady('short'):.1f}x ({r.walls['short']:.1f} s) | "
                  f"{r.steady('long'):.1f}x ({r.walls['long']:.1f} s) | {r.ratio:.2f} | {r.startup:.1f} |")
        return
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
