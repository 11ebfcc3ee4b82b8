"""The streaming pipeline on small token folders whose codes encode their own position.

Code layout of the fixture (conftest.make_token_folder, codes="position", 4 codebooks): c0 = frame
% 1024, c1 = frame // 1024 (absolute frame in the book), c2 = book index, c3 = chunk index; so
every window tells where each of its frames came from.
"""

import itertools
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from narrator.errors import NarratorError
from narrator.streaming.config import DataConfig
from narrator.streaming.dataset import (TokenShards, TrainWindows, build_train_loader, build_val_loader, data_vocab,
                                        shard_urls, slot_plan, window_coverage)
from narrator.streaming.layout import FlatLayout
from narrator.streaming.position import DataDeal, DataPosition
from narrator.tokenfolder.split import held_out_slots
from narrator.tokenfolder.manifest import ACOUSTIC, Manifest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import folder_books, make_token_folder  # noqa: E402

FRAME_RATE = 75
BLOCK = 63  # windows of 64 tokens = 16 frames, cut every 64 tokens
LAYOUT = FlatLayout(4)
BOOKS = [20.0, 14.0, 10.0, 3.0, 1.0, 0.5]  # seconds; books >= 12 s are long (cfg below)
CHUNK_SECONDS = 2.0  # 150-frame chunks, 4 to a shard: 7 uneven shards, several books per shard



def one_folder_train_loader(data: DataConfig, manifest: Manifest, folder: Path, *args, **kwargs):
    """build_train_loader over one token folder."""
    return build_train_loader(data, [TokenShards.open(data, manifest, folder)], *args, **kwargs)


def one_folder_val_loader(data: DataConfig, manifest: Manifest, folder: Path, *args, **kwargs):
    """build_val_loader over one token folder."""
    return build_val_loader([TokenShards.open(data, manifest, folder)], *args, **kwargs)

def write_tokens(out: Path, seconds: list[float] = BOOKS, samples_per_shard: int = 4) -> Manifest:
    make_token_folder(out, seconds=seconds, chunk_seconds=CHUNK_SECONDS, samples_per_shard=samples_per_shard,
                      codes="position")
    return Manifest.load(out)


def runs(window) -> list[tuple[int, np.ndarray]]:
    """(book, absolute frames) of each run of a window between boundary frames; each run is one book's
    consecutive frames (a window starts on a frame; its trailing partial frame is dropped)."""
    out = []
    for codes in LAYOUT.split_codes(np.asarray(window)):
        if not codes.shape[1]:
            continue
        books = set(codes[2].tolist())
        assert len(books) == 1, "frames of two books joined without a boundary frame"
        frames = codes[0] + 1024 * codes[1]
        assert np.array_equal(frames, np.arange(frames[0], frames[0] + len(frames))), "a run skipped frames"
        out.append((books.pop(), frames))
    return out


def frames_of(windows) -> set[tuple[int, int]]:
    return {(book, int(f)) for w in windows for book, frames in runs(w) for f in frames}


