"""`narrator inspect`: what a token folder holds, from its manifest, plus a check that the shards are intact.

The split shown is the folder's own, or the one a training run re-derives with the given `data:` split keys.
`--verify` reads every file the manifest lists (shards, book indexes) and compares it with the checksums recorded
at tokenize time.
"""

from __future__ import annotations

import contextlib
import json
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from narrator.config import from_dict, to_dict
from narrator.errors import NarratorError
from narrator.tokenfolder.split import SplitConfig, held_out_slots
from narrator.tokenfolder import storage
from narrator.tokenfolder.manifest import MANIFEST_NAME, SLOT_SECONDS, Manifest, StreamInfo, token_folder
from narrator.tokenfolder.shards import decode_npy


def inspect_tokens(path: str | Path, as_json: bool = False, split_overrides: dict[str, float] | None = None) -> str:
    """Summary of a token folder (or its manifest.json), local or at a URL, as text, or as JSON with `as_json`."""
    manifest = Manifest.load(path)
    root = token_folder(path)
    summary = _summary(root, manifest, manifest.split.with_overrides(split_overrides or {}), _sizes(root, manifest),
                       None if as_json else SHOWN)
    return json.dumps(summary, indent=1) if as_json else _text(summary)


SHOWN = 20  # books and shards listed one per line in the text summary; the JSON has all
STATS_SHARDS = 8  # token statistics are read from this many shards of each stream (all, when there are fewer)


def _sizes(root: Path | storage.URL, m: Manifest) -> dict[str, int]:
    """Shard file (relative to the folder) -> its size, for those present: one listing per shard folder."""
    folders = {str(Path(f.path).parent) for s in m.shards for f in s.files.values()}
    return {f"{folder}/{name}": size for folder in folders for name, size in storage.list_sizes(root / folder).items()}


def _stream_stats(root: Path | storage.URL, m: Manifest, info: StreamInfo, sizes: dict[str, int]) -> dict[str, Any]:
    """Vocabulary usage and entropy per codebook, from the ids in (up to STATS_SHARDS of) the stream's shards."""
    counts = np.zeros((info.n_codebooks, info.codebook_size), np.int64)
    files = [s.files[info.name] for s in m.shards if info.name in s.files]
    files = [f for f in files if sizes.get(f.path) == f.bytes][:STATS_SHARDS]
    for file in files:  # damaged shards are listed under PROBLEMS, not read
        with storage.open_read(root / file.path) as raw, tarfile.open(fileobj=raw) as tar:
            for member in tar.getmembers():
                if member.name.endswith(f".{info.name}.npy"):
                    ids = decode_npy(tar.extractfile(member).read()).reshape(info.n_codebooks, -1)
                    for row, codebook in zip(ids, counts):
                        codebook += np.bincount(row, minlength=info.codebook_size)[: info.codebook_size]
    p = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    entropy = -(p * np.log2(np.where(p > 0, p, 1))).sum(axis=1)
    return {"shards_read": len(files), "usage": [float((c > 0).mean()) for c in counts],
            "entropy_bits": [float(e) for e in entropy], "max_entropy_bits": float(np.log2(info.codebook_size))}


def _books(root: Path | storage.URL, m: Manifest, data: SplitConfig, listed: int | None) -> dict[str, Any]:
    """The split's figures, the warnings and the first `listed` books (None: all), from every shard's book index."""
    rederive = data != m.split
    books = list(m.iter_books(root)) if rederive else m.iter_books(root)
    held = held_out_slots(books, data) if rederive else None
    long_books = short_held = 0
    val_seconds = 0.0
    per_book, warnings = [], []
    for b in books:
        start, end = held[b.id] if held is not None else b.held_out
        long_books += b.duration_s >= data.long_book_seconds
        short_held += b.duration_s < data.long_book_seconds and end > start
        val_seconds += (end - start) * SLOT_SECONDS
        if listed is None or len(per_book) < listed:
            per_book.append({"id": b.id, "source": b.source, "duration_s": b.duration_s, "chunks": b.chunks,
                             "val_s": [start * SLOT_SECONDS, end * SLOT_SECONDS]})
        if b.warning:
            warnings.append({"source": b.source, "warning": b.warning})
    return {"long_books": long_books, "short_held_out": short_held, "val_seconds": val_seconds,
            "per_book": per_book, "warnings": warnings}


