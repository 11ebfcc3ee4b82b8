"""`narrator tokenize`: books -> EnCodec token shards + manifest.json, encoded by Ray Data actors.

Only paths and times travel through Ray: each actor holds one EnCodec and reads its own audio by
seeking. The driver writes each shard as soon as its chunks are in. Which chunks go in which shard
is a pure function of the book's duration and the config, so a rerun finds the finished shards by
name and encodes only the missing ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
import yaml
from tqdm import tqdm

from narrator.config import from_dict, save_config, to_dict
from narrator.errors import NarratorError
from narrator.tokenizers.audio import AudioInfo, peak_dbfs, probe, read_segment
from narrator.tokenizers.chunking import ChunkSpec, plan_chunks
from narrator.tokenizers.config import EncodecConfig, TokenizeConfig
from narrator.tokenizers.encodec import EncodecTokenizer, token_config_hash, tokenizer_info
from narrator.tokenizers.manifest import MANIFEST_NAME, BookEntry, FailedBook, Manifest, ShardEntry, TokenizerInfo, WeightsIdentity
from narrator.tokenizers.shards import ChunkRecord, ShardWriter, WrittenShard, decode_npy, encode_npy, file_sha256

TOKENIZER_NAME = "tokenizer.json"
CONFIG_NAME = "tokenize_config.yaml"


@dataclass
class BookSource:
    id: str
    source: str


@dataclass
class TokenizeReport:
    out: Path
    done: list[str] = field(default_factory=list)  # books completed by this run
    skipped: list[str] = field(default_factory=list)  # books that were already complete
    failed: list[FailedBook] = field(default_factory=list)
    chunks_encoded: int = 0
    tokens: int = 0  # in the whole manifest


def tokenize(cfg: TokenizeConfig, out: Path, inputs: list[str]) -> TokenizeReport:
    """Tokenize every book in `inputs` (audio files or .txt catalogs) into `out`; resumable."""
    out = Path(out)
    books = resolve_inputs(inputs)
    _check_out(out, cfg)
    tokenizer = EncodecTokenizer(cfg.encodec)  # on the driver first: fails fast on missing weights
    info = tokenizer_info(cfg, tokenizer=tokenizer)
    _check_out(out, cfg, info)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / TOKENIZER_NAME, info)
    save_config(cfg, out / CONFIG_NAME)
    report = TokenizeReport(out)
    started_ray = _ensure_ray(cfg)
    try:
        entries, todo = _plan_books(cfg, out, books, report)
        written = _encode(cfg, out, tokenizer, info.stream, entries, todo, report) if todo else {}
    finally:
        if started_ray:
            ray.shutdown()
    manifest = build_manifest(out, cfg, info, report.failed, written)
    report.tokens = manifest.total_tokens
    print(f"tokenize: {len(report.done)} books tokenized, {len(report.skipped)} skipped as complete, "
          f"{len(report.failed)} failed; {manifest.total_tokens:,} tokens in {len(manifest.books)} books -> {out}")
    return report


def resolve_inputs(inputs: list[str]) -> list[BookSource]:
    """Audio paths and catalogs (.txt: one path per line, relative to the catalog, # comments) -> books."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.suffix.lower() != ".txt":
            paths.append(p)
            continue
        if not p.is_file():
            raise NarratorError(f"{p}: catalog file not found")
        for line in p.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                entry = Path(line).expanduser()
                paths.append(entry if entry.is_absolute() else p.parent / entry)
    unique = list(dict.fromkeys(p.resolve() for p in paths))
    if not unique:
        raise NarratorError(f"no audio files in the inputs: {' '.join(inputs)}")
    stems = [re.sub(r"[^A-Za-z0-9_-]+", "_", p.stem).strip("_") or "book" for p in unique]
    books = []
    for path, stem in zip(unique, stems):
        # Every book of a colliding name gets the hash, so ids do not depend on input order.
        collides = stems.count(stem) > 1
        books.append(BookSource(f"{stem}-{hashlib.sha1(str(path).encode()).hexdigest()[:6]}" if collides else stem, str(path)))
    return books


def shard_path(book: str, part: int) -> str:
    """Shard of a book, relative to OUT."""
    return f"shards/{book}-{part:05d}.tar"


def shard_plan(specs: list[ChunkSpec], chunks_per_shard: int) -> dict[str, list[ChunkSpec]]:
    """Shard path -> its chunks, in order (shard part = chunk // chunks_per_shard)."""
    plan: dict[str, list[ChunkSpec]] = {}
    for spec in specs:
        plan.setdefault(shard_path(spec.book, spec.chunk // chunks_per_shard), []).append(spec)
    return plan


def build_manifest(out: Path, cfg: TokenizeConfig, info: TokenizerInfo, failed: list[FailedBook],
                   written: dict[str, WrittenShard] | None = None) -> Manifest:
    """manifest.json from OUT/books/*.json and the shards on disk; books with a missing shard are left out."""
    written = written or {}
    manifest = Manifest(tokenizer=info, failed=list(failed))
    for path in sorted((out / "books").glob("*.json")):
        book = _read_json(path, BookEntry)
        plan = shard_plan(plan_chunks(book.id, book.duration_s, cfg.chunking), cfg.shards.chunks_per_shard)
        if not all((out / rel).is_file() for rel in plan):
            print(f"tokenize: {book.id} has missing shards; rerun with its audio to complete it")
            continue
        manifest.books.append(book)
        for rel, specs in plan.items():
            done = written.get(rel)
            manifest.shards.append(ShardEntry(
                path=rel, book=book.id, samples=len(specs), tokens=sum(s.frames for s in specs) * info.n_codebooks,
                bytes=(out / rel).stat().st_size, sha256=done.sha256 if done else file_sha256(out / rel)))
    manifest.save(out / MANIFEST_NAME)
    return manifest


class ChunkEncoderActor:
    """A Ray Data actor: one EnCodec; reads each chunk's audio window itself and returns its codes.

    `weights` is [ObjectRef] of the driver's state_dict (a list, so Ray hands over the reference).
    A NarratorError (say, a book that became unreadable) comes back as an `error` column, so the
    driver can stop with that one line instead of a remote traceback.
    """

    def __init__(self, encodec: dict[str, Any], weights: list, identity: dict[str, Any], torch_threads: int, device: str):
        torch.set_num_threads(torch_threads)
        self.tokenizer = EncodecTokenizer.from_state_dict(
            from_dict(EncodecConfig, encodec), ray.get(weights[0]), from_dict(WeightsIdentity, identity), device)
        self.audio: dict[str, AudioInfo] = {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["book"])
        specs = [ChunkSpec(**{f.name: _plain(batch[f.name][i]) for f in fields(ChunkSpec)}) for i in range(n)]
        try:
            windows = []
            for path, spec in zip(batch["path"], specs):
                if path not in self.audio:
                    self.audio[path] = probe(path)
                windows.append(read_segment(self.audio[path], spec.ctx_start_s, spec.ctx_end_s))
            codes, errors = [encode_npy(c) for c in self.tokenizer.encode_chunks(windows, specs)], [""] * n
        except NarratorError as e:
            codes, errors = [b""] * n, [str(e)] * n
        return {"book": batch["book"], "chunk": batch["chunk"], "codes": np.array(codes, dtype=object), "error": np.array(errors)}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _check_book(source: str, book_id: str, cfg: TokenizeConfig) -> tuple[float | None, str | None]:
    """(duration, None) for a usable book, (None, reason) otherwise; reads the whole file once for its peak."""
    try:
        info = probe(source)
        plan_chunks(book_id, info.duration_s, cfg.chunking)
        peak = peak_dbfs(info)
        if peak < cfg.silence_dbfs:
            raise NarratorError(f"{source}: silent (peak {peak:.1f} dBFS is below silence_dbfs {cfg.silence_dbfs:g})")
        return info.duration_s, None
    except NarratorError as e:  # the reason alone: the manifest records the source beside it
        return None, str(e).removeprefix(f"{source}: ").removeprefix(f"{book_id}: ")


def _plan_books(cfg: TokenizeConfig, out: Path, books: list[BookSource], report: TokenizeReport
                ) -> tuple[dict[str, BookEntry], dict[str, list[tuple[str, ChunkSpec]]]]:
    """Validate the books that are not complete; return their entries and, per book, the (source, chunk) pairs to encode."""
    pending = []
    for book in books:
        entry_path = out / "books" / f"{book.id}.json"
        if entry_path.is_file():
            entry = _read_json(entry_path, BookEntry)
            if entry.source != book.source:
                report.failed.append(FailedBook(book.source, f"book id {book.id} already holds the tokens of {entry.source}"))
                print(f"skipped {book.id}: {report.failed[-1].error}")
                continue
            if all((out / rel).is_file() for rel in entry.shards):
                report.skipped.append(book.id)
                continue
        pending.append(book)
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:  # decoding releases the GIL
        results = list(pool.map(lambda b: _check_book(b.source, b.id, cfg), pending))
    entries: dict[str, BookEntry] = {}
    todo: dict[str, list[tuple[str, ChunkSpec]]] = {}
    for book, (duration, error) in zip(pending, results):
        if error is not None:
            report.failed.append(FailedBook(book.source, error))
            print(f"skipped {book.id}: {error}")
            continue
        plan = shard_plan(plan_chunks(book.id, duration, cfg.chunking), cfg.shards.chunks_per_shard)
        entry = BookEntry(id=book.id, source=book.source, duration_s=duration, frames=sum(s.frames for c in plan.values() for s in c),
                          chunks=sum(len(c) for c in plan.values()), shards=list(plan))
        missing = [(book.source, s) for rel, specs in plan.items() if not (out / rel).is_file() for s in specs]
        if missing:  # books/<id>.json is written when its last shard is in: its presence means "complete"
            entries[book.id], todo[book.id] = entry, missing
        else:  # shards all there, only the book entry was missing
            _write_json(out / "books" / f"{book.id}.json", entry)
            report.done.append(book.id)
    return entries, todo


def _encode(cfg: TokenizeConfig, out: Path, tokenizer: EncodecTokenizer, stream: str, entries: dict[str, BookEntry],
            todo: dict[str, list[tuple[str, ChunkSpec]]], report: TokenizeReport) -> dict[str, WrittenShard]:
    """Run the Ray Data actor pool over the missing chunks and write shards in order as they complete."""
    items = [{"path": source, **asdict(spec)} for chunks in todo.values() for source, spec in chunks]
    specs = [spec for chunks in todo.values() for _, spec in chunks]
    shard_sizes = {rel: len(c) for rel, c in shard_plan(specs, cfg.shards.chunks_per_shard).items()}
    open_parts = {book: {shard_path(book, s.chunk // cfg.shards.chunks_per_shard) for _, s in chunks} for book, chunks in todo.items()}
    weights = ray.put({k: v.cpu() for k, v in tokenizer.model.state_dict().items()})
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start)
    ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start = True, False, False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the tqdm bar below replaces Ray Data's progress output
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    written: dict[str, WrittenShard] = {}
    writer: ShardWriter | None = None
    try:
        ds = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / cfg.ray.batch_size)).map_batches(
            ChunkEncoderActor,
            fn_constructor_kwargs=dict(encodec=to_dict(cfg.encodec), weights=[weights], identity=to_dict(tokenizer.weights_identity()),
                                       torch_threads=cfg.ray.torch_threads, device="cuda" if cfg.ray.num_gpus > 0 else "cpu"),
            batch_size=cfg.ray.batch_size, batch_format="numpy", num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus,
            # One block (= one batch) in flight per actor: the first actor up must not queue every block.
            compute=ray.data.ActorPoolStrategy(size=cfg.ray.concurrency, max_tasks_in_flight_per_actor=1))
        bar = tqdm(total=len(items), unit="chunk", desc="tokenize", dynamic_ncols=True)
        seconds = 0.0
        for spec, row in zip(specs, ds.iter_rows(), strict=True):
            assert (row["book"], row["chunk"]) == (spec.book, spec.chunk), "Ray Data returned chunks out of order"
            if row["error"]:
                raise NarratorError(row["error"])
            rel = shard_path(spec.book, spec.chunk // cfg.shards.chunks_per_shard)
            if writer is None:
                writer = ShardWriter(out / rel)
            writer.write(ChunkRecord(spec.book, spec.chunk, spec.start_s, spec.end_s, spec.frames, stream), decode_npy(row["codes"]))
            if writer.samples == shard_sizes[rel]:
                written[rel] = writer.close()
                writer = None
                open_parts[spec.book].discard(rel)
                if not open_parts[spec.book]:
                    _write_json(out / "books" / f"{spec.book}.json", entries[spec.book])
                    report.done.append(spec.book)
            report.chunks_encoded += 1
            seconds += spec.end_s - spec.start_s
            bar.update()
            bar.set_postfix(audio=f"{seconds / 3600:.3f} h", refresh=False)
        bar.close()
    finally:
        if writer is not None:
            writer.abort()
        ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start = saved
    return written


def _check_out(out: Path, cfg: TokenizeConfig, info: TokenizerInfo | None = None) -> None:
    """Refuse an OUT whose tokens were made with another config or other weights (checked once `info` is known)."""
    tok_path, cfg_path = out / TOKENIZER_NAME, out / CONFIG_NAME
    if tok_path.is_file():
        old = _read_json(tok_path, TokenizerInfo)
        new_hash = token_config_hash(cfg)
        if old.config_hash != new_hash:
            raise NarratorError(f"{out}: holds tokens made with another tokenize config (config_hash {old.config_hash}, "
                                f"now {new_hash}; see {cfg_path.name}); use a new --out folder")
        if info is not None and old.weights.sha256 != info.weights.sha256:
            raise NarratorError(f"{out}: holds tokens made with other EnCodec weights (sha256 {old.weights.sha256[:12]} from "
                                f"{old.weights.source}, now {info.weights.sha256[:12]}); use a new --out folder")
    if cfg_path.is_file():
        old_cps = (yaml.safe_load(cfg_path.read_text()) or {}).get("shards", {}).get("chunks_per_shard")
        if old_cps not in (None, cfg.shards.chunks_per_shard):
            raise NarratorError(f"{out}: shards hold {old_cps} chunks each, not shards.chunks_per_shard={cfg.shards.chunks_per_shard}; "
                                "use a new --out folder")


def _ensure_ray(cfg: TokenizeConfig) -> bool:
    """Use a running Ray, connect to cfg.ray.address, or start a local one. True if we started it."""
    if ray.is_initialized():
        return False
    if cfg.ray.address:
        ray.init(address=cfg.ray.address, logging_level=logging.WARNING)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    return True


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_dict(obj), indent=1) + "\n")
    tmp.replace(path)


def _read_json(path: Path, cls: type) -> Any:
    try:
        return from_dict(cls, json.loads(path.read_text()))
    except (json.JSONDecodeError, NarratorError) as e:
        raise NarratorError(f"{path}: unreadable ({str(e).splitlines()[0]}); delete it to rebuild") from None
