"""What the actors found in each planned book's audio: the verdict that decides whether the manifest keeps it.

Planning reads headers only, so a silent, undecodable or vanished book is found by the actors, as
they read the chunks they encode (each byte of audio is decoded once). The driver gathers a book's
chunks into one `BookCheck` once all of them are in, and appends it to OUT/checks.jsonl before any
shard holding the book is written: a shard never depends on a verdict that a crash could lose, and
a rerun that re-encodes one shard of a long book takes the verdict from the log, not from the few
chunks it reads again. A failed book's chunks are left out of its shards and the manifest.
"""

from __future__ import annotations

import json
from collections.abc import Container
from dataclasses import asdict, dataclass, field

from narrator.tokenfolder import storage
from narrator.tokenizers.audio import dbfs

CHECKS_LOG = "checks.jsonl"


@dataclass
class BookCheck:
    book: str
    source: str
    peak: float  # peak amplitude of the mono 24 kHz audio tokenized (0: digital silence)
    notes: list[str] = field(default_factory=list)  # the decoder's notes on damaged MP3 data (the first few)
    note_count: int = 0  # all of them
    error: str = ""  # why the book is not usable (empty: it is)

    @property
    def failed(self) -> bool:
        return bool(self.error)


@dataclass
class BookReading:
    """One book's chunks as they come back from the actors, until all `expected` are in."""

    book: str
    source: str
    expected: int
    seen: int = 0
    peak: float = 0.0
    notes: list[str] = field(default_factory=list)
    note_count: int = 0
    error: str = ""

    def add(self, peak: float, notes: list[str], error: str) -> None:
        self.seen += 1
        self.peak = max(self.peak, peak)
        self.note_count += len(notes)
        self.notes += notes[: max(0, 3 - len(self.notes))]
        self.error = self.error or error

    @property
    def complete(self) -> bool:
        return self.seen == self.expected

    def verdict(self, silence_dbfs: float) -> BookCheck:
        error = self.error
        if not error and dbfs(self.peak) < silence_dbfs:
            error = f"silent (peak {dbfs(self.peak):.1f} dBFS is below silence_dbfs {silence_dbfs:g})"
        return BookCheck(self.book, self.source, self.peak, self.notes, self.note_count, error)


def log_checks(out: storage.Location, checks: list[BookCheck]) -> None:
    """Append verdicts to OUT/checks.jsonl in one write (an object store: one object, named after the first book)."""
    if checks:
        storage.append_lines(out, CHECKS_LOG, checks[0].book, [json.dumps(asdict(check)) for check in checks])


def read_checks(out: storage.Location, books: Container[str] | None = None) -> dict[str, BookCheck]:
    """Book id -> its verdict from earlier runs, for `books` (None: all) and every failed book; a line torn by a
    crash is ignored (that book is read again). A corpus keeps only what the run needs in memory."""
    found: dict[str, BookCheck] = {}
    for line in storage.read_lines(out, CHECKS_LOG):
        try:
            check = BookCheck(**json.loads(line))
        except (ValueError, TypeError):
            continue
        if books is None or check.book in books or check.error:
            found[check.book] = check
    return found


def damage_warning(given: str, check: BookCheck) -> str:
    """The one line naming a book whose MP3 data the decoder skipped or concealed."""
    return (f"warning: {given}: damaged MP3 data: the decoder skipped or concealed it ({check.note_count} "
            f"note{'s' if check.note_count > 1 else ''} from libmpg123, the first: {check.notes[0]}); tokenized as decoded")