def stream_frames(stream) -> list[tuple[int, int]]:
    """(book, frame) of every frame of a token stream, in order."""
    return [(book, int(f)) for book, frames in runs(np.concatenate(list(stream))) for f in frames]


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging if a loader never yields."""
    def fail(*_):
        raise TimeoutError(f"no data within {seconds} s")
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, Manifest]:
    out = tmp_path_factory.mktemp("tokens")
    return out, write_tokens(out)


def cfg(**kw) -> DataConfig:
    return DataConfig(**{"manifest": "unused", "val_fraction": 0.1, "long_book_seconds": 12.0, "shuffle_buffer": 32,
                         "num_workers": 0, **kw})


def held_out(out: Path) -> dict[int, tuple[int, int]]:
    """Book index -> its held-out frames, as the loaders get them (cfg() re-derives the folder's split)."""
    split = cfg().split_of(Manifest.load(out).split)
    return {int(book[4:]): (3 * a, 3 * b) for book, (a, b) in held_out_slots(folder_books(out), split).items()}


def all_frames(out: Path) -> set[tuple[int, int]]:
    return {(int(b.id[4:]), f) for b in folder_books(out) for f in range(3 * b.slots)}


def val_set(out: Path) -> set[tuple[int, int]]:
    return {(b, f) for b, (start, end) in held_out(out).items() for f in range(start, end)}


def test_data_vocab_is_the_codes_plus_one_boundary_token(folder):
    _, manifest = folder
    layout, vocab = data_vocab(cfg(), manifest)
    assert (vocab, layout.boundary_token) == (4097, 4096)
    layout, vocab = data_vocab(cfg(shared_vocab=True), manifest)
    assert (vocab, layout.boundary_token) == (1025, 1024)


def test_the_fixture_has_long_books_short_recordings_and_both_splits(folder):
    books = folder_books(folder[0])
    windows = held_out(folder[0])
    assert 0 < windows[0][0] < windows[0][1] < 3 * books[0].slots  # long: a mid-book window
    assert 0 < windows[1][0] < windows[1][1] < 3 * books[1].slots
    short = {b: windows[b] for b in range(2, len(BOOKS))}
    assert any(w == (0, 0) for w in short.values()) and any(w[0] == 0 and w[1] > 0 for w in short.values())
    assert all(w in ((0, 0), (0, 3 * books[b].slots)) for b, w in short.items())  # short: all or nothing


def test_train_batches_never_touch_a_held_out_frame(folder):
    loader = one_folder_train_loader(cfg(), folder[1], folder[0], BLOCK, batch_size=8, rank=0, world_size=1, seed=1)
    it = iter(loader)
    val, seen, crossed_chunks, packed = val_set(folder[0]), set(), False, False
    for _ in range(60):  # 480 windows: several epochs of the ~300 train windows
        x, y, *_ = next(it)
        assert x.shape == y.shape == (8, BLOCK) and x.dtype == y.dtype == torch.int64
        assert (x[:, 1:] == y[:, :-1]).all()
        for row_x, row_y in zip(x.numpy(), y.numpy()):
            window = np.concatenate([row_x, row_y[-1:]])
            got = frames_of([window])
            assert not got & val, f"a training window holds validation frames {sorted(got & val)[:5]}"
            seen |= got
            codes = LAYOUT.split_codes(window)
            crossed_chunks |= any(len(set(c[3].tolist())) > 1 for c in codes)
            packed |= len({b for b, _ in runs(window)}) > 1
    assert crossed_chunks, "no window crossed a chunk boundary"
    assert packed, "no window packed two recordings"
    assert seen == all_frames(folder[0]) - val  # every training frame was seen


def test_boundary_frames_are_whole_and_between_runs_only(folder):
    shards = TokenShards.open(cfg(), folder[1], folder[0])
    stream = np.concatenate(list(shards.token_stream(shards.train, "train")))
    frames = stream.reshape(-1, 4)
    is_boundary = frames == LAYOUT.boundary_token
    assert (is_boundary.all(axis=1) | ~is_boundary.any(axis=1)).all()  # whole frames only
    rows = np.flatnonzero(is_boundary.all(axis=1))
    assert len(rows) and rows[0] > 0 and rows[-1] < len(frames) - 1 and np.diff(rows).min() > 1  # never doubled


@pytest.mark.parametrize("seconds, per_shard", [(BOOKS, 4), ([20.0, 9.0], 40)], ids=["7-shards", "1-shard"])
def test_slots_of_2_ranks_x_2_workers_partition_the_tokens(tmp_path, seconds, per_shard):
    manifest = write_tokens(tmp_path, seconds, per_shard)
    shards = TokenShards.open(cfg(), manifest, tmp_path)
    val = stream_frames(shards.token_stream(shards.val, "val"))
    for epoch in range(3):
        taken = list(val)
        for slot in range(4):
            order, keep = slot_plan([shards.shard_samples[i] for i in shards.train], 5, epoch, slot, 4)
            share = stream_frames(shards.token_stream([shards.train[i] for i in order], "train", keep))
            assert share, f"slot {slot} got no data in epoch {epoch}"
            taken += share
        assert len(taken) == len(set(taken)) and set(taken) == all_frames(tmp_path)  # every frame exactly once
        for rank in range(2):  # and the windows each slot cuts stay inside its share
            ds = TrainWindows(shards, BLOCK, rank, 2, workers=2, seed=5, shuffle_buffer=8)
            for worker in range(2):
                order, keep = slot_plan([shards.shard_samples[i] for i in shards.train], 5, epoch, rank * 2 + worker, 4)
                share = set(stream_frames(shards.token_stream([shards.train[i] for i in order], "train", keep)))
                assert frames_of(w.tokens for w in ds.epoch(epoch, worker, rank * 2 + worker, 4)) <= share
    fallback = TrainWindows(shards, BLOCK, 1, 2, workers=2, seed=5, shuffle_buffer=8).epoch(0, 1, 3, 4, read_all=True)
    assert len(frames_of(w.tokens for w in fallback)) > 0.9 * len(all_frames(tmp_path) - set(val))  # reads it all


def test_slot_plan_keeps_contiguous_runs_when_shards_are_fewer_than_slots():
    samples = [5, 3, 4]
    order = slot_plan(samples, 0, 0, 0, 1)[0]
    flat = [(i, j) for i in order for j in range(samples[i])]  # every chunk, in the epoch's shard order
    shares = []
    for slot in range(5):
        shards, keep = slot_plan(samples, 0, 0, slot, 5)
        shares.append([(i, j) for i in shards for j in range(samples[i])][keep])
    assert [len(s) for s in shares] == [2, 2, 3, 2, 3]
    assert sum(shares, []) == flat  # contiguous runs, in order, each chunk once
    assert slot_plan([1, 1], 0, 0, 3, 4)[1] == slice(None)  # fewer chunks than slots: every slot reads all


def test_every_token_is_in_a_window_but_one_partial_window_per_slot(folder):
    shards = TokenShards.open(cfg(), folder[1], folder[0])
    block = 2 * 4 * 16 - 1  # 32 frames: windows of whole frames that share no token, so covered tokens = frames x 4
    for epoch in range(3):
        ds = TrainWindows(shards, block, 0, 1, workers=1, seed=4, shuffle_buffer=0)
        windows = list(ds.epoch(epoch, 0, 0, 1))
        [report] = [w.coverage for w in windows if w.coverage is not None]
        assert windows[-1].coverage is report and report.epoch == epoch
        train = all_frames(folder[0]) - val_set(folder[0])
        assert report.tokens == 4 * len(train)
        assert report.covered == 4 * len(frames_of(w.tokens for w in windows))
        assert report.tokens - report.covered < block + 1  # at most one partial window lost
    first_frames = {epoch: runs(next(iter(TrainWindows(shards, block, 0, 1, 1, 4, 0).epoch(epoch, 0, 0, 1))).tokens)[0]
                    for epoch in range(4)}
    assert len({(b, int(f[0])) for b, f in first_frames.values()}) > 1  # each epoch cuts elsewhere


def test_block_2048_uses_99_percent_of_200_short_recordings_and_two_long_books(tmp_path):
    rng = np.random.default_rng(0)
    seconds = [float(s) for s in rng.uniform(1.0, 12.0, 200)] + [300.0, 420.0]
    make_token_folder(tmp_path, seconds=seconds, chunk_seconds=30.0, samples_per_shard=64, codes="position")
    manifest = Manifest.load(tmp_path)
    data = DataConfig(manifest=str(tmp_path))  # the defaults: val_fraction 0.05, long books from 60 s
    shards = TokenShards.open(data, manifest, tmp_path)
    books = folder_books(tmp_path)
    assert shards.val_slots is None  # the folder's own split: each book's held-out slots come with its shard
    held = {b.id: (3 * b.held_out[0], 3 * b.held_out[1]) for b in books}  # in acoustic frames
    short = [b for b in books if b.duration_s < 60]
    assert 0 < sum(held[b.id] == (0, 3 * b.slots) for b in short) < 30
    assert all(0 < held[b.id][0] < held[b.id][1] < 3 * b.slots for b in books if b.duration_s >= 60)
    for workers in (1, 4):  # gpu16gb.yaml runs 4 workers
        coverage = window_coverage(shards, 2048, epoch=0, workers=workers, seed=1)
        print(f"\nblock 2048, {workers} worker(s): {coverage.share:.2%} of {coverage.tokens:,} training tokens "
              "landed in a window")
        assert coverage.share >= 0.99
    windows = [w.tokens for w in TrainWindows(shards, 2048, 0, 1, 1, 1, 0).epoch(0, 0, 0, 1)]
    assert not frames_of(windows) & {(int(b.id[4:]), f) for b in books
                                     for f in range(*held[b.id])}


def test_a_recording_shorter_than_a_window_contributes_tokens(tmp_path):
    manifest = write_tokens(tmp_path, [1.0] * 40)  # 75 frames each; a window of block 2048 is 512 frames
    shards = TokenShards.open(cfg(), manifest, tmp_path)
    train_books = {int(b[4:]) for b, w in shards.val_slots.items() if w == (0, 0)}
    windows = [w.tokens for w in TrainWindows(shards, 2048, 0, 1, 1, 0, 0).epoch(0, 0, 0, 1)]
    seen = {b for b, _ in frames_of(windows)}
    assert seen <= train_books and len(seen) >= len(train_books) - 7  # all but the last partial window's
    assert window_coverage(shards, 2048).share > 0.8  # cut per chunk, 2048-token windows got none of it


def test_same_seed_same_order_other_seed_other_order(folder):
    def first_batches(seed):
        it = iter(one_folder_train_loader(cfg(), folder[1], folder[0], BLOCK, 8, 0, 1, seed=seed))
        return np.concatenate([next(it).x.numpy() for _ in range(5)])

    a = first_batches(7)
    assert np.array_equal(a, first_batches(7))
    assert not np.array_equal(a, first_batches(8))


def test_a_position_at_an_epoch_start_resumes_at_that_epoch(folder):
    shards = TokenShards.open(cfg(), folder[1], folder[0])
    ds = TrainWindows(shards, BLOCK, 0, 1, workers=1, seed=2, shuffle_buffer=8)
    epoch1 = [w.tokens.tolist() for w in ds.epoch(1, 0, 0, 1)]
    start = DataPosition.fresh(DataDeal(1, 1, 2, 8, (len(shards.urls),)), epoch=1)
    resumed = TrainWindows(shards, BLOCK, 0, 1, workers=1, seed=2, shuffle_buffer=8, start=start)
    assert [w.tokens.tolist() for w in itertools.islice(resumed, len(epoch1))] == epoch1
    assert epoch1 != [w.tokens.tolist() for w in ds.epoch(0, 0, 0, 1)]


def test_val_loader_is_deterministic_and_holds_only_val_frames(folder):
    loader = one_folder_val_loader(cfg(), folder[1], folder[0], BLOCK, batch_size=4, rank=0, world_size=1)
    first = [(x.clone(), y.clone()) for x, y in loader]
    second = list(loader)
    assert len(first) == len(second) > 0
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(first, second))
    windows = [np.concatenate([row_x, row_y[-1:]]) for x, y in first for row_x, row_y in zip(x.numpy(), y.numpy())]
    assert frames_of(windows) <= val_set(folder[0])


