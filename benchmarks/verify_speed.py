"""`narrator inspect --verify` throughput: every shard's sha256 recomputed, in 1 MiB blocks, by 1, 2 or the default threads.

    python benchmarks/verify_speed.py [--chunks 4000] [--repeat 3]

Writes synthetic shards (loader_speed.write_synthetic: 100 chunks of 30 s x 4 codebooks per shard,
~2 MB each) to a temporary folder and prints a markdown table row per thread count. The files sit in
the page cache after writing, so this measures hashing, not the disk.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from loader_speed import write_synthetic

from narrator.tokenizers.inspect import verify_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=4000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_synthetic(Path(tmp), args.chunks, 30.0, 4, chunks_per_shard=100)
        size = sum(f.bytes for s in manifest.shards for f in s.files.values())
        print("| machine | date | shards | MB | threads | seconds | MB/s |")
        print("|---|---|---|---|---|---|---|")
        for threads in (1, 2, None):
            seconds = min(verify_tokens(tmp, threads).seconds for _ in range(args.repeat))
            print(f"| cpu-2c | {time.strftime('%Y-%m-%d')} | {len(manifest.shards)} | {size / 1e6:.0f} | "
                  f"{threads or 'default'} | {seconds:.3f} | {size / seconds / 1e6:.0f} |")


if __name__ == "__main__":
    main()
