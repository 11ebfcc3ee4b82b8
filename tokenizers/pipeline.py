"""`narrator tokenize`: books -> EnCodec token shards + manifest.json, encoded by Ray Data actors.

Only paths and times travel through Ray: each actor holds one EnCodec and reads its own audio by
seeking. The driver decodes no audio: it reads each new book's header (threads), adds the book to the
shard plan (plan.py), and hands the chunks to the actors, which check the audio (silence, damaged or
undecodable data) as they read it for encoding, so each byte is decoded once, on the cluster. The
driver writes each missing shard as soon as its chunks are in and its books' verdicts (checks.py) known. A rerun finds the finished
shards by name and encodes only the missing ones; new books are appended in new shards. OUT and
the books may be local paths or fsspec URLs (s3://bucket/prefix): every file goes through storage.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from tqdm import tqdm

from narrator.config import from_dict, save_config, to_dict
from narrator.errors import NarratorError
from narrator.tokenfolder import storage
from narrator.tokenizers.catalog import BookSource, resolve_inputs
from narrator.tokenizers.audio import AudioInfo, is_mp3, n_samples, probe, read_segment
from narrator.tokenizers.checks import BookCheck, BookReading, damage_warning, log_checks, read_checks
from narrator.tokenizers.chunking import ChunkSpec, grid_steps, plan_chunks
from narrator.tokenfolder.split import split_span
from narrator.tokenizers.config import STREAMS, EncodecConfig, TokenizeConfig, WhisperConfig
from narrator.tokenizers.encodec import EncodecTokenizer, random_weights_name, stream_info, token_config_hash
from narrator.tokenfolder.manifest import (ACOUSTIC, INDEX_DIR, MANIFEST_NAME, SEMANTIC, BookEntry, FailedBook, FormatError,
                                          Manifest, ShardEntry, ShardFile, StreamInfo, WeightsIdentity, write_book_index)
from narrator.tokenizers.kmeans import kmeans_paths
from narrator.tokenizers.semantic import (KMEANS_STEM, SemanticTokenizer, fit_semantic, random_whisper_name, semantic_config,
                                          semantic_stream_info)
from narrator.tokenizers.plan import PlannedBook, PlannedShard, ShardPlan
from narrator.tokenizers.ray_cluster import NodeWatch, node_summary, ray_session
from narrator.tokenizers.stderr_filter import MPG123_NOTICE, RAY_ACTOR_RESTART_NOTICE, damage_notes, drop_stderr_lines
from narrator.tokenizers.whisper import WhisperEmbedder
from narrator.tokenfolder.shards import (ChunkRecord, ShardWriter, WrittenShard, decode_npy, encode_npy,
                                        log_written, read_written, shard_path, stream_info_path)

CONFIG_NAME = "tokenize_config.yaml"
SHOWN_WARNINGS = 3  # damaged-MP3 lines printed per run; the rest are counted, and all are in the manifest
HEADER_THREADS = 16  # header reads wait on the disk or the object store, not the CPU


@dataclass
class TokenizeReport:
    out: storage.Location
    added: list[str] = field(default_factory=list)  # books planned by this run
    failed: list[FailedBook] = field(default_factory=list)
    shards_written: int = 0
    chunks_encoded: int = 0
    chunks_per_node: dict[str, int] = field(default_factory=dict)  # Ray node id -> chunks its actors encoded
    tokens: int = 0  # in the whole manifest


@dataclass
class _Stream:
    """A stream this run makes: its manifest entry, its tokenizer on the driver, and how actors rebuild it."""

    info: StreamInfo
    tokenizer: Any  # EncodecTokenizer | SemanticTokenizer: encode_chunks(windows, specs) -> one array per chunk
    recipe: dict[str, Any]  # ChunkEncoderActor's description of it; big arrays go in as object refs


def tokenize(cfg: TokenizeConfig, out: storage.Location, inputs: list[str],
             allow_outside_root: bool = False) -> TokenizeReport:
    """Tokenize every book in `inputs` (audio files or catalogs) into `out` (a folder or URL): each
    stream of `cfg.streams` in its own shard set, cut by one plan; resumable, appendable, and a stream
    can be added to a folder that holds others. `allow_outside_root`: catalogs may name audio outside their folder."""
    out = storage.root(out)
    books = resolve_inputs(inputs, allow_outside_root)
    if storage.is_url(out):
        storage.check_bucket(str(out))
    _check_out(out, cfg)
    plan = ShardPlan.open(out)  # refuses a folder of an older format before anything is written
    # The models first, on the driver: missing weights fail before any audio is read.
    codec = _codec(cfg, out) if ACOUSTIC in cfg.streams else None
    embedder = _embedder(cfg, out) if SEMANTIC in cfg.streams else None
    if codec is not None:
        _check_out(out, cfg, stream_info(cfg, tokenizer=codec))
    if not storage.is_url(out):  # an object store has no folders to make
        out.mkdir(parents=True, exist_ok=True)
    if codec is not None and codec.weights_identity().mode == "random" and codec.weights_identity().file is None:
        _save_weights(codec, out, random_weights_name(cfg.encodec.weights.seed))
    if embedder is not None and embedder.weights_identity().mode == "random" and embedder.weights_identity().file is None:
        _save_weights(embedder, out, random_whisper_name(cfg.whisper.model, cfg.whisper.weights.seed))
    with _staged(out, [CONFIG_NAME]) as local, _writing(storage.join(local, CONFIG_NAME)):
        save_config(cfg, storage.join(local, CONFIG_NAME))
    report = TokenizeReport(out)
    planned = _plan_books(cfg, plan, books, report, bytes_per_second=_bytes_per_second(cfg))
    plan.save()  # the commit point: from here on, these books' shards are fixed
    streams = []
    if codec is not None:
        streams.append(_Stream(stream_info(cfg, tokenizer=codec), codec, {
            "name": ACOUSTIC, "config": to_dict(cfg.encodec), "identity": to_dict(codec.weights_identity()),
            "weights": codec.model.state_dict()}))
    if embedder is not None:
        with drop_stderr_lines(MPG123_NOTICE):  # the k-means sample's reads: the actors name damaged books
            streams.append(_semantic_stream(cfg, out, embedder, plan))
    for stream in streams:
        _write_json(storage.join(out, stream_info_path(stream.info.name)), stream.info)
    present = _folder_streams(out)
    written = {info.name: read_written(out, info.name) for info in present}
    on_disk = {st.info.name: _shard_sizes(out, st.info.name) for st in streams}
    missing = {index: [st.info.name for st in streams if shard_path(st.info.name, index) not in on_disk[st.info.name]]
               for index in range(len(plan))}
    missing = {index: names for index, names in missing.items() if names}
    recorded = {s.index for s in _previous_manifest(out).shards}
    unrecorded = {b.id for index in range(len(plan)) if index not in recorded for b in plan.shard(index).books}
    checks = read_checks(out, {b.id for b in books} | unrecorded)  # and every failed book's
    for book in books:  # found unusable by an earlier run's actors: not read again
        if book.id in checks and checks[book.id].failed and book.id in planned \
                and planned[book.id].source == book.source:
            _fail(report, book, checks[book.id].error)
    if missing:
        with ray_session(cfg.ray):
            _encode(cfg, out, streams, plan, missing, written, checks, {b.id: b.given for b in books}, report)
    manifest = build_manifest(out, cfg, plan, present, written, checks, report.failed)
    report.tokens = manifest.total_tokens
    hours = manifest.seconds / 3600
    print(f"tokenize: {manifest.books} books ({hours:.2f} h) in {len(manifest.shards)} shards, "
          f"{manifest.total_tokens:,} tokens in {len(present)} {'stream' if len(present) == 1 else 'streams'} "
          f"({', '.join(i.name for i in present)}) -> {out}; this run: {len(report.added)} books added, "
          f"{report.shards_written} shard files written, {len(report.failed)} failed")
    return report


def build_manifest(out: storage.Location, cfg: TokenizeConfig, plan: ShardPlan, streams: list[StreamInfo],
                   written: dict[str, dict[str, WrittenShard]], checks: dict[str, BookCheck],
                   failed: list[FailedBook]) -> Manifest:
    """manifest.json from the plan, the books' verdicts and each stream's shards on disk: books the actors found
    unusable are left out (their shards were written without them); planned shard files not on disk are `pending`.

    A shard the previous manifest lists with the same files keeps its record, unread; a new one gets its book
    index (index/), written once.
    """
    found = [FailedBook(c.source, c.error) for c in checks.values() if c.failed]
    manifest = Manifest(streams=streams, failed=found + [f for f in failed if f not in found], split=cfg.split)
    previous = {s.index: s for s in _previous_manifest(out).shards}
    on_disk = {info.name: _shard_sizes(out, info.name) for info in streams}
    for index in range(len(plan)):
        rels = {info.name: shard_path(info.name, index) for info in streams}
        manifest.pending += [rel for name, rel in rels.items() if rel not in on_disk[name]]
        present = {name: rel for name, rel in rels.items() if rel in on_disk[name]}
        entry = previous.get(index)
        if entry is not None and {n: f.bytes for n, f in entry.files.items()} == \
                {n: on_disk[n][rel] for n, rel in present.items()}:
            manifest.shards.append(entry)
            continue
        if present:
            entry = _shard_entry(out, cfg, plan.shard(index), streams, present, on_disk, written, checks, entry)
            if entry is not None:  # None: it held only unusable books (an empty tar, kept so that reruns skip it)
                manifest.shards.append(entry)
    if manifest.pending:
        print(f"tokenize: {len(manifest.pending)} planned shard files are not written yet; "
              "rerun the same command to complete them")
    manifest.save(storage.join(out, MANIFEST_NAME))
    return manifest


def _previous_manifest(out: storage.Location) -> Manifest:
    """OUT's manifest as the last run left it (the format was checked before the run began), or an empty one."""
    try:
        return Manifest.load(out)
    except NarratorError:
        return Manifest(streams=[])


