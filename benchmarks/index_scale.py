"""How a token folder's index (manifest.json, the plan's parts, the shards' book indexes) scales with its recordings.

    python benchmarks/index_scale.py [--sizes 10000,100000,1000000] [--results FILE] [--raw FILE.json]
                                     [--work DIR] [--keep] [--profile | --profile-only] [--timeout S]
    python benchmarks/index_scale.py --render A.json B.json [--results FILE]   # one table of earlier runs

On 2 cores, 10 k + 100 k + 1 M took ~14 minutes (1 M: 3.3 min to generate, 8 to measure) and ~4 GB at most.

For each size N it writes a synthetic token folder with the project's own writers (ShardPlan.extend and
save, ShardWriter + log_written, pipeline.build_manifest), so it follows a change of the index format:
N recordings of 2-20 s (seeded), planned with configs/tokenize/encodec_3kbps.yaml (shards.target_mb), each
planned chunk a real sample of a real webdataset tar that holds one 40 ms slot of tokens (3 frames x 4
codebooks) instead of the chunk's thousands, so a million recordings take ~2 GB of tars while the index
agrees with them (sizes, sha256, samples) and `narrator inspect --verify` and the trainer accept it.
No audio, no encoder. Then, each in a process of its own (peak RSS per process, DataLoader workers apart):
`narrator inspect`, `narrator inspect --verify`, `trainer/run.py` (configs/train/tiny.yaml, 2 DataLoader
workers) to its first batch, and adding 1% more books the way a tokenize rerun does (read the plan's book ids,
extend, save the new parts, write the new shards, build and save the manifest) on a copy whose tars are hard links.
Prints a markdown table (each figure at each N, and its growth per 10x); `--profile` adds cProfile's
view of each step. The shards are read back from the page cache: this measures the index, not the disk.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import inspect
import io
import json
import math
import os
import pstats
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TOKENIZE_CONFIG = REPO / "configs" / "tokenize" / "encodec_3kbps.yaml"
TRAIN_CONFIG = REPO / "configs" / "train" / "tiny.yaml"
NARRATOR = Path(sys.executable).with_name("narrator")  # the console script of this environment
MIN_SECONDS, MAX_SECONDS, SOURCE_RATE = 2.0, 20.0, 16_000  # recordings: whole samples of a 16 kHz corpus
TINY_FRAMES = 3  # tokens kept per chunk: one 40 ms slot of EnCodec frames
ADD_SHARE = 0.01  # books added by the rerun that is measured
MEMORY_LIMIT = 20 * 2**30  # a step whose processes hold more than this together is stopped (a finding)


# --- the synthetic token folder (runs in a child process) ----------------------------------------

def tokenize_config():
    from narrator.config import load_config
    from narrator.tokenizers.config import TokenizeConfig

    return load_config(TokenizeConfig, TOKENIZE_CONFIG, [])


def synthetic_books(first: int, count: int, seed: int) -> list:
    """Recordings `first` .. `first + count - 1`: LibriSpeech-like ids, absolute paths, 2-20 s in 16 kHz samples."""
    import numpy as np

    from narrator.tokenizers.plan import PlannedBook

    rng = np.random.default_rng([seed, first])
    samples = rng.integers(int(MIN_SECONDS * SOURCE_RATE), int(MAX_SECONDS * SOURCE_RATE) + 1, count)
    books = []
    for i, n in zip(range(first, first + count), samples.tolist()):
        book_id = f"spk{i // 200:05d}-utt{i % 200:03d}"
        books.append(PlannedBook(book_id, f"/data/corpus/spk{i // 200:05d}/{book_id}.flac", n / SOURCE_RATE))
    return books


def synthetic_stream(cfg):
    """The acoustic stream as `tokenize` records it (encodec.stream_info), without building EnCodec."""
    from narrator.tokenfolder.manifest import ACOUSTIC, StreamInfo, WeightsIdentity
    from narrator.tokenizers.config import SAMPLE_RATE
    from narrator.tokenizers.encodec import token_config, token_config_hash

    weights = WeightsIdentity(mode="random", source="synthetic tokens (benchmarks/index_scale.py)", sha256="0" * 64)
    return StreamInfo(name=ACOUSTIC, kind="encodec", sample_rate=SAMPLE_RATE, frame_rate=75.0,
                      n_codebooks=cfg.encodec.n_codebooks, codebook_size=1024, config=token_config(cfg),
                      config_hash=token_config_hash(cfg), weights=weights, bandwidth=cfg.encodec.bandwidth)


def write_shards(folder: Path, shards: list, cfg) -> int:
    """Each planned shard as a real tar of its planned samples (tiny token arrays), logged as tokenize logs it;
    returns the bytes written."""
    import numpy as np

    from narrator.tokenfolder import storage
    from narrator.tokenfolder.manifest import ACOUSTIC
    from narrator.tokenfolder.shards import ChunkRecord, ShardWriter, log_written, shard_path

    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 16, (cfg.encodec.n_codebooks, TINY_FRAMES), dtype=np.int16) for _ in range(64)]
    written = 0
    for shard in shards:
        rel = shard_path(ACOUSTIC, shard.index)
        with ShardWriter(storage.join(folder, rel), name=rel) as writer:
            for i, (_, spec) in enumerate(shard.chunks(cfg.chunking)):
                writer.write(ChunkRecord(spec.book, spec.chunk, spec.start_s, spec.end_s, TINY_FRAMES, ACOUSTIC),
                             pool[i % len(pool)])
            done = writer.close()
        log_written(folder, ACOUSTIC, done)
        written += done.bytes
    return written


def rebuild_manifest(folder: Path, cfg, plan) -> None:
    """What `tokenize` does once its shards are written: read the streams and shard records, build and save."""
    from narrator.tokenfolder.shards import read_written
    from narrator.tokenizers import pipeline

    present = pipeline._folder_streams(folder)
    written = {info.name: read_written(folder, info.name) for info in present}
    given = {"checks": {}, "failed": []}  # no book failed; `checks` (the actors' verdicts) where the writer takes them
    wanted = inspect.signature(pipeline.build_manifest).parameters
    pipeline.build_manifest(folder, cfg, plan, present, written, **{k: v for k, v in given.items() if k in wanted})


def task_generate(folder: Path, n: int, seed: int) -> dict[str, Any]:
    """A token folder of `n` recordings, written as `narrator tokenize` writes one (minus the encoding)."""
    from narrator.config import save_config
    from narrator.tokenfolder.manifest import ACOUSTIC
    from narrator.tokenfolder.shards import stream_info_path
    from narrator.tokenizers import pipeline
    from narrator.tokenizers.plan import ShardPlan

    cfg = tokenize_config()
    folder.mkdir(parents=True, exist_ok=True)
    books = synthetic_books(0, n, seed)
    r: dict[str, Any] = {}
    with timed(r, "plan_s"):
        plan = ShardPlan.open(folder)
        new = plan.extend(books, cfg.chunking, cfg.shards.target_mb * 1e6, pipeline._bytes_per_second(cfg), cfg.split)
    with timed(r, "plan_save_s"):
        plan.save()
    save_config(cfg, folder / pipeline.CONFIG_NAME)
    pipeline._write_json(folder / stream_info_path(ACOUSTIC), synthetic_stream(cfg))
    with timed(r, "shards_s"):
        r["tar_bytes"] = write_shards(folder, new, cfg)
    with timed(r, "manifest_s"):
        rebuild_manifest(folder, cfg, plan)
    r["shards"] = len(plan)
    r["chunks"] = sum(p.count for s in new for p in s.pieces)
    return r


def task_add(folder: Path, n: int, seed: int) -> dict[str, Any]:
    """Add ADD_SHARE x n books to a folder of n, as a tokenize rerun does; index time and bytes apart from the shards'."""
    from narrator.tokenizers import pipeline
    from narrator.tokenizers.plan import ShardPlan

    cfg = tokenize_config()
    added = max(1, round(n * ADD_SHARE))
    books = synthetic_books(n, added, seed)
    r: dict[str, Any] = {"added": added}
    io0 = proc_io()
    with timed(r, "load_plan_s"):  # what a rerun reads: the planned book ids, and what the plan holds
        plan = ShardPlan.open(folder)
        known, before = plan.known({b.id for b in books}, cfg.split)
    with timed(r, "extend_s"):
        new = plan.extend([b for b in books if b.id not in known], cfg.chunking, cfg.shards.target_mb * 1e6,
                          pipeline._bytes_per_second(cfg), cfg.split, before)
    with timed(r, "save_plan_s"):
        plan.save()
    with timed(r, "shards_s"):
        tar_bytes = write_shards(folder, new, cfg)
    with timed(r, "manifest_s"):
        rebuild_manifest(folder, cfg, plan)
    io1 = proc_io()
    r["index_s"] = r["load_plan_s"] + r["extend_s"] + r["save_plan_s"] + r["manifest_s"]
    r["index_s_cpu"] = r["load_plan_s_cpu"] + r["extend_s_cpu"] + r["save_plan_s_cpu"] + r["manifest_s_cpu"]
    r["index_written"] = io1["wchar"] - io0["wchar"] - tar_bytes  # every write but the new tars'
    r["index_read"] = io1["rchar"] - io0["rchar"]
    r["new_shards"] = len(new)
    return r


