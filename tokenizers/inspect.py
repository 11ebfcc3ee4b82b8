"""`narrator inspect`: what a token folder holds, from its manifest, plus a check that the shards are intact.

The split shown is the one a training run with the given `data:` settings (DataConfig) would use.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from narrator.config import to_dict
from narrator.streaming.config import DataConfig
from narrator.streaming.split import held_out_slots
from narrator.tokenizers import storage
from narrator.tokenizers.manifest import MANIFEST_NAME, SLOT_SECONDS, Manifest, StreamInfo, token_folder
from narrator.tokenizers.shards import decode_npy


def inspect_tokens(path: str | Path, as_json: bool = False, data: DataConfig | None = None) -> str:
    """Summary of a token folder (or its manifest.json), local or at a URL, as text, or as JSON with `as_json`."""
    manifest = Manifest.load(path)
    root = token_folder(path)
    summary = _summary(root, manifest, data or DataConfig(), _sizes(root, manifest))
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


def _val_seconds(m: Manifest, data: DataConfig) -> dict[str, tuple[float, float]]:
    """Each book's held-out stretch in seconds ((0, 0) for a recording that is all training)."""
    return {book: (start * SLOT_SECONDS, end * SLOT_SECONDS) for book, (start, end) in held_out_slots(m.books, data).items()}


def _summary(root: Path | storage.URL, m: Manifest, data: DataConfig, sizes: dict[str, int]) -> dict[str, Any]:
    problems = []
    for shard in m.shards:
        for file in shard.files.values():
            if file.path not in sizes:
                problems.append({"path": file.path, "problem": "missing"})
            elif sizes[file.path] != file.bytes:
                problems.append({"path": file.path, "problem": f"size {sizes[file.path]} bytes, manifest says "
                                 f"{file.bytes} (truncated or rewritten)"})
    hours = sum(b.duration_s for b in m.books) / 3600
    val = _val_seconds(m, data)
    val_total = sum(end - start for start, end in val.values())
    long_books = sum(b.duration_s >= data.long_book_seconds for b in m.books)
    held_out = sum(b.duration_s < data.long_book_seconds and val[b.id][1] > 0 for b in m.books)
    return {
        "folder": str(root / MANIFEST_NAME),
        "format": m.format,
        "streams": [{"name": t.name, "kind": t.kind, "bandwidth": t.bandwidth, "n_codebooks": t.n_codebooks,
                     "codebook_size": t.codebook_size, "frame_rate": t.frame_rate, "config_hash": t.config_hash,
                     "weights": to_dict(t.weights), "tokens": m.tokens(t.name),
                     "tokens_per_hour": m.tokens(t.name) / hours if hours else 0.0,
                     "bytes": sum(s.files[t.name].bytes for s in m.shards if t.name in s.files),
                     "kmeans": t.kmeans, "stats": _stream_stats(root, m, t, sizes)} for t in m.streams],
        "books": len(m.books),
        "hours": hours,
        "chunks": sum(b.chunks for b in m.books),
        "shards": len(m.shards),
        "pending_shards": list(m.pending),
        "tokens": m.total_tokens,
        "split": {"val_center": data.val_center, "val_fraction": data.val_fraction,
                  "long_book_seconds": data.long_book_seconds, "long_books": long_books,
                  "short_held_out": held_out, "short_books": len(m.books) - long_books,
                  "val_seconds": val_total, "train_seconds": sum(b.duration_s for b in m.books) - val_total},
        "per_book": [{"id": b.id, "source": b.source, "duration_s": b.duration_s, "chunks": b.chunks,
                      "shards": len(b.shards), "val_s": list(val[b.id])} for b in m.books],
        "per_shard": [{"index": s.index, "books": len(s.books), "samples": s.samples,
                       "files": {name: to_dict(f) for name, f in s.files.items()}} for s in m.shards],
        "failed": [to_dict(f) for f in m.failed],
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
                 "(data.long_book_seconds, data.val_fraction, data.val_center)")
    books = s["per_book"]
    width = max((len(b["id"]) for b in books[:SHOWN]), default=0)
    for b in books[:SHOWN]:
        val = (f"val {b['val_s'][0]:.2f}-{b['val_s'][1]:.2f} s" if b["val_s"][1] > b["val_s"][0] else "train")
        lines.append(f"  {b['id']:<{width}}  {b['duration_s']:9.2f} s  {b['chunks']:5d} chunks  {b['shards']:3d} shards  {val}")
    if len(books) > SHOWN:
        lines.append(f"  ... and {len(books) - SHOWN} more books (--json lists all)")
    lines.append(f"shards:    {s['shards']} written, {len(s['pending_shards'])} pending")
    for sh in s["per_shard"][:SHOWN]:
        files = "  ".join(f"{f['path']} {f['bytes'] / 1e6:.2f} MB" for f in sh["files"].values())
        lines.append(f"  {sh['index']:6d}  {sh['books']:5d} books  {sh['samples']:6d} chunks  {files}")
    if len(s["per_shard"]) > SHOWN:
        lines.append(f"  ... and {len(s['per_shard']) - SHOWN} more shards (--json lists all)")
    lines.append(f"failed:    {len(s['failed'])}")
    lines += [f"  {f['source']}: {f['error']}" for f in s["failed"]]
    if s["shard_problems"]:
        lines.append(f"PROBLEMS:  {len(s['shard_problems'])} shard files")
        lines += [f"  {p['path']}: {p['problem']}" for p in s["shard_problems"]]
    else:
        lines.append("check:     every shard file present, sizes match the manifest")
    if s["pending_shards"]:
        lines.append(f"PENDING:   {len(s['pending_shards'])} planned shard files are not written yet; rerun `narrator tokenize` "
                     "to complete them")
    return "\n".join(lines)