def _shard_entry(out: storage.Location, cfg: TokenizeConfig, shard: PlannedShard, streams: list[StreamInfo],
                 present: dict[str, str], on_disk: dict[str, dict[str, int]], written: dict[str, dict[str, WrittenShard]],
                 checks: dict[str, BookCheck], previous: ShardEntry | None) -> ShardEntry | None:
    """A written shard's record: its files (from the shard logs), its split's slots and its book index."""
    chunks = [(book, spec) for book, spec in shard.chunks(cfg.chunking) if not checks.get(book.id, _USABLE).failed]
    if not chunks:
        return None
    slots = {"train": 0, "val": 0}
    for book, spec in chunks:
        for part in split_span(grid_steps(spec.start_s), grid_steps(spec.end_s - spec.start_s), book.held_out):
            slots[part.split] += part.frames
    files = {}
    for name, rel in present.items():
        info = next(i for i in streams if i.name == name)
        record = written[name].get(rel)
        if record is None or record.bytes != on_disk[name][rel]:  # renamed, but its record was not logged
            record = WrittenShard(rel, len(chunks), (slots["train"] + slots["val"]) * info.frames_per_slot * info.n_codebooks,
                                  on_disk[name][rel], storage.sha256(storage.join(out, rel)))
            log_written(out, name, record)
        files[name] = ShardFile(rel, record.tokens, record.bytes, record.sha256)
    if previous is not None:  # a stream added to a shard: its books were indexed with the first
        books = previous.books
    else:
        pieces = {p.book: p for p in shard.pieces}
        entries = []
        for book in shard.books:
            check = checks.get(book.id, _USABLE)
            if check.failed:
                continue
            entries.append(BookEntry(
                id=book.id, source=book.source, duration_s=book.duration_s, slots=book.slots,
                chunks=len(plan_chunks(book.id, book.duration_s, cfg.chunking)), first_chunk=pieces[book.id].first,
                shard_chunks=pieces[book.id].count, held_out=book.held_out, meta=dict(book.meta),
                warning=damage_warning(book.source, check).removeprefix(f"warning: {book.source}: ")
                if check.note_count else ""))
        books = write_book_index(out, shard.index, entries)
    return ShardEntry(index=shard.index, samples=len(chunks), train_slots=slots["train"], val_slots=slots["val"],
                      files=files, books=books)


