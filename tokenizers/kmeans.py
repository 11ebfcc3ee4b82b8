"""k-means semantic tokens: sample encoder frames, fit MiniBatchKMeans, measure it, assign in torch.

The flow the pipeline drives, on numpy arrays of embeddings [frames, D] at 50 Hz (Whisper encoder):
  plan = plan_sample(books, validation, cfg)      # which frames: seeded, proportional, never validation
  buf = SampleBuffer(plan, dims); buf.add(book, first_frame, embeddings) per chunk, in any order
  model = fit_kmeans(*buf.arrays(), cfg, source, plan.info(cfg)); save_kmeans(model, stem)
  model.assigner(device).assign(embeddings) -> int16 token ids (in the Ray actors)
`fit_or_load` does all of it and skips the fit when the files exist. Memory is bounded by the sample
(`sample_frames` rows), whatever the size of the catalog.

Files: `<stem>.npy` centroids float32 [k, D] in the embedding space (de-standardised);
`<stem>.scale.npy` float32 [2, D] (mean, std) when `standardize` is on, and distances are then measured
between standardised vectors; `<stem>.json` (format narrator-kmeans/1) records the embedding source,
the sample, the fit, the quality figures and the arrays' sha256. All three are written atomically,
the JSON last, so a JSON on disk means a complete fit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from narrator.config import from_dict, to_dict
from narrator.errors import ConfigError, NarratorError
from narrator.tokenizers.config import KmeansConfig
from narrator.tokenfolder.storage import sha256 as file_sha256

log = logging.getLogger(__name__)

FORMAT = "narrator-kmeans/1"
HELDOUT_BLOCK_FRAMES = 50  # quality frames are held out in 1 s blocks: neighbouring 50 Hz frames are near copies
_FIT_KEYS = ("k", "sample_frames", "sample_fraction", "seed", "standardize", "batch_size", "passes",
             "heldout_fraction", "reassignment_ratio")


# --- what the JSON records -----------------------------------------------------------------------

@dataclass
class EmbeddingSource:
    """Which embeddings the centroids live in; a file made from other embeddings is refused."""

    model: str  # e.g. "tiny.en"
    layer: int  # encoder block index; -1: the final layer (after ln_post)
    dims: int  # D
    weights_sha256: str  # of the encoder's weights


@dataclass
class SampleInfo:
    books: int  # books with at least one sampled frame
    fit_frames: int
    heldout_frames: int
    seed: int
    sample_frames: int
    sample_fraction: float | None
    heldout_fraction: float
    eligible_frames: int  # frames outside validation ranges, over all books
    plan_sha256: str  # of the sampled (book, frame, held-out) triples


@dataclass
class FitInfo:
    algorithm: str
    sklearn: str
    init: str
    n_init: int
    batch_size: int
    passes: int
    max_no_improvement: int | None
    reassignment_ratio: float
    random_state: int
    seconds: float


@dataclass
class ArrayFile:
    file: str  # relative to the JSON's folder
    sha256: str  # of the file's bytes
    shape: list[int]
    dtype: str


@dataclass
class KmeansQuality:
    """How much of the frames the centroids keep; distances in the fit's space (standardised or raw)."""

    frames: int
    k: int
    relative_error: float  # sum |x - nearest centroid|^2 / sum |x - mean|^2: 0 perfect, ~1 no better than the mean
    perplexity: float  # exp(entropy) of the cluster-usage histogram: effective number of clusters used
    dead_clusters: int  # clusters no frame was assigned to
    entropy_bits: float  # entropy of the token distribution, bits per token


@dataclass
class KmeansMeta:
    k: int
    dims: int
    source: EmbeddingSource
    centroids: ArrayFile
    scale: ArrayFile | None  # (mean, std) float32 [2, D] when standardize, else None
    standardize: bool
    sample: SampleInfo
    fit: FitInfo
    config: dict[str, int | float | bool | None]  # the KmeansConfig values that decide the fit (_FIT_KEYS)
    quality_heldout: KmeansQuality | None  # None when no frame was held out
    quality_fit: KmeansQuality
    format: str = FORMAT


