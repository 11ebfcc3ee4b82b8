"""What `narrator tokenize` reads: audio files, globs, catalogs and lhotse manifests, turned into books with ids.

A catalog is JSONL or CSV with the columns `id` and `audio` (a path relative to the catalog, an
absolute path or a URL such as s3://bucket/key), optional `reader` and `licence`, and any other
columns, all kept with the book in manifest.json (`meta`); or .txt, one audio path per line (#
comments), the book ids then made from the file names. A catalog may itself be a URL. Catalog ids
are the book ids, so a catalog with rows added tokenizes only the new rows when rerun. A lhotse
RecordingSet or CutSet (.jsonl.gz, or .jsonl whose first row has lhotse's keys) is read by
lhotse_manifest.py: a cut is a book that is a segment of its recording (`start_s`, `duration_s`).

An input with `*`, `?` or `[` is a glob (`corpus/**/*.flac`, `s3://bucket/books/*.mp3`), expanded
recursively and sorted; its matches are what the pattern's own suffix says (audio files unless it
ends in .jsonl, .jsonl.gz, .csv or .txt), so `corpus/**/*` takes every file as audio: the pattern
decides. An http(s) URL is never a glob (its `?` starts a query), nor a local file that exists.

Each id is one book. The same audio under two ids (two catalog rows, a recording and a cut of it)
is tokenized once per id: corpora list a recording twice on purpose (overlapping cuts, two readings of
its metadata), and ids, not files, are what a rerun compares. The same path or URL given twice
without an id (two inputs, two globs) is one book.

A catalog's local paths must lie inside its folder (no absolute paths, no '..' out of it, no
symlinks pointing out) unless the user allows it (`allow_outside_root`, `--allow-outside-root`): a
catalog from elsewhere must not make the tokenizer read other files of this machine. URLs are allowed.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from narrator.errors import NarratorError
from narrator.tokenfolder import storage

BOOK_ID = re.compile(r"^[A-Za-z0-9_-]{1,200}$")  # a folder name in every shard key: no '/', no '.', no '..'
REQUIRED = ("id", "audio")
GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass
class BookSource:
    id: str
    source: str  # absolute path, or the URL as given
    given: str  # the path as the user wrote it, or where the catalog names it, for messages
    meta: dict[str, str] = field(default_factory=dict)  # catalog columns beyond id and audio (reader, licence, ...)
    start_s: float = 0.0  # where the book starts in the file: a lhotse cut is a segment of its recording
    duration_s: float | None = None  # how long it is; None: to the end of the file


def resolve_inputs(inputs: list[str], allow_outside_root: bool = False) -> list[BookSource]:
    """Audio paths, URLs or globs, catalogs and lhotse manifests -> books in input order, each once. Ids from
    JSONL/CSV catalogs and manifests are checked (safe characters, unique); the others are made from the file
    name. Paths in catalogs must stay inside the catalog's folder unless `allow_outside_root`."""
    named: list[BookSource] = []  # from JSONL/CSV rows and manifests: their own ids
    unnamed: dict[str, tuple[int, str]] = {}  # source -> (input position, as given): ids made below
    order: list[str | BookSource] = []
    for pattern in inputs:
        kind = _kind(pattern)
        for item in expand_glob(pattern) if is_glob(pattern) else [pattern]:
            if kind in ("jsonl", "lhotse", "csv"):
                for book in _named_books(kind, item, allow_outside_root):
                    named.append(book)
                    order.append(book)
            elif kind == "txt":
                for source, given in _read_list(item, allow_outside_root):
                    if source not in unnamed:
                        unnamed[source] = (len(order), given)
                        order.append(source)
            else:
                source = audio_source(item, None)
                if source not in unnamed:
                    unnamed[source] = (len(order), item)
                    order.append(source)
    if not order:
        raise NarratorError(f"no audio files in the inputs: {' '.join(inputs)}")
    made = _ids_from_names(list(unnamed))
    books, seen = [], {}
    for entry in order:
        book = entry if isinstance(entry, BookSource) else BookSource(made[entry], entry, unnamed[entry][1])
        if book.id in seen:
            if _span(seen[book.id]) == _span(book):
                continue  # the same book named twice
            raise NarratorError(f"{book.given}: book id {book.id!r} is also the id of {seen[book.id].given}; "
                                "give each book its own id")
        seen[book.id] = book
        books.append(book)
    return books


def _named_books(kind: str, item: str, allow_outside_root: bool) -> Iterable[BookSource]:
    """The books of a catalog or lhotse manifest; a .jsonl is a manifest when its first row says so."""
    from narrator.tokenizers import lhotse_manifest  # here: it imports this module

    if kind == "lhotse" or kind == "jsonl" and lhotse_manifest.looks_like_manifest(item):
        return lhotse_manifest.read_manifest(item, allow_outside_root)
    return read_catalog(item, allow_outside_root)


def _span(book: BookSource) -> tuple[str, float, float | None]:
    return book.source, book.start_s, book.duration_s


def is_glob(item: str) -> bool:
    """Whether an input is a glob: it holds `*`, `?` or `[`, is not an http(s) URL (where `?` starts a query)
    and is not a local file of that very name."""
    if not GLOB_CHARS.search(item) or storage.scheme(item) in ("http", "https"):
        return False
    return storage.is_url(item) or not Path(item.removeprefix("file://")).expanduser().is_file()


def expand_glob(pattern: str) -> list[str]:
    """The files a glob matches, sorted, `**` matching any depth: local paths as glob writes them, or URLs."""
    if storage.is_url(pattern):
        matches = storage.glob_files(pattern)
    else:
        local = str(Path(pattern.removeprefix("file://")).expanduser())
        matches = sorted(p for p in glob.glob(local, recursive=True) if Path(p).is_file())
    if not matches:
        raise NarratorError(f"{pattern}: the glob matches no file")
    return matches