_USABLE = BookCheck("", "", 1.0, [], 0, "")  # the verdict of a book not judged (an earlier run's, before checks)


def _shard_sizes(out: storage.Location, stream: str) -> dict[str, int]:
    """A stream's finished shard files (relative to OUT) -> their sizes, from one listing (no temp files)."""
    found = storage.list_sizes(storage.join(out, "shards", stream))
    return {shard_path(stream, int(name[:-4])): size for name, size in found.items() if re.fullmatch(r"\d{6}\.tar", name)}


class ChunkEncoderActor:
    """A Ray Data actor: one model per stream; reads each chunk's audio window once and returns its tokens
    for every stream the chunk's shard still lacks (`streams`, comma-separated), as npy bytes in
    `tokens_<stream>` (empty for a stream not asked).

    Reading is where the audio is checked: each row also carries the peak of the chunk's own stretch
    (`peak`, for the book's silence check), libmpg123's notes on damaged data met while reading it
    (`notes`, one a line; they name no file, so they are caught here, per chunk), and why it could not
    be read (`error`: a book that vanished or holds undecodable data), which drops its book, not the run.
    Weights and centroids come as object refs of the driver's (in one-element lists, so Ray hands
    over the reference): no download, no rebuild. Each row carries the actor's Ray node id (`node`),
    so the driver can say where the work ran.
    """

    def __init__(self, streams: list[dict[str, Any]], torch_threads: int, device: str):
        torch.set_num_threads(torch_threads)
        self.tokenizers = {recipe["name"]: _rebuild(recipe, device) for recipe in streams}
        self.node = ray.get_runtime_context().get_node_id()
        self.audio: dict[str, AudioInfo] = {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["book"])
        specs = [ChunkSpec(**{f.name: _plain(batch[f.name][i]) for f in fields(ChunkSpec)}) for i in range(n)]
        wanted = [str(names).split(",") for names in batch["streams"]]
        columns = {f"tokens_{name}": [b""] * n for name in self.tokenizers}
        errors, peaks, notes = [""] * n, [0.0] * n, [""] * n
        windows = {}
        for i, (path, offset, spec) in enumerate(zip(batch["path"], batch["offset_s"], specs)):
            heard: list[str] = []
            try:
                with drop_stderr_lines(MPG123_NOTICE, into=heard) if is_mp3(path) else contextlib.nullcontext():
                    if path not in self.audio:
                        self.audio[path] = probe(path)
                    window = read_segment(self.audio[path], offset + spec.ctx_start_s, offset + spec.ctx_end_s)
            except NarratorError as e:
                errors[i] = str(e).removeprefix(f"{path}: ")
                continue
            windows[i] = window
            core = window[n_samples(spec.start_s - spec.ctx_start_s): n_samples(spec.end_s - spec.ctx_start_s)]
            peaks[i] = float(np.abs(core).max()) if len(core) else 0.0
            notes[i] = "\n".join(damage_notes(heard, after_seek=offset + spec.ctx_start_s > 0))
        for name, tokenizer in self.tokenizers.items():
            rows = [i for i in windows if name in wanted[i]]
            if rows:
                for i, tokens in zip(rows, tokenizer.encode_chunks([windows[i] for i in rows], [specs[i] for i in rows])):
                    columns[f"tokens_{name}"][i] = encode_npy(tokens)
        return {"book": batch["book"], "chunk": batch["chunk"], "error": np.array(errors), "peak": np.array(peaks),
                "notes": np.array(notes), "node": np.array([self.node] * n),
                **{key: np.array(values, dtype=object) for key, values in columns.items()}}


