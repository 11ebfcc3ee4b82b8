"""k-means tokens: sampling plan, seeded fit, files and their checks, torch assignment, quality figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.cluster import MiniBatchKMeans

from narrator.errors import ConfigError, NarratorError
from narrator.tokenizers.config import KmeansConfig
from narrator.tokenizers.kmeans import (
    HELDOUT_BLOCK_FRAMES, CentroidAssigner, EmbeddingSource, SampleBuffer, compare_layers, fit_kmeans,
    fit_or_load, format_table, kmeans_paths, load_kmeans, plan_sample, quality, save_kmeans,
)

SOURCE = EmbeddingSource(model="tiny.en", layer=-1, dims=16, weights_sha256="ab" * 32)
BOOKS = [("long", 40_000), ("mid", 9_000), ("short", 150), ("clip", 40)]
VALIDATION = {"long": (18_000, 22_000), "mid": [(0, 100), (8_000, 9_000), (50, 300)], "clip": (0, 40)}


def blobs(n: int, dims: int = 16, centers: int = 8, spread: float = 0.05, seed: int = 0) -> np.ndarray:
    """`n` frames around `centers` well-separated points, equally many per point, in time order."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centers, dims)) * 10
    labels = np.arange(n) % centers
    return (means[labels] + rng.standard_normal((n, dims)) * spread).astype(np.float32)


def in_ranges(frames: np.ndarray, ranges) -> np.ndarray:
    ranges = [ranges] if isinstance(ranges[0], int) else ranges
    return np.logical_or.reduce([(frames >= s) & (frames < e) for s, e in ranges])


def small_cfg(**kw) -> KmeansConfig:
    return KmeansConfig(**{"k": 8, "sample_frames": 3_000, "batch_size": 256, "passes": 3, **kw})


# --- sampling plan -------------------------------------------------------------------------------

@pytest.mark.parametrize("fraction", [None, 1.0])
def test_sample_never_contains_a_validation_frame(fraction):
    cfg = KmeansConfig(sample_frames=10**9, sample_fraction=fraction, heldout_fraction=0.1)
    plan = plan_sample(BOOKS, VALIDATION, cfg)
    sampled = {b.id: b.frames for b in plan.books}
    assert "clip" not in sampled  # held out whole
    for book_id, n in BOOKS:
        frames = sampled.get(book_id, np.empty(0, np.int64))
        assert np.all(np.diff(frames) > 0) and (frames.size == 0 or (frames[0] >= 0 and frames[-1] < n))
        if book_id in VALIDATION:
            assert not in_ranges(frames, VALIDATION[book_id]).any()
    # Asked for everything: every eligible frame, exactly once.
    assert plan.total == plan.eligible_frames == 36_000 + 9_000 - 1_300 + 150


def test_sample_is_bounded_seeded_and_proportional():
    cfg = KmeansConfig(sample_frames=5_000, seed=3)
    plan = plan_sample(BOOKS, VALIDATION, cfg)
    assert plan.total == 5_000
    eligible = {"long": 36_000, "mid": 7_700, "short": 150}
    for b in plan.books:
        assert abs(len(b.frames) - 5_000 * eligible[b.id] / plan.eligible_frames) <= 1
    again = plan_sample(BOOKS, VALIDATION, cfg)
    assert plan.sha256() == again.sha256()
    assert plan_sample(BOOKS, VALIDATION, KmeansConfig(sample_frames=5_000, seed=4)).sha256() != plan.sha256()
    assert plan_sample(BOOKS, VALIDATION, KmeansConfig(sample_frames=50_000, sample_fraction=0.1)).total == 4_385
    assert plan_sample(BOOKS, VALIDATION, KmeansConfig(sample_frames=2_000, sample_fraction=0.5)).total == 2_000


def test_heldout_frames_come_in_whole_blocks_and_exist():
    plan = plan_sample(BOOKS, VALIDATION, KmeansConfig(sample_frames=20_000, heldout_fraction=0.1))
    assert 0.05 * plan.total < plan.n_heldout < 0.15 * plan.total
    for b in plan.books:
        blocks = b.frames // HELDOUT_BLOCK_FRAMES
        for block in np.unique(blocks):
            assert len(set(b.heldout[blocks == block])) == 1  # a second of audio is either fit or held out
    tiny = plan_sample([("a", 120)], {}, KmeansConfig(sample_frames=100, heldout_fraction=0.01))
    assert 0 < tiny.n_heldout < tiny.total


def test_sample_buffer_fills_in_any_order():
    plan = plan_sample(BOOKS, VALIDATION, small_cfg(heldout_fraction=0.2))
    rng = np.random.default_rng(0)
    emb = {b: rng.standard_normal((n, 16)).astype(np.float32) for b, n in BOOKS}
    spans = [(b, s, emb[b][s: s + 700]) for b, n in BOOKS for s in range(0, n, 700)]
    results = []
    for order in (spans, spans[::-1]):
        buf = SampleBuffer(plan, 16)
        for b, s, e in order:
            buf.add(b, s, e)
        results.append(buf.arrays())
    fit, held = results[0]
    assert len(fit) + len(held) == plan.total and len(held) == plan.n_heldout
    assert np.array_equal(fit, results[1][0]) and np.array_equal(held, results[1][1])
    book = plan.books[0]
    assert np.array_equal(fit[0], emb[book.id][book.frames[~book.heldout][0]])
    partial = SampleBuffer(plan, 16)
    partial.add(*spans[0])
    with pytest.raises(ValueError, match="never added"):
        partial.arrays()


