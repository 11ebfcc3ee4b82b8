"""`make bench`: every speed figure as a ratio against a baseline measured in the same run, with its target.

    python benchmarks/bench.py [--machine cpu-2c] [--only tokenize,short,loader,trainer,generate] [--no-record]

These machines are noisy, so each item times its baseline in the same process, minutes apart at most:
  tokenize   `narrator tokenize`'s pipeline with 1 actor vs the bare models in one process (target >= 0.9),
             and 2 actors vs 1 (target >= 1.8x; beside it, what the machine allows: the bare models in 2
             processes at once vs 1, and the bound the chunks' split into actor calls sets); acoustic
             (EnCodec 3 kbps), then both streams (Whisper + k-means)
  short      `tokenize` of 250 recordings of 2 s (a JSONL catalog) vs one recording of 500 s of the same audio,
             audio seconds per second, 2 actors, start-up taken out as for tokenize; in MP3 and in FLAC (target >= 0.9).
             250 x 2 s, not 500 x 2 s vs 1,000 s: that took 10 min on 2 busy cores, and 500 s keeps the long side's
             split into actor calls (17 chunks) as even as 1,000 s's (34 chunks): at most 1.89x for 2 actors
  loader     training tokens/s per process for each layout (target >= 5 M)
  trainer    trainer/run.py's steady-state steps/s vs a bare loop on the same model and batches (target >= 0.95)
  generate   tokens/s with the KV cache vs without (target >= 5x)
One line per figure; a figure below its target is reported, not failed. The figures go into
benchmarks/RESULTS.md's "make bench" table with the machine and date (a rerun on the same machine and
day replaces that day's rows of the figures it measured).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the item scripts, imported when their item runs

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## `make bench`"
ITEMS = ("tokenize", "short", "loader", "trainer", "generate")
RUN_ORDER = ("loader", "trainer", "generate", "tokenize", "short")  # the quick ones first


@dataclass
class Figure:
    item: str  # what was measured, e.g. "tokenize acoustic: 1 actor / bare models"
    value: float  # compared with `target`
    target: float
    shown: str  # the value as printed, with its unit
    detail: str  # the measurements behind it
    unit: str = ""  # of the target, as printed

    @property
    def verdict(self) -> str:
        return "PASS" if self.value >= self.target else "below target"

    def line(self) -> str:
        return f"{self.item}: {self.shown} (target >= {self.target:g}{self.unit}) {self.verdict}; {self.detail}"


def tokenize_figures(semantic: bool, minutes: float) -> list[Figure]:
    import tokenize_speed

    s = tokenize_speed.measure(minutes, semantic=semantic)
    name = f"tokenize {'semantic+acoustic' if semantic else 'acoustic'}, {s.audio_s / 60:.1f} min"
    start = f"start-up {s.startups[1]:.1f} s / {s.startups[2]:.1f} s (1 / 2 actors)"
    one, two = s.steady(1) / s.bare, s.steady(2) / s.steady(1)
    return [
        Figure(f"{name}: 1 actor / bare models", one, 0.9, f"{one:.2f}",
               f"bare {s.bare:.2f}x real time, tokenize 1 actor {s.steady(1):.2f}x steady ({s.rtf(1):.2f}x end to "
               f"end, {s.rtf(1) / s.bare:.2f} of bare), {start}; {s.what}, {s.chunks} chunks"),
        Figure(f"{name}: 2 actors / 1 actor", two, 1.8, f"{two:.2f}x",
               f"2 actors {s.steady(2):.2f}x real time steady ({s.rtf(2):.2f}x end to end, "
               f"{s.rtf(2) / s.rtf(1):.2f}x of 1 actor); this machine's ceiling, the bare models in 2 processes "
               f"at once / 1: {s.ceiling:.2f}x; {s.chunks} chunks in calls of {s.batch_size} allow at most "
               f"{s.best_split(2, s.batch_size):.2f}x"
               + (f"; k-means fit run {s.fit_s:.1f} s" if s.fit_s is not None else ""), unit="x"),
    ]


def short_figures(pieces: int, piece_seconds: float = 2.0, formats: tuple[str, ...] = ("mp3", "flac")) -> list[Figure]:
    import tokenize_speed

    figures = []
    for r in tokenize_speed.measure_short(pieces, piece_seconds, formats):
        calls = {side: f"{len(r.calls[side])} calls of <= {max(r.calls[side])} chunks" for side in r.calls}
        figures.append(Figure(
            f"tokenize {r.pieces} x {r.piece_s:g} s / 1 x {r.audio_s:g} s, {r.fmt}: audio s per s", r.ratio, 0.9,
            f"{r.ratio:.2f}",
            f"{r.actors} actors, acoustic 3 kbps, {r.what}, the {r.pieces} recordings in a JSONL catalog; steady "
            f"(start-up {r.startup:.1f} s out, the same command on {tokenize_speed.CLIPS} x {tokenize_speed.CLIP_SECONDS:g} s "
            f"{r.fmt} clips): short {r.steady('short'):.1f}x real time ({r.walls['short']:.1f} s wall), long "
            f"{r.steady('long'):.1f}x ({r.walls['long']:.1f} s wall); encoded with context: short {r.windows_s['short']:.0f} s, "
            f"long {r.windows_s['long']:.0f} s; short {calls['short']} allow {r.actors} actors at most "
            f"{r.best_split('short'):.2f}x of 1, long {calls['long']} {r.best_split('long'):.2f}x"
            + (f"; {r.failed} pieces refused as silent (read and encoded all the same)" if r.failed else "")))
    return figures


def loader_figures() -> list[Figure]:
    import loader_speed

    figures = []
    for layout in ("flat", "semantic", "interleaved", "prefix"):
        s = loader_speed.measure(layout, chunks=100, batches=200)
        figures.append(Figure(f"loader {layout}: tokens/s per process", s.tokens_per_s / 1e6, 5.0,
                              f"{s.tokens_per_s / 1e6:.1f} M", "block 1024 x batch 16, in-process (num_workers 0), "
                              f"{s.total_tokens / 1e6:.1f} M synthetic tokens", unit=" M"))
    return figures


def trainer_figures() -> list[Figure]:
    import statistics

    import trainer_overhead

    r = trainer_overhead.measure()
    bare, trainer = statistics.median(r.bare) * 1e3, statistics.median(r.trainer) * 1e3
    return [Figure("trainer / bare loop (steps/s)", r.ratio, 0.95, f"{r.ratio:.3f}",
                   f"configs/train/demo.yaml ({r.params / 1e6:.2f} M params, {r.tokens_per_step} tokens/step, 1 thread), "
                   f"steady state, median step: bare {bare:.0f} ms, trainer {trainer:.0f} ms (means: "
                   f"{r.mean_ratio:.3f})")]


def generate_figures() -> list[Figure]:
    import generate_speed
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = generate_speed.measure("demo")
    finally:
        torch.set_num_threads(threads)
    return [Figure("generate: KV cache / no cache (tokens/s)", r.ratio, 5.0, f"{r.ratio:.1f}x",
                   f"demo preset ({r.params / 1e6:.2f} M), block 256, 64 + 512 tokens, 1 thread: "
                   f"{r.with_cache:,.0f} vs {r.without_cache:,.0f} tokens/s; same tokens: {'yes' if r.same else 'no'}", unit="x")]


def machine_description() -> str:
    """'2 cores, AMD EPYC 7B13, 24 GiB' from /proc (Linux), else what platform knows."""
    model = platform.processor() or platform.machine()
    memory = ""
    with_proc = Path("/proc/cpuinfo").is_file()
    if with_proc:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
        kib = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:")), 0)
        memory = f", {kib / 2**20:.0f} GiB"
    return f"{os.cpu_count()} cores, {model}{memory}"


def record(figures: list[Figure], machine: str, day: str, results: Path = RESULTS) -> None:
    """Put the figures in RESULTS.md's `make bench` table, replacing those of the same machine, day and figure."""
    text = results.read_text() if results.is_file() else "# Benchmark results\n"
    header = ("| machine | date | figure | measured | target | verdict | measurements |\n"
              "|---|---|---|---|---|---|---|\n")
    rows = [f"| {machine} | {day} | {f.item} | {f.shown} | >= {f.target:g}{f.unit} | {f.verdict} | {f.detail} |\n"
            for f in figures]
    if SECTION not in text:
        intro = (f"\n{SECTION}\n\n`make bench` (benchmarks/bench.py) writes these rows: each figure is a ratio against a "
                 "baseline timed in the same run (or a rate against a fixed target), so a busy machine moves both "
                 "sides. A rerun on the same machine and day replaces that day's rows of the figures it measured.\n\n")
        text = text.rstrip("\n") + "\n" + intro + header
    begin = text.index(SECTION)
    end = text.find("\n## ", begin + len(SECTION))
    end = len(text) if end < 0 else end + 1
    section = text[begin:end]
    replaced = tuple(f"| {machine} | {day} | {f.item} |" for f in figures)
    kept = [line for line in section.splitlines(keepends=True) if not line.startswith(replaced)]
    if kept[-1].strip():
        kept[-1] = kept[-1].rstrip("\n") + "\n"
    if header.splitlines(keepends=True)[0] not in kept:
        kept += ["\n", *header.splitlines(keepends=True)]
    last_row = kept.index(header.splitlines(keepends=True)[0])  # the end of the table: its last row
    while last_row + 1 < len(kept) and kept[last_row + 1].startswith("|"):
        last_row += 1
    kept[last_row + 1: last_row + 1] = rows
    results.write_text(text[:begin] + "".join(kept) + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machine", default=None, help="the name RESULTS.md gives this machine (default: cores, CPU, memory)")
    parser.add_argument("--only", default=",".join(ITEMS), help=f"comma-separated items of {', '.join(ITEMS)}")
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md as it is")
    parser.add_argument("--tokenize-minutes", type=float, default=6.5,
                        help="audio for the tokenize item (6.5: 17 chunks, 5 actor calls of ray.batch_size 4)")
    parser.add_argument("--short-recordings", type=int, default=250,
                        help="recordings of 2 s for the short item, against one of as many x 2 s (250: 500 s)")
    args = parser.parse_args()
    only = [item.strip() for item in args.only.split(",") if item.strip()]
    unknown = [item for item in only if item not in ITEMS]
    if unknown:
        parser.error(f"--only: {', '.join(unknown)} is not one of {', '.join(ITEMS)}")
    machine = args.machine or machine_description()
    day = datetime.now(timezone.utc).date().isoformat()
    print(f"make bench on {machine}, {day}", flush=True)
    runs = {"loader": [loader_figures], "generate": [generate_figures], "trainer": [trainer_figures],
            "tokenize": [lambda: tokenize_figures(False, args.tokenize_minutes),
                         lambda: tokenize_figures(True, args.tokenize_minutes)],
            "short": [lambda: short_figures(args.short_recordings)]}
    figures, start = [], time.perf_counter()
    for item in RUN_ORDER:
        if item not in only:
            continue
        for run in runs[item]:
            for figure in run():
                print(figure.line(), flush=True)
                figures.append(figure)
    print(f"make bench: {len(figures)} figures in {time.perf_counter() - start:.0f} s, "
          f"{sum(f.verdict == 'PASS' for f in figures)} at or above target", flush=True)
    if not args.no_record:
        record(figures, machine, day)
        print(f"recorded in {RESULTS}")


if __name__ == "__main__":
    main()