def _rebuild(recipe: dict[str, Any], device: str) -> Any:
    """An actor's copy of one stream's tokenizer, from the driver's weights (checked against their sha256)."""
    identity = from_dict(WeightsIdentity, recipe["identity"])
    if recipe["name"] == ACOUSTIC:
        return EncodecTokenizer.from_state_dict(from_dict(EncodecConfig, recipe["config"]), ray.get(recipe["weights"][0]),
                                                identity, device)
    embedder = WhisperEmbedder.from_state_dict(from_dict(WhisperConfig, recipe["config"]), ray.get(recipe["weights"][0]),
                                               identity, device)
    return SemanticTokenizer(embedder, ray.get(recipe["kmeans"][0]), device)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _codec(cfg: TokenizeConfig, out: storage.Location) -> EncodecTokenizer:
    """The codec OUT's tokens are made with. Random weights are built once, kept in OUT and loaded
    from there by every later run, since a rebuild on another machine may differ (see _random_model)."""
    weights = storage.join(out, random_weights_name(cfg.encodec.weights.seed))
    if cfg.encodec.weights.mode == "random" and storage.exists(weights):
        with storage.local_copy(weights) as local:
            return EncodecTokenizer.from_weights_file(cfg.encodec, local)
    return EncodecTokenizer(cfg.encodec)