# --- fit and files -------------------------------------------------------------------------------

@pytest.mark.parametrize("standardize", [False, True])
def test_same_seed_same_frames_give_identical_centroids(standardize):
    x = blobs(3_000) + np.random.default_rng(1).standard_normal((3_000, 16)).astype(np.float32)
    cfg = small_cfg(standardize=standardize)
    a = fit_kmeans(x[:2_700], x[2_700:], cfg, SOURCE)
    b = fit_kmeans(x[:2_700].copy(), x[2_700:], cfg, SOURCE)
    assert a.centroids.dtype == np.float32 and a.centroids.shape == (8, 16)
    assert np.array_equal(a.centroids, b.centroids)
    assert (a.scale is not None) == standardize and (not standardize or np.array_equal(a.scale, b.scale))
    other = fit_kmeans(x[:2_700], x[2_700:], small_cfg(standardize=standardize, seed=1), SOURCE)
    assert not np.array_equal(a.centroids, other.centroids)


def test_save_load_round_trip(tmp_path):
    x = blobs(2_000)
    model = fit_kmeans(x[:1_800], x[1_800:], small_cfg(standardize=True), SOURCE)
    json_path = save_kmeans(model, tmp_path / "layer-1_k8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer-1_k8.json", "layer-1_k8.npy", "layer-1_k8.scale.npy"]
    data = json.loads(json_path.read_text())
    assert data["format"] == "narrator-kmeans/1" and data["k"] == 8 and data["dims"] == 16
    assert data["source"] == {"model": "tiny.en", "layer": -1, "dims": 16, "weights_sha256": "ab" * 32}
    assert data["quality_heldout"]["frames"] == 200
    for given in (json_path, tmp_path / "layer-1_k8.npy", tmp_path / "layer-1_k8"):
        loaded = load_kmeans(given, SOURCE, k=8)
        assert np.array_equal(loaded.centroids, model.centroids) and np.array_equal(loaded.scale, model.scale)
        assert loaded.meta == model.meta
    assert np.array_equal(loaded.assigner().assign(x), model.assigner().assign(x))


def test_tampered_centroids_are_refused_in_one_line(tmp_path):
    model = fit_kmeans(blobs(1_000), None, small_cfg(), SOURCE)
    json_path = save_kmeans(model, tmp_path / "km")
    npy = tmp_path / "km.npy"
    raw = bytearray(npy.read_bytes())
    raw[-1] ^= 1
    npy.write_bytes(bytes(raw))
    with pytest.raises(NarratorError) as e:
        load_kmeans(json_path, SOURCE)
    msg = str(e.value)
    assert "\n" not in msg and str(npy) in msg and "sha256" in msg
    assert model.meta.centroids.sha256[:12] in msg


@pytest.mark.parametrize("field, value, shown", [("layer", 2, ["layer=-1", "layer=2"]),
                                                 ("model", "base.en", ["'tiny.en'", "'base.en'"]),
                                                 ("dims", 512, ["dims=16", "dims=512"]),
                                                 ("weights_sha256", "cd" * 32, ["abababababab", "cdcdcdcdcdcd"])])
def test_centroids_from_other_embeddings_are_refused_naming_both_sides(tmp_path, field, value, shown):
    json_path = save_kmeans(fit_kmeans(blobs(1_000), None, small_cfg(), SOURCE), tmp_path / "km")
    expected = EmbeddingSource(**{**SOURCE.__dict__, field: value})
    with pytest.raises(NarratorError) as e:
        load_kmeans(json_path, expected)
    msg = str(e.value)
    assert "\n" not in msg and str(json_path) in msg and all(s in msg for s in shown), msg
    with pytest.raises(NarratorError, match="k=8, the config expects k=16"):
        load_kmeans(json_path, SOURCE, k=16)


def test_rerun_with_an_existing_kmeans_file_skips_the_fit(tmp_path):
    books, validation = [("a", 2_000), ("b", 1_000)], {"a": (500, 700)}
    x = {"a": blobs(2_000, seed=1), "b": blobs(1_000, seed=1)}
    calls = []

    def embed(plan):
        calls.append(plan.total)
        for book_id, n in books:
            yield book_id, 0, x[book_id]

    cfg = small_cfg()
    model, fitted = fit_or_load(cfg, SOURCE, tmp_path / "km", books, validation, embed)
    assert fitted and calls == [2_800] and model.meta.sample.plan_sha256
    again, fitted = fit_or_load(cfg, SOURCE, tmp_path / "km", books, validation, embed)
    assert not fitted and calls == [2_800] and np.array_equal(again.centroids, model.centroids)
    with pytest.raises(NarratorError, match="kmeans.passes=3, the config says 4"):
        fit_or_load(small_cfg(passes=4), SOURCE, tmp_path / "km", books, validation, embed)
    chosen, fitted = fit_or_load(small_cfg(passes=4, path=str(tmp_path / "km.json")), SOURCE, tmp_path / "other",
                                 books, validation, embed)
    assert not fitted and np.array_equal(chosen.centroids, model.centroids)


