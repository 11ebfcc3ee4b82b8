"""Token layouts: how a token folder's streams become the one token sequence an LM reads, and back.

Streams: `acoustic` = EnCodec codes [K, frames] at 75 Hz, `semantic` = k-means ids [frames] at 50 Hz.
Both lie on a 40 ms slot grid (3 acoustic frames, 2 semantic ids per slot), so layouts that mix them
line up slot by slot. Each layout is a small class with one interface (after audiocraft's
codebooks_patterns): a unit pattern repeated over time (`FlatLayout` = acoustic, `SemanticLayout`,
`InterleavedLayout`), or a per-window arrangement (`PrefixLayout`, AudioLM's coarse stage).
`DedupSemanticLayout` (data.dedup_semantic) is the semantic layout with runs of repeated ids collapsed.

Ids: each stream owns one range, in `streams` order from 0; the special tokens (`SpecialTokens`)
come after every stream id. A whole unit of boundary tokens separates recordings inside a window,
so windows still start on a unit, and `decode` splits there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from narrator.errors import ConfigError
from narrator.tokenfolder.manifest import SEMANTIC

SLOT_SECONDS = 0.04
SLOT_FRAMES = {"semantic": 2, "acoustic": 3}  # frames per 40 ms slot: ids at 50 Hz, EnCodec frames at 75 Hz


@dataclass(frozen=True)
class StreamShape:
    """One stream of a token folder: `n_codebooks` parallel codebooks of `codebook_size` ids each.

    Semantic ids are stored 1-D [frames]; acoustic codes [n_codebooks, frames].
    """

    name: str
    n_codebooks: int
    codebook_size: int

    def __post_init__(self):
        if self.name not in SLOT_FRAMES:
            raise ConfigError(f"unknown token stream {self.name!r} (known: {', '.join(SLOT_FRAMES)})")
        if self.n_codebooks < 1 or self.codebook_size < 1:
            raise ValueError(f"need n_codebooks >= 1 and codebook_size >= 1, "
                             f"got {self.n_codebooks}, {self.codebook_size}")
        if self.ids_1d and self.n_codebooks != 1:
            raise ValueError(f"{self.name} ids have one codebook, got {self.n_codebooks}")

    @property
    def ids_1d(self) -> bool:
        return self.name == "semantic"

    @property
    def frames_per_slot(self) -> int:
        return SLOT_FRAMES[self.name]

    def frames(self, array: np.ndarray) -> np.ndarray:
        """The stream's array as int64 [n_codebooks, frames], refusing a wrong shape or an id out of range."""
        a = np.asarray(array)
        if self.ids_1d and a.ndim == 1:
            a = a[None]
        if a.ndim != 2 or a.shape[0] != self.n_codebooks or (a.size and a.dtype.kind not in "iu"):
            want = "[frames]" if self.ids_1d else f"[{self.n_codebooks}, frames]"
            raise ValueError(f"expected {self.name} codes of shape {want}, got {list(a.shape)} {a.dtype}")
        if a.size and (a.min() < 0 or a.max() >= self.codebook_size):
            raise ValueError(f"{self.name} codes outside [0, {self.codebook_size})")
        return a.astype(np.int64)

    def array(self, frames: np.ndarray) -> np.ndarray:
        """[n_codebooks, frames] -> the stream's stored shape."""
        return frames[0] if self.ids_1d else frames

    def empty(self) -> np.ndarray:
        return self.array(np.zeros((self.n_codebooks, 0), np.int64))


@dataclass(frozen=True)
class SpecialTokens:
    """Every special id, declared here only: the ids right after all stream ids, in this order.

    `boundary` separates recordings (every layout); `separator` ends prefix's semantic part.
    """

    boundary: int
    separator: int | None = None

    @classmethod
    def after(cls, code_ids: int, separator: bool = False) -> "SpecialTokens":
        return cls(code_ids, code_ids + 1 if separator else None)

    @property
    def stop(self) -> int:
        """One past the last special id: the vocabulary size."""
        return self.boundary + (1 if self.separator is None else 2)


class Cut(NamedTuple):
    """How the data pipeline cuts its packed token stream: `length` tokens every `stride` tokens."""

    length: int
    stride: int