def _embedder(cfg: TokenizeConfig, out: storage.Location) -> WhisperEmbedder:
    """The Whisper encoder of the semantic stream; random weights are kept in OUT, as the codec's are."""
    weights = storage.join(out, random_whisper_name(cfg.whisper.model, cfg.whisper.weights.seed))
    if cfg.whisper.weights.mode == "random" and storage.exists(weights):
        with storage.local_copy(weights) as local:
            return WhisperEmbedder.from_weights_file(cfg.whisper, local)
    return WhisperEmbedder(cfg.whisper)


def _save_weights(model: EncodecTokenizer | WhisperEmbedder, out: storage.Location, name: str) -> None:
    """Keep a model's random weights in OUT as `name`."""
    with _staged(out, [name]) as local, _writing(storage.join(local, name)):
        model.save_weights(storage.join(local, name))


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A full disk (or a file-size limit) while writing the local file `path` (through `path`.tmp) is one
    NarratorError naming it; the partial temporary file is removed."""
    try:
        yield
    except Exception as e:  # safetensors' and yaml's writers report it in their own exception types
        reason = storage.write_fault(e, path)
        if reason is None:
            raise
        Path(f"{path}{storage.TEMP_SUFFIX}").unlink(missing_ok=True)
        raise NarratorError(f"{path}: cannot write ({reason}); free space and rerun the same command") from None


@contextlib.contextmanager
def _staged(out: storage.Location, files: list[str]) -> Iterator[storage.Location]:
    """A local folder holding OUT's `files` (relative paths) for code that reads and writes local files:
    OUT itself when local; for a URL, a temporary copy whose new or changed files are uploaded
    afterwards, .json last (it names the others, so it is the commit point)."""
    if not storage.is_url(out):
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="narrator-out-") as folder:
        local, before = Path(folder), {}
        for rel in files:
            if storage.exists(storage.join(out, rel)):
                (local / rel).parent.mkdir(parents=True, exist_ok=True)
                storage.download(storage.join(out, rel), local / rel)
                before[rel] = storage.sha256(local / rel)
        yield local
        for rel in sorted(files, key=lambda f: f.endswith(".json")):
            if (local / rel).is_file() and before.get(rel) != storage.sha256(local / rel):
                storage.upload(local / rel, storage.join(out, rel))


def _semantic_stream(cfg: TokenizeConfig, out: storage.Location, embedder: WhisperEmbedder, plan: ShardPlan) -> _Stream:
    """Fit (or load) the folder's k-means on a sample of every planned book, away from the folder's validation
    slots, then describe the stream."""
    planned = list(plan.books())
    books = [(b.id, b.source, b.slots) for b in planned]
    with _staged(out, [str(p) for p in kmeans_paths(KMEANS_STEM)]) as local:
        model, fitted = fit_semantic(cfg, local, embedder, books, {b.id: b.held_out for b in planned})
        tokenizer = SemanticTokenizer(embedder, model)
        info = semantic_stream_info(cfg, tokenizer, local)
    if fitted:
        quality = model.meta.quality_heldout or model.meta.quality_fit
        print(f"k-means: fit k={model.meta.k} on {model.meta.sample.fit_frames:,} frames of {model.meta.sample.books} books "
              f"(Whisper {cfg.whisper.model}, layer {cfg.whisper.layer}); held-out relative error "
              f"{quality.relative_error:.3f}, perplexity {quality.perplexity:.0f} -> "
              f"{storage.join(out, KMEANS_STEM)}.json")
    return _Stream(info, tokenizer, {
        "name": SEMANTIC, "config": to_dict(cfg.whisper), "identity": to_dict(embedder.weights_identity()),
        "weights": embedder.encoder.state_dict(), "kmeans": model})


def _folder_streams(out: storage.Location) -> list[StreamInfo]:
    """Every stream the folder holds (made by this run or an earlier one), in STREAMS order."""
    paths = [storage.join(out, stream_info_path(name)) for name in STREAMS]
    return [_read_json(path, StreamInfo) for path in paths if storage.exists(path)]


def _bytes_per_second(cfg: TokenizeConfig) -> float:
    """Token bytes per second of audio over the streams made: int16 ids at each stream's rate."""
    rates = {ACOUSTIC: 75 * cfg.encodec.n_codebooks, SEMANTIC: 50}
    return float(sum(2 * rates[name] for name in cfg.streams))


