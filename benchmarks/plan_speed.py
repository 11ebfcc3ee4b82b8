"""Planning at corpus scale: how soon `narrator tokenize` fixes its plan and writes its first shard.

    python benchmarks/plan_speed.py [--hours 57] [--shard-mb 0.25] [--results FILE]

A JSONL catalog of ~57 hours of MP3: the LibriVox chapters of ../shared/audio/books (librivox_*_64kb.mp3,
22.05 kHz, 3-9 minutes each) repeated under distinct ids, with absolute paths (so --allow-outside-root).
`narrator tokenize` (random EnCodec weights saved as a local checkpoint, 2 actors) runs in a subprocess
of its own process group; the times from its start until OUT/plan/ has its parts (the plan is fixed),
until the progress bar appears (Ray is up and the chunks are handed to the actor pool), until it shows
the first chunk back from an actor (the actors' start and one call of ray.batch_size chunks), and until
the first shard file appears in OUT/shards/acoustic/. Then the whole group is killed: the 57 hours are
not encoded. Target (the issue's): the first shard within 60 s on 2 cores. The shards are made small (`shards.target_mb`, --shard-mb) so that
the first one holds a few minutes of audio; the line says how much. The same files are read again and
again, so after the first pass their bytes come from the page cache, not the disk.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import machine_description  # noqa: E402  (benchmarks/bench.py: "2 cores, AMD EPYC, 24 GiB")

REPO = Path(__file__).resolve().parents[1]
SHARED_BOOKS = REPO.parent / "shared" / "audio" / "books"
CHAPTERS = "librivox_*_64kb.mp3"
TARGET_S = 60.0  # first shard within a minute on 2 cores
PLAN_PART = "plan/000000.json"  # the shard plan's first part (tokenizers/plan.py)
HEADER = ("| machine | date | catalog | run | plan fixed | encoding starts | first chunk back | first shard |\n"
          "|---|---|---|---|---|---|---|---|\n")  # --results: written first when the file lacks it
PROGRESS = re.compile(r"tokenize:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")  # tqdm's bar: chunks done / planned


@dataclass
class PlanSpeed:
    books: int
    hours: float  # audio in the catalog, from the headers
    shard_mb: float
    plan_s: float | None  # start -> OUT/plan/'s first part (the others follow within milliseconds)
    bar_s: float | None  # start -> the progress bar (0 chunks): Ray started, the chunks handed to Ray Data
    first_chunk_s: float | None  # start -> the progress bar's first chunk
    first_shard_s: float | None  # start -> OUT/shards/acoustic/000000.tar (or any finished shard)
    shards: int = 0  # in the plan
    chunks: int = 0  # in the plan
    first_shard_chunks: int = 0
    first_shard_audio_s: float = 0.0

    def line(self) -> str:
        def at(seconds: float | None) -> str:
            return f"{seconds:.1f} s" if seconds is not None else "not reached"

        verdict = "PASS" if self.first_shard_s is not None and self.first_shard_s <= TARGET_S else "above target"
        return (f"plan fixed at {at(self.plan_s)}, encoding starts at {at(self.bar_s)}, first chunk back at "
                f"{at(self.first_chunk_s)}, first shard at "
                f"{at(self.first_shard_s)} (target <= {TARGET_S:g} s) {verdict}; {self.books} books, {self.hours:.1f} h of "
                f"MP3, {self.chunks:,} chunks in {self.shards} shards of ~{self.shard_mb:g} MB; the first shard: "
                f"{self.first_shard_chunks} chunks, {self.first_shard_audio_s / 60:.1f} min of audio")


def chapters(folder: Path = SHARED_BOOKS) -> list[Path]:
    """The LibriVox chapters, or a one-line exit when ../shared/audio is missing (a benchmark, not a test)."""
    found = sorted(folder.glob(CHAPTERS)) if folder.is_dir() else []
    if not found:
        sys.exit(f"plan_speed: no LibriVox chapters ({CHAPTERS}) in {folder}: this benchmark needs the real MP3s of "
                 f"../shared/audio (see ../shared/audio/SOURCES.md); nothing measured")
    return found


def write_catalog(path: Path, files: list[Path], hours: float) -> tuple[int, float]:
    """A JSONL catalog cycling through `files` under distinct ids until `hours` of audio: (rows, seconds)."""
    import soundfile as sf

    from narrator.tokenizers.stderr_filter import MPG123_NOTICE, drop_stderr_lines

    with drop_stderr_lines(MPG123_NOTICE):  # libmpg123's notes on a chapter's ID3 tag
        durations = [sf.info(str(f)).duration for f in files]
    rows, total = [], 0.0
    while total < hours * 3600:
        i = len(rows)
        rows.append(json.dumps({"id": f"book{i:05d}", "audio": str(files[i % len(files)].resolve()),
                                "reader": "LibriVox", "licence": "public domain"}))
        total += durations[i % len(files)]
    path.write_text("\n".join(rows) + "\n")
    return len(rows), total


def random_checkpoint(path: Path) -> Path:
    """Random EnCodec weights as a local state_dict (same architecture and cost as the pretrained one)."""
    import torch

    from narrator.config import load_config
    from narrator.tokenizers.config import TokenizeConfig
    from narrator.tokenizers.encodec import EncodecTokenizer

    torch.save(EncodecTokenizer(load_config(TokenizeConfig, None, ["encodec.weights.mode=random"]).encodec)
               .model.state_dict(), path)
    return path


def measure(hours: float = 57.0, shard_mb: float = 0.25, actors: int = 2, timeout_s: float = 600.0,
            log: Path | None = None) -> PlanSpeed:
    """Run `narrator tokenize` on the catalog until its first shard is written (or `timeout_s`), then kill it."""
    with tempfile.TemporaryDirectory(prefix="plan-speed-") as folder:
        tmp = Path(folder)
        catalog = tmp / "books.jsonl"
        books, seconds = write_catalog(catalog, chapters(), hours)
        checkpoint = random_checkpoint(tmp / "encodec_random.pt")
        out = tmp / "tokens"
        command = [str(Path(sys.executable).parent / "narrator"), "tokenize", "--out", str(out), str(catalog),
                   "--allow-outside-root", "--set", f"encodec.weights.checkpoint={checkpoint}",
                   "--set", "encodec.weights.mode=pretrained", "--set", f"ray.concurrency={actors}",
                   "--set", f"shards.target_mb={shard_mb}"]
        result = PlanSpeed(books, seconds / 3600, shard_mb, None, None, None, None)
        lines: list[tuple[float, str]] = []  # (second it began to come, the line)
        start = time.perf_counter()
        # Its own session: Ray's processes started by the run share its process group, so one killpg stops them all.
        # Unbuffered: each line is timed when the run prints it, not when a pipe's buffer fills.
        proc = subprocess.Popen(command, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})

        def read_output() -> None:
            pending, since = b"", 0.0  # the line not ended yet, and when its first byte came
            while data := os.read(proc.stdout.fileno(), 1 << 16):  # what the pipe holds now, unbuffered
                now = time.perf_counter() - start
                *parts, rest = re.split(rb"[\r\n]", pending + data)
                began = [since if pending else now] + [now] * len(parts)  # when each of parts, then rest, began to come
                pending, since = rest, began[-1]
                for raw, at in zip([*parts, rest], began):
                    text = raw.decode(errors="replace")
                    # tqdm draws its bar after a '\r' and ends it with nothing: the bar just drawn is `rest`.
                    if match := PROGRESS.search(text):
                        if result.bar_s is None:
                            result.bar_s = at
                        if int(match.group(1)) > 0 and result.first_chunk_s is None:
                            result.first_chunk_s = at
                    if raw is not rest and text.strip() and len(lines) < 10_000:
                        lines.append((at, text))

        reader = threading.Thread(target=read_output, daemon=True)
        reader.start()
        shards = out / "shards" / "acoustic"
        try:
            while time.perf_counter() - start < timeout_s and proc.poll() is None:
                now = time.perf_counter() - start
                if result.plan_s is None and (out / PLAN_PART).is_file():
                    result.plan_s = now
                if shards.is_dir() and any(re.fullmatch(r"\d{6}\.tar", p.name) for p in shards.iterdir()):
                    result.first_shard_s = now
                    break
                time.sleep(0.05)
            if result.plan_s is None and (out / PLAN_PART).is_file():  # written just before the run ended
                result.plan_s = time.perf_counter() - start
        finally:
            _stop(proc)
            reader.join(timeout=10)
        if log is not None:
            log.write_text("".join(f"{at:7.2f} s  {text}\n" for at, text in lines))
        if result.plan_s is None:
            tail = "\n".join(text for _, text in lines[-15:])
            sys.exit(f"plan_speed: the run ended (status {proc.returncode}) before its plan was written:\n{tail}")
        _read_plan(result, out)
        return result


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the run's process group (the driver, Ray's head and workers), SIGKILL to what is left after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            if not _group_alive(proc.pid):
                return
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` is still running (zombies aside)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _read_plan(result: PlanSpeed, out: Path) -> None:
    """Shards and chunks of OUT's plan, and what the first shard holds (its chunks and their seconds)."""
    from narrator.tokenizers.config import ChunkingConfig
    from narrator.tokenizers.plan import ShardPlan

    plan = ShardPlan.open(out)
    chunking = ChunkingConfig()
    result.shards = len(plan)
    result.chunks = sum(piece.count for shard in plan.shards() for piece in shard.pieces)
    first = plan.shard(0).chunks(chunking)
    result.first_shard_chunks = len(first)
    result.first_shard_audio_s = sum(spec.end_s - spec.start_s for _, spec in first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=57.0, help="audio in the catalog (default 57)")
    parser.add_argument("--shard-mb", type=float, default=0.25,
                        help="shards.target_mb: the first shard's size (0.25: ~6 min of audio at 3 kbps)")
    parser.add_argument("--actors", type=int, default=2, help="ray.concurrency")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up on the first shard after this many seconds")
    parser.add_argument("--log", type=Path, help="keep the run's output here, each line with the second it came")
    parser.add_argument("--results", type=Path, help="append a markdown row to this file")
    args = parser.parse_args()
    r = measure(args.hours, args.shard_mb, args.actors, args.timeout, args.log)
    print(f"plan_speed: {r.line()}")
    if args.results:
        def cell(seconds: float | None) -> str:
            return f"{seconds:.1f} s" if seconds is not None else "not reached"

        day = datetime.now(timezone.utc).date().isoformat()
        row = (f"| {machine_description()} | {day} | {r.books} books, {r.hours:.1f} h MP3 (LibriVox chapters repeated) | "
               f"{args.actors} actors, random EnCodec 3 kbps, shards ~{r.shard_mb:g} MB (first: {r.first_shard_chunks} chunks, "
               f"{r.first_shard_audio_s / 60:.1f} min) | {cell(r.plan_s)} | {cell(r.bar_s)} | {cell(r.first_chunk_s)} | "
               f"{cell(r.first_shard_s)} (target <= {TARGET_S:g} s) |\n")
        text = args.results.read_text() if args.results.is_file() else ""
        with open(args.results, "a") as f:
            if HEADER not in text:
                f.write(("\n" if text.strip() else "") + HEADER)
            f.write(row)
        print(f"appended to {args.results}: {row.strip()}")


if __name__ == "__main__":
    main()
