import numpy as np
import pytest

from narrator.errors import ConfigError
from narrator.streaming.layout import FlatLayout, make_layout


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
