"""`narrator tokenize` on a real 3-node Ray cluster on this host (a head with no CPUs, 2 workers): the
actors run on both workers and the shards equal a local run's; a worker node killed mid-run leaves
the run to finish on the other, with the same shards; with that Ray running, the default config still
starts a private Ray; `ray job submit` runs tokenize on it; bad addresses are one line.

The cluster's nodes are `ray start --block` processes with their own RAY_TMPDIR and ports, so no
other Ray on the machine sees them (a plain ray.init() would join a Ray recorded in /tmp/ray), and
they are stopped by their process ids, never with `ray stop`.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from narrator.errors import NarratorError
from narrator.config import load_config
from narrator.tokenizers.config import RayConfig, TokenizeConfig
from narrator.tokenizers.encodec import random_weights_name
from narrator.tokenfolder.manifest import Manifest
from narrator.tokenizers.pipeline import tokenize
from narrator.tokenizers.ray_cluster import check_address, running_address

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
OBJECT_STORE = "100000000"  # bytes per node: without a limit 3 nodes claim most of the machine's memory
CONFIG = REPO / "configs/tokenize/encodec_3kbps.yaml"
SETTINGS = ["encodec.weights.mode=random", "chunking.chunk_seconds=1.0", "ray.batch_size=1", "ray.concurrency=2"]
TOKENIZE = ["--config", str(CONFIG), *(arg for setting in SETTINGS for arg in ("--set", setting))]
ON_WORKERS = ["--set", "ray.resources={worker_slot: 1}"]  # one actor per worker node: each has one slot


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayNodes:
    """`ray start --block` processes sharing one private RAY_TMPDIR."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
        self.env = {**os.environ, "RAY_TMPDIR": str(self.tmp), "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1",
                    "RAY_USAGE_STATS_ENABLED": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
                    # Both actors up before the first chunk is handed out, so each worker node gets some.
                    "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "120",
                    # A node killed is declared dead after 3 failed health checks 1 s apart, not Ray's 5 checks
                    # 3 s apart (~20 s): only then are its actors restarted and their batches run again.
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
        self.procs: list[subprocess.Popen] = []
        self.gcs_port, self.dashboard_port = free_port(), free_port()

    def start(self, *args: str) -> None:
        log = self.tmp / f"node{len(self.procs)}.log"
        common = ["--object-store-memory", OBJECT_STORE, "--dashboard-agent-listen-port", str(free_port()),
                  "--disable-usage-stats", "--block"]
        with open(log, "w") as f:  # the child keeps its own descriptor
            proc = subprocess.Popen([RAY, "start", *args, *common], env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start {' '.join(args)} failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def start_worker(self) -> None:
        """A worker node of 2 CPUs with one `worker_slot` (ON_WORKERS: one actor per worker)."""
        self.start("--address", f"127.0.0.1:{self.gcs_port}", "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
                   "--resources", json.dumps({"worker_slot": 1}))

    def workers(self) -> list[int]:
        """The indices of the worker nodes still running."""
        return [i for i, proc in enumerate(self.procs[1:], 1) if proc.poll() is None]

    def processes(self, index: int) -> list[psutil.Process]:
        """Node `index`'s processes: `ray start`, its raylet and agents, and the workers the raylet started
        (each of those in a process group of its own, so killing the node's group would leave them)."""
        root = psutil.Process(self.procs[index].pid)
        return [root, *root.children(recursive=True)]

    def actors(self, index: int) -> list[psutil.Process]:
        found = []
        for proc in self.processes(index):
            with contextlib.suppress(psutil.Error):
                if "ChunkEncoderActor" in " ".join(proc.cmdline()):
                    found.append(proc)
        return found

    def kill(self, index: int) -> tuple[dict[str, str], list[psutil.Process]]:
        """SIGKILL node `index` whole, as a machine lost would go: none of its processes tells the head.
        Returns its raylet's arguments (node_id, node_ip_address, ...) and the processes killed."""
        raylet = next(p for p in self.processes(index) if p.name() == "raylet")
        args = dict(a[2:].split("=", 1) for a in raylet.cmdline() if a.startswith("--") and "=" in a)
        raylet.suspend()  # it starts no worker while the list below is taken
        victims = self.processes(index)
        for proc in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        self.procs[index].wait(timeout=30)
        return args, victims

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            with _no_such_process():
                os.killpg(proc.pid, signal.SIGKILL)  # the group this test started: Ray's processes left behind
        shutil.rmtree(self.tmp, ignore_errors=True)


class _no_such_process:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is ProcessLookupError


@pytest.fixture(scope="module")
def cluster():
    """A head with 0 CPUs (and the dashboard on loopback, for `ray job submit`) plus 2 workers of 2 CPUs."""
    nodes = RayNodes()
    try:
        nodes.start("--head", "--node-ip-address", "127.0.0.1", "--port", str(nodes.gcs_port), "--num-cpus", "0",
                    "--ray-client-server-port", str(free_port()), "--include-dashboard", "true",
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(nodes.dashboard_port))
        for _ in range(2):  # one after the other: started together, one may die
            nodes.start_worker()
    except RuntimeError as e:
        nodes.stop()
        pytest.skip(f"a Ray cluster cannot start here: {str(e).splitlines()[0]}")
    yield nodes
    nodes.stop()


@pytest.fixture(scope="module")
def books(tmp_path_factory, speech_wav) -> list[str]:
    d = tmp_path_factory.mktemp("books")
    return [str(speech_wav(d / "a.wav", 3.0, seed=1)), str(speech_wav(d / "b.flac", 2.0, seed=2, sample_rate=16_000))]


@pytest.fixture(scope="module")
def local_run(cluster, books, tmp_path_factory):
    """The default config with the cluster's Ray running on this machine (found as a plain ray.init()
    would find it): a private local Ray, with token authentication, makes the reference tokens."""
    out = tmp_path_factory.mktemp("local") / "tokens"
    env = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"}
    result = run_cli(["tokenize", *TOKENIZE, "--out", str(out), *books], env)
    return out, result


def run_cli(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "narrator.cli", *args], check=False, env=env, capture_output=True, text=True,
                          timeout=timeout)


def shards(out: Path) -> list[tuple[str, str]]:
    return [(f.path, f.sha256) for s in Manifest.load(out).shards for f in s.files.values()]


def with_weights_of(reference: Path, out: Path) -> Path:
    """A new token folder holding the reference's random weights, as a run on another machine would get them."""
    out.mkdir(parents=True)
    shutil.copy(reference / random_weights_name(0), out)
    return out


def test_default_config_starts_a_private_ray_beside_a_running_one(cluster, local_run):
    out, result = local_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert running_address(cluster.env)[0].endswith(f":{cluster.gcs_port}")  # the Ray a plain ray.init() would join
    assert "ray: a private local Ray (1 node, 2 CPUs, 0 GPUs)" in result.stdout
    assert re.search(r"ray: 5 chunks encoded on 1 node \(", result.stdout)
    assert [b.id for b in Manifest.load(out).iter_books(out)] == ["a", "b"]


def test_tokenize_on_a_three_node_cluster_runs_actors_on_both_workers(cluster, local_run, tmp_path):
    reference, _ = local_run
    out = with_weights_of(reference, tmp_path / "tokens")
    result = run_cli(["tokenize", *TOKENIZE, *ON_WORKERS, "--set", f"ray.address=127.0.0.1:{cluster.gcs_port}",
                      "--out", str(out), *books_of(reference)], cluster.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ray: the Ray cluster at 127.0.0.1:{cluster.gcs_port} (3 nodes, 4 CPUs, 0 GPUs)" in result.stdout
    per_node = re.search(r"ray: 5 chunks encoded on 2 nodes \((\w+): (\d+), (\w+): (\d+)\)", result.stdout)
    assert per_node, result.stdout  # the head has no CPU: two nodes are the two workers
    assert int(per_node[2]) + int(per_node[4]) == 5
    assert shards(out) == shards(reference)  # byte-identical shards
    assert plan_parts(out) == plan_parts(reference)


def test_ray_job_submit_runs_tokenize_on_the_running_cluster(cluster, local_run, tmp_path):
    reference, _ = local_run
    out = with_weights_of(reference, tmp_path / "tokens")
    entrypoint = [sys.executable, "-m", "narrator.cli", "tokenize", *TOKENIZE, *ON_WORKERS, "--set", "ray.address=auto",
                  "--out", str(out), *books_of(reference)]
    result = subprocess.run([RAY, "job", "submit", "--address", f"http://127.0.0.1:{cluster.dashboard_port}", "--",
                             *entrypoint], check=False, env=cluster.env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "succeeded" in result.stdout, result.stdout + result.stderr
    assert f"ray: the Ray running on this machine at {running_address(cluster.env)[0]} (3 nodes" in result.stdout
    assert "ray: 5 chunks encoded on 2 nodes" in result.stdout
    assert shards(out) == shards(reference)


def test_an_unreachable_address_is_one_line_from_the_command(cluster, local_run, tmp_path):
    reference, _ = local_run
    closed = free_port()
    result = run_cli(["tokenize", *TOKENIZE, "--set", f"ray.address=127.0.0.1:{closed}",
                      "--out", str(with_weights_of(reference, tmp_path / "tokens")), *books_of(reference)], cluster.env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if "error" in line.lower()] == [(
        f"narrator tokenize: error: ray.address=127.0.0.1:{closed} cannot be reached (Connection refused, waited up "
        "to 15 s); check the address and that Ray runs there")]


def test_a_worker_node_killed_mid_run_leaves_the_run_to_the_other_with_the_same_shards(cluster, ray_local, speech_wav,
                                                                                      tmp_path):
    # 3 books of 4 chunks of 1 s, a book to a shard. The actors ask for CPUs only, not ON_WORKERS' one slot per
    # node, so the killed node's actor can be restarted beside the other one; Ray's scheduler spreads the two at first.
    books = [str(speech_wav(tmp_path / f"{name}.wav", 4.0, seed=seed)) for name, seed in (("x", 3), ("y", 4), ("z", 5))]
    reference = tmp_path / "reference"
    with contextlib.redirect_stdout(io.StringIO()):  # in this process's local Ray
        tokenize(load_config(TokenizeConfig, CONFIG, [*SETTINGS, "shards.target_mb=0.01"]), reference, books)
    assert len(Manifest.load(reference).shards) >= 3
    out = with_weights_of(reference, tmp_path / "tokens")
    assert len(cluster.workers()) == 2, "the cluster lost a worker before this test"
    survivor, doomed = cluster.workers()
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:
        run = subprocess.Popen([sys.executable, "-m", "narrator.cli", "tokenize", *TOKENIZE, "--set", "shards.target_mb=0.01",
                                "--set", f"ray.address=127.0.0.1:{cluster.gcs_port}", "--out", str(out), *books],
                               env={**cluster.env, "PYTHONUNBUFFERED": "1"}, stdout=stdout, stderr=stderr)
    killed = None
    try:
        # Once the first shard is written, both actors are encoding the next chunks: the node dies holding one.
        deadline = time.monotonic() + 120
        while not ((out / "shards/acoustic/000000.tar").exists() and cluster.actors(survivor) and cluster.actors(doomed)):
            assert run.poll() is None, f"the run ended before the node was killed:\n{(tmp_path / 'stderr').read_text()}"
            assert time.monotonic() < deadline, "no first shard with an actor on each worker within 120 s"
            time.sleep(0.01)
        raylet, victims = cluster.kill(doomed)
        killed = time.monotonic()
        assert run.wait(timeout=120) == 0, (tmp_path / "stdout").read_text() + (tmp_path / "stderr").read_text()
        print(f"the run ended {time.monotonic() - killed:.1f} s after the node was killed")
    finally:
        if run.poll() is None:
            run.kill()
        if killed is not None:
            cluster.start_worker()  # for the tests after this one: two workers again
    assert not [p.pid for p in victims if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    printed = (tmp_path / "stdout").read_text()
    assert "Traceback" not in printed + (tmp_path / "stderr").read_text()
    node = raylet["node_id"][:8]
    assert [line for line in printed.splitlines() if "lost node" in line] == [
        f"ray: lost node {node} ({raylet['node_ip_address']}) mid-run; its chunks were run again on the others"]
    summary = re.search(r"ray: 12 chunks encoded on 2 nodes \((\w+): (\d+), (\w+): (\d+)\)", printed)
    assert summary, printed
    assert node in (summary[1], summary[3])  # the node killed had returned chunks before it died
    assert shards(out) == shards(reference)  # byte-identical shards
    assert plan_parts(out) == plan_parts(reference)


def test_auto_without_a_running_ray_says_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(NarratorError, match=re.escape(f"ray.address=auto: no Ray is running on this machine ({tmp_path}/ray/"
                                                      "ray_current_cluster does not exist); start one with `ray start")):
        check_address(RayConfig(address="auto"))
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")  # left by a Ray that is gone
    with pytest.raises(NarratorError, match=r"ray.address=auto: the Ray named by .*ray_current_cluster \(127.0.0.1:\d+\) "
                                            r"cannot be reached \(Connection refused"):
        check_address(RayConfig(address="auto"))


def test_a_port_where_no_ray_answers_is_refused_in_bounded_time():
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler) as web:
        threading.Thread(target=web.serve_forever, daemon=True).start()
        start = time.monotonic()
        with pytest.raises(NarratorError, match="accepts connections but no Ray head answers there"):
            check_address(RayConfig(address=f"127.0.0.1:{web.server_address[1]}", connect_timeout_s=3))
        assert time.monotonic() - start < 10
        web.shutdown()


def test_a_ray_client_address_is_refused_by_the_config():
    with pytest.raises(NarratorError, match="'ray.address': ray://head:10001 is a Ray Client address, and the encoder "
                                            "actor pool \\(Ray Data\\) does not run through Ray Client"):
        load_config(TokenizeConfig, None, ["ray.address=ray://head:10001"])
    with pytest.raises(NarratorError, match="'ray.address': 'http://head:8265' is not local, auto or a head's host:port"):
        load_config(TokenizeConfig, None, ["ray.address=http://head:8265"])
    assert load_config(TokenizeConfig, None, ["ray.address=null"]).ray.address == "local"  # as older configs say


def books_of(tokens: Path) -> list[str]:
    return [b.source for b in Manifest.load(tokens).iter_books(tokens)]


def plan_parts(tokens: Path) -> dict[str, str]:
    """The shard plan's parts: name -> text."""
    return {p.name: p.read_text() for p in sorted((tokens / "plan").iterdir())}


def test_a_narrator_folder_in_the_working_directory_that_would_shadow_the_package_in_ray_workers_is_one_line(
        tmp_path, monkeypatch):
    from narrator.tokenizers.ray_cluster import ray_session

    (tmp_path / "narrator").mkdir()  # a clone's narrator/ (without tokenizers/), beside a non-editable install
    (tmp_path / "narrator" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NarratorError, match=rf"^{re.escape(str(tmp_path / 'narrator'))} would shadow the installed narrator \(.*\) in "
                                            r"Ray's workers, .*: run from another folder, or install this checkout "
                                            r"editable \(make install\)$"):
        with ray_session(RayConfig()):
            pass
