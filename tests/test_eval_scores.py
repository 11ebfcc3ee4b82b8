"""The arithmetic of `narrator eval`: Wilson intervals, pair accuracy, unigram references, and bits per second that
put every layout on one scale."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from narrator.evaluation.scores import (dedup_unigram_bits_per_second, entropy_bits, pair_score,
                                        unigram_bits_per_second, wilson_interval)
from narrator.streaming.config import DataConfig
from narrator.streaming.dataset import TokenShards, open_folder, val_tokens_per_second, val_windows
from narrator.streaming.layout import dedup_runs
from narrator.trainer.eval_bits import measure_bits
from narrator.trainer.eval_pairs import summed_log_likelihoods
from narrator.trainer.model import GPT, GPTConfig

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_token_folder  # noqa: E402


def test_wilson_interval_matches_the_textbook_values_and_stays_inside_0_1():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_pair_accuracy_counts_a_tie_as_half_and_reports_what_length_alone_would_score():
    score = pair_score(real=[-1.0, -5.0, -2.0, -3.0], fake=[-2.0, -4.0, -2.0, -9.0],
                       real_tokens=[10, 12, 10, 8], fake_tokens=[12, 10, 10, 10])
    assert score.accuracy == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert score.n == 4
    assert score.length_baseline == pytest.approx((1 + 0 + 0.5 + 1) / 4)  # the shorter side wins, ties half
    assert score.ci95 == pytest.approx(wilson_interval(2.5, 4))


def test_unigram_bits_count_each_codebook_apart_and_dedup_collapses_runs():
    assert entropy_bits(np.array([0, 1, 2, 3] * 5)) == pytest.approx(2.0)
    # Two codebooks of 4 equally common ids, 80 frames in 1 s: 2 bits each, 160 ids/s -> 320 bits/s.
    books = [np.arange(80) % 4, np.arange(80) % 4 + 100]
    assert unigram_bits_per_second(books, 1.0) == pytest.approx(2 * 2.0 * 80)
    assert dedup_runs(np.array([1, 1, 1, 5, 5, 1, 7])).tolist() == [1, 5, 1, 7]
    # 52 ids in 1 s that are 26 runs of two: collapsed, half the ids remain (1 bit each between 0 and 1).
    ids = np.repeat(np.arange(26) % 2, 2)
    assert dedup_unigram_bits_per_second([ids], 1.0) == pytest.approx(26 * 1.0)


def _uniform_model(vocab: int, block: int) -> GPT:
    """A GPT whose every prediction is uniform: its tied embedding is zero, so every logit is 0."""
    model = GPT(GPTConfig(block_size=block, vocab_size=vocab, n_layer=1, n_head=1, n_embd=8, dropout=0.0)).eval()
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
    return model


def test_bits_per_second_put_every_layout_on_one_scale(tmp_path):
    """The same tokens read with each layout: a model that knows nothing costs log2(vocab) bits per token of each
    stream, times that stream's tokens per second (acoustic 75 x 2 codebooks, semantic 50); the unigram of a
    stream is the same whichever layout carries it; boundary, separator and padding tokens count for no stream."""
    folder = make_token_folder(tmp_path / "tokens", books=2, seconds=30.0, n_codebooks=2,
                               streams=("acoustic", "semantic"), semantic_k=64)
    manifest, root = open_folder(folder)
    block = 96
    unigram = {"acoustic": [], "semantic": []}
    for name in ("flat", "semantic", "interleaved", "prefix"):
        shards = TokenShards.open(DataConfig(manifest=str(folder), layout=name), manifest, root)
        layout = shards.layout
        windows = val_windows(shards, block, 0, 1)
        bits = measure_bits(_uniform_model(layout.vocab_size, block), layout, windows)
        rates = {"acoustic": 150.0, "semantic": 50.0}
        for stream in layout.streams:
            assert bits.tokens_per_second[stream] == rates[stream]
            assert bits.per_stream[stream] == pytest.approx(math.log2(layout.vocab_size) * rates[stream], rel=1e-4)
            unigram[stream].append(bits.unigram_per_stream[stream])
        assert bits.total == pytest.approx(sum(bits.per_stream.values()))
        stream_targets = sum(bits.targets.values())
        special = np.isin(windows[:, 1:], [layout.boundary_token, layout.special.separator or -1]).sum()
        assert stream_targets == windows[:, 1:].size - special
        if "semantic" in layout.streams:
            assert bits.dedup_unigram < bits.unigram_per_stream["semantic"]
        else:
            assert bits.dedup_unigram is None
    # Random ids below 16: ~4 bits per id whichever layout read them (the windows cover slightly different frames).
    assert unigram["acoustic"] == pytest.approx([4.0 * 150] * 3, rel=0.03)
    assert unigram["semantic"] == pytest.approx([4.0 * 50] * 3, rel=0.03)


def test_a_sequence_longer_than_the_block_is_scored_in_windows_that_reach_every_token():
    """Summed log-likelihoods read past block_size in windows on the unit grid, scoring each token once."""
    model = _uniform_model(vocab=50, block=16)
    sequences = [np.arange(5) % 50, np.arange(61) % 50, np.arange(16) % 50]
    ll = summed_log_likelihoods(model, sequences, [2, 2, 0], align=2)
    scored = [3, 59, 15]  # tokens from index score_from on (the first token has nothing before it)
    assert ll == pytest.approx([-n * math.log(50) for n in scored], rel=1e-5)
    with pytest.raises(ValueError, match="half the block"):
        summed_log_likelihoods(model, sequences, [2, 2, 0], align=9)


def test_dedup_semantic_bits_use_the_collapsed_ids_rate_measured_on_the_same_audio(tmp_path):
    """A dedup_semantic layout has no fixed token rate: bits per second take the collapsed ids per second of the
    held-out audio, which is what collapsing the plain layout's held-out ids gives; without a rate it is refused."""
    folder = make_token_folder(tmp_path / "tokens", books=2, seconds=30.0, n_codebooks=2,
                               streams=("acoustic", "semantic"), semantic_k=64)
    manifest, root = open_folder(folder)
    plain = TokenShards.open(DataConfig(manifest=str(folder), layout="semantic"), manifest, root)
    pieces = [p for p in plain.token_stream(plain.val, "val") if not (p == plain.layout.boundary_token).all()]
    expected = sum(len(dedup_runs(p)) for p in pieces) / (sum(len(p) for p in pieces) / 50.0)
    assert 40 < expected < 50  # random ids below 16: about 1 in 16 repeats the one before

    shards = TokenShards.open(DataConfig(manifest=str(folder), layout="semantic", dedup_semantic=True), manifest, root)
    rate = val_tokens_per_second([shards])
    assert rate == pytest.approx(expected)
    block = 64
    windows = val_windows(shards, block, 0, 1)
    model = _uniform_model(shards.layout.vocab_size, block)
    with pytest.raises(ValueError, match="no fixed rate"):
        measure_bits(model, shards.layout, windows)
    bits = measure_bits(model, shards.layout, windows, tokens_per_second={"semantic": rate})
    assert bits.tokens_per_second == {"semantic": rate}
    assert bits.per_stream["semantic"] == pytest.approx(math.log2(65) * rate, rel=1e-4)
    # The collapsed ids' unigram is the plain layout's dedup unigram of the same audio.
    reference = measure_bits(_uniform_model(plain.layout.vocab_size, block), plain.layout, val_windows(plain, block, 0, 1))
    assert bits.unigram_per_stream["semantic"] == pytest.approx(reference.dedup_unigram, rel=0.05)
    assert bits.dedup_unigram == pytest.approx(bits.unigram_per_stream["semantic"], rel=0.01)
