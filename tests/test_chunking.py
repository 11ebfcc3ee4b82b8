"""Chunk plans on the 0.04 s grid: exact frame boundaries, context windows clipped at book edges."""

import pytest

from narrator.errors import ConfigError, NarratorError
from narrator.tokenizers.chunking import plan_chunks
from narrator.tokenizers.config import ChunkingConfig


@pytest.mark.parametrize("duration", [30.0, 61.37, 95.999, 120.04])
def test_chunks_tile_the_book_on_the_grid(duration):
    specs = plan_chunks("book", duration, ChunkingConfig(chunk_seconds=30.0))
    samples = [(round(s.start_s * 24_000), round(s.end_s * 24_000)) for s in specs]
    assert samples[0][0] == 0
    assert all(a % 960 == 0 and b % 960 == 0 for a, b in samples)  # 960 samples = 0.04 s = 3 EnCodec frames
    assert all(prev[1] == nxt[0] for prev, nxt in zip(samples, samples[1:]))  # no gap, no overlap
    assert all(b - a == 720_000 for a, b in samples[:-1]) and 0 < samples[-1][1] - samples[-1][0] <= 720_000
    assert duration - samples[-1][1] / 24_000 < 0.04  # only a tail shorter than one grid step is dropped
    assert [s.chunk for s in specs] == list(range(len(specs)))
    assert all(s.frames == (b - a) // 320 for s, (a, b) in zip(specs, samples))


def test_context_windows_are_clipped_at_the_book_edges_and_trimmed_exactly():
    specs = plan_chunks("book", 7.0, ChunkingConfig(chunk_seconds=2.0, left_context_seconds=2.0, right_context_seconds=0.2))
    first, middle, last = specs[0], specs[1], specs[-1]
    assert (first.ctx_start_s, first.trim_left, first.ctx_end_s, first.trim_right) == (0.0, 0, 2.2, 15)
    assert (middle.ctx_start_s, middle.trim_left, middle.ctx_end_s, middle.trim_right) == (0.0, 150, 4.2, 15)
    assert (last.start_s, last.end_s, last.frames) == (6.0, 7.0, 75)  # the last chunk is shorter
    assert (last.ctx_start_s, last.trim_left, last.ctx_end_s, last.trim_right) == (4.0, 150, 7.0, 0)
    for s in specs:  # window frames = left trim + chunk frames + right trim
        assert round((s.ctx_end_s - s.ctx_start_s) * 75) == s.trim_left + s.frames + s.trim_right


def test_a_recording_shorter_than_one_chunk_is_one_shorter_chunk():
    (spec,) = plan_chunks("utterance", 5.0, ChunkingConfig())
    assert (spec.start_s, spec.end_s, spec.frames, spec.ctx_start_s, spec.ctx_end_s, spec.trim_left, spec.trim_right) == (
        0.0, 5.0, 375, 0.0, 5.0, 0, 0)
    assert plan_chunks("clip", 20.03, ChunkingConfig())[0].frames == 1500  # the tail below one 0.04 s step is dropped
    with pytest.raises(NarratorError, match=r"^blip: too short: 0\.030 s is less than one 0\.04 s grid step$"):
        plan_chunks("blip", 0.03, ChunkingConfig())


def test_chunk_lengths_off_the_grid_are_config_errors():
    with pytest.raises(ConfigError, match="chunk_seconds"):
        ChunkingConfig(chunk_seconds=2.5)
