"""The shard plan: which chunks of which books go in which shard, the same for every token stream.

Books are taken in input order and their chunks poured into shards back to back, a new shard
starting when the next chunk would take the current one past the size target; so ten thousand
short utterances fill a few shards and a long book spans several. The plan is a pure function of
the books, their durations and the config, and it only ever grows: books planned by an earlier run
keep their shards, and new books go into new shards after the last one, so finished shards are
never rewritten. It is kept in OUT/plan.json, written before any shard is encoded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from narrator.config import from_dict, to_dict
from narrator.errors import ConfigError, NarratorError
from narrator.tokenfolder import storage
from narrator.tokenizers.chunking import ChunkSpec, plan_chunks
from narrator.tokenizers.config import ChunkingConfig

PLAN_NAME = "plan.json"
PLAN_FORMAT = "narrator-plan/1"
# Tar cost of one sample beyond its codes: a 512-byte header for each of its two members, the
# json record padded to 512, the 128-byte npy header and on average half a block of padding.
SAMPLE_OVERHEAD_BYTES = 1920


@dataclass
class PlannedBook:
    id: str
    source: str  # absolute path of the audio
    duration_s: float  # tokenized: the whole file, or the segment from offset_s
    meta: dict[str, str] = field(default_factory=dict)  # catalog columns beyond id and audio (reader, licence, ...)
    offset_s: float = 0.0  # where the book starts in its audio file (a cut of a longer recording)


@dataclass
class Piece:
    """Chunks [first, first + count) of one book."""

    book: str
    first: int
    count: int


@dataclass
class PlannedShard:
    index: int
    pieces: list[Piece]


@dataclass
class ShardPlan:
    books: list[PlannedBook] = field(default_factory=list)
    shards: list[PlannedShard] = field(default_factory=list)
    format: str = PLAN_FORMAT

    def __post_init__(self) -> None:
        self._by_id = {b.id: b for b in self.books}  # not a field: kept current by extend, never saved

    def book(self, book_id: str) -> PlannedBook | None:
        return self._by_id.get(book_id)

    def extend(self, books: list[PlannedBook], chunking: ChunkingConfig, target_bytes: float,
               bytes_per_second: float) -> list[PlannedShard]:
        """Append `books` in new shards after the last one; return the new shards.

        A chunk is costed as SAMPLE_OVERHEAD_BYTES plus `bytes_per_second` of tokens per second of
        audio: an estimate made before any token exists, so planning needs no encoder.
        """
        known = self._by_id
        new: list[PlannedShard] = []
        pieces: list[Piece] = []
        size = 0.0
        for book in books:
            if book.id in known:
                raise ValueError(f"book {book.id} is planned already")
            self.books.append(book)
            known[book.id] = book
            for spec in plan_chunks(book.id, book.duration_s, chunking):
                cost = SAMPLE_OVERHEAD_BYTES + bytes_per_second * (spec.end_s - spec.start_s)
                if pieces and size + cost > target_bytes:
                    new.append(PlannedShard(len(self.shards) + len(new), pieces))
                    pieces, size = [], 0.0
                if pieces and pieces[-1].book == book.id:
                    pieces[-1].count += 1
                else:
                    pieces.append(Piece(book.id, spec.chunk, 1))
                size += cost
        if pieces:
            new.append(PlannedShard(len(self.shards) + len(new), pieces))
        self.shards += new
        return new

    def chunks(self, shard: PlannedShard, chunking: ChunkingConfig) -> list[tuple[PlannedBook, ChunkSpec]]:
        """The shard's chunks in order, each with its book."""
        books = self._by_id
        out = []
        for piece in shard.pieces:
            book = books[piece.book]
            specs = plan_chunks(book.id, book.duration_s, chunking)
            out += [(book, spec) for spec in specs[piece.first: piece.first + piece.count]]
        return out

    def book_shards(self) -> dict[str, list[int]]:
        """Book id -> indices of the shards holding its chunks, in chunk order."""
        found: dict[str, list[int]] = {b.id: [] for b in self.books}
        for shard in self.shards:
            for piece in shard.pieces:
                found[piece.book].append(shard.index)
        return found

    def save(self, out: storage.Location) -> None:
        storage.write_text(storage.join(out, PLAN_NAME), json.dumps(to_dict(self), separators=(",", ":")) + "\n")

    @classmethod
    def load(cls, out: storage.Location) -> "ShardPlan":
        """OUT's plan, or an empty one for a new folder."""
        path = storage.join(out, PLAN_NAME)
        if not storage.exists(path):
            return cls()
        try:
            plan = from_dict(cls, json.loads(storage.read_text(path)))
        except (json.JSONDecodeError, ConfigError) as e:
            raise NarratorError(f"{path}: unreadable shard plan ({str(e).splitlines()[0]})") from None
        if plan.format != PLAN_FORMAT:
            raise NarratorError(f"{path}: shard plan format {plan.format!r} is not {PLAN_FORMAT!r}; use a new --out folder")
        return plan