def task_trainer(folder: Path, out: Path) -> dict[str, Any]:
    """trainer/run.py on the folder with 2 DataLoader workers, to its first batch (max_steps 1): the start-up's
    phases, and the peak RSS of the main process and of each worker."""
    import psutil

    from narrator.trainer import run

    me = psutil.Process()
    r: dict[str, Any] = {"imports_s": time.time() - me.create_time()}
    t0 = time.perf_counter()
    for name in ("open_folder", "open_sources", "build_val_loader"):
        setattr(run, name, stamped(getattr(run, name), r, f"{name}_s"))
    real_step, first = run.train_step, {}

    def step(*args):
        start = time.perf_counter()
        result = real_step(*args)
        if not first:
            first["s"] = time.perf_counter() - start
            r["first_batch_s"] = time.perf_counter() - t0
            r["first_batch_from_start_s"] = time.time() - me.create_time()
            r["first_batch_cpu_main_s"] = time.process_time()
            r["anon_main_mb"] = rss_anon_mb(me.pid)
            r["anon_workers_mb"] = [rss_anon_mb(w.pid) for w in me.children(recursive=True)]
        return result

    run.train_step = step
    peaks = WorkerPeaks(me)
    with peaks, open(out.with_suffix(".log"), "w") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        code = run.main(["--config", str(TRAIN_CONFIG), "--set", f"data.manifest={folder}", "--set", f"out={out}",
                         "--set", "data.num_workers=2", "--set", "max_steps=1", "--set", "eval_audio_seconds=0",
                         "--set", "resume=never"])
    if code != 0:
        raise RuntimeError(f"trainer exited with {code}; see {out.with_suffix('.log')}")
    r["first_train_step_s"] = first["s"]
    r["worker_rss_mb"] = [kb / 1024 for kb in peaks.hwm.values()]
    return r