def test_val_windows_are_shared_between_ranks(folder):
    def rows(rank, world_size):
        loader = one_folder_val_loader(cfg(), folder[1], folder[0], BLOCK, 100, rank, world_size)
        return [r.tolist() for x, _ in loader for r in x]

    everything = rows(0, 1)
    halves = rows(0, 2), rows(1, 2)
    assert sorted(halves[0] + halves[1]) == sorted(everything)
    assert not set(map(tuple, halves[0])) & set(map(tuple, halves[1]))
    assert rows(3, len(everything) + 1) == everything  # fewer windows than ranks: every rank uses all


def test_no_window_fits_is_an_error_not_a_hang(folder):
    shards = TokenShards.open(cfg(), folder[1], folder[0])
    too_long = 4 * sum(3 * b.slots for b in folder_books(folder[0]))
    with deadline(60), pytest.raises(NarratorError, match="fill no window"):
        next(iter(TrainWindows(shards, too_long, 0, 1, workers=1, seed=0, shuffle_buffer=8)))
    with pytest.raises(NarratorError, match="fill no validation window"):
        one_folder_val_loader(cfg(), folder[1], folder[0], too_long, 4, 0, 1)


def test_real_loaders_on_2_ranks_with_2_workers_all_yield(folder):
    with deadline(120):
        for rank in range(2):
            loader = one_folder_train_loader(cfg(num_workers=2), folder[1], folder[0], BLOCK, 4, rank, 2, seed=3)
            it = iter(loader)
            batches = [next(it) for _ in range(6)]  # workers take turns: 3 batches from each
            assert all(b.x.shape == (4, BLOCK) for b in batches)
            del it, loader


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


