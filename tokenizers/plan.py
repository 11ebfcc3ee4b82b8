"""The shard plan: which chunks of which books go in which shard, the same for every token stream.

Books are taken in input order and their chunks poured into shards back to back, a new shard
starting when the next chunk would take the current one past the size target; so ten thousand
short utterances fill a few shards and a long book spans several. Short recordings held out for
validation whole go last, in shards of their own, so validation reads only those. The plan is a
pure function of the books, their durations and the config, and it only ever grows: books planned
by an earlier run keep their shards and their split, and new books go into new shards after the
last one, so finished shards are never rewritten. Each shard's part of the plan is one file,
OUT/plan/<index:06d>.json, written once before any of its chunks is encoded: adding books writes
only their parts, and a rerun reads the parts' book ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from narrator.config import from_dict, to_dict
from narrator.errors import ConfigError, NarratorError
from narrator.tokenfolder import storage
from narrator.tokenfolder.manifest import FORMAT_FIX
from narrator.tokenfolder.split import Planned, SplitConfig, held_out_slots
from narrator.tokenizers.chunking import ChunkSpec, grid_steps, plan_chunks
from narrator.tokenizers.config import ChunkingConfig

PLAN_DIR = "plan"
PLAN_FORMAT = "narrator-plan/2"  # /2: a part per shard; /1 was one plan.json for the whole folder
OLD_PLAN_NAME = "plan.json"  # a narrator-tokens/2 folder's plan
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
    held_out: tuple[int, int] = (0, 0)  # its validation slots [start, end), fixed when it is planned

    @property
    def slots(self) -> int:
        return grid_steps(self.duration_s)


@dataclass
class Piece:
    """Chunks [first, first + count) of one book."""

    book: str
    first: int
    count: int


@dataclass
class PlannedShard:
    """One shard's part of the plan: its pieces, in order, and the books they come from."""

    index: int
    pieces: list[Piece]
    books: list[PlannedBook]
    format: str = PLAN_FORMAT

    def chunks(self, chunking: ChunkingConfig) -> list[tuple[PlannedBook, ChunkSpec]]:
        """The shard's chunks in order, each with its book."""
        books = {b.id: b for b in self.books}
        out = []
        for piece in self.pieces:
            book = books[piece.book]
            specs = plan_chunks(book.id, book.duration_s, chunking)
            out += [(book, spec) for spec in specs[piece.first: piece.first + piece.count]]
        return out


def plan_part_path(index: int) -> str:
    return f"{PLAN_DIR}/{index:06d}.json"