def _summary(root: Path | storage.URL, m: Manifest, data: SplitConfig, sizes: dict[str, int],
             listed: int | None) -> dict[str, Any]:
    problems = []
    for shard in m.shards:
        for file in shard.files.values():
            if file.path not in sizes:
                problems.append({"path": file.path, "problem": "missing"})
            elif sizes[file.path] != file.bytes:
                problems.append({"path": file.path, "problem": f"size {sizes[file.path]} bytes, manifest says "
                                 f"{file.bytes} (truncated or rewritten)"})
    hours = m.seconds / 3600
    books = _books(root, m, data, listed)
    return {
        "folder": str(root / MANIFEST_NAME),
        "format": m.format,
        "streams": [{"name": t.name, "kind": t.kind, "bandwidth": t.bandwidth, "n_codebooks": t.n_codebooks,
                     "codebook_size": t.codebook_size, "frame_rate": t.frame_rate, "config_hash": t.config_hash,
                     "weights": to_dict(t.weights), "tokens": m.tokens(t.name),
                     "tokens_per_hour": m.tokens(t.name) / hours if hours else 0.0,
                     "bytes": sum(s.files[t.name].bytes for s in m.shards if t.name in s.files),
                     "kmeans": t.kmeans, "stats": _stream_stats(root, m, t, sizes)} for t in m.streams],
        "books": m.books,
        "hours": hours,
        "chunks": sum(s.samples for s in m.shards),
        "shards": len(m.shards),
        "pending_shards": list(m.pending),
        "tokens": m.total_tokens,
        "split": {"val_center": data.val_center, "val_fraction": data.val_fraction,
                  "long_book_seconds": data.long_book_seconds, "long_books": books["long_books"],
                  "short_held_out": books["short_held_out"], "short_books": m.books - books["long_books"],
                  "val_seconds": books["val_seconds"], "train_seconds": m.seconds - books["val_seconds"]},
        "per_book": books["per_book"],
        "per_shard": [{"index": s.index, "books": s.books.pieces, "samples": s.samples,
                       "files": {name: to_dict(f) for name, f in s.files.items()}} for s in m.shards],
        "failed": [to_dict(f) for f in m.failed],
        "warnings": books["warnings"],
        "shard_problems": problems,
    }


def _text(s: dict[str, Any]) -> str:
    lines = [f"tokens:    {s['folder']} ({s['format']})"]
    for t in s["streams"]:
        w = t["weights"]
        kind = f"{t['kind']} {t['bandwidth']:g} kbps" if t["bandwidth"] is not None else t["kind"]
        lines += [
            f"stream:    {t['name']}: {kind}, {t['n_codebooks']} x {t['codebook_size']} ids at {t['frame_rate']:g} Hz, "
            f"{t['tokens']:,} tokens ({t['tokens_per_hour'] / 1e6:.2f} M per hour), {t['bytes'] / 1e6:.2f} MB, "
            f"config_hash {t['config_hash']}",
            f"  weights: {w['mode']} from {w['source']}, sha256 {w['sha256']}" + (f", kept in {w['file']}" if w.get("file") else ""),
        ]
        st = t["stats"]
        lines.append(f"  ids:     {np.mean(st['usage']):.0%} of the vocabulary used, entropy {np.mean(st['entropy_bits']):.2f} bits "
                     f"(max {st['max_entropy_bits']:.2f}), per codebook " + ", ".join(f"{e:.2f}" for e in st["entropy_bits"])
                     + (f" (from {st['shards_read']} of {s['shards']} shards)" if st["shards_read"] < s["shards"] else ""))
        if t["kmeans"]:
            k = t["kmeans"]
            lines.append(f"  k-means: {k['file']}, k={k['k']}, layer {k['layer']}, fit on {k['sample_frames']:,} frames, "
                         "held-out relative error " + (f"{k['relative_error_heldout']:.3f}" if k["relative_error_heldout"] is not None
                                                       else "not measured"))
    lines.append(f"books:     {s['books']} ({s['hours']:.3f} h), {s['chunks']} chunks, {s['shards']} shards, {s['tokens']:,} tokens")
    sp = s["split"]
    rules = []
    if sp["long_books"]:
        one = sp["long_books"] == 1
        rules.append(f"{sp['long_books']} {'book' if one else 'books'} of >= {sp['long_book_seconds']:g} s "
                     f"{'holds' if one else 'hold'} out {sp['val_fraction']:.0%} centred at {sp['val_center']:.0%}")
    if sp["short_books"]:
        rules.append(f"{sp['short_held_out']} of {sp['short_books']} shorter recordings are held out whole")
    lines.append(f"split:     {sp['val_seconds']:.1f} s val, {sp['train_seconds']:.1f} s train: {'; '.join(rules)} "
                 "(the folder's split; a training config's data.val_fraction, data.val_center, data.long_book_seconds re-derive it)")
    books = s["per_book"]
    width = max((len(b["id"]) for b in books[:SHOWN]), default=0)
    for b in books[:SHOWN]:
        val = (f"val {b['val_s'][0]:.2f}-{b['val_s'][1]:.2f} s" if b["val_s"][1] > b["val_s"][0] else "train")
        lines.append(f"  {b['id']:<{width}}  {b['duration_s']:9.2f} s  {b['chunks']:5d} chunks  {val}")
    if s["books"] > SHOWN:
        lines.append(f"  ... and {s['books'] - SHOWN} more books (--json lists all)")
    lines.append(f"shards:    {s['shards']} written, {len(s['pending_shards'])} pending")
    for sh in s["per_shard"][:SHOWN]:
        files = "  ".join(f"{f['path']} {f['bytes'] / 1e6:.2f} MB" for f in sh["files"].values())
        lines.append(f"  {sh['index']:6d}  {sh['books']:5d} books  {sh['samples']:6d} chunks  {files}")
    if len(s["per_shard"]) > SHOWN:
        lines.append(f"  ... and {len(s['per_shard']) - SHOWN} more shards (--json lists all)")
    lines.append(f"failed:    {len(s['failed'])}")
    lines += [f"  {f['source']}: {f['error']}" for f in s["failed"][:SHOWN]]
    if len(s["failed"]) > SHOWN:
        lines.append(f"  ... and {len(s['failed']) - SHOWN} more (--json lists all)")
    lines.append(f"warnings:  {len(s['warnings'])}")
    lines += [f"  {w['source']}: {w['warning']}" for w in s["warnings"][:SHOWN]]
    if len(s["warnings"]) > SHOWN:
        lines.append(f"  ... and {len(s['warnings']) - SHOWN} more (--json lists all)")
    if s["shard_problems"]:
        lines.append(f"PROBLEMS:  {len(s['shard_problems'])} shard files")
        lines += [f"  {p['path']}: {p['problem']}" for p in s["shard_problems"]]
    else:
        lines.append("check:     every shard file present, sizes match the manifest (--verify compares sha256 too)")
    if s["pending_shards"]:
        lines.append(f"PENDING:   {len(s['pending_shards'])} planned shard files are not written yet; rerun `narrator tokenize` "
                     "to complete them")
    return "\n".join(lines)


