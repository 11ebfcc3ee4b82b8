"""webdataset tar shards of token chunks, written so that a crash never leaves a half shard.

A stream's shards are `shards/<stream>/<index:06d>.tar`, numbered as in the shard plan (plan.py),
beside `shards/<stream>/stream.json` (its manifest entry: how the tokens are made).
One sample per chunk: `<book>/<chunk:06d>.<stream>.npy` (int16 ids, [codebooks, frames] or [frames], saved
with allow_pickle=False) and `<book>/<chunk:06d>.json` (book, chunk, start_s, end_s, frames, stream).
Each finished shard gets a line in `shards/<stream>/written.jsonl` (size, counts, sha256), so a
rerun need not hash the shards it finds.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import webdataset as wds


@dataclass
class ChunkRecord:
    """The .json half of a sample: where the chunk's codes sit in its book."""

    book: str
    chunk: int
    start_s: float
    end_s: float
    frames: int
    stream: str


WRITTEN_LOG = "written.jsonl"


def sample_key(book: str, chunk: int) -> str:
    return f"{book}/{chunk:06d}"


def shard_path(stream: str, index: int) -> str:
    """Shard `index` of the plan for one token stream, relative to the token folder."""
    return f"shards/{stream}/{index:06d}.tar"


def stream_info_path(stream: str) -> str:
    """The stream's StreamInfo (how its tokens are made), written before its first shard."""
    return f"shards/{stream}/stream.json"


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class WrittenShard:
    path: str  # relative to the token folder
    samples: int
    tokens: int
    bytes: int
    sha256: str


def log_written(out: Path, stream: str, shard: WrittenShard) -> None:
    """Append a finished shard's record to its stream's log (after the shard was renamed into place)."""
    log = Path(out) / "shards" / stream / WRITTEN_LOG
    with open(log, "a") as f:
        f.write(json.dumps(asdict(shard)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_written(out: Path, stream: str) -> dict[str, WrittenShard]:
    """Shard path -> its record; a line torn by a crash is ignored (that shard is hashed again)."""
    log = Path(out) / "shards" / stream / WRITTEN_LOG
    records: dict[str, WrittenShard] = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                record = WrittenShard(**json.loads(line))
            except (ValueError, TypeError):
                continue
            records[record.path] = record
    return records


class ShardWriter:
    """Writes one shard to `<path>.tmp` and renames it to `<path>` only when `close()` completes."""

    def __init__(self, path: str | Path, name: str | None = None):
        self.path = Path(path)
        self.name = name or self.path.name  # what the record calls it (its path relative to the token folder)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        # A fixed whole-second mtime: equal tokens give byte-identical shards, and no 1 KB PAX header per file.
        self._writer = wds.TarWriter(str(self._tmp), mtime=0)
        self.samples = 0
        self.tokens = 0

    def write(self, record: ChunkRecord, codes: np.ndarray) -> None:
        if codes.ndim not in (1, 2) or codes.shape[-1] != record.frames:
            raise ValueError(f"tokens of shape {codes.shape} do not match {record.frames} frames")
        self._writer.write({
            "__key__": sample_key(record.book, record.chunk),
            f"{record.stream}.npy": encode_npy(codes.astype(np.int16)),
            "json": json.dumps(asdict(record)).encode(),
        })
        self.samples += 1
        self.tokens += int(codes.size)

    def close(self) -> WrittenShard:
        self._writer.close()
        with open(self._tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self._tmp, self.path)
        return WrittenShard(self.name, self.samples, self.tokens, self.path.stat().st_size, file_sha256(self.path))

    def abort(self) -> None:
        self._writer.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