def _plan_books(cfg: TokenizeConfig, plan: ShardPlan, books: list[BookSource], report: TokenizeReport,
                bytes_per_second: float) -> dict[str, PlannedBook]:
    """Append the books the plan does not hold yet to it, in input order, from their headers alone (the audio
    itself is checked by the actors as they encode it); return the books of `books` planned before."""
    known, before = plan.known({b.id for b in books}, cfg.split)
    new = []
    for book in books:
        planned = known.get(book.id)
        if planned is None:
            new.append(book)
        elif (planned.source, planned.offset_s) != (book.source, book.start_s):
            _fail(report, book, f"book id {book.id} already holds the tokens of {planned.source}"
                                f"{f' from {planned.offset_s:g} s' if planned.offset_s else ''}")

    def header(book: BookSource) -> float | str:
        """The book's duration (the file's, or its segment's) from the header, or why it cannot be planned."""
        try:
            info = probe(book.source)
        except NarratorError as e:
            return str(e).removeprefix(f"{book.source}: ")
        if info.unread_s > 0:
            print(f"warning: {book.given}: an MP3 without a length tag whose header gives {info.duration_s:.2f} s of its "
                  f"{info.duration_s + info.unread_s:.2f} s; libsndfile reads no further, so only that much is tokenized "
                  "(re-encode it with a Xing/Info tag, as lame and ffmpeg write, to read it all)")
        if book.start_s >= info.duration_s:
            return f"the segment starts at {book.start_s:g} s, past the end of the audio ({info.duration_s:.2f} s)"
        duration = info.duration_s - book.start_s
        if book.duration_s is not None:
            duration = min(duration, book.duration_s)
        if duration < cfg.min_seconds:
            return f"too short: {duration:.2f} s (min_seconds {cfg.min_seconds:g})"
        return duration

    # libmpg123 notes on an MP3's tags here name no file; the actors meet them again and name the book.
    with drop_stderr_lines(MPG123_NOTICE), ThreadPoolExecutor(max_workers=HEADER_THREADS) as pool:
        durations = list(pool.map(header, new))
    usable = []
    for book, duration in zip(new, durations):
        if isinstance(duration, str):
            _fail(report, book, duration)
        else:
            usable.append(PlannedBook(book.id, book.source, duration, book.meta, offset_s=book.start_s))
    plan.extend(usable, cfg.chunking, cfg.shards.target_mb * 1e6, bytes_per_second, cfg.split, before)
    report.added += [b.id for b in usable]
    return known


def _fail(report: TokenizeReport, book: BookSource, reason: str) -> None:
    report.failed.append(FailedBook(book.source, reason))
    print(f"skipped {book.given}: {reason}")