def task_cli(argv: list[str]) -> dict[str, Any]:
    """A `narrator` command in this process (for --profile; timed runs start the real command)."""
    from narrator.cli import main

    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        code = main(argv)
    return {"exit": code}


class WorkerPeaks:
    """Polls the children of `process` (DataLoader workers) for their peak RSS (VmHWM) while they live."""

    def __init__(self, process):
        self.process, self.hwm, self._stop = process, {}, threading.Event()

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            for child in self.process.children(recursive=True):
                with contextlib.suppress(OSError):
                    for line in Path(f"/proc/{child.pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.hwm[child.pid] = max(self.hwm.get(child.pid, 0), int(line.split()[1]))

    def __enter__(self) -> "WorkerPeaks":
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def rss_anon_mb(pid: int) -> float:
    """Resident anonymous memory (the heap: Python objects, arrays), without the mapped libraries' pages."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return math.nan


def stamped(fn, r: dict[str, Any], key: str):
    """`fn`, adding its wall seconds to r[key] and this process's CPU seconds to r[key + "_cpu"]."""
    def wrapper(*args, **kwargs):
        start, cpu = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            r[key] = r.get(key, 0.0) + time.perf_counter() - start
            r[key + "_cpu"] = r.get(key + "_cpu", 0.0) + time.process_time() - cpu
    return wrapper


@contextlib.contextmanager
def timed(r: dict[str, Any], key: str):
    """Wall seconds in r[key], this process's CPU seconds in r[key + "_cpu"] (the machine may be shared)."""
    start, cpu = time.perf_counter(), time.process_time()
    yield
    r[key] = time.perf_counter() - start
    r[key + "_cpu"] = time.process_time() - cpu


def proc_io() -> dict[str, int]:
    """This process's I/O counters: rchar / wchar are the bytes passed to read() / write() calls."""
    return {k: int(v) for k, v in (line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())}


def child_main(args: argparse.Namespace) -> None:
    tasks = {"generate": lambda: task_generate(Path(args.folder), args.n, args.seed),
             "add": lambda: task_add(Path(args.folder), args.n, args.seed),
             "trainer": lambda: task_trainer(Path(args.folder), Path(args.train_out)),
             "cli": lambda: task_cli(args.rest)}
    profiler = cProfile.Profile() if args.profile_out else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    result = tasks[args.task]()
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile_out)
    result["task_s"] = time.perf_counter() - start
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.json).write_text(json.dumps(result))


