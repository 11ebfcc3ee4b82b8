import numpy as np
import pytest

from narrator.errors import ConfigError
from narrator.streaming.layout import (DedupSemanticLayout, FlatLayout, InterleavedLayout, PrefixLayout, SemanticLayout, SpecialTokens,
                                       StreamShape, make_layout)


@pytest.mark.parametrize("n_codebooks", [2, 4])
def test_flat_layout_interleaves_frames_with_per_codebook_offsets(n_codebooks):
    layout = FlatLayout(n_codebooks, codebook_size=1024)
    codes = np.random.default_rng(0).integers(0, 1024, (n_codebooks, 50)).astype(np.int16)
    tokens = layout.to_tokens(codes)
    assert tokens.dtype == np.int64 and tokens.shape == (n_codebooks * 50,)
    assert layout.vocab_size == n_codebooks * 1024 + 1 and layout.tokens_per_frame == n_codebooks
    assert layout.boundary_token == n_codebooks * 1024  # the first id after the codes
    for k in range(n_codebooks):  # codebook k sits at positions k, k + K, ... and owns ids [k*1024, (k+1)*1024)
        np.testing.assert_array_equal(tokens[k::n_codebooks], codes[k].astype(np.int64) + k * 1024)
    np.testing.assert_array_equal(layout.to_codes(tokens), codes)


def test_shared_vocab_keeps_raw_codes():
    layout = FlatLayout(4, codebook_size=1024, shared_vocab=True)
    codes = np.arange(4 * 10).reshape(4, 10)
    tokens = layout.to_tokens(codes)
    assert (layout.vocab_size, layout.boundary_token) == (1025, 1024)
    np.testing.assert_array_equal(tokens[:4], codes[:, 0])
    np.testing.assert_array_equal(layout.to_codes(tokens), codes)


def test_to_codes_drops_partial_frame_and_wraps_out_of_range_tokens():
    layout = FlatLayout(2, codebook_size=1024)
    # frame 0 is in range; frame 1 has codebook 0 emitting codebook 1's id and codebook 1 emitting a codebook-0 id
    tokens = np.array([5, 1024 + 7, 1024 + 3, 9, 11])  # the trailing 11 is a partial frame
    codes = layout.to_codes(tokens)
    np.testing.assert_array_equal(codes, [[5, 3], [7, 9]])
    assert codes.min() >= 0 and codes.max() < 1024


def test_to_tokens_refuses_wrong_codebook_count():
    with pytest.raises(ValueError, match="shape"):
        FlatLayout(4).to_tokens(np.zeros((2, 10), np.int16))


def test_make_layout():
    layout = make_layout("flat", 2, 1024, shared_vocab=False)
    assert isinstance(layout, FlatLayout) and layout.vocab_size == 2049
    with pytest.raises(ConfigError, match="delay"):
        make_layout("delay", 2, 1024)


@pytest.mark.parametrize("shared_vocab", [False, True])
def test_split_codes_cuts_at_boundary_frames_and_round_trips(shared_vocab):
    layout = FlatLayout(4, codebook_size=1024, shared_vocab=shared_vocab)
    rng = np.random.default_rng(1)
    parts = [rng.integers(0, 1024, (4, n)) for n in (5, 3, 0, 7)]
    pieces = [layout.to_tokens(parts[0])]
    for codes in parts[1:]:
        pieces += [layout.boundary_frame, layout.to_tokens(codes)]
    tokens = np.concatenate(pieces)
    assert layout.boundary_frame.tolist() == [layout.boundary_token] * 4
    runs = layout.split_codes(np.concatenate([tokens, [7, 8]]))  # a trailing partial frame is dropped
    assert len(runs) == 4
    for got, want in zip(runs, parts):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(layout.to_codes(layout.to_tokens(parts[0])), parts[0])
    with pytest.raises(ValueError, match="3 boundary frame"):
        layout.to_codes(tokens)


