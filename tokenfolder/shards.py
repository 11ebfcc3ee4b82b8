"""webdataset tar shards of token chunks, written so that a crash never leaves a half shard.

A stream's shards are `shards/<stream>/<index:06d>.tar`, numbered as in the shard plan (plan.py),
beside `shards/<stream>/stream.json` (its manifest entry: how the tokens are made).
One sample per chunk: `<book>/<chunk:06d>.<stream>.npy` (int16 ids, [codebooks, frames] or [frames], saved
with allow_pickle=False) and `<book>/<chunk:06d>.json` (book, chunk, start_s, end_s, frames, stream).
Each finished shard gets a line in `shards/<stream>/written.jsonl` (size, counts, sha256), so a
rerun need not hash the shards it finds. Object stores cannot append: there each record is its own
small object, `shards/<stream>/written/<index:06d>.tar.json`, and readers take both forms.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import webdataset as wds

from narrator.errors import NarratorError
from narrator.tokenfolder import storage


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
    return storage.sha256(path)


@dataclass
class WrittenShard:
    path: str  # relative to the token folder
    samples: int
    tokens: int
    bytes: int
    sha256: str


def log_written(out: storage.Location, stream: str, shard: WrittenShard) -> None:
    """Append a finished shard's record to its stream's log (after the shard was renamed into place; should the
    record be lost, a rerun hashes the shard again)."""
    storage.append_lines(storage.join(out, "shards", stream), WRITTEN_LOG, Path(shard.path).name, [json.dumps(asdict(shard))])


def read_written(out: storage.Location, stream: str) -> dict[str, WrittenShard]:
    """Shard path -> its record; a line torn by a crash is ignored (that shard is hashed again)."""
    found: dict[str, WrittenShard] = {}
    for line in storage.read_lines(storage.join(out, "shards", stream), WRITTEN_LOG):
        try:
            record = WrittenShard(**json.loads(line))
        except (ValueError, TypeError):
            continue
        found[record.path] = record
    return found


class ShardWriter:
    """Writes one shard to `<path>.tmp` and renames it to `<path>` only when `close()` completes.

    For a URL the tar is written to a local temporary file and uploaded by `close()` (storage.upload:
    a temp key moved onto the final one), so no reader ever lists a partial shard.
    """

    def __init__(self, path: storage.Location, name: str | None = None):
        self.path = storage.root(path)
        self.name = name or storage.name(self.path)  # what the record calls it (its path relative to the token folder)
        if storage.is_url(self.path):
            fd, tmp = tempfile.mkstemp(prefix="narrator-shard-", suffix=".tar")
            os.close(fd)
            self._tmp = Path(tmp)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = self.path.with_name(self.path.name + ".tmp")
        # A fixed whole-second mtime: equal tokens give byte-identical shards, and no 1 KB PAX header per file.
        self._writer = wds.TarWriter(str(self._tmp), mtime=0)
        self.samples = 0
        self.tokens = 0

    def write(self, record: ChunkRecord, codes: np.ndarray) -> None:
        if codes.ndim not in (1, 2) or codes.shape[-1] != record.frames:
            raise ValueError(f"tokens of shape {codes.shape} do not match {record.frames} frames")
        with self._disk_full():
            self._writer.write({
                "__key__": sample_key(record.book, record.chunk),
                f"{record.stream}.npy": encode_npy(codes.astype(np.int16)),
                "json": json.dumps(asdict(record)).encode(),
            })
        self.samples += 1
        self.tokens += int(codes.size)

    def close(self) -> WrittenShard:
        with self._disk_full():
            self._writer.close()
            with open(self._tmp, "rb") as f:
                os.fsync(f.fileno())
        done = WrittenShard(self.name, self.samples, self.tokens, self._tmp.stat().st_size, file_sha256(self._tmp))
        storage.upload(self._tmp, self.path)
        return done

    def abort(self) -> None:
        with contextlib.suppress(OSError):  # on a full disk the tar's closing blocks fail too: the file goes anyway
            self._writer.close()
        self._tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _disk_full(self) -> Iterator[None]:
        """A full disk or a file-size limit: the partial file is removed and the fault is one NarratorError."""
        try:
            yield
        except OSError as e:
            reason = storage.write_fault(e, self._tmp)
            if reason is None:
                raise
            self.abort()
            raise NarratorError(f"{self.path}: cannot write the shard ({reason}); removed the partial file, finished "
                                "shards are kept; free space and rerun the same command") from None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
