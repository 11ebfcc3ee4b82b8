"""Lhotse manifests as `narrator tokenize` inputs: a RecordingSet or CutSet (.jsonl or .jsonl.gz).

A Recording is one book (its whole file); a MonoCut is one book that is a segment of its recording
(`start_s`, `duration_s`), the supervisions' text and speaker kept in `meta`. Rows are decoded by lhotse
itself (`deserialize_item`, what its lazy loaders run per row) while we read the lines, so a 1 M-row
manifest streams, a bad row is named by its line, and manifests at s3:// URLs are read through fsspec
(lhotse would need smart_open). Audio paths follow the catalog rules: relative to the manifest's folder
and inside it unless `allow_outside_root`.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from typing import IO, Any

from narrator.errors import NarratorError
from narrator.tokenfolder import storage
from narrator.tokenizers.catalog import BOOK_ID, BookSource, audio_source, check_inside, json_object

CUT_TYPES = ("MonoCut", "Cut", "MixedCut", "MultiCut")  # "Cut": MonoCut's name before lhotse 0.8
RECORDING_KEYS = ("id", "sources", "sampling_rate", "num_samples", "duration")
CUT_KEYS = ("id", "start", "duration", "channel")
# Transforms that leave the seconds of audio as they are: the tokenizer resamples to its own rate anyway.
HARMLESS_TRANSFORMS = ("Resample",)


def looks_like_manifest(path: str) -> bool:
    """Whether a .jsonl file is a lhotse manifest rather than a catalog: its first row has lhotse's keys.
    A .jsonl.gz always is (catalogs are never gzip)."""
    if path.lower().split("?", 1)[0].endswith(".jsonl.gz"):
        return True
    try:
        with _open(path) as lines:
            first = next((line for line in lines if line.strip()), "")
        row = json.loads(first)
    except (OSError, NarratorError, UnicodeDecodeError, ValueError):
        return False  # read_catalog names the fault
    return isinstance(row, dict) and _is_lhotse_row(row)


def _is_lhotse_row(row: dict) -> bool:
    if "sources" in row and "sampling_rate" in row:
        return True  # a Recording
    if row.get("type") in CUT_TYPES:
        return True
    return ("recording" in row or "recording_id" in row) and "start" in row and "duration" in row  # a cut or supervision


def read_manifest(path: str, allow_outside_root: bool = False) -> Iterator[BookSource]:
    """The books of a lhotse RecordingSet or CutSet, one per row, streamed. A row that is not a Recording or
    a MonoCut of one audio file, or whose id is unsafe or repeated, stops with one line naming file and line."""
    try:
        from lhotse.serialization import deserialize_item
    except ImportError:
        raise NarratorError(f"{path}: a lhotse manifest; install narrator[lhotse] to read it") from None
    first_line: dict[str, int] = {}
    with _open(path) as lines:
        number = 0
        while True:
            try:
                line = next(lines, None)
            except UnicodeDecodeError:
                raise NarratorError(f"{path}: not a text manifest (not UTF-8)") from None
            except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; EOFError: a cut-off .gz
                what = "gzip-compressed JSONL" if path.lower().endswith(".gz") else "JSONL"
                raise NarratorError(f"{path}: cannot read it as {what} ({e})") from None
            if line is None:
                break
            number += 1
            if line.strip():
                book = _book(path, number, line, deserialize_item, allow_outside_root)
                if book.id in first_line:
                    raise NarratorError(f"{path} line {number}: id {book.id!r} is already used by line {first_line[book.id]}")
                first_line[book.id] = number
                yield book
    if not first_line:
        raise NarratorError(f"{path}: empty lhotse manifest")


def _open(path: str) -> IO[str]:
    """The manifest's lines as text, gunzipped when its name ends in .gz; local or at a URL."""
    location = storage.root(path)
    if not storage.exists(location):
        raise NarratorError(f"{path}: manifest file not found")
    raw = storage.open_read(location)
    if str(location).lower().endswith(".gz"):
        raw = gzip.GzipFile(fileobj=raw)
    return io.TextIOWrapper(raw, encoding="utf-8")