# --- the measurements (the parent process) -------------------------------------------------------

class StepFailed(Exception):
    pass


def run_child(cmd: list[str], timeout: float, stdout: Path | None = None) -> tuple[float, float, float]:
    """Run `cmd` in a session of its own; returns (wall seconds, peak RSS MB of its main process, CPU seconds of
    it and the children it waited for).

    Stopped (StepFailed) when its processes together hold more than MEMORY_LIMIT or it runs past `timeout`.
    """
    import psutil

    start = time.perf_counter()
    with open(stdout or os.devnull, "w") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, start_new_session=True, cwd=REPO)
    tree, why, stderr = psutil.Process(child.pid), None, []
    drain = threading.Thread(target=lambda: stderr.append(child.stderr.read()), daemon=True)
    drain.start()
    checked = 0.0
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)  # not Popen.poll: wait4 gives the child's rusage
        if pid:
            break
        now = time.perf_counter()
        if now - checked > 0.5:
            checked = now
            try:
                held = sum(p.memory_info().rss for p in [tree, *tree.children(recursive=True)])
            except psutil.Error:
                held = 0
            if why is None and (held > MEMORY_LIMIT or now - start > timeout):
                why = (f"stopped: its processes held {held / 2**30:.1f} GiB" if held > MEMORY_LIMIT
                       else f"stopped after {timeout:.0f} s")
                os.killpg(child.pid, signal.SIGKILL)  # the session this call started
        time.sleep(0.02)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    drain.join(5)
    if why:
        raise StepFailed(why)
    if child.returncode != 0:
        raise StepFailed(f"exit {child.returncode}: {b''.join(stderr).decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def run_task(task: str, timeout: float, *, folder: Path, n: int = 0, seed: int = 0, train_out: Path | None = None,
             rest: list[str] = (), profile: Path | None = None) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = Path(f.name)
    cmd = [sys.executable, __file__, "--task", task, "--json", str(result), "--folder", str(folder), "--n", str(n),
           "--seed", str(seed)] + (["--train-out", str(train_out)] if train_out else []) + \
          (["--profile-out", str(profile)] if profile else []) + ["--", *rest]
    try:
        wall, _, cpu = run_child(cmd, timeout)
        r = json.loads(result.read_text())
    finally:
        result.unlink(missing_ok=True)
    r["wall_s"], r["cpu_s"] = wall, cpu
    return r


def run_narrator(argv: list[str], timeout: float) -> dict[str, Any]:
    """A `narrator` command as a user runs it: wall time from start to exit, peak RSS, lines printed."""
    with tempfile.NamedTemporaryFile(suffix=".txt", delete=False) as f:
        out = Path(f.name)
    try:
        wall, rss, cpu = run_child([str(NARRATOR), *argv], timeout, stdout=out)
        lines = len(out.read_text().splitlines())
    finally:
        out.unlink(missing_ok=True)
    return {"wall_s": wall, "rss_mb": rss, "cpu_s": cpu, "lines": lines}


