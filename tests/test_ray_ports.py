"""What tokenize's private local Ray listens on, seen from outside: no dashboard or Ray Client port, and the
ports that answer without the run's token either refuse (401, UNAUTHENTICATED) or serve read-only metrics."""

import json
import os
import subprocess
import sys

# Run as a user's shell would: no RAY_AUTH_MODE (the tests' conftest disables auth for their own Ray).
PROBE = r'''
import json, os, urllib.error, urllib.request
import grpc, psutil, ray
from narrator.tokenizers.config import RayConfig
from narrator.tokenizers.ray_cluster import ray_session

def pid():
    return os.getpid()


with ray_session(RayConfig()):
    ray.get(ray.remote(pid).remote())  # a worker is up too
    me = psutil.Process()
    procs = {p.pid: " ".join(p.cmdline()) for p in me.children(recursive=True)} | {me.pid: "driver"}
    found = []
    for c in psutil.net_connections("inet"):
        if c.status != psutil.CONN_LISTEN or c.pid not in procs:
            continue
        host = "127.0.0.1" if c.laddr.ip in ("0.0.0.0", "::") else c.laddr.ip
        try:  # a job-submission path: an HTTP server either refuses it or shows what it serves
            with urllib.request.urlopen(f"http://{host}:{c.laddr.port}/api/jobs/", timeout=3) as r:
                http = f"{r.status} {r.read(6).decode(errors='replace')}"
        except urllib.error.HTTPError as e:
            http = str(e.code)
        except Exception as e:
            http = type(e).__name__
        found.append({"ip": c.laddr.ip, "port": c.laddr.port, "process": procs[c.pid][:200], "http": http})
    with grpc.insecure_channel(ray.get_runtime_context().gcs_address) as channel:
        call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId", request_serializer=lambda x: x,
                                   response_deserializer=lambda x: x)
        try:
            call(b"", timeout=5)
            gcs = "OK"
        except grpc.RpcError as e:
            gcs = e.code().name
    print(json.dumps({"listening": found, "gcs": gcs, "processes": list(procs.values())}))
'''


def test_the_local_ray_has_no_dashboard_or_client_port_and_refuses_callers_without_the_token():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=180,
                            check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    listening = report["listening"]
    assert listening and report["gcs"] == "UNAUTHENTICATED"  # joining the cluster needs the run's token
    ports = {s["port"] for s in listening}
    assert 8265 not in ports and 10001 not in ports  # the dashboard's and Ray Client's default ports
    assert not [p for p in report["processes"] if "ray.util.client.server" in p or "--disable-frontend" not in p
                and "dashboard/dashboard.py" in p]  # no Ray Client server; the dashboard head serves no pages
    for socket in listening:
        # HTTP servers: the dashboard agent refuses without the token; Ray's Prometheus exporters serve metrics
        # text ("# HELP") and nothing else. Every other port speaks gRPC, not HTTP.
        refused_or_not_http = socket["http"] in ("401", "403", "BadStatusLine", "RemoteDisconnected",
                                                 "ConnectionResetError")
        metrics = socket["http"] == "200 # HELP" and any(p in socket["process"] for p in ("monitor.py", "dashboard.py"))
        assert refused_or_not_http or metrics, socket
    metrics = [s for s in listening if s["http"] == "200 # HELP"]
    assert len(metrics) <= 2  # the autoscaler's and the dashboard head's; the per-node exporter is switched off