# --- frame sampling plan -------------------------------------------------------------------------

@dataclass
class BookSample:
    """Sampled frames of one book: sorted absolute 50 Hz frame indices, and which are held out of the fit."""

    id: str
    frames: np.ndarray  # int64, sorted, unique
    heldout: np.ndarray  # bool, same length


@dataclass
class SamplePlan:
    """Which frames to embed for the k-means sample, book by book (books with no sampled frame omitted).

    Rows of the sample: first the fit frames, then the held-out ones, each book after book, frames
    ascending, so `SampleBuffer.arrays` returns views, not copies.
    """

    books: list[BookSample]
    eligible_frames: int  # frames outside the validation ranges, over all books
    _rows: dict[str, tuple[int, np.ndarray]] = field(init=False, repr=False)  # id -> (index in books, row per frame)

    def __post_init__(self) -> None:
        self._rows = {}
        fit_at, held_at = 0, self.total - self.n_heldout
        for i, b in enumerate(self.books):
            rows = np.empty(len(b.frames), np.int64)
            n_held = int(b.heldout.sum())
            rows[~b.heldout] = np.arange(fit_at, fit_at + len(b.frames) - n_held)
            rows[b.heldout] = np.arange(held_at, held_at + n_held)
            fit_at, held_at = fit_at + len(b.frames) - n_held, held_at + n_held
            self._rows[b.id] = (i, rows)

    @property
    def total(self) -> int:
        return sum(len(b.frames) for b in self.books)

    @property
    def n_heldout(self) -> int:
        return int(sum(int(b.heldout.sum()) for b in self.books))

    def rows(self, book_id: str, first_frame: int, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """For a span of a book's frames [first_frame, first_frame + n_frames): the positions inside the
        span that are sampled, and their rows in the sample."""
        if book_id not in self._rows:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        i, rows = self._rows[book_id]
        frames = self.books[i].frames
        lo, hi = np.searchsorted(frames, [first_frame, first_frame + n_frames])
        return frames[lo:hi] - first_frame, rows[lo:hi]

    def sha256(self) -> str:
        h = hashlib.sha256()
        for b in self.books:
            h.update(b.id.encode() + b"\0")
            h.update(np.ascontiguousarray(b.frames, dtype="<i8").tobytes())
            h.update(np.ascontiguousarray(b.heldout, dtype=np.uint8).tobytes())
        return h.hexdigest()

    def info(self, cfg: KmeansConfig) -> SampleInfo:
        held = self.n_heldout
        return SampleInfo(books=len(self.books), fit_frames=self.total - held, heldout_frames=held, seed=cfg.seed,
                          sample_frames=cfg.sample_frames, sample_fraction=cfg.sample_fraction,
                          heldout_fraction=cfg.heldout_fraction, eligible_frames=self.eligible_frames,
                          plan_sha256=self.sha256())


def plan_sample(books: Sequence[tuple[str, int]], validation: Mapping[str, tuple[int, int] | Sequence[tuple[int, int]]],
                cfg: KmeansConfig) -> SamplePlan:
    """Pick the frames to sample: `(book id, 50 Hz frames)` per book, and each book's validation ranges
    [start, end) (one range or a list; missing: none). Never a validation frame; books get shares
    proportional to their eligible frames; each book's picks depend only on (seed, its id, its share)."""
    allowed = [(book_id, _allowed_intervals(int(n), _ranges(validation.get(book_id, ())))) for book_id, n in books]
    ids = [b for b, _ in allowed]
    if len(set(ids)) != len(ids):
        raise ValueError("plan_sample: book ids must be unique")
    eligible = [int(sum(e - s for s, e in iv)) for _, iv in allowed]
    total = sum(eligible)
    target = min(cfg.sample_frames, total)
    if cfg.sample_fraction is not None:
        target = min(target, round(cfg.sample_fraction * total))
    quotas = _largest_remainder(target, eligible)
    plan_books, held_u = [], []
    for (book_id, intervals), quota in zip(allowed, quotas):
        if quota == 0:
            continue
        key = int(hashlib.sha256(book_id.encode()).hexdigest()[:16], 16)
        rng = np.random.default_rng([cfg.seed, key, 0])
        lengths = np.array([e - s for s, e in intervals], np.int64)
        starts = np.array([s for s, _ in intervals], np.int64)
        ends_cum = np.cumsum(lengths)
        pos = np.sort(rng.choice(int(ends_cum[-1]), size=quota, replace=False).astype(np.int64))
        which = np.searchsorted(ends_cum, pos, side="right")
        frames = starts[which] + pos - (ends_cum[which] - lengths[which])
        blocks = frames // HELDOUT_BLOCK_FRAMES
        u = np.random.default_rng([cfg.seed, key, 1]).random(int(blocks[-1]) + 1)
        plan_books.append(BookSample(book_id, frames, u[blocks] < cfg.heldout_fraction))
        held_u.append(u[blocks])
    plan = SamplePlan(plan_books, eligible_frames=total)
    if cfg.heldout_fraction > 0 and plan.n_heldout == 0 and plan.total > 1:
        # A small sample may draw no held-out block: hold out the block with the lowest draw, unless that is all of it.
        i = int(np.argmin([u.min() for u in held_u]))
        b = plan_books[i]
        block = b.frames[int(np.argmin(held_u[i]))] // HELDOUT_BLOCK_FRAMES
        mask = b.frames // HELDOUT_BLOCK_FRAMES == block
        if mask.sum() < plan.total:
            b.heldout = mask
    return plan


def _ranges(value: tuple[int, int] | Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    if len(value) == 2 and all(isinstance(v, (int, np.integer)) for v in value):
        return [(int(value[0]), int(value[1]))]
    return [(int(s), int(e)) for s, e in value]


def _allowed_intervals(n: int, held: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[0, n) minus the held-out ranges, as sorted disjoint non-empty intervals."""
    out, at = [], 0
    for s, e in sorted((max(0, s), min(n, e)) for s, e in held if e > s):
        if s > at:
            out.append((at, s))
        at = max(at, e)
    if at < n:
        out.append((at, n))
    return out


def _largest_remainder(target: int, weights: list[int]) -> list[int]:
    """Integer shares of `target` proportional to `weights` (exact integer arithmetic, ties to the earlier)."""
    total = sum(weights)
    if total == 0 or target == 0:
        return [0] * len(weights)
    base = [target * w // total for w in weights]
    rest = sorted(range(len(weights)), key=lambda i: (-(target * weights[i] % total), i))
    for i in rest[: target - sum(base)]:
        base[i] += 1
    return base


class SampleBuffer:
    """The sample's embeddings, preallocated (plan.total x dims float32) and filled in any order."""

    def __init__(self, plan: SamplePlan, dims: int):
        self.plan = plan
        self.data = np.zeros((plan.total, dims), np.float32)
        self.filled = np.zeros(plan.total, bool)

    def add(self, book_id: str, first_frame: int, embeddings: np.ndarray) -> int:
        """Keep the sampled rows of `embeddings` [T, D], the book's frames first_frame ... first_frame + T - 1.
        Returns how many rows were kept."""
        emb = np.asarray(embeddings)
        if emb.ndim != 2 or emb.shape[1] != self.data.shape[1]:
            raise ValueError(f"{book_id}: embeddings of shape {emb.shape}, expected [frames, {self.data.shape[1]}]")
        at, rows = self.plan.rows(book_id, first_frame, emb.shape[0])
        self.data[rows] = emb[at]
        self.filled[rows] = True
        return len(rows)

    @property
    def missing(self) -> int:
        return int((~self.filled).sum())

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(fit frames, held-out frames): views of the buffer; every planned row must have been added."""
        if self.missing:
            first = int(np.argmin(self.filled))
            book = next(b.id for b in self.plan.books if first in self.plan._rows[b.id][1])
            raise ValueError(f"k-means sample: {self.missing} planned frames were never added (first in book {book})")
        n_fit = self.plan.total - self.plan.n_heldout
        return self.data[:n_fit], self.data[n_fit:]


# --- fit -----------------------------------------------------------------------------------------

@dataclass
class KmeansModel:
    centroids: np.ndarray  # float32 [k, D], embedding space
    scale: np.ndarray | None  # float32 [2, D]: mean, std (standardize) or None
    meta: KmeansMeta

    def assigner(self, device: str | torch.device = "cpu", block_rows: int | None = None) -> "CentroidAssigner":
        return CentroidAssigner(self.centroids, self.scale, device=device, block_rows=block_rows)


def fit_kmeans(fit_frames: np.ndarray, heldout_frames: np.ndarray | None, cfg: KmeansConfig, source: EmbeddingSource,
               sample: SampleInfo | None = None) -> KmeansModel:
    """Fit MiniBatchKMeans on `fit_frames` [N, D] and measure it on both sets; nothing is written."""
    x = _frames(fit_frames, source.dims, "fit")
    held = _frames(heldout_frames, source.dims, "held-out") if heldout_frames is not None else np.zeros((0, x.shape[1]), np.float32)
    centroids, scale, fit = _fit_centroids(x, cfg)
    assigner = CentroidAssigner(centroids, scale)
    sample = sample or SampleInfo(books=0, fit_frames=len(x), heldout_frames=len(held), seed=cfg.seed,
                                  sample_frames=cfg.sample_frames, sample_fraction=cfg.sample_fraction,
                                  heldout_fraction=cfg.heldout_fraction, eligible_frames=len(x) + len(held), plan_sha256="")
    meta = KmeansMeta(
        k=cfg.k, dims=x.shape[1], source=source,
        centroids=ArrayFile("", "", list(centroids.shape), "float32"),
        scale=ArrayFile("", "", list(scale.shape), "float32") if scale is not None else None,
        standardize=cfg.standardize, sample=sample, fit=fit,
        config={key: getattr(cfg, key) for key in _FIT_KEYS},
        quality_heldout=quality(held, assigner) if len(held) else None,
        quality_fit=quality(x, assigner),
    )
    return KmeansModel(centroids, scale, meta)


def _frames(frames: np.ndarray, dims: int, what: str) -> np.ndarray:
    x = np.ascontiguousarray(frames, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dims:
        raise ValueError(f"k-means {what} frames: shape {x.shape}, expected [frames, {dims}]")
    for lo in range(0, len(x), 1 << 16):  # in blocks: no second full-size array
        if not np.isfinite(x[lo: lo + (1 << 16)]).all():
            raise NarratorError(f"k-means {what} frames: NaN or inf in frames {lo} to {lo + (1 << 16) - 1}")
    return x


def _fit_centroids(x: np.ndarray, cfg: KmeansConfig) -> tuple[np.ndarray, np.ndarray | None, FitInfo]:
    """Centroids float32 [k, D] in the embedding space, (mean, std) or None, and how they were fit."""
    import sklearn
    from sklearn.cluster import MiniBatchKMeans

    n = len(x)
    if n < cfg.k:
        raise NarratorError(f"k-means sample: {n} fit frames, fewer than k={cfg.k} clusters; lower kmeans.k or "
                            "give more audio")
    scale = None
    if cfg.standardize:
        mean = x.mean(0, dtype=np.float64)
        std = x.std(0, dtype=np.float64)
        std[std < 1e-8] = 1.0  # a constant dimension carries nothing: leave it unscaled
        scale = np.stack([mean, std]).astype(np.float32)
        x = ((x - scale[0]) / scale[1]).astype(np.float32)  # the stored float32 stats, so assignment uses the same
    batch = min(cfg.batch_size, n)
    km = MiniBatchKMeans(n_clusters=cfg.k, init="k-means++", n_init=1, max_iter=cfg.passes, batch_size=batch,
                         init_size=min(n, max(3 * batch, 3 * cfg.k)), max_no_improvement=None, tol=0.0,
                         reassignment_ratio=cfg.reassignment_ratio, compute_labels=False, random_state=cfg.seed)
    t0 = time.perf_counter()
    km.fit(x)
    seconds = time.perf_counter() - t0
    centroids = np.asarray(km.cluster_centers_, np.float32)
    if scale is not None:
        centroids = (centroids.astype(np.float64) * scale[1] + scale[0]).astype(np.float32)
    fit = FitInfo(algorithm="sklearn.cluster.MiniBatchKMeans", sklearn=sklearn.__version__, init="k-means++", n_init=1,
                  batch_size=batch, passes=cfg.passes, max_no_improvement=None, reassignment_ratio=cfg.reassignment_ratio,
                  random_state=cfg.seed, seconds=round(seconds, 3))
    log.info("k-means: k=%d on %d x %d frames, %d passes, %.1f s", cfg.k, n, x.shape[1], cfg.passes, seconds)
    return centroids, scale, fit


# --- files ---------------------------------------------------------------------------------------

def kmeans_paths(stem: str | Path) -> tuple[Path, Path, Path]:
    """(json, centroids .npy, scale .npy) of a k-means file given as its stem, its .json or its .npy."""
    p = Path(stem)
    name = p.name
    for suffix in (".scale.npy", ".npy", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    base = p.with_name(name)
    return base.with_name(name + ".json"), base.with_name(name + ".npy"), base.with_name(name + ".scale.npy")


def save_kmeans(model: KmeansModel, stem: str | Path) -> Path:
    """Write `<stem>.npy` (+ `<stem>.scale.npy`) then `<stem>.json`, each atomically. Returns the JSON path."""
    json_path, npy_path, scale_path = kmeans_paths(stem)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    meta = model.meta
    meta.centroids = _save_array(model.centroids, npy_path)
    meta.scale = _save_array(model.scale, scale_path) if model.scale is not None else None
    tmp = json_path.with_name(json_path.name + ".tmp")
    tmp.write_text(json.dumps(to_dict(meta), indent=1) + "\n")
    os.replace(tmp, json_path)
    return json_path


def _save_array(array: np.ndarray, path: Path) -> ArrayFile:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array, np.float32), allow_pickle=False)
    sha = file_sha256(tmp)
    os.replace(tmp, path)
    return ArrayFile(file=path.name, sha256=sha, shape=list(array.shape), dtype="float32")


def load_kmeans(path: str | Path, expected: EmbeddingSource | None = None, k: int | None = None) -> KmeansModel:
    """Read a k-means file (its .json, .npy or stem), refused with one line when it was made from other
    embeddings than `expected`, has another `k`, or its arrays are not the ones the JSON records."""
    json_path, _, _ = kmeans_paths(path)
    if not json_path.is_file():
        raise NarratorError(f"{json_path}: no k-means file here (fit one with the tokenize run, or fix kmeans.path)")
    try:
        data = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NarratorError(f"{json_path}: k-means file is not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else None
        raise NarratorError(f"{json_path}: k-means file format {got!r} is not {FORMAT!r}, which this version reads; refit")
    try:
        meta = from_dict(KmeansMeta, data)
    except ConfigError as e:
        raise NarratorError(f"{json_path}: malformed k-means file ({e})") from None
    if expected is not None:
        for key in ("model", "layer", "dims", "weights_sha256"):
            saved, want = getattr(meta.source, key), getattr(expected, key)
            if saved != want:
                raise NarratorError(f"{json_path}: k-means centroids were fit on embeddings with {key}={_short(saved)}, "
                                    f"the config expects {key}={_short(want)}")
    if k is not None and meta.k != k:
        raise NarratorError(f"{json_path}: k-means file has k={meta.k}, the config expects k={k}")
    centroids = _load_array(json_path, meta.centroids, [meta.k, meta.dims])
    scale = _load_array(json_path, meta.scale, [2, meta.dims]) if meta.scale is not None else None
    if meta.standardize != (scale is not None):
        raise NarratorError(f"{json_path}: standardize={meta.standardize} but scale file is {meta.scale}")
    return KmeansModel(centroids, scale, meta)


def _short(value: object) -> str:
    return repr(value[:12] + "...") if isinstance(value, str) and len(value) == 64 else repr(value)


def _load_array(json_path: Path, rec: ArrayFile, shape: list[int]) -> np.ndarray:
    path = json_path.with_name(rec.file)
    if not path.is_file():
        raise NarratorError(f"{path}: missing, but {json_path.name} names it")
    sha = file_sha256(path)
    if sha != rec.sha256:
        raise NarratorError(f"{path}: sha256 {sha[:12]} differs from the {rec.sha256[:12]} recorded in {json_path.name}")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise NarratorError(f"{path}: unreadable .npy ({e})") from None
    if array.dtype != np.float32 or list(array.shape) != shape or list(array.shape) != rec.shape:
        raise NarratorError(f"{path}: {array.dtype} {list(array.shape)}, but {json_path.name} records float32 {shape}")
    if not np.isfinite(array).all():
        raise NarratorError(f"{path}: holds NaN or inf")
    return array


def fit_or_load(cfg: KmeansConfig, source: EmbeddingSource, stem: str | Path, books: Sequence[tuple[str, int]],
                validation: Mapping[str, tuple[int, int] | Sequence[tuple[int, int]]],
                embed: Callable[[SamplePlan], Iterable[tuple[str, int, np.ndarray]]]) -> tuple[KmeansModel, bool]:
    """The k-means model for a run, and whether it was fit now.

    `cfg.path` set: that file (checked against `source` and `cfg.k`). Else `<stem>.json` if it exists
    (a rerun: checked, and refused if fit with other settings). Else plan a sample, call
    `embed(plan)` for (book id, first frame, embeddings [T, D]) spans covering the planned frames,
    fit, save, and return it.
    """
    if cfg.path is not None:
        return load_kmeans(cfg.path, source, cfg.k), False
    json_path, _, _ = kmeans_paths(stem)
    if json_path.is_file():
        model = load_kmeans(json_path, source, cfg.k)
        for key in _FIT_KEYS:
            if model.meta.config.get(key) != getattr(cfg, key):
                raise NarratorError(f"{json_path}: k-means was fit with kmeans.{key}={model.meta.config.get(key)!r}, the "
                                    f"config says {getattr(cfg, key)!r}; delete the file to refit, or set kmeans.path")
        log.info("k-means: using %s (fit earlier; delete it to refit)", json_path)
        return model, False
    plan = plan_sample(books, validation, cfg)
    buf = SampleBuffer(plan, source.dims)
    for book_id, first_frame, embeddings in embed(plan):
        buf.add(book_id, first_frame, embeddings)
    fit_frames, heldout = buf.arrays()
    model = fit_kmeans(fit_frames, heldout, cfg, source, plan.info(cfg))
    save_kmeans(model, stem)
    return model, True


# --- assignment (held by the tokenize actors) ----------------------------------------------------

class CentroidAssigner:
    """Nearest centroid in torch on `device`, in blocks of `block_rows` frames (~64 MB of distances each).

    Squared euclidean distance by |c|^2 - 2 x.c (the same expansion as scikit-learn's predict); argmin
    picks the lowest id among equal computed distances, so a given input on a given device and thread
    count always gets the same ids (distances equal on paper may round apart in the matrix product).
    With a scale, frames and centroids are standardised first.
    """

    def __init__(self, centroids: np.ndarray | torch.Tensor, scale: np.ndarray | torch.Tensor | None = None,
                 device: str | torch.device = "cpu", block_rows: int | None = None):
        # A copy: arrays that come through Ray's object store are read-only, which torch warns about.
        c = torch.tensor(np.array(centroids, dtype=np.float64))
        if c.ndim != 2:
            raise ValueError(f"centroids of shape {tuple(c.shape)}, expected [k, D]")
        self.k, self.dims = c.shape
        self.device = torch.device(device)
        self.mean = self.std = None
        if scale is not None:
            s = torch.tensor(np.array(scale, dtype=np.float64))
            c = (c - s[0]) / s[1]
            self.mean, self.std = s[0].float().to(self.device), s[1].float().to(self.device)
        self.centroids = c.float().to(self.device)  # in the assignment space
        self.c_sq = (self.centroids * self.centroids).sum(1)
        self.block_rows = block_rows or max(1, (1 << 24) // self.k)
        self.dtype = np.int16 if self.k <= 1 << 15 else np.int32

    def transform(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Frames as float32 on the device, standardised when the assigner has a scale."""
        x = torch.as_tensor(frames).to(self.device, torch.float32)
        if x.ndim != 2 or x.shape[1] != self.dims:
            raise ValueError(f"frames of shape {tuple(x.shape)}, expected [frames, {self.dims}]")
        return (x - self.mean) / self.std if self.mean is not None else x

    @torch.inference_mode()
    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """Ids (int64) of the nearest centroids of transformed frames (one block)."""
        return torch.argmin(torch.addmm(self.c_sq[None, :], x, self.centroids.T, beta=1.0, alpha=-2.0), dim=1)

    @torch.inference_mode()
    def nearest_with_distance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids and the exact squared distances to those centroids (not the expansion's, which may round below 0)."""
        ids = self.nearest(x)
        diff = x - self.centroids[ids]
        return ids, (diff * diff).sum(1)

    @torch.inference_mode()
    def assign(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """Token ids [frames] (int16 for k <= 32768) of float frames [frames, D]."""
        n = frames.shape[0]
        out = np.empty(n, self.dtype)
        for lo in range(0, n, self.block_rows):
            ids = self.nearest(self.transform(frames[lo: lo + self.block_rows]))
            out[lo: lo + len(ids)] = ids.cpu().numpy()
        return out


# --- quality -------------------------------------------------------------------------------------

@torch.inference_mode()
def quality(frames: np.ndarray, assigner: CentroidAssigner) -> KmeansQuality:
    """Relative quantization error, cluster usage and token entropy of `frames` under `assigner`, in
    bounded blocks; distances in the assigner's space (standardised when it has a scale)."""
    n = len(frames)
    if n == 0:
        raise ValueError("quality: no frames")
    step = assigner.block_rows
    total = torch.zeros(assigner.dims, dtype=torch.float64, device=assigner.device)
    for lo in range(0, n, step):
        total += assigner.transform(frames[lo: lo + step]).double().sum(0)
    mean = total / n
    err = spread = 0.0
    counts = torch.zeros(assigner.k, dtype=torch.int64, device=assigner.device)
    for lo in range(0, n, step):
        x = assigner.transform(frames[lo: lo + step])
        ids, dist = assigner.nearest_with_distance(x)
        err += float(dist.double().sum())
        spread += float(((x.double() - mean) ** 2).sum())
        counts += torch.bincount(ids, minlength=assigner.k)
    p = counts.double().cpu().numpy() / n
    p = p[p > 0]
    entropy = float(-(p * np.log(p)).sum())
    return KmeansQuality(frames=n, k=assigner.k, relative_error=err / spread if spread > 0 else float("nan"),
                         perplexity=math.exp(entropy), dead_clusters=int((counts == 0).sum()),
                         entropy_bits=entropy / math.log(2))


@dataclass
class LayerRow:
    """One line of `narrator kmeans-report`: a layer clustered with one k."""

    layer: str
    dims: int
    k: int
    fit_frames: int
    heldout_frames: int
    relative_error: float  # held-out
    fit_relative_error: float
    perplexity: float  # held-out
    dead_clusters: int  # on the fit frames
    entropy_bits: float  # held-out
    seconds: float  # fit
    abx_ids: tuple[float, float] | None = None  # the probe's score of the ids and its 95% half-width (ABX error)
    abx_embeddings: tuple[float, float] | None = None  # the same of the embeddings before k-means (standardised if the fit is)


class FrameProbe(Protocol):
    """What frames carry, measured beside the quantization error on audio of its own (evaluation/abx.py's
    WordAbx: word discrimination across voices). The report embeds `audio` at each layer it compares."""

    description: str  # one line for the report
    audio: np.ndarray  # float32 mono at the embedder's sample rate

    def score_ids(self, ids: np.ndarray) -> tuple[float, float]: ...  # ids [T] of the audio's frames -> (score, 95% +-)

    def score_embeddings(self, embeddings: np.ndarray) -> tuple[float, float]: ...  # [T, D]


def heldout_rows(n: int, fraction: float, seed: int) -> np.ndarray:
    """bool [n]: rows (in time order) held out in blocks of HELDOUT_BLOCK_FRAMES, at least one block."""
    blocks = np.arange(n) // HELDOUT_BLOCK_FRAMES
    u = np.random.default_rng([seed, 2]).random(int(blocks[-1]) + 1 if n else 0)
    held = u < fraction
    if fraction > 0 and not held.any() and len(u) > 1:
        held[int(np.argmin(u))] = True
    return held[blocks]


def compare_layers(frames_by_layer: Mapping[str, np.ndarray], ks: Sequence[int], seed: int = 0,
                   cfg: KmeansConfig | None = None, probe: FrameProbe | None = None,
                   probe_frames: Mapping[str, np.ndarray] | None = None) -> list[LayerRow]:
    """Fit k-means for every layer and k on the same frames (rows in time order, the same rows held out
    for every layer of equal length) and measure each; `cfg` supplies the other fit settings. With a
    `probe`, each layer's `probe_frames` (its embeddings of `probe.audio`) are scored as they are and
    as the ids each fit assigns them."""
    base = cfg or KmeansConfig(heldout_fraction=0.1)
    rows = []
    for layer, frames in frames_by_layer.items():
        x = _frames(frames, np.asarray(frames).shape[-1], f"layer {layer}")
        held = heldout_rows(len(x), base.heldout_fraction, seed)
        abx_embeddings = None
        for k in ks:
            c = replace(base, k=k, seed=seed, path=None)
            centroids, scale, fit = _fit_centroids(x[~held], c)
            assigner = CentroidAssigner(centroids, scale)
            q_fit = quality(x[~held], assigner)
            q = quality(x[held], assigner) if held.any() else q_fit
            abx_ids = None
            if probe is not None and probe_frames is not None:
                at_layer = probe_frames[layer]
                abx_ids = tuple(probe.score_ids(assigner.assign(at_layer)))
                if abx_embeddings is None:  # the scale is the fit frames' mean and std, the same for every k
                    abx_embeddings = tuple(probe.score_embeddings(assigner.transform(at_layer).cpu().numpy()))
            rows.append(LayerRow(layer=str(layer), dims=x.shape[1], k=k, fit_frames=int((~held).sum()),
                                 heldout_frames=int(held.sum()), relative_error=q.relative_error,
                                 fit_relative_error=q_fit.relative_error, perplexity=q.perplexity,
                                 dead_clusters=q_fit.dead_clusters, entropy_bits=q.entropy_bits, seconds=fit.seconds,
                                 abx_ids=abx_ids, abx_embeddings=abx_embeddings))
    return rows


def format_table(rows: Sequence[LayerRow]) -> str:
    """The rows as an aligned text table (one header line, one line per row)."""
    probed = any(r.abx_ids is not None for r in rows)
    abx = lambda score: "-" if score is None else f"{score[0]:.3f}±{score[1]:.3f}"
    head = ["layer", "dims", "k", "fit frames", "held-out", "rel. error", *(["ABX ids", "ABX emb."] if probed else []),
            "rel. error (fit)", "perplexity", "dead", "bits/token", "fit s"]
    body = [[r.layer, str(r.dims), str(r.k), f"{r.fit_frames:,}", f"{r.heldout_frames:,}", f"{r.relative_error:.3f}",
             *([abx(r.abx_ids), abx(r.abx_embeddings)] if probed else []),
             f"{r.fit_relative_error:.3f}", f"{r.perplexity:.1f}", str(r.dead_clusters), f"{r.entropy_bits + 0.0:.2f}",
             f"{r.seconds:.1f}"] for r in rows]
    widths = [max(len(line[i]) for line in [head] + body) for i in range(len(head))]
    fmt = lambda line: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
    return "\n".join(fmt(line) for line in [head] + body)