# --- narrator inspect --verify -------------------------------------------------------------------

VERIFY_FAILED = 3  # exit status when a file fails verification (1: the folder could not be read at all)


@dataclass
class FileCheck:
    """One file the manifest lists, as read back: `problem` is None when it matches the manifest."""

    path: str  # as the user sees it: the token folder they gave, joined with the manifest's entry
    bytes: int  # read (0 when missing or not read)
    problem: str | None = None


@dataclass
class Verification:
    manifest: str
    shards: list[FileCheck]
    side_files: list[FileCheck]  # random-init weights, k-means arrays
    seconds: float
    indexes: list[FileCheck] = field(default_factory=list)  # the shards' book indexes

    @property
    def bad(self) -> list[FileCheck]:
        return [c for c in self.shards + self.indexes + self.side_files if c.problem is not None]

    def lines(self) -> tuple[list[str], str]:
        """One line per bad file, and the summary line."""
        mb = sum(c.bytes for c in self.shards) / 1e6
        side = (f", {len(self.indexes)} book index{'es' if len(self.indexes) != 1 else ''}" if self.indexes else "") + \
               (f" and {len(self.side_files)} side file{'s' if len(self.side_files) != 1 else ''}" if self.side_files else "")
        if not self.bad:
            return [], (f"verified {len(self.shards)} shard files ({mb:.2f} MB){side} in {self.seconds:.2f} s: sizes and "
                        f"sha256 match {self.manifest}")
        return [f"{c.path}: {c.problem}" for c in self.bad], (
            f"{len(self.bad)} of {len(self.shards) + len(self.indexes) + len(self.side_files)} files fail verification against "
            f"{self.manifest} ({mb:.2f} MB of shards read in {self.seconds:.2f} s); delete the bad shard files and "
            "rerun narrator tokenize on the same books to re-encode them")


def verify_tokens(path: str | Path, threads: int | None = None) -> Verification:
    """Read every shard file of every stream, and the side files with a recorded checksum, and compare
    them with the manifest; files are hashed in `threads` threads (ThreadPoolExecutor's default: I/O bound
    on object stores, and hashlib releases the GIL). Entries outside the token folder are listed, not read."""
    started = time.perf_counter()
    manifest = Manifest.load(path)
    root = token_folder(path)
    entries = [file for shard in manifest.shards for file in shard.files.values()]
    indexes = [shard.books for shard in manifest.shards]
    with ThreadPoolExecutor(threads) as pool:
        shards = list(pool.map(lambda f: _check_shard(root, f.path, f.bytes, f.sha256), entries))
        books = list(pool.map(lambda f: _check_shard(root, f.path, f.bytes, f.sha256), indexes))
    side = [check for info in manifest.streams for check in _check_side_files(root, info)]
    return Verification(str(root / MANIFEST_NAME), shards, side, time.perf_counter() - started, books)