def _book(path: str, number: int, line: str, deserialize_item: Any, allow_outside_root: bool) -> BookSource:
    where = f"{path} line {number}"
    row = json_object(line, where, "a JSON object (a lhotse Recording or Cut)")
    if "sources" not in row and not _is_lhotse_row(row):
        raise NarratorError(f"{where}: not a lhotse Recording or Cut (keys: {', '.join(row) or 'none'})")
    kind = "Recording" if "sources" in row else str(row.get("type", "SupervisionSegment"))
    if kind not in ("Recording", "MonoCut", "Cut"):
        raise NarratorError(f"{where}: a lhotse {kind}; narrator reads RecordingSet and CutSet manifests of "
                            "MonoCuts (one recording each)")
    missing = [key for key in (RECORDING_KEYS if kind == "Recording" else CUT_KEYS) if key not in row]
    if kind != "Recording" and "recording" not in row:
        missing.append("recording")  # a features-only cut: no audio to tokenize
    if missing:
        raise NarratorError(f"{where}: a lhotse {kind} without {', '.join(missing)}")
    try:
        item = deserialize_item(row)
    except Exception as e:  # noqa: BLE001 - lhotse raises TypeError, KeyError, ValueError, AssertionError for bad rows
        text = str(e).splitlines()[0] if str(e) else ""
        raise NarratorError(f"{where}: not a valid lhotse {kind} ({type(e).__name__}: {text})") from None
    if kind == "Recording":
        _check_id(where, item.id)
        audio = _audio(where, item)
        check_inside(path, where, audio, allow_outside_root)
        return BookSource(item.id, audio_source(audio, path), f"{where} ({audio})")
    return _cut_book(path, where, item, allow_outside_root)


def _cut_book(path: str, where: str, cut: Any, allow_outside_root: bool) -> BookSource:
    """A MonoCut: its recording's file from `start` for `duration` seconds, its supervisions in meta."""
    _check_id(where, cut.id)
    recording = cut.recording
    channels = set(cut.channel if isinstance(cut.channel, list) else [cut.channel])
    if len(recording.channel_ids) > 1 and channels != set(recording.channel_ids):
        raise NarratorError(f"{where}: cut {cut.id!r} takes channel {', '.join(map(str, sorted(channels)))} of "
                            f"{len(recording.channel_ids)}-channel recording {recording.id!r}; narrator reads all "
                            "channels mixed down to mono")
    audio = _audio(where, recording)
    check_inside(path, where, audio, allow_outside_root)
    supervisions = sorted(cut.supervisions, key=lambda s: s.start)
    meta = {"text": " ".join(s.text.strip() for s in supervisions if s.text and s.text.strip()),
            "speaker": next((s.speaker for s in supervisions if s.speaker), ""), "recording": recording.id}
    return BookSource(cut.id, audio_source(audio, path), f"{where} ({audio})", {k: v for k, v in meta.items() if v},
                      start_s=float(cut.start), duration_s=float(cut.duration))


def _check_id(where: str, book_id: str) -> None:
    if not isinstance(book_id, str) or not BOOK_ID.match(book_id):
        raise NarratorError(f"{where}: id {book_id!r} may hold only letters, digits, '_' and '-' (at most 200)")


def _audio(where: str, recording: Any) -> str:
    """The one file or URL a Recording reads; anything narrator would read differently is refused."""
    if len(recording.sources) != 1:
        raise NarratorError(f"{where}: recording {recording.id!r} has {len(recording.sources)} audio sources; "
                            "narrator reads recordings of one audio file")
    source = recording.sources[0]
    if source.type not in ("file", "url"):
        raise NarratorError(f"{where}: recording {recording.id!r} has a {source.type!r} audio source; narrator reads "
                            "only 'file' and 'url' sources")
    changed = [type(t).__name__ for t in recording.transforms or [] if type(t).__name__ not in HARMLESS_TRANSFORMS]
    if changed:
        raise NarratorError(f"{where}: recording {recording.id!r} has lhotse transforms ({', '.join(changed)}); "
                            "narrator reads the audio as stored")
    return str(source.source)