class Layout(ABC):
    """Streams {name: array} <-> a 1-D int64 token sequence, with per-position metric groups.

    The pipeline packs each piece of audio with `pack`, puts `boundary_unit` where two pieces do not
    join, cuts windows with `cut` (always at a unit) and turns each into a training window with
    `to_window`; `target_groups` then names the stream/codebook of every target for per-group losses.
    """

    streams: tuple[str, ...]
    infos: dict[str, StreamShape]
    stream_ranges: dict[str, range]  # the ids each stream owns
    special: SpecialTokens
    group_names: list[str]
    unit_tokens: int  # the packed stream is cut in whole units of this many tokens
    dedup_semantic = False  # True: the semantic ids' runs of repeats are collapsed, so tokens have no fixed rate

    def _assign_ids(self, infos: Sequence[StreamShape], widths: Sequence[int], separator: bool = False) -> None:
        """Give each stream the next range of ids, in order, and the special tokens after them all."""
        self.streams = tuple(i.name for i in infos)
        self.infos = {i.name: i for i in infos}
        self.stream_ranges, start = {}, 0
        for info, width in zip(infos, widths, strict=True):
            self.stream_ranges[info.name] = range(start, start + width)
            start += width
        self.special = SpecialTokens.after(start, separator)

    @property
    def code_ids(self) -> int:
        """How many ids the streams use (0 .. code_ids - 1)."""
        return max(r.stop for r in self.stream_ranges.values())

    @property
    def boundary_token(self) -> int:
        return self.special.boundary

    @property
    def vocab_size(self) -> int:
        return self.special.stop

    @property
    def slot_tokens(self) -> int:
        """Tokens of one 40 ms slot of every stream."""
        return sum(i.frames_per_slot * i.n_codebooks for i in self.infos.values())

    @property
    def boundary_unit(self) -> np.ndarray:
        """One unit of boundary tokens: inserted whole between pieces, so windows still start on a unit."""
        return np.full(self.unit_tokens, self.boundary_token, dtype=np.int64)

    @abstractmethod
    def encode(self, streams: Mapping[str, np.ndarray]) -> np.ndarray:
        """One run of aligned streams (whole units) -> int64 tokens [n]."""

    @abstractmethod
    def decode(self, tokens: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Tokens -> the runs between boundaries, each {stream: array}; len(result) - 1 boundaries were crossed."""

    @abstractmethod
    def position_groups(self, length: int) -> np.ndarray:
        """int64 [length]: the index in `group_names` of each position of a training window."""

    def target_groups(self, block_size: int) -> np.ndarray:
        """int64 [block_size]: the group of each target y[i] = window[i + 1]."""
        return self.position_groups(block_size + 1)[1:]

    def pack(self, streams: Mapping[str, np.ndarray]) -> np.ndarray:
        """One piece of aligned streams -> the tokens of the packed stream the pipeline cuts."""
        return self.encode(streams)

    def cut(self, block_size: int) -> Cut:
        """Windows of block_size + 1 tokens every whole number of units, at most block_size + 1 apart.

        With block_size a multiple of the unit, consecutive windows share one token (the last target
        of one is the first input of the next) and every token is an input or a target.
        """
        return Cut(block_size + 1, max(1, (block_size + 1) // self.unit_tokens) * self.unit_tokens)

    def to_window(self, tokens: np.ndarray, block_size: int) -> np.ndarray:
        """A cut of the packed stream -> the training window of block_size + 1 tokens."""
        if len(tokens) != block_size + 1:
            raise ValueError(f"expected a cut of {block_size + 1} tokens, got {len(tokens)}")
        return tokens


class _Pattern:
    """Packs streams into units of tokens and back; the engine behind every layout.

    A unit holds `frames_per_unit[s]` frames of each stream s in order, each frame's codebooks in
    order; code c of codebook k of stream s is id first_id[s] + k * codebook_size + c (k * codebook_size
    left out when the codebooks share ids).
    """

    def __init__(self, infos: Sequence[StreamShape], frames_per_unit: Mapping[str, int], first_id: Mapping[str, int],
                 shared_vocab: bool = False):
        self.infos, self.fpu, self.first_id = list(infos), dict(frames_per_unit), dict(first_id)
        self.entries = [(info, k, f, first_id[info.name] + (0 if shared_vocab else k * info.codebook_size))
                        for info in infos for f in range(frames_per_unit[info.name]) for k in range(info.n_codebooks)]
        self.unit_tokens = len(self.entries)

    def pack(self, streams: Mapping[str, np.ndarray]) -> np.ndarray:
        missing = [i.name for i in self.infos if i.name not in streams]
        if missing:
            raise ValueError(f"missing stream(s) {', '.join(missing)}")
        frames = {i.name: i.frames(streams[i.name]) for i in self.infos}
        units = {name: f.shape[1] / self.fpu[name] for name, f in frames.items()}
        n = next(iter(units.values()))
        if any(u != n for u in units.values()) or n != int(n):
            lengths = ", ".join(f"{name} {f.shape[1]} frames" for name, f in frames.items())
            raise ValueError(f"streams must cover the same whole units of {self.fpu} frames, got {lengths}")
        out = np.empty((int(n), self.unit_tokens), np.int64)
        for p, (info, k, f, offset) in enumerate(self.entries):
            out[:, p] = frames[info.name][k, f :: self.fpu[info.name]] + offset
        return out.reshape(-1)

    def unpack(self, tokens: np.ndarray, boundary: int) -> list[dict[str, np.ndarray]]:
        """Tokens -> runs between units holding any boundary token; a trailing partial unit is dropped."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        n = len(tokens) // self.unit_tokens
        units = tokens[: n * self.unit_tokens].reshape(n, self.unit_tokens)
        cuts = np.flatnonzero((units == boundary).any(axis=1))
        starts, ends = np.concatenate([[0], cuts + 1]), np.concatenate([cuts, [n]])
        return [self._streams(units[a:b]) for a, b in zip(starts, ends)]

    def _streams(self, units: np.ndarray) -> dict[str, np.ndarray]:
        """Every token maps to (token - first id of its stream) % codebook_size: a token from another
        range (a model may sample one) wraps to a valid code instead of failing."""
        frames = {i.name: np.empty((i.n_codebooks, len(units) * self.fpu[i.name]), np.int64) for i in self.infos}
        for p, (info, k, f, _) in enumerate(self.entries):
            codes = (units[:, p] - self.first_id[info.name]) % info.codebook_size
            frames[info.name][k, f :: self.fpu[info.name]] = codes
        return {i.name: i.array(frames[i.name]) for i in self.infos}

    def groups(self) -> tuple[list[str], np.ndarray]:
        """Group names (a stream, or stream/cbK when it has several codebooks) and each unit position's group."""
        keys = [(i, k) for i in self.infos for k in range(i.n_codebooks)]
        names = [i.name if i.n_codebooks == 1 else f"{i.name}/cb{k}" for i, k in keys]
        index = [keys.index((info, k)) for info, k, _, _ in self.entries]
        return names, np.array(index, np.int64)


class PatternLayout(Layout):
    """A unit pattern repeated over time: the stream can be cut at any unit, so position i of a
    window holds the pattern's position i % unit_tokens."""

    def __init__(self, infos: Sequence[StreamShape], frames_per_unit: Mapping[str, int], shared_vocab: bool = False):
        self._assign_ids(infos, [i.codebook_size if shared_vocab else i.n_codebooks * i.codebook_size for i in infos])
        first_id = {s: r.start for s, r in self.stream_ranges.items()}
        self._pattern = _Pattern(infos, frames_per_unit, first_id, shared_vocab)
        self.unit_tokens = self._pattern.unit_tokens
        self.group_names, self._unit_groups = self._pattern.groups()

    def encode(self, streams: Mapping[str, np.ndarray]) -> np.ndarray:
        return self._pattern.pack(streams)

    def decode(self, tokens: np.ndarray) -> list[dict[str, np.ndarray]]:
        """A unit holding any boundary token is a boundary (a model may sample one mid-unit); a trailing
        partial unit is dropped; runs between adjacent boundaries are empty."""
        return self._pattern.unpack(tokens, self.boundary_token)

    def position_groups(self, length: int) -> np.ndarray:
        return np.resize(self._unit_groups, length)


class FlatLayout(PatternLayout):
    """Acoustic codes frame by frame: [c0(t0), c1(t0), .., cK-1(t0), c0(t1), ...]; the unit is one frame.

    By default codebook k owns ids [k * codebook_size, (k + 1) * codebook_size), so the model can
    tell the codebooks apart; `shared_vocab=True` keeps raw codes (ids 0..codebook_size-1).
    """

    def __init__(self, n_codebooks: int, codebook_size: int = 1024, shared_vocab: bool = False):
        info = StreamShape("acoustic", n_codebooks, codebook_size)
        self.n_codebooks, self.codebook_size, self.shared_vocab = n_codebooks, codebook_size, shared_vocab
        super().__init__([info], {"acoustic": 1}, shared_vocab)

    @property
    def tokens_per_frame(self) -> int:
        return self.unit_tokens

    @property
    def boundary_frame(self) -> np.ndarray:
        return self.boundary_unit

    def to_tokens(self, codes: np.ndarray) -> np.ndarray:
        """codes [n_codebooks, frames] -> int64 tokens [n_codebooks * frames]."""
        return self.encode({"acoustic": codes})

    def split_codes(self, tokens: np.ndarray) -> list[np.ndarray]:
        """1-D tokens -> the codes [n_codebooks, frames] between boundary frames."""
        return [run["acoustic"] for run in self.decode(tokens)]

    def to_codes(self, tokens: np.ndarray) -> np.ndarray:
        """1-D tokens without boundaries -> int64 codes [n_codebooks, frames]; a trailing partial frame is dropped."""
        runs = self.split_codes(tokens)
        if len(runs) > 1:
            raise ValueError(f"tokens hold {len(runs) - 1} boundary frame(s); use split_codes")
        return runs[0]


class SemanticLayout(PatternLayout):
    """Semantic ids only; the unit is a 40 ms slot of 2 ids, so windows and decoded runs stay on the
    slot grid the mixed layouts use (a semantic run always maps to whole slots of acoustic frames)."""

    def __init__(self, semantic: StreamShape):
        super().__init__([semantic], {"semantic": SLOT_FRAMES["semantic"]})


def dedup_runs(ids: np.ndarray) -> np.ndarray:
    """The ids with every run of repeats collapsed to one (1 1 1 5 5 1 -> 1 5 1)."""
    ids = np.asarray(ids).reshape(-1)
    if not len(ids):
        return ids
    return ids[np.concatenate([[True], ids[1:] != ids[:-1]])]


class DedupSemanticLayout(Layout):
    """Semantic ids with each run of repeats collapsed to one id (GSLM's units): the model reads what is said
    and not how long each sound lasts (54% of tiny.en's 50 Hz ids repeat the one before on LibriVox,
    benchmarks/RESULTS.md). The unit is one id.

    Ids then have no fixed rate: a decoded run is the collapsed ids, not 50 Hz frames, so it holds no
    durations and nothing is voiced from it; bits per second need the collapsed ids' rate measured on the
    audio (`narrator eval` measures it on the validation split). A run crossing two pieces of one book
    (chunks) keeps one repeat at the join.
    """

    dedup_semantic = True

    def __init__(self, semantic: StreamShape):
        self._assign_ids([semantic], [semantic.codebook_size])
        self.unit_tokens = 1
        self.group_names = [semantic.name]

    def encode(self, streams: Mapping[str, np.ndarray]) -> np.ndarray:
        if SEMANTIC not in streams:
            raise ValueError("missing stream(s) semantic")
        return dedup_runs(self.infos[SEMANTIC].frames(streams[SEMANTIC])[0])

    def decode(self, tokens: np.ndarray) -> list[dict[str, np.ndarray]]:
        """The runs between boundary tokens; a token from outside the ids wraps into them."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        cuts = np.flatnonzero(tokens == self.boundary_token)
        starts, ends = np.concatenate([[0], cuts + 1]), np.concatenate([cuts, [len(tokens)]])
        size = self.infos[SEMANTIC].codebook_size
        return [{SEMANTIC: tokens[a:b] % size} for a, b in zip(starts, ends)]

    def position_groups(self, length: int) -> np.ndarray:
        return np.zeros(length, np.int64)


class InterleavedLayout(PatternLayout):
    """One sequence over time in 40 ms slots: the slot's 2 semantic ids, then its 3 acoustic frames
    (codebooks in order), so one LM predicts the next semantic and acoustic tokens and generates both."""

    def __init__(self, semantic: StreamShape, acoustic: StreamShape):
        super().__init__([semantic, acoustic], SLOT_FRAMES)


class PrefixLayout(Layout):
    """AudioLM's coarse stage, per window of n slots: the 2n semantic ids, a separator, then the 3nK
    acoustic tokens of the same slots, so the acoustic part is predicted given all the semantics.

    Data: pack the streams as `InterleavedLayout` does (unit = one slot), cut n = block_size // slot_tokens
    whole slots every n slots (no overlap), and `to_window` rearranges them and pads the tail with
    boundary tokens to block_size + 1 (2n + 1 + 3nK <= block_size + 1; no padding when block_size is a
    multiple of slot_tokens). A boundary slot inside a cut lands in both parts, keeping them aligned.
    Generation: `prompt(semantic ids of the whole output, acoustic prompt frames)`, then sample
    3nK - K * prompt frames tokens and `decode`.
    """

    def __init__(self, semantic: StreamShape, acoustic: StreamShape):
        self._assign_ids([semantic, acoustic], [semantic.codebook_size, acoustic.n_codebooks * acoustic.codebook_size],
                         separator=True)
        first = {s: r.start for s, r in self.stream_ranges.items()}
        self._slots = _Pattern([semantic, acoustic], SLOT_FRAMES, first)  # the packed stream the pipeline cuts
        self._semantic = _Pattern([semantic], {"semantic": SLOT_FRAMES["semantic"]}, first)
        self._acoustic = _Pattern([acoustic], {"acoustic": SLOT_FRAMES["acoustic"]}, first)
        self._frames = _Pattern([acoustic], {"acoustic": 1}, first)  # an acoustic prompt need not end on a slot
        self.unit_tokens = self._slots.unit_tokens
        names, _ = self._slots.groups()
        self.group_names = [*names, "separator", "padding"]

    def slots_for(self, block_size: int) -> int:
        """Slots per window: the most whose example fits block_size + 1 tokens."""
        n = block_size // self.unit_tokens
        if n < 1:
            raise ConfigError(f"'model.block_size': the prefix layout needs block_size >= "
                              f"{self.unit_tokens} (one slot)")
        return n

    def encode(self, streams: Mapping[str, np.ndarray]) -> np.ndarray:
        """Aligned semantic [2n] and acoustic [K, 3n] -> [2n semantic ids, separator, 3nK acoustic tokens]."""
        return self._arrange(self._slots.pack(streams))

    def pack(self, streams: Mapping[str, np.ndarray]) -> np.ndarray:
        return self._slots.pack(streams)

    def cut(self, block_size: int) -> Cut:
        n = self.slots_for(block_size) * self.unit_tokens
        return Cut(n, n)

    def to_window(self, tokens: np.ndarray, block_size: int) -> np.ndarray:
        example = self._arrange(tokens)
        if len(example) > block_size + 1:
            raise ValueError(f"{len(tokens)} tokens of slots make an example longer than {block_size + 1}")
        pad = np.full(block_size + 1 - len(example), self.boundary_token, np.int64)
        return np.concatenate([example, pad])

    def _arrange(self, tokens: np.ndarray) -> np.ndarray:
        """Whole interleaved slots -> their semantic ids, the separator, their acoustic tokens."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if len(tokens) % self.unit_tokens:
            raise ValueError(f"expected whole slots of {self.unit_tokens} tokens, got {len(tokens)} tokens")
        slots = tokens.reshape(-1, self.unit_tokens)
        split = self._semantic.unit_tokens
        semantic, acoustic = slots[:, :split].reshape(-1), slots[:, split:].reshape(-1)
        return np.concatenate([semantic, [self.special.separator], acoustic])

    def prompt(self, semantic: np.ndarray, acoustic: np.ndarray) -> np.ndarray:
        """Generation's prompt: semantic ids of the whole output (whole slots), the separator, the acoustic
        prompt's frames [K, f] (any f < 3 * slots)."""
        return np.concatenate([self._semantic.pack({"semantic": semantic}), [self.special.separator],
                               self._frames.pack({"acoustic": acoustic})])

    def decode(self, tokens: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Split at the first separator (none: all semantic); each part splits at its boundary units and
        drops a trailing partial slot; the acoustic part's trailing boundary tokens are padding. Run i
        pairs the i-th run of each part; a part with fewer runs gives empty arrays."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        at = np.flatnonzero(tokens == self.special.separator)
        semantic, acoustic = (tokens[: at[0]], tokens[at[0] + 1:]) if len(at) else (tokens, tokens[:0])
        keep = np.flatnonzero(acoustic != self.boundary_token)
        acoustic = acoustic[: keep[-1] + 1] if len(keep) else acoustic[:0]
        runs_s = self._semantic.unpack(semantic, self.boundary_token)
        runs_a = self._acoustic.unpack(acoustic, self.boundary_token) if len(acoustic) else []
        return [{name: (runs[i][name] if i < len(runs) else self.infos[name].empty())
                 for name, runs in (("semantic", runs_s), ("acoustic", runs_a))}
                for i in range(max(len(runs_s), len(runs_a)))]

    def position_groups(self, length: int) -> np.ndarray:
        """[semantic x 2n][separator][acoustic cb0..cbK-1 x 3n][padding], n = (length - 1) // slot_tokens."""
        n = (length - 1) // self.unit_tokens
        semantic, acoustic = self._semantic.unit_tokens, self._acoustic.unit_tokens
        k = self.infos["acoustic"].n_codebooks
        groups = np.full(length, len(self.group_names) - 1, np.int64)  # padding
        groups[: n * semantic] = 0
        groups[n * semantic] = len(self.group_names) - 2
        groups[n * semantic + 1 : n * (semantic + acoustic) + 1] = np.resize(np.arange(1, k + 1), n * acoustic)
        return groups


LAYOUTS = {"flat": ("acoustic",), "acoustic": ("acoustic",), "semantic": ("semantic",),
           "interleaved": ("semantic", "acoustic"), "prefix": ("semantic", "acoustic")}


def make_layout(name: str, streams: int | Mapping[str, StreamShape | tuple[int, int]], codebook_size: int = 1024,
                shared_vocab: bool = False, dedup_semantic: bool = False) -> Layout:
    """The layout `name` over `streams` ({stream: StreamShape or (n_codebooks, codebook_size)}).

    The old call `make_layout("flat", n_codebooks, codebook_size, shared_vocab)` still works.
    """
    if name not in LAYOUTS:
        raise ConfigError(f"'data.layout': unknown layout {name!r} (known: {', '.join(LAYOUTS)})")
    if isinstance(streams, int):
        streams = {"acoustic": (streams, codebook_size)}
    infos = {s: v if isinstance(v, StreamShape) else StreamShape(s, *v) for s, v in streams.items()}
    missing = [s for s in LAYOUTS[name] if s not in infos]
    if missing:
        raise ConfigError(f"'data.layout': layout {name!r} needs the {' and '.join(missing)} stream, "
                          f"the tokens hold {', '.join(infos) or 'none'}")
    if dedup_semantic and name != "semantic":
        raise ConfigError(f"'data.dedup_semantic': only the semantic layout collapses repeated ids, not {name!r} "
                          "(its semantic ids are laid out beside the acoustic frames of the same 40 ms)")
    if name in ("flat", "acoustic"):
        return FlatLayout(infos["acoustic"].n_codebooks, infos["acoustic"].codebook_size, shared_vocab)
    if shared_vocab:
        raise ConfigError(f"'data.shared_vocab': only the flat (acoustic) layout shares ids between codebooks, "
                          f"not {name!r}")
    if name == "semantic":
        return DedupSemanticLayout(infos["semantic"]) if dedup_semantic else SemanticLayout(infos["semantic"])
    cls = InterleavedLayout if name == "interleaved" else PrefixLayout
    return cls(infos["semantic"], infos["acoustic"])
