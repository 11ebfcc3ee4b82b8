"""Faults injected into real `narrator tokenize` runs: a Ray actor process SIGKILLed mid-run, a file-size limit hit
while writing shards. Each run's shards must equal an undisturbed run's, byte for byte."""

import contextlib
import io
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from narrator.config import load_config
from narrator.tokenizers.config import TokenizeConfig
from narrator.tokenizers.encodec import random_weights_name
from narrator.tokenfolder.manifest import Manifest
from narrator.tokenizers.pipeline import tokenize

# Chunks of 2 s, about three to a shard (~9 KB): 3 books of 8, 6 and 6 s make 10 chunks in 4 shards.
SETTINGS = ["chunking.chunk_seconds=2.0", "shards.target_mb=0.009", "ray.concurrency=2", "ray.batch_size=1",
            "encodec.weights.mode=random"]
FILE_LIMIT = 4096  # bytes: below a shard (~9 KB), above plan.json and a written.jsonl line


@pytest.fixture(scope="module")
def books(tmp_path_factory, speech_wav) -> list[Path]:
    d = tmp_path_factory.mktemp("books")
    return [speech_wav(d / f"{name}.wav", seconds, seed=seed) for name, seconds, seed in
            (("a", 8.0, 1), ("b", 6.0, 2), ("c", 6.0, 3))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, books) -> Path:
    """The undisturbed run, in this process; its random EnCodec weights are handed to every other run."""
    out = tmp_path_factory.mktemp("reference")
    with contextlib.redirect_stdout(io.StringIO()):
        tokenize(load_config(TokenizeConfig, None, SETTINGS), out, [str(b) for b in books])
    assert len(Manifest.load(out).shards) >= 3 and not Manifest.load(out).pending
    return out


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards" / "acoustic").glob("*.tar"))}


def start(out: Path, books: list[Path], reference: Path, **popen) -> subprocess.Popen:
    """`narrator tokenize` in a process of its own (printing into OUT.log), with the reference's codec weights."""
    out.mkdir(parents=True)
    name = random_weights_name(0)
    shutil.copy(reference / name, out / name)
    with open(out.with_suffix(".log"), "w") as log:
        return subprocess.Popen([sys.executable, "-m", "narrator.cli", "tokenize", "--out", str(out),
                                 *(x for s in SETTINGS for x in ("--set", s)), *map(str, books)],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                **popen)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s"
        time.sleep(0.005)


def test_an_actor_killed_mid_run_is_replaced_and_its_chunks_encoded_again(tmp_path, books, reference):
    out = tmp_path / "tokens"
    proc = start(out, books, reference)
    try:
        def actors() -> list[psutil.Process]:
            found = []
            for child in psutil.Process(proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "ChunkEncoderActor" in " ".join(child.cmdline()):
                        found.append(child)
            return found

        # Once the first shard is written, the next chunks are in the actors: kill every actor, so the one that
        # holds a batch dies with it (killing one at random sometimes hit an idle actor: nothing to retry).
        wait_for(lambda: (out / "shards" / "acoustic" / "000000.tar").exists() and actors(), proc, what="first shard")
        victims = actors()
        for victim in victims:
            victim.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=180) == 0, out.with_suffix(".log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    for victim in victims:
        assert not psutil.pid_exists(victim.pid) or victim.status() == psutil.STATUS_ZOMBIE
    printed = out.with_suffix(".log").read_text()
    assert "Traceback" not in printed
    assert "so the task will be retried" in printed  # the actor died holding a batch, and Ray ran it again
    assert shard_bytes(out) == shard_bytes(reference)
    assert Manifest.load(out).shards == Manifest.load(reference).shards


def _fault_hook() -> None:
    """In the child: a write past a file-size limit fails with EFBIG instead of killing the process."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_a_full_disk_while_writing_shards_is_one_line_keeps_finished_shards_and_a_rerun_completes(tmp_path, books,
                                                                                                  reference):
    out = tmp_path / "tokens"
    proc = start(out, books, reference, preexec_fn=_fault_hook)
    try:
        # Ray's processes are running by now; from the first finished shard on, the driver may write no file
        # larger than 4 KiB (as a full disk would refuse it).
        wait_for(lambda: (out / "shards" / "acoustic" / "000000.tar").exists(), proc, what="first shard")
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
        assert proc.wait(timeout=180) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    printed = out.with_suffix(".log").read_text()
    # Ray's own log sink in the driver hits the same limit and says so, and Ray may report a task it could not hand
    # to the actor pool it shut down when the run stopped; nothing else looks like an error.
    ray_log = re.compile(r"\[ray_log_sink\] Failed flush to file .*: File too large$|"
                         r"\(raylet\).* Task .*submit failed.*killed by `ray\.kill`\.$")
    others = [line for line in printed.splitlines()
              if "error" in line.lower() and "narrator tokenize: error:" not in line and not ray_log.search(line)]
    assert "Traceback" not in printed and others == [], printed
    [line] = re.findall(r"narrator tokenize: error: .*", printed)
    shard = re.match(r"narrator tokenize: error: (\S+): cannot write the shard \(File too large\); removed the "
                     r"partial file, finished shards are kept; free space and rerun the same command$", line)
    assert shard, line
    done = shard_bytes(out)
    assert "000000.tar" in done and Path(shard[1]).name not in done
    assert not list((out / "shards" / "acoustic").glob("*.tmp"))
    assert all(done[name] == data for name, data in shard_bytes(reference).items() if name in done)

    with contextlib.redirect_stdout(io.StringIO()):  # space freed: the same command again, in this process
        report = tokenize(load_config(TokenizeConfig, None, SETTINGS), out, [str(b) for b in books])
    assert report.shards_written == len(shard_bytes(reference)) - len(done) and not report.failed
    assert shard_bytes(out) == shard_bytes(reference)
    assert Manifest.load(out).shards == Manifest.load(reference).shards


def _file_limit() -> None:
    _fault_hook()
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def test_a_full_disk_while_saving_the_random_codec_weights_is_one_line(tmp_path, books):
    out = tmp_path / "tokens"
    # No file may grow past 1 MiB: the random EnCodec weights (~60 MB) are the first file that cannot be written.
    result = subprocess.run([sys.executable, "-m", "narrator.cli", "tokenize", "--out", str(out),
                             *(x for s in SETTINGS for x in ("--set", s)), str(books[0])],
                            capture_output=True, text=True, timeout=180, preexec_fn=_file_limit, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    weights = out / random_weights_name(0)
    assert [line for line in result.stderr.splitlines() if "error" in line.lower()] == [
        f"narrator tokenize: error: {weights}: cannot write (File too large); free space and rerun the same command"]
    assert not list(out.iterdir())  # no partial weights file