def index_files(folder: Path) -> dict[str, int]:
    """Every file of the folder but the shard tars (relative path -> bytes): the index, whatever its format."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(".tar")}


def copy_folder(src: Path, dst: Path) -> None:
    """A copy to change: index files copied, tars hard-linked (never written by an append)."""
    shutil.copytree(src, dst, copy_function=lambda s, d: os.link(s, d) if s.endswith(".tar") else shutil.copy2(s, d))


def measure_size(n: int, work: Path, seed: int, timeout: float, profile: bool,
                 measure: bool = True) -> tuple[dict[str, Any], list[str]]:
    """Every figure for one size (unless not `measure`), and the profile sections (when asked)."""
    folder, figures, notes = work / f"tokens-{n}", {"n": n}, []
    started = time.perf_counter()

    def step(name: str, fn) -> dict[str, Any] | None:
        t = time.perf_counter()
        figures.setdefault("load", {})[name] = os.getloadavg()[0]
        try:
            out = fn()
        except StepFailed as e:
            figures[f"{name}_failed"] = str(e)
            print(f"  {name}: FAILED ({e})", flush=True)
            return None
        print(f"  {name}: {time.perf_counter() - t:.1f} s (load {figures['load'][name]:.1f} at the start)", flush=True)
        return out

    if (folder / "manifest.json").is_file():
        print(f"  reusing {folder}", flush=True)
    else:
        shutil.rmtree(folder, ignore_errors=True)
        figures["generate"] = step("generate", lambda: run_task("generate", timeout, folder=folder, n=n, seed=seed))
        if figures["generate"] is None:
            return figures, notes
    figures["index"] = index_files(folder)
    figures["tars"] = sum(p.stat().st_size for p in folder.rglob("*.tar"))
    if not measure:
        notes += profile_size(n, folder, work, seed, timeout)
        figures["total_s"] = time.perf_counter() - started
        return figures, notes
    figures["inspect"] = step("inspect", lambda: run_narrator(["inspect", str(folder)], timeout))
    figures["verify"] = step("inspect --verify", lambda: run_narrator(["inspect", "--verify", str(folder)], timeout))
    train_out = work / f"train-{n}"
    shutil.rmtree(train_out, ignore_errors=True)
    figures["trainer"] = step("trainer", lambda: run_task("trainer", timeout, folder=folder, train_out=train_out))
    added = work / f"tokens-{n}-add"
    shutil.rmtree(added, ignore_errors=True)
    copy_folder(folder, added)
    figures["add"] = step("add 1%", lambda: run_task("add", timeout, folder=added, n=n, seed=seed + 1))
    if figures["add"] is not None:
        before, after = figures["index"], index_files(added)
        figures["add"]["index_grew"] = sum(after.values()) - sum(before.values())
    shutil.rmtree(added, ignore_errors=True)
    if profile:
        notes += profile_size(n, folder, work, seed, timeout)
    shutil.rmtree(train_out, ignore_errors=True)
    figures["total_s"] = time.perf_counter() - started
    return figures, notes


def profile_size(n: int, folder: Path, work: Path, seed: int, timeout: float) -> list[str]:
    """cProfile of inspect, inspect --verify, the trainer's start-up (main process) and the 1% add."""
    sections = []
    runs = {"narrator inspect": dict(task="cli", rest=["inspect", str(folder)]),
            "narrator inspect --verify": dict(task="cli", rest=["inspect", "--verify", str(folder)]),
            "trainer start-up to the first batch (main process)": dict(task="trainer", train_out=work / f"prof-train-{n}"),
            "adding 1% more books (index work and shard writing)": dict(task="add", n=n, seed=seed + 1)}
    for title, kw in runs.items():
        prof = work / f"profile-{n}.prof"
        target = folder
        if kw["task"] == "add":
            target = work / f"tokens-{n}-add"
            shutil.rmtree(target, ignore_errors=True)
            copy_folder(folder, target)
        shutil.rmtree(work / f"prof-train-{n}", ignore_errors=True)
        print(f"  profile: {title}", flush=True)
        try:
            run_task(kw.pop("task"), timeout, folder=target, profile=prof, **kw)
            sections.append(f"### N = {n:,}: {title}\n\n{profile_table(prof)}")
        except StepFailed as e:
            sections.append(f"### N = {n:,}: {title}\n\nFAILED: {e}\n")
        finally:
            prof.unlink(missing_ok=True)
            if target != folder:
                shutil.rmtree(target, ignore_errors=True)
            shutil.rmtree(work / f"prof-train-{n}", ignore_errors=True)
    return sections