def _check_shard(root: Path | storage.URL, rel: str, size: int, sha256: str) -> FileCheck:
    shown = str(root / rel)
    outside = storage.escape(root, rel)
    if outside:
        return FileCheck(shown, 0, f"lies outside the token folder ({outside}); not read")
    if not storage.exists(root / rel):
        return FileCheck(shown, 0, f"missing (manifest says {size:,} bytes, sha256 {sha256[:12]}...)")
    try:
        found, read = storage.checksum(root / rel)
    except (OSError, NarratorError) as e:  # unreadable here (permissions, a storage fault): listed, the others read
        return FileCheck(shown, 0, f"unreadable ({e.strerror if isinstance(e, OSError) and e.strerror else e})")
    if (found, read) == (sha256, size):
        return FileCheck(shown, read)
    return FileCheck(shown, read, f"sha256 {found[:12]}... in {read:,} bytes, manifest says {sha256[:12]}... in {size:,} "
                                  "bytes" + (" (same size: changed in place)" if read == size else ""))


def _check_side_files(root: Path | storage.URL, info: StreamInfo) -> list[FileCheck]:
    """The stream's random-init weights (their state_dict sha256, as the manifest records it) and k-means
    arrays (their file sha256, as kmeans/*.json and the manifest record it), each read by the loader that
    uses them, so what passes here loads."""
    checks: list[tuple[str, list[str], Callable[[Path], None]]] = []  # (file named, files it reads, check)
    if info.weights.file:
        checks.append((info.weights.file, [info.weights.file], lambda local: _load_weights(info, local / info.weights.file)))
    if info.kmeans:
        checks.append((info.kmeans["file"], [f for f in info.files() if f != info.weights.file],
                       lambda local: _load_kmeans(info, local / info.kmeans["file"])))
    results = []
    for rel, files, check in checks:
        shown = str(root / rel)
        outside = next(filter(None, (storage.escape(root, f) for f in [rel, *files])), None)
        if outside:
            results.append(FileCheck(shown, 0, f"it or a file beside it lies outside the token folder ({outside}); "
                                                "not read"))
            continue
        local = root  # until a download is made
        try:
            with _local_files(root, files) as local:
                check(local)
        except (NarratorError, RuntimeError) as e:  # load_state_dict raises RuntimeError for tensors that do not fit
            text = (str(e).splitlines() or [type(e).__name__])[0]
            if storage.is_url(root):
                text = text.replace(str(local), str(root))
            results.append(FileCheck(shown, 0, text.removeprefix(f"{shown}: ")))
            continue
        results.append(FileCheck(shown, sum(storage.size(root / f) for f in files)))
    return results


@contextlib.contextmanager
def _local_files(root: Path | storage.URL, files: list[str]) -> Iterator[Path]:
    """A local folder holding `files` at their relative paths: the token folder itself, or a download of them."""
    if not storage.is_url(root):
        yield Path(root)
        return
    with tempfile.TemporaryDirectory(prefix="narrator-verify-") as folder:
        for rel in files:
            (Path(folder) / rel).parent.mkdir(parents=True, exist_ok=True)
            storage.download(root / rel, Path(folder) / rel)
        yield Path(folder)


def _load_weights(info: StreamInfo, path: Path) -> None:
    if info.kind == "encodec":
        from narrator.tokenizers.config import EncodecConfig
        from narrator.tokenizers.encodec import EncodecTokenizer

        EncodecTokenizer.from_weights_file(from_dict(EncodecConfig, info.config["encodec"], "encodec."), path, info.weights)
    else:
        from narrator.tokenizers.config import WhisperConfig
        from narrator.tokenizers.whisper import WhisperEmbedder

        WhisperEmbedder.from_weights_file(from_dict(WhisperConfig, info.config["whisper"], "whisper."), path, info.weights)


def _load_kmeans(info: StreamInfo, path: Path) -> None:
    from narrator.tokenizers.kmeans import load_kmeans

    kmeans = load_kmeans(path, None, info.codebook_size)  # checks each array against the sha256 the JSON records
    if kmeans.meta.centroids.sha256 != info.kmeans["centroids_sha256"]:
        raise NarratorError(f"{path}: centroids sha256 {kmeans.meta.centroids.sha256[:12]}... differ from the "
                            f"{info.kmeans['centroids_sha256'][:12]}... the tokens were made with")