def _kind(item: str) -> str:
    """"lhotse", "jsonl" (a catalog, or a lhotse manifest by its first row), "csv", "txt" or "audio", by suffix."""
    name = item.split("?", 1)[0] if storage.is_url(item) else item
    if name.lower().endswith(".jsonl.gz"):
        return "lhotse"
    return {".jsonl": "jsonl", ".csv": "csv", ".txt": "txt"}.get(_suffix(item), "audio")


def read_catalog(catalog: str, allow_outside_root: bool = False) -> list[BookSource]:
    """The rows of a JSONL or CSV catalog as books. A malformed row stops with one line naming the
    catalog and the row; a row whose audio is missing is not checked here (tokenize skips it, named)."""
    rows = _rows(catalog)
    books, first_row = [], {}
    for number, row in rows:
        where = f"{catalog} line {number}"
        missing = [key for key in REQUIRED if not str(row.get(key) or "").strip()]
        if missing:
            raise NarratorError(f"{where}: no {' or '.join(missing)} (a catalog row needs id and audio; "
                                f"columns here: {', '.join(row) or 'none'})")
        book_id, audio = str(row["id"]).strip(), str(row["audio"]).strip()
        if not BOOK_ID.match(book_id):
            raise NarratorError(f"{where}: id {book_id!r} may hold only letters, digits, '_' and '-' (at most 200)")
        if book_id in first_row:
            raise NarratorError(f"{where}: id {book_id!r} is already used by line {first_row[book_id]}")
        first_row[book_id] = number
        meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in row.items()
                if k not in REQUIRED and v is not None and v != ""}
        check_inside(catalog, where, audio, allow_outside_root)
        books.append(BookSource(book_id, audio_source(audio, catalog), f"{where} ({audio})", meta))
    return books


def _rows(catalog: str) -> list[tuple[int, dict]]:
    """(line number, columns) for each row: lines count from 1, a CSV header being line 1."""
    text = _read(catalog)
    if _suffix(catalog) == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None:
            raise NarratorError(f"{catalog}: empty catalog (a CSV catalog starts with a header row: id,audio,...)")
        rows = []
        for row in reader:
            if None in row:
                raise NarratorError(f"{catalog} line {reader.line_num}: more cells than header columns")
            if any((v or "").strip() for v in row.values()):
                rows.append((reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items()}))
        return rows
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        rows.append((number, json_object(line, f"{catalog} line {number}", "a JSON object with id and audio")))
    return rows


def _read_list(catalog: str, allow_outside_root: bool = False) -> list[tuple[str, str]]:
    """A .txt catalog: (source, as written) for each path, relative ones resolved against the catalog."""
    entries = []
    for number, line in enumerate(_read(catalog).splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            check_inside(catalog, f"{catalog} line {number}", line, allow_outside_root)
            entries.append((audio_source(line, catalog), line if storage.is_url(line) else str(_near(line, catalog))))
    return entries


def check_inside(catalog: str, where: str, audio: str, allow_outside_root: bool) -> None:
    """Refuse a local audio path that lies outside the catalog's folder, naming the flag that allows it."""
    if storage.is_url(audio) or allow_outside_root:
        return
    folder = storage.parent(storage.root(catalog))
    outside = storage.escape(folder, audio.removeprefix("file://"))
    if outside:
        raise NarratorError(f"{where}: audio {audio!r} lies outside the catalog's folder {folder} ({outside}); "
                            "narrator tokenize --allow-outside-root reads it anyway")


def json_object(line: str, where: str, expected: str) -> dict:
    """One JSONL row as a dict, or one NarratorError line naming `where` (file and line) and what was `expected`."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise NarratorError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(row, dict):
        raise NarratorError(f"{where}: expected {expected}, got {line.strip()[:60]}")
    return row


def _read(catalog: str) -> str:
    location = storage.root(catalog)
    if not storage.exists(location):
        raise NarratorError(f"{catalog}: catalog file not found")
    try:
        return storage.read_text(location)
    except UnicodeDecodeError:
        raise NarratorError(f"{catalog}: not a text catalog (not UTF-8)") from None


def audio_source(audio: str, catalog: str | None) -> str:
    """A URL as given; a local path made absolute (relative to the catalog's folder, or to the working
    folder for a path given on the command line)."""
    if storage.is_url(audio):
        return audio
    if catalog is not None and storage.is_url(catalog) and not Path(audio).is_absolute():
        return str(storage.join(storage.parent(storage.root(catalog)), audio))
    return storage.real_path(str(_near(audio, catalog)))


def _near(path: str, catalog: str | None) -> Path:
    p = Path(path.removeprefix("file://")).expanduser()
    if catalog is None or p.is_absolute():
        return p
    return Path(storage.parent(storage.root(catalog))) / p


def _suffix(item: str) -> str:
    return Path(item.split("?", 1)[0]).suffix.lower() if storage.is_url(item) else Path(item).suffix.lower()


def _ids_from_names(sources: list[str]) -> dict[str, str]:
    """Book ids from file names; every book of a colliding name gets a hash of its path, so ids do not
    depend on input order."""
    stems = {s: re.sub(r"[^A-Za-z0-9_-]+", "_", Path(storage.name(s)).stem).strip("_") or "book" for s in sources}
    counts: dict[str, int] = {}
    for stem in stems.values():
        counts[stem] = counts.get(stem, 0) + 1
    return {s: f"{stem}-{hashlib.sha1(s.encode()).hexdigest()[:6]}" if counts[stem] > 1 else stem
            for s, stem in stems.items()}