WATCH = [("json/__init__.py", " loads"), ("json/__init__.py", " dumps"), ("python3.11/typing.py", " get_type_hints"),
         ("narrator/narrator/config.py", " from_dict"), ("narrator/narrator/config.py", " to_dict"),
         ("narrator/tokenfolder/split.py", " held_out_slots"), ("narrator/tokenizers/chunking.py", " plan_chunks"),
         ("narrator/streaming/dataset.py", " open"), ("narrator/streaming/dataset.py", " shard_urls"),
         ("narrator/streaming/dataset.py", " val_windows"), ("narrator/tokenizers/inspect.py", " _stream_stats"),
         ("narrator/tokenizers/inspect.py", " _text"), ("narrator/tokenizers/inspect.py", " _summary"),
         ("narrator/tokenfolder/storage.py", " checksum")]  # always listed when they ran


def profile_table(path: Path, top: int = 14) -> str:
    """The functions that took the most time: own time (tottime) and with callees (cumtime), as shares of the run."""
    stats = pstats.Stats(str(path), stream=io.StringIO())
    total = stats.total_tt or 1.0
    rows = []
    for (file, line, func), (_, calls, tt, ct, _) in stats.stats.items():
        rows.append((tt, ct, calls, _where(file, line, func)))
    lines = [f"Total {total:.1f} s under cProfile.\n", "| function | calls | own s | own % | with callees s | with callees % |",
             "|---|---|---|---|---|---|"]
    own = sorted(rows, key=lambda r: -r[0])[:top]
    ours = [r for r in sorted(rows, key=lambda r: -r[1]) if r[3].startswith("narrator/") and r not in own
            and not r[3].startswith("narrator/benchmarks/") and not r[3].endswith("<module>")][:top]
    watched = [r for r in sorted(rows, key=lambda r: -r[1]) if r not in own + ours
               and any(r[3].startswith(file) and r[3].endswith(func) for file, func in WATCH)]
    for tt, ct, calls, where in own + ours + watched:
        lines.append(f"| `{where}` | {calls:,} | {tt:.2f} | {tt / total:.0%} | {ct:.2f} | {ct / total:.0%} |")
    return "\n".join(lines) + "\n"


def _where(file: str, line: int, func: str) -> str:
    if file == "~":
        return func  # a built-in, e.g. <method 'read' of '_io.BufferedReader' objects>
    path = Path(file)
    parts = path.parts
    if "site-packages" in parts:
        return f"{'/'.join(parts[parts.index('site-packages') + 1:])}:{line} {func}"
    with contextlib.suppress(ValueError):
        return f"narrator/{path.relative_to(REPO)}:{line} {func}"
    return f"{path.parent.name}/{path.name}:{line} {func}"


# --- the table -----------------------------------------------------------------------------------