def test_bad_config_and_too_small_sample_are_refused():
    with pytest.raises(ConfigError, match="'kmeans.sample_fraction'"):
        KmeansConfig(sample_fraction=1.5)
    with pytest.raises(ConfigError, match="'kmeans.k'"):
        KmeansConfig(k=1)
    with pytest.raises(NarratorError, match="100 fit frames, fewer than k=1024"):
        fit_kmeans(blobs(100), None, KmeansConfig(), SOURCE)


# --- assignment ----------------------------------------------------------------------------------

def test_assigner_agrees_with_sklearn_predict():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20_000, 32)).astype(np.float32)
    km = MiniBatchKMeans(n_clusters=64, n_init=1, random_state=0, batch_size=1024, max_iter=2).fit(x[:10_000])
    ids = CentroidAssigner(km.cluster_centers_, block_rows=3_000).assign(x)
    assert ids.dtype == np.int16
    assert np.mean(ids == km.predict(x)) >= 0.999


def test_assigner_with_scale_matches_float64_argmin_and_breaks_ties_low():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((5_000, 8)) * np.arange(1, 9) + 5).astype(np.float32)
    centroids = x[rng.choice(5_000, 32, replace=False)]
    scale = np.stack([x.mean(0), x.std(0)]).astype(np.float32)
    xs = (x.astype(np.float64) - scale[0]) / scale[1]
    cs = (centroids.astype(np.float64) - scale[0]) / scale[1]
    want = ((xs[:, None, :] - cs[None]) ** 2).sum(-1).argmin(1)
    got = CentroidAssigner(centroids, scale, block_rows=777).assign(x)
    assert np.mean(got == want) >= 0.999
    # Small integers make every product and sum exact, so the twins' distances are truly equal.
    ints = rng.integers(-4, 5, (40, 24)).astype(np.float32)
    twins = np.concatenate([ints, ints])  # centroid i and i + 40 are the same point
    frames = ints[rng.integers(0, 40, 500)] + rng.integers(-1, 2, (500, 24)).astype(np.float32)
    ids = CentroidAssigner(twins, block_rows=64).assign(frames)
    assert ids.max() < 40 and np.array_equal(ids, CentroidAssigner(ints).assign(frames))


# --- quality -------------------------------------------------------------------------------------

def test_quality_on_separated_blobs_and_on_noise():
    x = blobs(4_000, centers=8)
    model = fit_kmeans(x[:3_600], x[3_600:], small_cfg(k=8), SOURCE)
    q = model.meta.quality_heldout
    assert q.frames == 400 and q.relative_error < 0.01
    assert 7.5 < q.perplexity <= 8.0 and q.dead_clusters == 0 and abs(q.entropy_bits - 3.0) < 0.1
    noise = np.random.default_rng(2).standard_normal((4_000, 16)).astype(np.float32)
    q = fit_kmeans(noise[:3_600], noise[3_600:], small_cfg(k=4), SOURCE).meta.quality_heldout
    assert q.relative_error > 0.85
    one = quality(noise, CentroidAssigner(noise[:1]))  # one centroid: all frames, 1 cluster, 0 bits
    assert one.perplexity == 1.0 and one.entropy_bits == 0.0 and one.relative_error > 1.0


def test_compare_layers_table():
    frames = {"2": blobs(2_000, centers=8), "-1": np.random.default_rng(3).standard_normal((2_000, 16)).astype(np.float32)}
    rows = compare_layers(frames, ks=[4, 8], seed=0, cfg=small_cfg(heldout_fraction=0.1))
    assert [(r.layer, r.k) for r in rows] == [("2", 4), ("2", 8), ("-1", 4), ("-1", 8)]
    assert all(r.fit_frames + r.heldout_frames == 2_000 and r.heldout_frames > 0 for r in rows)
    by = {(r.layer, r.k): r for r in rows}
    assert by["2", 8].relative_error < 0.01 < 0.8 < by["-1", 8].relative_error
    table = format_table(rows)
    lines = table.splitlines()
    assert len(lines) == 5 and lines[0].split()[:3] == ["layer", "dims", "k"]
    assert len({len(line) for line in lines}) == 1  # aligned
    assert lines[2].split()[:3] == ["2", "16", "8"]


def test_kmeans_paths():
    for given in ("out/km", "out/km.json", "out/km.npy", "out/km.scale.npy"):
        assert [p.as_posix() for p in kmeans_paths(given)] == ["out/km.json", "out/km.npy", "out/km.scale.npy"]
