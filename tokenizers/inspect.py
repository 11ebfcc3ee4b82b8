"""`narrator inspect`: what a token folder holds, from its manifest, plus a check that the shards are intact.

The split shown is the one a training run with the given `data:` settings (DataConfig) would use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from narrator.config import to_dict
from narrator.streaming.config import DataConfig
from narrator.streaming.split import val_window
from narrator.tokenizers.manifest import MANIFEST_NAME, Manifest


def inspect_tokens(path: str | Path, as_json: bool = False, data: DataConfig | None = None) -> str:
    """Summary of a token folder (or its manifest.json) as text, or as JSON with `as_json`."""
    path = Path(path)
    root = path if path.is_dir() else path.parent
    manifest = Manifest.load(path)
    summary = _summary(root, manifest, data or DataConfig())
    return json.dumps(summary, indent=1) if as_json else _text(summary)


def _val_seconds(m: Manifest, data: DataConfig) -> dict[str, tuple[float, float]]:
    """Each book's validation window in seconds."""
    rate = m.tokenizer.frame_rate
    windows = {b.id: val_window(b.frames, data.val_center, data.val_fraction) for b in m.books}
    return {book: (start / rate, end / rate) for book, (start, end) in windows.items()}


def _summary(root: Path, m: Manifest, data: DataConfig) -> dict[str, Any]:
    problems = []
    for shard in m.shards:
        file = root / shard.path
        if not file.is_file():
            problems.append({"path": shard.path, "problem": "missing"})
        elif file.stat().st_size != shard.bytes:
            problems.append({"path": shard.path, "problem": f"size {file.stat().st_size} bytes, manifest says {shard.bytes} (truncated or rewritten)"})
    t = m.tokenizer
    val = _val_seconds(m, data)
    val_total = sum(end - start for start, end in val.values())
    return {
        "folder": str(root / MANIFEST_NAME),
        "format": m.format,
        "tokenizer": {"kind": t.kind, "stream": t.stream, "bandwidth": t.bandwidth, "n_codebooks": t.n_codebooks,
                      "codebook_size": t.codebook_size, "frame_rate": t.frame_rate, "config_hash": t.config_hash},
        "weights": to_dict(t.weights),
        "books": len(m.books),
        "hours": sum(b.duration_s for b in m.books) / 3600,
        "chunks": sum(b.chunks for b in m.books),
        "shards": len(m.shards),
        "shard_bytes": sum(s.bytes for s in m.shards),
        "tokens": m.total_tokens,
        "split": {"val_center": data.val_center, "val_fraction": data.val_fraction, "val_seconds": val_total,
                  "train_seconds": sum(b.duration_s for b in m.books) - val_total},
        "per_book": [{"id": b.id, "duration_s": b.duration_s, "chunks": b.chunks, "shards": len(b.shards),
                      "val_s": list(val[b.id])} for b in m.books],
        "failed": [to_dict(f) for f in m.failed],
        "shard_problems": problems,
    }


def _text(s: dict[str, Any]) -> str:
    t, w = s["tokenizer"], s["weights"]
    lines = [
        f"tokens:    {s['folder']} ({s['format']})",
        f"tokenizer: {t['kind']} {t['bandwidth']:g} kbps, {t['n_codebooks']} codebooks x {t['codebook_size']} codes at "
        f"{t['frame_rate']:g} Hz, stream '{t['stream']}', config_hash {t['config_hash']}",
        f"weights:   {w['mode']} from {w['source']}, sha256 {w['sha256']}",
        f"books:     {s['books']} ({s['hours']:.3f} h), {s['chunks']} chunks, {s['shards']} shards "
        f"({s['shard_bytes'] / 1e6:.2f} MB), {s['tokens']:,} tokens",
    ]
    sp = s["split"]
    lines.append(f"split:     validation = {sp['val_fraction']:.0%} of each book centred at {sp['val_center']:.0%}: "
                 f"{sp['val_seconds']:.1f} s val, {sp['train_seconds']:.1f} s train (data.val_center, data.val_fraction)")
    width = max((len(b["id"]) for b in s["per_book"]), default=0)
    lines += [f"  {b['id']:<{width}}  {b['duration_s']:9.2f} s  {b['chunks']:5d} chunks  {b['shards']:3d} shards  "
              f"val {b['val_s'][0]:.2f}-{b['val_s'][1]:.2f} s" for b in s["per_book"]]
    lines.append(f"failed:    {len(s['failed'])}")
    lines += [f"  {f['source']}: {f['error']}" for f in s["failed"]]
    if s["shard_problems"]:
        lines.append(f"PROBLEMS:  {len(s['shard_problems'])} of {s['shards']} shards")
        lines += [f"  {p['path']}: {p['problem']}" for p in s["shard_problems"]]
    else:
        lines.append(f"shards:    all {s['shards']} present, sizes match the manifest")
    return "\n".join(lines)
