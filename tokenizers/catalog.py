"""What `narrator tokenize` reads: audio files and catalogs of them, turned into books with ids.

A catalog is JSONL or CSV with the columns `id` and `audio` (a path relative to the catalog, an
absolute path or a URL such as s3://bucket/key), optional `reader` and `licence`, and any other
columns, all kept with the book in manifest.json (`meta`); or .txt, one audio path per line (#
comments), the book ids then made from the file names. A catalog may itself be a URL. Catalog ids
are the book ids, so a catalog with rows added tokenizes only the new rows when rerun.

A catalog's local paths must lie inside its folder (no absolute paths, no '..' out of it, no
symlinks pointing out) unless the user allows it (`allow_outside_root`, `--allow-outside-root`): a
catalog from elsewhere must not make the tokenizer read other files of this machine. URLs are allowed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from narrator.errors import NarratorError
from narrator.tokenfolder import storage

BOOK_ID = re.compile(r"^[A-Za-z0-9_-]{1,200}$")  # a folder name in every shard key: no '/', no '.', no '..'
REQUIRED = ("id", "audio")


@dataclass
class BookSource:
    id: str
    source: str  # absolute path, or the URL as given
    given: str  # the path as the user wrote it, or where the catalog names it, for messages
    meta: dict[str, str] = field(default_factory=dict)  # catalog columns beyond id and audio (reader, licence, ...)


def resolve_inputs(inputs: list[str], allow_outside_root: bool = False) -> list[BookSource]:
    """Audio paths or URLs and catalogs -> books in input order, each once. Ids from JSONL/CSV catalogs
    are checked (safe characters, unique); the others are made from the file name. Paths in catalogs
    must stay inside the catalog's folder unless `allow_outside_root`."""
    named: list[BookSource] = []  # from JSONL/CSV rows: their own ids
    unnamed: dict[str, tuple[int, str]] = {}  # source -> (input position, as given): ids made below
    order: list[str | BookSource] = []
    for item in inputs:
        suffix = _suffix(item)
        if suffix in (".jsonl", ".csv"):
            for book in read_catalog(item, allow_outside_root):
                named.append(book)
                order.append(book)
        elif suffix == ".txt":
            for source, given in _read_list(item, allow_outside_root):
                if source not in unnamed:
                    unnamed[source] = (len(order), given)
                    order.append(source)
        else:
            source = _source(item, None)
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
            if seen[book.id].source == book.source:
                continue  # the same book named twice
            raise NarratorError(f"{book.given}: book id {book.id!r} is also the id of {seen[book.id].given}; "
                                "give each book its own id")
        seen[book.id] = book
        books.append(book)
    return books


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
        _check_inside(catalog, where, audio, allow_outside_root)
        books.append(BookSource(book_id, _source(audio, catalog), f"{where} ({audio})", meta))
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
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise NarratorError(f"{catalog} line {number}: not JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise NarratorError(f"{catalog} line {number}: expected a JSON object with id and audio, got {line.strip()[:60]}")
        rows.append((number, row))
    return rows


def _read_list(catalog: str, allow_outside_root: bool = False) -> list[tuple[str, str]]:
    """A .txt catalog: (source, as written) for each path, relative ones resolved against the catalog."""
    entries = []
    for number, line in enumerate(_read(catalog).splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            _check_inside(catalog, f"{catalog} line {number}", line, allow_outside_root)
            entries.append((_source(line, catalog), line if storage.is_url(line) else str(_near(line, catalog))))
    return entries


def _check_inside(catalog: str, where: str, audio: str, allow_outside_root: bool) -> None:
    """Refuse a local audio path that lies outside the catalog's folder, naming the flag that allows it."""
    if storage.is_url(audio) or allow_outside_root:
        return
    folder = storage.parent(storage.root(catalog))
    outside = storage.escape(folder, audio.removeprefix("file://"))
    if outside:
        raise NarratorError(f"{where}: audio {audio!r} lies outside the catalog's folder {folder} ({outside}); "
                            "narrator tokenize --allow-outside-root reads it anyway")


def _read(catalog: str) -> str:
    location = storage.root(catalog)
    if not storage.exists(location):
        raise NarratorError(f"{catalog}: catalog file not found")
    try:
        return storage.read_text(location)
    except UnicodeDecodeError:
        raise NarratorError(f"{catalog}: not a text catalog (not UTF-8)") from None


def _source(audio: str, catalog: str | None) -> str:
    """A URL as given; a local path made absolute (relative to the catalog's folder, or to the working
    folder for a path given on the command line)."""
    if storage.is_url(audio):
        return audio
    if catalog is not None and storage.is_url(catalog) and not Path(audio).is_absolute():
        return str(storage.join(storage.parent(storage.root(catalog)), audio))
    return str(_near(audio, catalog).resolve())


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