def _encode(cfg: TokenizeConfig, out: storage.Location, streams: list[_Stream], plan: ShardPlan,
            missing: dict[int, list[str]], written: dict[str, dict[str, WrittenShard]], checks: dict[str, BookCheck],
            given: dict[str, str], report: TokenizeReport) -> None:
    """Run the Ray Data actor pool over the chunks of the shards some stream lacks, and write each stream's shard
    file as soon as its chunks are in and every book in it has its verdict (`checks`, grown here): a shard is
    written without the chunks of books found unusable. `given`: book id -> the path as the user wrote it."""
    order = [(index, book, spec) for index in missing for book, spec in plan.shard(index).chunks(cfg.chunking)]
    items = [{"path": book.source, "offset_s": book.offset_s, "streams": ",".join(missing[index]), **asdict(spec)}
             for index, book, spec in order]
    readings: dict[str, BookReading] = {}  # books without a verdict yet: their chunks read so far
    for _, book, _ in order:
        if book.id not in checks:
            readings.setdefault(book.id, BookReading(book.id, book.source, 0)).expected += 1
    recipes = []
    for stream in streams:
        recipe = dict(stream.recipe)
        recipe["weights"] = [ray.put({k: v.cpu() for k, v in recipe["weights"].items()})]
        if "kmeans" in recipe:
            recipe["kmeans"] = [ray.put(recipe["kmeans"])]
        recipes.append(recipe)
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start)
    ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start = True, False, False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the tqdm bar below replaces Ray Data's progress output
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    # Actors read URL books (and may run on nodes that lack this environment): hand them the storage credentials.
    urls = storage.is_url(out) or any(storage.is_url(item["path"]) for item in items)
    remote_args = {"runtime_env": {"env_vars": storage.credentials_env()}} if urls and storage.credentials_env() else {}
    held: list[tuple[int, list[tuple[ChunkSpec, dict[str, Any]]]]] = []  # shards in order, their rows so far
    sizes = Counter(index for index, _, _ in order)  # chunks per shard
    damaged = 0
    unlogged: list[BookCheck] = []  # verdicts not yet in OUT/checks.jsonl
    nodes = NodeWatch()  # the nodes alive now: any that dies mid-run is named after the run
    bar = tqdm(total=len(items), unit="chunk", desc="tokenize", dynamic_ncols=True)

    def judge(reading: BookReading) -> None:
        nonlocal damaged
        check = checks[reading.book] = reading.verdict(cfg.silence_dbfs)
        unlogged.append(check)  # logged before any shard holding the book is written
        name = given.get(check.book, check.source)
        if check.failed:
            report.failed.append(FailedBook(check.source, check.error))
            bar.write(f"skipped {name}: {check.error}; its chunks are left out of its shards")
        elif check.note_count:
            damaged += 1
            if damaged <= SHOWN_WARNINGS:
                bar.write(damage_warning(name, check))

    def write_ready() -> None:
        """Write the held shards, in order, that have all their chunks and all their books' verdicts."""
        while held and len(held[0][1]) == sizes[held[0][0]] and all(spec.book in checks for spec, _ in held[0][1]):
            log_checks(out, unlogged)  # one write for the verdicts of many short recordings
            unlogged.clear()
            index, rows = held.pop(0)
            writers = {name: ShardWriter(storage.join(out, shard_path(name, index)), name=shard_path(name, index))
                       for name in missing[index]}
            with contextlib.ExitStack() as unfinished:  # a fault removes the partial files of this shard
                for writer in writers.values():
                    unfinished.enter_context(writer)
                for spec, row in rows:
                    if checks[spec.book].failed:
                        continue
                    for name, writer in writers.items():
                        tokens = decode_npy(row[f"tokens_{name}"])
                        writer.write(ChunkRecord(spec.book, spec.chunk, spec.start_s, spec.end_s, tokens.shape[-1], name),
                                     tokens)
                unfinished.pop_all()
            for name, writer in writers.items():
                done = writer.close()
                log_written(out, name, done)
                written[name][done.path] = done
                report.shards_written += 1

    try:
        blocks = math.ceil(len(items) / cfg.ray.batch_size)
        ds = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            ChunkEncoderActor,
            fn_constructor_kwargs=dict(streams=recipes, torch_threads=cfg.ray.torch_threads,
                                       device="cuda" if cfg.ray.num_gpus > 0 else "cpu"),
            batch_size=cfg.ray.batch_size, batch_format="numpy", num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus,
            resources=cfg.ray.resources or None,
            # One block (= one batch) in flight per actor: the first actor up must not queue every block.
            # No more actors than blocks: an idle actor still builds its models (and Ray Data warns).
            # An actor process that dies (killed, out of memory) is restarted and its batch run again: Ray Data's
            # actor pools default to max_restarts=-1 and max_task_retries=-1 (tests/test_tokenize_faults.py).
            compute=ray.data.ActorPoolStrategy(size=min(cfg.ray.concurrency, blocks), max_tasks_in_flight_per_actor=1),
            **remote_args)
        seconds = 0.0
        with drop_stderr_lines(RAY_ACTOR_RESTART_NOTICE):
            for (index, _, spec), row in zip(order, ds.iter_rows(), strict=True):
                assert (row["book"], row["chunk"]) == (spec.book, spec.chunk), "Ray Data returned chunks out of order"
                if not held or held[-1][0] != index:
                    held.append((index, []))
                held[-1][1].append((spec, row))
                reading = readings.get(spec.book)
                if reading is not None:
                    reading.add(float(row["peak"]), [note for note in str(row["notes"]).split("\n") if note], str(row["error"]))
                    if reading.complete:
                        judge(readings.pop(spec.book))
                write_ready()
                report.chunks_encoded += 1
                report.chunks_per_node[row["node"]] = report.chunks_per_node.get(row["node"], 0) + 1
                seconds += spec.end_s - spec.start_s
                bar.update()
                bar.set_postfix(audio=f"{seconds / 3600:.3f} h", refresh=False)
            bar.close()
        if damaged > SHOWN_WARNINGS:
            print(f"warning: {damaged - SHOWN_WARNINGS} more books with damaged MP3 data, tokenized as decoded "
                  f"(all {damaged} are listed with their books in {storage.join(out, INDEX_DIR)}/; `narrator inspect` shows them)")
        print(f"ray: {node_summary(report.chunks_per_node)}")
        for line in nodes.lost_lines():
            print(line)
    finally:
        bar.close()
        ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start = saved