class ShardPlan:
    """OUT's plan: the parts on disk, read when asked for, and the shards this run adds."""

    def __init__(self, out: storage.Location, saved: int):
        self.out, self.saved = out, saved  # parts 0 .. saved - 1 were on disk when it was opened
        self.added: list[PlannedShard] = []  # shards saved + 0, 1, ... (kept after they are saved too)
        self.unsaved = 0  # the last this many of `added`

    @classmethod
    def open(cls, out: storage.Location) -> "ShardPlan":
        """OUT's plan (empty for a new folder); a folder of the previous format is refused in one line."""
        if storage.exists(storage.join(out, OLD_PLAN_NAME)):
            raise NarratorError(f"{storage.join(out, OLD_PLAN_NAME)}: a token folder of format narrator-tokens/2 "
                                f"(one plan.json); this version writes narrator-tokens/3: {FORMAT_FIX}")
        names = storage.list_sizes(storage.join(out, PLAN_DIR))  # empty when there is no such folder
        found = {int(n[:-5]) for n in names if re.fullmatch(r"\d{6}\.json", n)}
        saved = 0
        while saved in found:  # parts are written in order: a crash leaves a prefix
            saved += 1
        return cls(out, saved)

    def __len__(self) -> int:
        return self.saved + len(self.added)

    def shard(self, index: int) -> PlannedShard:
        if index >= self.saved:
            return self.added[index - self.saved]
        path = storage.join(self.out, plan_part_path(index))
        try:
            part = from_dict(PlannedShard, json.loads(storage.read_text(path)))
        except (json.JSONDecodeError, ConfigError) as e:
            raise NarratorError(f"{path}: unreadable shard plan ({str(e).splitlines()[0]})") from None
        if part.format != PLAN_FORMAT or part.index != index:
            raise NarratorError(f"{path}: not part {index} of a {PLAN_FORMAT} plan; use a new --out folder")
        return part

    def shards(self) -> Iterator[PlannedShard]:
        return (self.shard(i) for i in range(len(self)))

    def books(self) -> Iterator[PlannedBook]:
        """Every planned book once, in plan order (reads every part)."""
        for shard in self.shards():
            firsts = {p.book for p in shard.pieces if p.first == 0}
            yield from (b for b in shard.books if b.id in firsts)

    def known(self, ids: set[str], split: SplitConfig) -> tuple[dict[str, PlannedBook], Planned]:
        """The planned books among `ids`, and what the plan holds (for the split of books added to it).

        Reads each saved part's JSON once; a million books are a few seconds of json.loads.
        """
        found, books, short_held = {}, 0, 0
        for index in range(self.saved):
            path = storage.join(self.out, plan_part_path(index))
            try:
                part = json.loads(storage.read_text(path))
                firsts = {p["book"] for p in part["pieces"] if p["first"] == 0}
                for row in part["books"]:
                    if row["id"] not in firsts:
                        continue
                    books += 1
                    start, end = row["held_out"]
                    short_held += row["duration_s"] < split.long_book_seconds and end > start
                    if row["id"] in ids:
                        found[row["id"]] = from_dict(PlannedBook, row)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, ConfigError) as e:
                raise NarratorError(f"{path}: unreadable shard plan ({str(e).splitlines()[0]})") from None
        return found, Planned(books, short_held)

    def extend(self, books: list[PlannedBook], chunking: ChunkingConfig, target_bytes: float,
               bytes_per_second: float, split: SplitConfig, before: Planned = Planned()) -> list[PlannedShard]:
        """Split `books` (held_out_slots, given what the plan held `before`) and append them in new shards after
        the last one, the short recordings held out whole last, in shards of their own; return the new shards.

        A chunk is costed as SAMPLE_OVERHEAD_BYTES plus `bytes_per_second` of tokens per second of
        audio: an estimate made before any token exists, so planning needs no encoder.
        """
        windows = held_out_slots(books, split, before)
        for book in books:
            book.held_out = windows[book.id]
        whole = [b for b in books if b.duration_s < split.long_book_seconds and b.held_out[1] > 0]
        held = {b.id for b in whole}
        new = self._pour([b for b in books if b.id not in held], chunking, target_bytes, bytes_per_second)
        new += self._pour(whole, chunking, target_bytes, bytes_per_second)
        return new

    def _pour(self, books: list[PlannedBook], chunking: ChunkingConfig, target_bytes: float,
              bytes_per_second: float) -> list[PlannedShard]:
        """`books`' chunks poured into new shards, back to back."""
        new: list[PlannedShard] = []
        pieces: list[Piece] = []
        size = 0.0

        def close() -> None:
            named = {p.book for p in pieces}
            new.append(PlannedShard(len(self), list(pieces), [b for b in books_in if b.id in named]))
            self.added.append(new[-1])
            self.unsaved += 1

        books_in: list[PlannedBook] = []  # the books with a piece in the open shard
        for book in books:
            for spec in plan_chunks(book.id, book.duration_s, chunking):
                cost = SAMPLE_OVERHEAD_BYTES + bytes_per_second * (spec.end_s - spec.start_s)
                if pieces and size + cost > target_bytes:
                    close()
                    pieces, size, books_in = [], 0.0, []
                if pieces and pieces[-1].book == book.id:
                    pieces[-1].count += 1
                else:
                    pieces.append(Piece(book.id, spec.chunk, 1))
                    books_in.append(book)
                size += cost
        if pieces:
            close()
        return new

    def save(self) -> None:
        """Write the parts of the shards added, in order (the commit point: their books' shards are fixed)."""
        for shard in self.added[len(self.added) - self.unsaved:]:
            storage.write_text(storage.join(self.out, plan_part_path(shard.index)),
                               json.dumps(to_dict(shard), separators=(",", ":")) + "\n")
            self.unsaved -= 1