def test_a_boundary_token_anywhere_in_a_frame_makes_it_a_boundary():
    layout = FlatLayout(2, codebook_size=1024)
    tokens = np.array([5, 1024 + 7, 3, layout.boundary_token, 9, 1024 + 11])  # sampled mid-frame
    first, second = layout.split_codes(tokens)
    np.testing.assert_array_equal(first, [[5], [7]])
    np.testing.assert_array_equal(second, [[9], [11]])


# --- every layout: semantic ids [2n] at 50 Hz and acoustic codes [K, 3n] at 75 Hz for n slots of 40 ms ---

LAYOUT_CASES = [(name, sem_k, k) for name in ("acoustic", "semantic", "interleaved", "prefix")
                for sem_k, k in ((1024, 2), (500, 4))]


def layout_for(name, sem_k=500, k=2):
    return make_layout(name, {"semantic": (1, sem_k), "acoustic": (k, 1024)})


def random_run(rng, layout, slots):
    """Aligned streams of `slots` slots (2 semantic ids and 3 acoustic frames each) that the layout reads."""
    run = {}
    for s, info in layout.infos.items():
        codes = rng.integers(0, info.codebook_size, (info.n_codebooks, info.frames_per_slot * slots))
        run[s] = codes[0] if s == "semantic" else codes.astype(np.int16)
    return run


