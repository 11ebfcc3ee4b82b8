import hashlib

import pytest

from narrator.errors import ConfigError


from narrator.tokenfolder.split import Planned, Segment, SplitConfig, id_hash, split_chunk, held_out_slots, val_window
from narrator.tokenfolder.manifest import BookEntry
from narrator.tokenfolder.shards import ChunkRecord


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


def book(id: str, seconds: float) -> BookEntry:
    return BookEntry(id, f"{id}.wav", seconds, round(seconds / 0.04), 1, 0, 1, (0, 0))


def test_short_recordings_are_held_out_whole_by_a_stable_hash_of_their_id():
    books = [book(f"clip{i:03d}", 5.0) for i in range(400)]
    windows = held_out_slots(books, SplitConfig(val_fraction=0.1))
    held = [b.id for b in books if windows[b.id] == (0, b.slots)]
    assert all(windows[b.id] in ((0, 0), (0, b.slots)) for b in books)  # all or nothing
    assert held == [b.id for b in books if id_hash(b.id) < 0.1] and 20 < len(held) < 60
    assert id_hash("clip007") == int(hashlib.sha256(b"clip007").hexdigest()[:16], 16) / 2**64  # not hash(): stable
    assert held_out_slots(list(reversed(books)), SplitConfig(val_fraction=0.1)) == windows  # order-free


def test_long_books_keep_a_mid_window_and_the_threshold_comes_from_the_config():
    books = [book("novel", 600.0), book("clip", 30.0), book("poem", 20.0)]
    windows = held_out_slots(books, SplitConfig())  # long_book_seconds 60
    assert windows["novel"] == val_window(15000, 0.5, 0.05)  # in 40 ms slots
    assert sorted([windows["clip"], windows["poem"]]) == [(0, 0), (0, 500)]  # none hashed < 0.05: the smallest
    lowered = held_out_slots(books, SplitConfig(long_book_seconds=25.0))
    assert lowered["clip"] == val_window(750, 0.5, 0.05) and lowered["poem"] in ((0, 0), (0, 500))


def test_a_corpus_of_one_short_recording_still_has_validation_frames():
    assert held_out_slots([book("only", 24.0)], SplitConfig()) == {"only": val_window(600, 0.5, 0.05)}
    [a, b] = held_out_slots([book("a", 3.0), book("b", 3.0)], SplitConfig()).values()
    assert sorted([a, b]) == [(0, 0), (0, 75)]


def test_whole_recording_windows_cut_chunks_like_any_window():
    assert split_chunk(record(2.0, 150), 75, (0, 0)) == [Segment("train", 0, 150, 150)]
    assert split_chunk(record(2.0, 150), 75, (0, 300)) == [Segment("val", 0, 150, 150)]


def test_a_training_config_re_derives_the_folders_split_only_for_the_keys_it_sets():
    from narrator.streaming.config import DataConfig

    folder = SplitConfig(val_center=0.3, val_fraction=0.2, long_book_seconds=10.0)
    assert DataConfig(manifest="x").split_of(folder) == folder  # unset: the token folder's own
    assert DataConfig(manifest="x", val_fraction=0.1).split_of(folder) == SplitConfig(0.3, 0.1, 10.0)
    with pytest.raises(ConfigError, match="'data.val_fraction': 1.5 is not in"):
        DataConfig(manifest="x", val_fraction=1.5)
    with pytest.raises(ConfigError, match="'split.val_center': -1 is not in"):
        SplitConfig(val_center=-1)


def test_books_added_to_a_folder_are_split_among_themselves_and_the_earlier_keep_theirs():
    clips = [book(f"clip{i:03d}", 3.0) for i in range(6)]
    ranked = sorted(clips, key=lambda b: id_hash(b.id))
    assert all(id_hash(b.id) >= 0.05 for b in clips)  # none by the hash: the fallback decides
    alone = held_out_slots(clips, SplitConfig())
    assert [b.id for b in clips if alone[b.id] != (0, 0)] == [ranked[0].id]  # an empty folder: the smallest hash
    added = held_out_slots(clips, SplitConfig(), Planned(books=40, short_held_out=2))
    assert all(w == (0, 0) for w in added.values())  # the folder holds validation already: no fallback
    assert held_out_slots([book("only", 24.0)], SplitConfig(), Planned(books=3)) == {"only": (0, 0)}  # no lone rule


def test_the_plan_puts_short_recordings_held_out_whole_last_in_shards_of_their_own(tmp_path):
    from narrator.tokenizers.config import ChunkingConfig
    from narrator.tokenizers.plan import PlannedBook, ShardPlan

    books = [PlannedBook(f"clip{i:03d}", f"/c/{i}.flac", 2.0 + i % 5) for i in range(300)] + \
        [PlannedBook("novel", "/c/novel.flac", 400.0)]
    plan = ShardPlan.open(tmp_path)
    shards = plan.extend(books, ChunkingConfig(), target_bytes=2e5, bytes_per_second=1200.0, split=SplitConfig())
    held = {b.id for b in books if b.duration_s < 60 and b.held_out[1] > 0}
    assert 5 < len(held) < 30 and all(b.held_out == (0, b.slots) for b in books if b.id in held)
    kinds = [{b.id in held for b in s.books} for s in shards]
    assert all(len(k) == 1 for k in kinds)  # no shard mixes held-out recordings with others
    first_held = next(i for i, k in enumerate(kinds) if k == {True})
    assert all(k == {True} for k in kinds[first_held:])  # and they come last
    order = [p.book for s in shards for p in s.pieces]
    assert [b for b in dict.fromkeys(order) if b not in held] == [b.id for b in books if b.id not in held]  # input order
    plan.save()
    reopened = ShardPlan.open(tmp_path)
    assert len(reopened) == len(shards) and [s.pieces for s in reopened.shards()] == [s.pieces for s in shards]
    known, before = reopened.known({"novel", "clip000", "new"}, SplitConfig())
    assert set(known) == {"novel", "clip000"} and before == Planned(books=301, short_held_out=len(held))