def _check_out(out: storage.Location, cfg: TokenizeConfig, acoustic: StreamInfo | None = None) -> None:
    """Refuse an OUT whose streams (those this run makes) were made with another config or other weights, or
    whose validation split is another; the codec's weights are checked once `acoustic` is known."""
    path = storage.join(out, MANIFEST_NAME)
    try:
        folder = Manifest.load(out).split if storage.exists(path) else cfg.split
    except FormatError:
        raise
    except NarratorError:  # unreadable: this run writes it anew
        folder = cfg.split
    if folder != cfg.split:
        raise NarratorError(f"{storage.join(out, MANIFEST_NAME)}: its validation split is fixed ({to_dict(folder)}); "
                            f"this config asks for {to_dict(cfg.split)}: use its split: values or a new --out folder")
    path = storage.join(out, stream_info_path(ACOUSTIC))
    if ACOUSTIC in cfg.streams and storage.exists(path):
        old = _read_json(path, StreamInfo)
        new_hash = token_config_hash(cfg)
        if old.config_hash != new_hash:
            raise NarratorError(f"{out}: holds acoustic tokens made with another tokenize config (config_hash "
                                f"{old.config_hash}, now {new_hash}; see {CONFIG_NAME}); use a new --out folder")
        if acoustic is not None and old.weights.sha256 != acoustic.weights.sha256:
            raise NarratorError(f"{out}: holds tokens made with other EnCodec weights (sha256 {old.weights.sha256[:12]} from "
                                f"{old.weights.source}, now {acoustic.weights.sha256[:12]}); use a new --out folder")
    path = storage.join(out, stream_info_path(SEMANTIC))
    if SEMANTIC in cfg.streams and storage.exists(path):
        old_config = {k: v for k, v in _read_json(path, StreamInfo).config.items() if k != "kmeans_centroids_sha256"}
        if old_config != semantic_config(cfg):
            changed = ", ".join(k for k in semantic_config(cfg) if old_config.get(k) != semantic_config(cfg)[k])
            raise NarratorError(f"{out}: holds semantic tokens made with another {changed} config (see "
                                f"{stream_info_path(SEMANTIC)}); use a new --out folder")


def _write_json(path: storage.Location, obj: Any) -> None:
    storage.write_text(path, json.dumps(to_dict(obj), indent=1) + "\n")


def _read_json(path: storage.Location, cls: type) -> Any:
    try:
        return from_dict(cls, json.loads(storage.read_text(path)))
    except (json.JSONDecodeError, NarratorError) as e:
        raise NarratorError(f"{path}: unreadable ({str(e).splitlines()[0]}); delete it to rebuild") from None