def test_incomplete_tokenization_is_refused(tmp_path):
    manifest = write_tokens(tmp_path, [3.0])
    manifest.pending = ["shards/shard-000009.tar", "shards/shard-000010.tar"]
    with pytest.raises(NarratorError) as e:
        TokenShards.open(cfg(), manifest, tmp_path)
    assert one_line(e) == (f"{tmp_path / 'manifest.json'}: tokenization is incomplete (2 shard files pending); "
                               "rerun narrator tokenize")


def test_missing_or_truncated_shard_is_named(tmp_path):
    manifest = write_tokens(tmp_path, [6.0])
    shard = tmp_path / manifest.shards[0].files[ACOUSTIC].path
    shard.write_bytes(shard.read_bytes()[:-1000])
    with pytest.raises(NarratorError, match="truncated") as e:
        one_folder_train_loader(cfg(), manifest, tmp_path, BLOCK, 4, 0, 1, seed=0)
    assert str(shard) in one_line(e)
    shard.unlink()
    with pytest.raises(NarratorError, match="missing") as e:
        shard_urls(manifest, tmp_path, ACOUSTIC)
    assert str(shard) in one_line(e)


def test_corrupt_shard_while_streaming_is_one_line_naming_it(tmp_path):
    manifest = write_tokens(tmp_path, [6.0])
    shard = tmp_path / manifest.shards[0].files[ACOUSTIC].path
    data = bytearray(shard.read_bytes())
    data[:512] = b"\x07" * 512  # same size, so only reading it finds the damage
    shard.write_bytes(bytes(data))
    loader = one_folder_train_loader(cfg(num_workers=1), manifest, tmp_path, BLOCK, 4, 0, 1, seed=0)
    with deadline(60), pytest.raises(NarratorError, match="truncated or corrupt") as e:
        next(iter(loader))
    assert one_line(e).startswith(f"shard {shard.resolve()} is truncated or corrupt")


def test_pipe_and_unknown_urls_are_refused(tmp_path):
    manifest = write_tokens(tmp_path, [4.0])
    marker = tmp_path / "ran"
    manifest.shards[0].files[ACOUSTIC].path = f"pipe:touch {marker}"
    with pytest.raises(NarratorError, match="pipe: URL") as e:
        one_folder_train_loader(cfg(), manifest, tmp_path, BLOCK, 4, 0, 1, seed=0)
    assert str(tmp_path / "manifest.json") in one_line(e) and not marker.exists()
    manifest.shards[0].files[ACOUSTIC].path = "s3://bucket/x.tar"
    with pytest.raises(NarratorError, match="unsupported URL scheme"):
        shard_urls(manifest, tmp_path, ACOUSTIC)
    manifest.shards[0].files[ACOUSTIC].path = "https://example.org/x.tar"  # allowed remote shards pass, checked when read
    with pytest.raises(NarratorError, match="lies outside the token folder .* data.allow_outside_root=true"):
        shard_urls(manifest, tmp_path, ACOUSTIC)
    assert shard_urls(manifest, tmp_path, ACOUSTIC, allow_outside_root=True)[0] == "https://example.org/x.tar"