def assert_runs_equal(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for s in w:
            np.testing.assert_array_equal(g[s], w[s])
            assert g[s].dtype == np.int64 and g[s].shape == np.shape(w[s])


def id_group(layout, token):
    """The metric group a token's id belongs to (None for the boundary token)."""
    if token == layout.special.separator:
        return "separator"
    for s, ids in layout.stream_ranges.items():
        if token in ids:
            info = layout.infos[s]
            return s if info.n_codebooks == 1 else f"{s}/cb{(token - ids.start) // info.codebook_size}"
    assert token == layout.boundary_token
    return None


@pytest.mark.parametrize("name, sem_k, k", LAYOUT_CASES)
@pytest.mark.parametrize("slots", [1, 2, 7])
def test_every_layout_round_trips_and_keeps_each_stream_in_its_range(name, sem_k, k, slots):
    layout = layout_for(name, sem_k, k)
    run = random_run(np.random.default_rng(slots), layout, slots)
    tokens = layout.encode(run)
    assert tokens.dtype == np.int64 and tokens.ndim == 1
    assert len(tokens) == slots * layout.slot_tokens + (name == "prefix")
    assert_runs_equal(layout.decode(tokens), [run])
    groups = [id_group(layout, t) for t in tokens]
    assert None not in groups and groups.count("separator") == (name == "prefix")
    for s in layout.streams:  # every frame of every stream is in the tokens, inside its own range
        assert sum(g.startswith(s) for g in groups) == np.size(run[s])


def test_id_ranges_and_special_tokens_come_after_every_stream():
    interleaved, prefix = layout_for("interleaved", 1024, 2), layout_for("prefix", 1024, 2)
    for layout in (interleaved, prefix):
        assert layout.stream_ranges == {"semantic": range(0, 1024), "acoustic": range(1024, 3072)}
        assert layout.code_ids == 3072 and layout.boundary_token == 3072
    assert interleaved.special == SpecialTokens(boundary=3072) and interleaved.vocab_size == 3073
    assert prefix.special == SpecialTokens(boundary=3072, separator=3073) and prefix.vocab_size == 3074
    semantic = layout_for("semantic", 500)
    assert semantic.stream_ranges == {"semantic": range(500)}
    assert (semantic.boundary_token, semantic.vocab_size) == (500, 501)
    flat = layout_for("acoustic", 500, 4)  # acoustic alone keeps today's flat ids: 4096 is the boundary
    assert isinstance(flat, FlatLayout) and flat.vocab_size == 4097 and flat.stream_ranges == {"acoustic": range(4096)}


def test_interleaved_puts_each_slots_semantic_ids_before_its_acoustic_frames():
    layout = InterleavedLayout(StreamShape("semantic", 1, 500), StreamShape("acoustic", 2, 1024))
    run = {"semantic": np.array([1, 2, 3, 4]), "acoustic": np.array([[10, 11, 12, 13, 14, 15],
                                                                     [20, 21, 22, 23, 24, 25]])}
    a, b = 500, 500 + 1024  # the first ids of codebooks 0 and 1
    assert layout.unit_tokens == layout.slot_tokens == 8
    assert layout.encode(run).tolist() == [1, 2, a + 10, b + 20, a + 11, b + 21, a + 12, b + 22,
                                           3, 4, a + 13, b + 23, a + 14, b + 24, a + 15, b + 25]
    assert layout.group_names == ["semantic", "acoustic/cb0", "acoustic/cb1"]


@pytest.mark.parametrize("name", ["acoustic", "semantic", "interleaved"])
def test_a_unit_holding_a_boundary_token_splits_the_runs(name):
    layout = layout_for(name, 500, 4)
    rng = np.random.default_rng(0)
    runs = [random_run(rng, layout, n) for n in (3, 1, 0, 2)]
    pieces = [layout.encode(runs[0])]
    for run in runs[1:]:
        pieces += [layout.boundary_unit, layout.encode(run)]
    tokens = np.concatenate([*pieces, np.arange(layout.unit_tokens - 1)])  # a trailing partial unit is dropped
    assert_runs_equal(layout.decode(tokens), runs)
    sampled = layout.encode(runs[0])
    sampled[layout.unit_tokens + 1] = layout.boundary_token  # sampled mid-unit: the whole unit is the boundary
    first, second = layout.decode(sampled)
    unit = 1 if name == "acoustic" else None  # the flat unit is a frame, the others a slot
    for s in layout.streams:
        cut = (unit or layout.infos[s].frames_per_slot)
        np.testing.assert_array_equal(first[s], runs[0][s][..., :cut])
        np.testing.assert_array_equal(second[s], runs[0][s][..., 2 * cut:])


@pytest.mark.parametrize("name", ["acoustic", "semantic", "interleaved", "prefix"])
def test_decode_wraps_a_token_from_another_range_to_a_valid_code(name):
    layout = layout_for(name, 500, 2)
    run = random_run(np.random.default_rng(3), layout, 2)
    tokens = layout.encode(run)
    first = layout.infos[layout.streams[0]]
    wrong = layout.stream_ranges[first.name].stop - 1  # the last codebook's id, at codebook 0's position
    if len(layout.streams) > 1:
        wrong = layout.stream_ranges[layout.streams[1]].start + 7  # the other stream's id
    tokens[0] = wrong
    (got,) = layout.decode(tokens)
    s = first.name
    want = (wrong - layout.stream_ranges[s].start) % first.codebook_size
    assert np.asarray(got[s]).reshape(-1)[0] == want and 0 <= want < first.codebook_size
    for other in layout.streams[1:]:
        np.testing.assert_array_equal(got[other], run[other])


def test_encode_refuses_unaligned_or_out_of_range_streams():
    layout = layout_for("interleaved", 500, 2)
    with pytest.raises(ValueError, match="same whole units"):
        layout.encode({"semantic": np.zeros(4, int), "acoustic": np.zeros((2, 5), int)})
    with pytest.raises(ValueError, match="same whole units"):
        layout.encode({"semantic": np.zeros(3, int), "acoustic": np.zeros((2, 3), int)})
    with pytest.raises(ValueError, match=r"semantic codes outside \[0, 500\)"):
        layout.encode({"semantic": np.full(2, 500), "acoustic": np.zeros((2, 3), int)})
    with pytest.raises(ValueError, match="missing stream"):
        layout.encode({"acoustic": np.zeros((2, 3), int)})


def cut_windows(layout, runs, block_size):
    """The data pipeline's cut: runs packed behind boundary units, windows every `stride` tokens."""
    pieces = [layout.pack(runs[0])]
    for run in runs[1:]:
        pieces += [layout.boundary_unit, layout.pack(run)]
    stream = np.concatenate(pieces)
    length, stride = layout.cut(block_size)
    assert stride % layout.unit_tokens == 0  # windows start on a unit
    return [layout.to_window(stream[a : a + length], block_size) for a in range(0, len(stream) - length + 1, stride)]


@pytest.mark.parametrize("name, sem_k, k", LAYOUT_CASES)
@pytest.mark.parametrize("block_size", [26, 45])
def test_windows_start_on_a_unit_so_target_groups_name_each_targets_stream(name, sem_k, k, block_size):
    layout = layout_for(name, sem_k, k)
    rng = np.random.default_rng(block_size)
    windows = cut_windows(layout, [random_run(rng, layout, n) for n in (9, 1, 40, 30)], block_size)
    assert len(windows) >= 3
    groups = layout.target_groups(block_size)
    assert groups.shape == (block_size,) and groups.min() >= 0 and groups.max() < len(layout.group_names)
    for window in windows:
        assert len(window) == block_size + 1
        for token, group in zip(window[1:], groups):
            want = id_group(layout, token)
            if want is not None:  # a boundary unit sits where its unit would be: no stream to check
                assert layout.group_names[group] == want
            else:
                assert name != "prefix" or layout.group_names[group] != "separator"


@pytest.mark.parametrize("name, sem_k, k", LAYOUT_CASES)
def test_per_group_losses_weighted_by_tokens_give_the_overall_loss(name, sem_k, k):
    layout = layout_for(name, sem_k, k)
    losses = np.random.default_rng(0).random((3, 100))  # [batch, block_size]
    groups = layout.target_groups(100)
    counts = np.bincount(groups, minlength=len(layout.group_names))
    per_group = np.bincount(groups, losses.mean(0), minlength=len(layout.group_names)) / np.maximum(counts, 1)
    assert np.isclose((per_group * counts).sum() / counts.sum(), losses.mean())


@pytest.mark.parametrize("k", [2, 4])
def test_flat_target_groups_are_the_codebooks_evaluate_uses_today(k):
    layout = FlatLayout(k)
    np.testing.assert_array_equal(layout.target_groups(50), np.arange(1, 51) % k)
    assert layout.group_names == [f"acoustic/cb{i}" for i in range(k)]
    assert layout.cut(50) == (51, 51 // k * k) and layout.slot_tokens == 3 * k and layout.unit_tokens == k


def test_semantic_unit_is_a_slot_of_two_ids():
    layout = SemanticLayout(StreamShape("semantic", 1, 1024))
    assert layout.unit_tokens == 2 and layout.boundary_unit.tolist() == [1024, 1024]
    (run,) = layout.decode(np.array([5, 6, 7]))  # the odd id is a partial slot
    assert run["semantic"].tolist() == [5, 6]
    np.testing.assert_array_equal(layout.target_groups(5), np.zeros(5))


def test_prefix_window_is_the_slots_semantic_ids_a_separator_then_their_acoustic_tokens():
    layout = PrefixLayout(StreamShape("semantic", 1, 1024), StreamShape("acoustic", 2, 1024))
    assert layout.unit_tokens == 8 and layout.slots_for(2048) == 256  # 512 + 1 + 1536 = 2049: no padding
    run = {"semantic": np.array([1, 2, 3, 4]), "acoustic": np.array([[10, 11, 12, 13, 14, 15],
                                                                     [20, 21, 22, 23, 24, 25]])}
    a, b, sep = 1024, 2048, 3073
    example = [1, 2, 3, 4, sep, a + 10, b + 20, a + 11, b + 21, a + 12, b + 22,
               a + 13, b + 23, a + 14, b + 24, a + 15, b + 25]
    assert layout.encode(run).tolist() == example
    assert layout.cut(17) == (16, 16) and layout.cut(20) == (16, 16)  # n = 2 slots, not overlapping
    window = layout.to_window(layout.pack(run), 20)  # 17 tokens + 4 of padding
    assert window.tolist() == example + [3072] * 4
    assert_runs_equal(layout.decode(window), [run])
    assert [layout.group_names[g] for g in layout.position_groups(21)] == (
        ["semantic"] * 4 + ["separator"] + ["acoustic/cb0", "acoustic/cb1"] * 6 + ["padding"] * 4)
    with pytest.raises(ConfigError, match="block_size >= 8"):
        layout.cut(7)


def test_prefix_keeps_a_boundary_slot_in_both_parts_and_generation_decodes_a_partial_acoustic_part():
    layout = layout_for("prefix", 500, 2)
    rng = np.random.default_rng(5)
    runs = [random_run(rng, layout, n) for n in (2, 3)]
    (window,) = cut_windows(layout, runs, 6 * layout.unit_tokens)  # 2 + boundary + 3 slots = 6
    assert (window == layout.special.separator).sum() == 1
    assert_runs_equal(layout.decode(window), runs)
    # generation: all the semantic ids, the separator, 2 acoustic prompt frames; the model went on for 5 frames
    prompt = layout.prompt(runs[1]["semantic"], runs[1]["acoustic"][:, :2])
    assert len(prompt) == 6 + 1 + 2 * 2
    sampled = np.concatenate([prompt, layout.encode(runs[1])[7 + 2 * 2 : 7 + 7 * 2]])  # frames 2..6
    (got,) = layout.decode(sampled)  # 7 frames: the trailing partial slot is dropped
    np.testing.assert_array_equal(got["semantic"], runs[1]["semantic"])
    np.testing.assert_array_equal(got["acoustic"], runs[1]["acoustic"][:, :6])
    (semantic_only,) = layout.decode(layout.prompt(runs[1]["semantic"], np.zeros((2, 0), int))[:-1])  # no separator
    assert semantic_only["acoustic"].shape == (2, 0)


def test_make_layout_builds_every_layout_from_stream_infos():
    infos = {"semantic": (1, 1024), "acoustic": (4, 1024)}
    both = ("semantic", "acoustic")
    kinds = {"flat": (FlatLayout, ("acoustic",)), "acoustic": (FlatLayout, ("acoustic",)),
             "semantic": (SemanticLayout, ("semantic",)), "interleaved": (InterleavedLayout, both),
             "prefix": (PrefixLayout, both)}
    for name, (cls, streams) in kinds.items():
        layout = make_layout(name, infos)
        assert type(layout) is cls and layout.streams == streams
    assert make_layout("acoustic", infos, shared_vocab=True).vocab_size == 1025
    with pytest.raises(ConfigError, match="needs the semantic stream"):
        make_layout("interleaved", 4, 1024)
    with pytest.raises(ConfigError, match="shared_vocab"):
        make_layout("prefix", infos, shared_vocab=True)
    with pytest.raises(ConfigError, match="unknown token stream 'text'"):
        make_layout("flat", {"text": (1, 10)})
    with pytest.raises(ValueError, match="one codebook"):
        make_layout("semantic", {"semantic": (2, 10)})


def test_dedup_semantic_collapses_each_run_of_repeats_and_splits_at_boundaries():
    layout = make_layout("semantic", {"semantic": (1, 64)}, dedup_semantic=True)
    assert type(layout) is DedupSemanticLayout and layout.dedup_semantic and layout.unit_tokens == 1
    assert (layout.vocab_size, layout.boundary_token) == (65, 64)
    ids = np.array([3, 3, 3, 7, 7, 3, 9, 9])  # 4 slots, 8 ids at 50 Hz
    np.testing.assert_array_equal(layout.encode({"semantic": ids}), [3, 7, 3, 9])
    runs = layout.decode(np.array([3, 7, 64, 9, 9, 64 + 5]))  # a token past the ids wraps into them
    assert [r["semantic"].tolist() for r in runs] == [[3, 7], [9, 9, 5]]
    assert layout.target_groups(5).tolist() == [0] * 5 and layout.group_names == ["semantic"]
    for name in ("flat", "interleaved", "prefix"):
        with pytest.raises(ConfigError, match=f"'data.dedup_semantic': only the semantic layout .* not '{name}'"):
            make_layout(name, {"semantic": (1, 64), "acoustic": (2, 1024)}, dedup_semantic=True)
