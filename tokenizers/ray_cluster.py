"""Which Ray `narrator tokenize` runs on, by `ray.address`: a private local instance (`local`, the
default), the instance `ray start` runs on this machine (`auto`), or a cluster's head (`host:port`).
One line says which, with its nodes, CPUs and GPUs; after the run, one line per node that died meanwhile
(NodeWatch): Ray Data restarts that node's actors elsewhere and runs their batches again, so the run completes.

A plain ray.init() joins whatever instance /tmp/ray/ray_current_cluster names and then refuses the
CPU count it is given (a traceback), and an address nobody answers makes ray.init retry for
minutes; so the address is resolved and probed here, with a bounded wait, before Ray connects.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import ray

from narrator.errors import NarratorError
from narrator.tokenizers.config import RAY_ADDRESS, RayConfig


# Ray's switch for the per-node Prometheus exporter (its dashboard agent's metrics port).
METRICS = "RAY_enable_metrics_collection"


@dataclass
class RaySession:
    """The Ray this run uses, as the user is told."""

    where: str  # "a private local Ray", "the Ray running on this machine at ...", ...
    nodes: int
    cpus: float
    gpus: float

    def describe(self) -> str:
        return (f"ray: {self.where} ({self.nodes} {'node' if self.nodes == 1 else 'nodes'}, "
                f"{self.cpus:g} CPUs, {self.gpus:g} GPUs)")


@contextlib.contextmanager
def ray_session(cfg: RayConfig) -> Iterator[RaySession]:
    """Connect to (or start) the Ray `cfg.address` names, say which in one line, and let go of it after.
    A Ray this process is already connected to (a test's, a notebook's) is used as it is."""
    _check_worker_path()
    if ray.is_initialized():
        session = _describe(f"this process's Ray at {ray.get_runtime_context().gcs_address}")
        print(session.describe())
        yield session
        return
    restore = _connect(cfg)
    try:
        session = _describe(restore.where)
        print(session.describe())
        yield session
    finally:
        ray.shutdown()
        restore.environment()


def _check_worker_path() -> None:
    """Ray's workers put the driver's working directory and script folder first on their path; a `narrator/` folder
    there that is not the package this process imported (a clone's, beside a `pip install .`) would be imported by
    every actor instead, and fail there with a traceback. Say so before Ray starts."""
    import narrator

    installed = Path(narrator.__file__).resolve().parent
    folders = [Path.cwd()] + ([Path(sys.argv[0]).resolve().parent] if sys.argv and sys.argv[0] else [])
    for shadow in (folder / "narrator" for folder in folders):
        if shadow.is_dir() and shadow.resolve() != installed:
            raise NarratorError(f"{shadow} would shadow the installed narrator ({installed}) in Ray's workers, which put "
                                f"the driver's folder first on their path: run from another folder, or install this "
                                f"checkout editable (make install)")


@dataclass
class _Connected:
    where: str
    saved_env: dict[str, str | None]

    def environment(self) -> None:
        """Put back the environment variables this run changed."""
        for key, value in self.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self.saved_env:
            _reload_ray_config()


def _reload_ray_config() -> None:
    """Make this process's Ray read RAY_AUTH_MODE again: it reads its settings once, at import (Ray's
    own token setup reloads them the same way)."""
    from ray._raylet import Config

    Config.initialize("")


def _connect(cfg: RayConfig) -> _Connected:
    if cfg.address in ("local", None):
        return _start_local()
    address, where = check_address(cfg)
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as e:  # noqa: BLE001 -- version mismatch, authentication, a head gone: Ray's own words, one line
        raise NarratorError(f"ray.address={cfg.address}: could not connect to {address} "
                            f"({type(e).__name__}: {_first_line(e)})") from None
    return _Connected(where, {})


def check_address(cfg: RayConfig) -> tuple[str, str]:
    """The address a non-local `cfg.address` stands for, once a Ray head answers there, and how to name it;
    a one-line NarratorError within `cfg.connect_timeout_s` otherwise."""
    if cfg.address == "auto":
        found, source = running_address()
        if found is None:
            raise NarratorError(f"ray.address=auto: no Ray is running on this machine ({source} does not exist); "
                                "start one with `ray start --head`, give its host:port, or use ray.address=local")
        _probe(found, cfg.connect_timeout_s, f"ray.address=auto: the Ray named by {source} ({found})")
        return found, f"the Ray running on this machine at {found}"
    _probe(cfg.address, cfg.connect_timeout_s, f"ray.address={cfg.address}")
    return cfg.address, f"the Ray cluster at {cfg.address}"


def _start_local() -> _Connected:
    """A new Ray for this run only, even when another one runs on this machine: no dashboard, no metrics
    export, and unless RAY_AUTH_MODE says otherwise, token authentication with a secret made for this run
    (Ray binds its ports on every interface, so the token is what keeps others out). No file is left behind."""
    saved = {key: os.environ.get(key) for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", METRICS)}
    if saved[METRICS] is None:  # one server less listening on every interface, unauthenticated
        os.environ[METRICS] = "0"
    if saved["RAY_AUTH_MODE"] is None:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # inherited by Ray's processes, never written out
    _reload_ray_config()
    try:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    except BaseException:
        _Connected("", saved).environment()
        raise
    return _Connected("a private local Ray", saved)


def running_address(environ: Mapping[str, str] = os.environ) -> tuple[str | None, str]:
    """The address of the Ray `ray start` runs on this machine (or RAY_ADDRESS, as `ray job submit` sets
    it for its entrypoint), and where it was found. Ray's own "auto" would also take any other Ray
    process it finds on the machine, with a warning; this takes only the recorded one."""
    env = environ.get("RAY_ADDRESS", "").strip()
    if env and env not in ("auto", "local"):
        return env, "RAY_ADDRESS"
    # Where `ray start` records its address: ray._common.utils.get_ray_address_file (not public API).
    tmp = environ.get("RAY_TMPDIR") or (environ.get("TMPDIR") if sys.platform.startswith("linux") else None) or "/tmp"
    path = Path(tmp) / "ray" / "ray_current_cluster"
    try:
        recorded = path.read_text().strip()
    except OSError:
        return None, str(path)
    return recorded or None, str(path)


def _probe(address: str, timeout_s: float, name: str) -> None:
    """Fail in one line, within `timeout_s`, unless a Ray head's GCS answers at `address` (host:port).
    ray.init itself would retry for minutes on an address where nothing listens, or where something
    else does (a proxy, another service)."""
    match = RAY_ADDRESS.match(address)
    if match is None:
        raise NarratorError(f"{name} is not a head's host:port")
    host, port = match["host"].strip("[]"), int(match["port"])
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        reason = "no answer" if isinstance(e, (TimeoutError, socket.timeout)) else (e.strerror or type(e).__name__)
        raise NarratorError(f"{name} cannot be reached ({reason}, waited up to {timeout_s:g} s); "
                            "check the address and that Ray runs there") from None
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return  # a plain-text RPC cannot tell a TLS Ray from something else
    import grpc

    # Any answer but "no such method" shows Ray is there: an empty request gets OK, or an
    # authentication refusal that ray.init then reports in full.
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId", request_serializer=lambda x: x,
                                   response_deserializer=lambda x: x)
        try:
            call(b"", timeout=timeout_s)
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise NarratorError(f"{name} accepts connections but no Ray head answers there ({e.code().name}, "
                                    f"waited up to {timeout_s:g} s); give the GCS port of a head (6379 by default)") from None


def _describe(where: str) -> RaySession:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    resources = ray.cluster_resources()
    return RaySession(where, len(nodes), resources.get("CPU", 0.0), resources.get("GPU", 0.0))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no message"


def node_summary(chunks_per_node: dict[str, int]) -> str:
    """`12 chunks encoded on 2 nodes (1a2b3c4d: 6, 5e6f7a8b: 6)`: where the actors ran, by node id."""
    total = sum(chunks_per_node.values())
    counts = ", ".join(f"{node[:8]}: {n}" for node, n in sorted(chunks_per_node.items()))
    return f"{total} chunks encoded on {len(chunks_per_node)} {'node' if len(chunks_per_node) == 1 else 'nodes'} ({counts})"


@dataclass(frozen=True)
class RayNode:
    id: str  # Ray's node id, hex
    address: str  # its IP (NodeManagerAddress)


class NodeWatch:
    """The Ray nodes alive when encoding starts; `lost_lines()` names those that died since. A worker node that
    dies takes its actors and the batches they hold with it; Ray Data restarts the actors on the other nodes (once
    Ray's health checks have declared the node dead) and runs those batches again there."""

    def __init__(self) -> None:
        self.started = alive_nodes()

    def lost(self) -> list[RayNode]:
        """Nodes alive at the start that Ray now reports dead (or no longer knows)."""
        now = alive_nodes()
        return [node for node_id, node in self.started.items() if node_id not in now]

    def lost_lines(self) -> list[str]:
        """`ray: lost node 1a2b3c4d (127.0.0.1) mid-run; its chunks were run again on the others`, one per lost node."""
        return [f"ray: lost node {node.id[:8]} ({node.address}) mid-run; its chunks were run again on the others"
                for node in self.lost()]


def alive_nodes() -> dict[str, RayNode]:
    """The connected Ray's live nodes, by node id."""
    return {n["NodeID"]: RayNode(n["NodeID"], n.get("NodeManagerAddress", "?")) for n in ray.nodes() if n.get("Alive")}