def rows(f: dict[str, Any]) -> list[tuple[str, float | str | None]]:
    """(figure, value) for one size; None where a step failed."""
    g, ins, ver, tr, add = (f.get(k) or {} for k in ("generate", "inspect", "verify", "trainer", "add"))
    idx = f.get("index", {})
    mb = 1e6
    manifest = idx.get("manifest.json", 0)
    plan = sum(v for k, v in idx.items() if k.startswith("plan/"))
    books = sum(v for k, v in idx.items() if k.startswith("index/"))
    other = sum(v for k, v in idx.items() if k != "manifest.json" and not k.startswith(("plan/", "index/")))
    workers = tr.get("worker_rss_mb") or []
    anon = tr.get("anon_workers_mb") or []
    v = lambda d, k, scale=1.0: d[k] * scale if k in d else None  # noqa: E731
    return [
        ("shards planned (target 256 MB of real tokens each)", v(g, "shards")),
        ("plan: ShardPlan.extend of N books, CPU s", v(g, "plan_s_cpu")),
        ("plan: save its parts, CPU s", v(g, "plan_save_s_cpu")),
        ("generate: tiny tars written, CPU s (synthetic, not the index)", v(g, "shards_s_cpu")),
        ("generate: build_manifest + save, CPU s", v(g, "manifest_s_cpu")),
        ("generate: peak RSS, MB", v(g, "rss_mb")),
        ("tiny tars on disk, MB", f["tars"] / mb if "tars" in f else None),
        ("index: manifest.json, MB", manifest / mb if idx else None),
        ("index: plan/ (a part per shard), MB", plan / mb if idx else None),
        ("index: index/ (a book index per shard), MB", books / mb if idx else None),
        ("index: other files, KB", other / 1e3 if idx else None),
        ("index: total bytes per recording", (manifest + plan + books + other) / f["n"] if idx else None),
        ("add 1%: index work (read plan ids + extend + save parts + manifest), wall s", v(add, "index_s")),
        ("add 1%: the same, CPU s", v(add, "index_s_cpu")),
        ("add 1%: of which read the plan's book ids, CPU s", v(add, "load_plan_s_cpu")),
        ("add 1%: of which extend, CPU s", v(add, "extend_s_cpu")),
        ("add 1%: of which save plan, CPU s", v(add, "save_plan_s_cpu")),
        ("add 1%: of which build the new shards' records + save manifest, CPU s", v(add, "manifest_s_cpu")),
        ("add 1%: new tiny tars written, CPU s", v(add, "shards_s_cpu")),
        ("add 1%: index bytes written, MB", v(add, "index_written", 1 / mb)),
        ("add 1%: index bytes read, MB", v(add, "index_read", 1 / mb)),
        ("add 1%: index growth, MB (what is new)", v(add, "index_grew", 1 / mb)),
        ("add 1%: peak RSS, MB", v(add, "rss_mb")),
        ("`narrator inspect`: wall s", v(ins, "wall_s")),
        ("`narrator inspect`: CPU s", v(ins, "cpu_s")),
        ("`narrator inspect`: peak RSS, MB", v(ins, "rss_mb")),
        ("`narrator inspect --verify`: wall s", v(ver, "wall_s")),
        ("`narrator inspect --verify`: CPU s (all threads)", v(ver, "cpu_s")),
        ("`narrator inspect --verify`: peak RSS, MB", v(ver, "rss_mb")),
        ("trainer: first batch, wall s from process start", v(tr, "first_batch_from_start_s")),
        ("trainer: main process CPU s to the first batch", v(tr, "first_batch_cpu_main_s")),
        ("trainer: of which imports + interpreter, wall s", v(tr, "imports_s")),
        ("trainer: of which open_folder (Manifest.load), CPU s", v(tr, "open_folder_s_cpu")),
        ("trainer: of which open_sources (TokenShards.open), CPU s", v(tr, "open_sources_s_cpu")),
        ("trainer: of which build_val_loader (reads the shards that hold held-out slots), CPU s", v(tr, "build_val_loader_s_cpu")),
        ("trainer: of which first train_step (workers start, first batch), wall s", v(tr, "first_train_step_s")),
        ("trainer: main process peak RSS, MB", v(tr, "rss_mb")),
        ("trainer: worker peak RSS (max of 2; shares pages with main), MB", max(workers) if workers else None),
        ("trainer: main process heap (RssAnon) at first batch, MB", v(tr, "anon_main_mb")),
        ("trainer: worker heap (RssAnon, max of 2, incl. copy-on-write pages) at first batch, MB", max(anon) if anon else None),
        ("load average (1 min) at the trainer's start", f.get("load", {}).get("trainer")),
    ]


