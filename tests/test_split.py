import pytest

from narrator.streaming.split import Segment, split_chunk, val_window
from narrator.tokenizers.shards import ChunkRecord


def test_val_window_is_centred_sized_and_inside_the_book():
    assert val_window(1000, center=0.5, fraction=0.1) == (450, 550)
    assert val_window(1000, center=0.0, fraction=0.1) == (0, 100)  # moved inward at the start
    assert val_window(1000, center=1.0, fraction=0.1) == (900, 1000)  # and at the end
    assert val_window(3, center=0.5, fraction=0.01) == (1, 2)  # never empty
    assert val_window(1, center=0.5, fraction=0.5) == (0, 1)
    with pytest.raises(ValueError):
        val_window(0, 0.5, 0.1)


def record(start_s: float, frames: int) -> ChunkRecord:
    return ChunkRecord("book", 0, start_s, start_s + frames / 75, frames, "encodec")


def test_split_chunk_cuts_train_val_train():
    # chunk covers book frames [750, 1500); the window [1000, 1100) falls inside it
    assert split_chunk(record(10.0, 750), 75, (1000, 1100)) == [
        Segment("train", 0, 250, 750), Segment("val", 250, 350, 1000), Segment("train", 350, 750, 1100)]


def test_split_chunk_outside_or_across_the_window():
    assert split_chunk(record(0.0, 750), 75, (1000, 1100)) == [Segment("train", 0, 750, 0)]
    assert split_chunk(record(20.0, 750), 75, (1000, 1100)) == [Segment("train", 0, 750, 1500)]
    # window starts before the chunk and ends inside it; and one that covers the whole chunk
    assert split_chunk(record(10.0, 750), 75, (700, 800)) == [Segment("val", 0, 50, 750), Segment("train", 50, 750, 800)]
    assert split_chunk(record(10.0, 750), 75, (0, 3000)) == [Segment("val", 0, 750, 750)]


def test_split_chunk_segments_tile_the_chunk_without_overlapping_the_window():
    window = (137, 412)
    for start_frame in range(0, 600, 30):  # chunk starts on the 0.04 s grid (3 frames at 75 Hz)
        rec = record(start_frame / 75, 150)
        segments = split_chunk(rec, 75, window)
        assert sum(s.frames for s in segments) == 150
        assert [s.start for s in segments[1:]] == [s.end for s in segments[:-1]]
        for s in segments:
            inside = window[0] <= s.book_start and s.book_start + s.frames <= window[1]
            disjoint = s.book_start + s.frames <= window[0] or s.book_start >= window[1]
            assert inside if s.split == "val" else disjoint