def table(all_figures: list[dict[str, Any]]) -> str:
    sizes = [f["n"] for f in all_figures]
    head = ["figure", *[f"N = {n:,}" for n in sizes]]
    head += [f"x per 10x ({a:,} -> {b:,})" for a, b in zip(sizes, sizes[1:])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    per_size = [rows(f) for f in all_figures]
    for i, (label, _) in enumerate(per_size[0]):
        values = [r[i][1] for r in per_size]
        cells = [_fmt(x) for x in values]
        for (a, x), (b, y) in zip(zip(sizes, values), zip(sizes[1:], values[1:])):
            ok = (isinstance(x, (int, float)) and isinstance(y, (int, float)) and x > 0 and y > 0
                  and not label.startswith("load"))
            cells.append(f"x{(y / x) ** (1 / math.log10(b / a)):.1f}" if ok else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    failed = [f"- N = {f['n']:,}: {k.removesuffix('_failed')} {v}" for f in all_figures for k, v in f.items()
              if k.endswith("_failed")]
    return "\n".join(lines) + ("\n\nFailed steps:\n" + "\n".join(failed) if failed else "") + "\n"


def _fmt(x: float | str | None) -> str:
    if x is None:
        return "failed"
    if isinstance(x, str):
        return x
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}" if x >= 0.01 else f"{x:.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="recordings per folder, comma-separated")
    parser.add_argument("--results", type=Path, help="also write the markdown here")
    parser.add_argument("--work", type=Path, help="folder for the token folders (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the token folders (in --work) for a later run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one step may take")
    parser.add_argument("--profile", action="store_true", help="also run each step under cProfile and list the top")
    parser.add_argument("--profile-only", action="store_true", help="profile, measure nothing (with --keep: the folder)")
    parser.add_argument("--raw", type=Path, help="write every figure as JSON here (after each size)")
    parser.add_argument("--render", type=Path, nargs="+", metavar="RAW",
                        help="measure nothing: print the table of earlier --raw files (sizes in order, profiles kept)")
    # a measured step, in a process of its own
    parser.add_argument("--task", choices=["generate", "add", "trainer", "cli"], help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--train-out", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.task:
        child_main(args)
        return
    if args.render:
        runs = [json.loads(path.read_text()) for path in args.render]
        figures = sorted((f for run in runs for f in run["figures"]), key=lambda f: f["n"])
        report(figures, [note for run in runs for note in run["profiles"]], "; ".join(run["command"] for run in runs),
               args.results)
        return
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    work = args.work or Path(tempfile.mkdtemp(prefix="index-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    all_figures, notes = [], []
    try:
        for n in sizes:
            print(f"N = {n:,}", flush=True)
            figures, profile_notes = measure_size(n, work, args.seed, args.timeout, args.profile or args.profile_only,
                                                  measure=not args.profile_only)
            print(f"  N = {n:,} done in {figures.get('total_s', math.nan):.0f} s", flush=True)
            all_figures.append(figures)
            notes += profile_notes
            if args.raw:
                args.raw.write_text(json.dumps({"command": " ".join(sys.argv[1:]), "figures": all_figures,
                                                "profiles": notes}, indent=1))
            if not args.keep:
                shutil.rmtree(work / f"tokens-{n}", ignore_errors=True)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    report(all_figures, notes, " ".join(sys.argv[1:]), args.results)


def report(figures: list[dict[str, Any]], notes: list[str], command: str, results: Path | None) -> None:
    sizes = ", ".join(f"{f['n']:,}" for f in figures)
    text = (f"Token-folder index at {sizes} recordings of "
            f"{MIN_SECONDS:g}-{MAX_SECONDS:g} s ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores; "
            f"`python benchmarks/index_scale.py {command}`). Wall time per size (generate and measure"
            f"{', and profile' if notes else ''}): "
            + "; ".join(f"N = {f['n']:,}: {f.get('total_s', math.nan):.0f} s" for f in figures) + ".\n\n"
            + table(figures) + ("\n## Profiles\n\n" + "\n".join(notes) if notes else ""))
    print(text)
    if results:
        results.write_text(text)


if __name__ == "__main__":
    main()
