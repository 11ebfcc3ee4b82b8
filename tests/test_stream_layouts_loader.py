"""The loader on token folders with a semantic stream beside the acoustic one, for every layout.

Position codes (conftest.make_token_folder, codes="position"): acoustic c0 + 1024 * c1 = absolute
frame, c2 = book; semantic id = 4096 * book + absolute semantic frame. So every decoded window says
which 40 ms slots of which book each of its tokens came from, in both streams.
"""

import io
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from narrator.errors import NarratorError
from narrator.streaming.config import DataConfig
from narrator.streaming.dataset import TokenShards, TrainWindows, build_train_loader, build_val_loader, val_windows
from narrator.tokenfolder.manifest import Manifest
from narrator.tokenfolder.shards import decode_npy, encode_npy, file_sha256

sys.path.insert(0, str(Path(__file__).parent))
from conftest import folder_books, make_token_folder  # noqa: E402

BOOKS = [20.0, 14.0, 10.0, 3.0, 1.0, 0.5]  # seconds; books >= 12 s are long (cfg below)
TWO = ("semantic", "acoustic")



def one_folder_train_loader(data: DataConfig, manifest: Manifest, folder: Path, *args, **kwargs):
    """build_train_loader over one token folder."""
    return build_train_loader(data, [TokenShards.open(data, manifest, folder)], *args, **kwargs)


def one_folder_val_loader(data: DataConfig, manifest: Manifest, folder: Path, *args, **kwargs):
    """build_val_loader over one token folder."""
    return build_val_loader([TokenShards.open(data, manifest, folder)], *args, **kwargs)

def cfg(layout: str, **kw) -> DataConfig:
    return DataConfig(**{"manifest": "unused", "layout": layout, "val_fraction": 0.1, "long_book_seconds": 12.0,
                         "shuffle_buffer": 0, "num_workers": 0, **kw})


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, Manifest]:
    out = make_token_folder(tmp_path_factory.mktemp("two"), seconds=BOOKS, chunk_seconds=2.0, samples_per_shard=4,
                            codes="position", streams=TWO)
    return out, Manifest.load(out)


def slots_of(run: dict[str, np.ndarray]) -> set[tuple[int, int]]:
    """(book, slot) of a decoded run, checking that each stream holds consecutive frames of one book and,
    when both are there, that they cover the same whole slots."""
    found = {}
    for stream, fps in (("semantic", 2), ("acoustic", 3)):
        codes = run.get(stream)
        if codes is None or not codes.size:
            continue
        if stream == "semantic":
            books, frames = set((codes // 4096).tolist()), codes % 4096
        else:
            books, frames = set(codes[2].tolist()), codes[0] + 1024 * codes[1]
        assert len(books) == 1, f"{stream}: two books joined without a boundary"
        assert np.array_equal(frames, np.arange(frames[0], frames[0] + len(frames))), f"{stream}: a run skipped frames"
        found[stream] = (books.pop(), frames[0] / fps, len(frames) / fps)
    if len(found) == 2:
        assert found["semantic"] == found["acoustic"], f"streams out of step: {found}"
        assert float(found["acoustic"][2]).is_integer() and float(found["acoustic"][1]).is_integer()
    return {(book, s) for book, first, n in found.values() for s in range(int(first), int(np.ceil(first + n)))}


def window_slots(layout, window: np.ndarray) -> set[tuple[int, int]]:
    return {slot for run in layout.decode(window) for slot in slots_of(run)}


def held_slots(shards: TokenShards) -> set[tuple[int, int]]:
    return {(int(b[4:]), s) for b, (lo, hi) in shards.val_slots.items() for s in range(lo, hi)}


def all_slots(out: Path) -> set[tuple[int, int]]:
    return {(int(b.id[4:]), s) for b in folder_books(out) for s in range(b.slots)}


@pytest.mark.parametrize("layout", ["semantic", "interleaved", "prefix", "flat"])
def test_windows_hold_only_training_slots_of_both_streams_in_step(folder, layout):
    out, manifest = folder
    shards = TokenShards.open(cfg(layout), manifest, out)
    assert shards.layout.streams == {"flat": ("acoustic",), "semantic": ("semantic",)}.get(layout, TWO)
    block = 8 * shards.layout.unit_tokens  # 8 slots (flat: 8 frames)
    val, train = held_slots(shards), all_slots(out) - held_slots(shards)
    assert val and train
    seen, packed = set(), False
    for epoch in range(2):
        windows = [w.tokens for w in TrainWindows(shards, block, 0, 1, 1, seed=3, shuffle_buffer=0).epoch(epoch, 0, 0, 1)]
        assert windows and all(len(w) == block + 1 for w in windows)
        for w in windows:
            got = window_slots(shards.layout, w)
            assert not got & val, f"a {layout} training window holds validation slots {sorted(got & val)[:4]}"
            seen |= got
            packed |= len({b for b, _ in got}) > 1
    assert packed, "no window packed two recordings"
    assert len(seen) >= 0.97 * len(train)  # all but the partial windows at each epoch's end
    held = [window_slots(shards.layout, w) for w in val_windows(shards, block, 0, 1)]
    assert held and all(h <= val for h in held)


def test_prefix_windows_put_the_semantic_ids_before_the_acoustic_tokens_of_the_same_slots(folder):
    out, manifest = folder
    shards = TokenShards.open(cfg("prefix"), manifest, out)
    layout, block = shards.layout, 100  # not a multiple of the 14-token slot: 7 slots, padded
    window = next(iter(TrainWindows(shards, block, 0, 1, 1, seed=0, shuffle_buffer=0).epoch(0, 0, 0, 1))).tokens
    n = block // layout.unit_tokens
    assert len(window) == block + 1 and window[2 * n] == layout.special.separator
    assert (window[2 * n + 1 + 12 * n:] == layout.boundary_token).all()  # padding
    assert window[: 2 * n].max() < layout.stream_ranges["semantic"].stop
    assert len(window_slots(layout, window)) >= n - 1


def test_flat_layout_on_a_two_stream_folder_reads_the_acoustic_stream_as_before(folder, tmp_path):
    out, manifest = folder
    alone = make_token_folder(tmp_path, seconds=BOOKS, chunk_seconds=2.0, samples_per_shard=4, codes="position")
    for layout in ("flat", "acoustic"):
        both = val_windows(TokenShards.open(cfg(layout), manifest, out), 63, 0, 1)
        assert np.array_equal(both, val_windows(TokenShards.open(cfg("flat"), Manifest.load(alone), alone), 63, 0, 1))


def test_real_loaders_yield_interleaved_batches(folder):
    out, manifest = folder
    loader = one_folder_train_loader(cfg("interleaved", num_workers=1), manifest, out, 111, 4, 0, 1, seed=0)
    batch = next(iter(loader))
    assert batch.x.shape == (4, 111)
    assert len(list(one_folder_val_loader(cfg("interleaved"), manifest, out, 111, 4, 0, 1))) > 0


# --- refusals: one line naming both sides ---------------------------------------------------------

def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


def small_folder(tmp_path: Path, streams=TWO) -> tuple[Path, Manifest]:
    out = make_token_folder(tmp_path / "tokens", seconds=[6.0, 4.0], chunk_seconds=2.0, samples_per_shard=3,
                            codes="position", streams=streams)
    return out, Manifest.load(out)


def rewrite(out: Path, manifest: Manifest, stream: str, shard: int, edit) -> Path:
    """Rewrite one stream's tar through edit(list of (key, {field: bytes})) and update its manifest entry."""
    entry = manifest.shards[shard].files[stream]
    path = out / entry.path
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, field = member.name.split(".", 1)
            samples.setdefault(key, {})[field] = tar.extractfile(member).read()
    items = edit(list(samples.items()))
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, fields in items:
            for field, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    entry.bytes, entry.sha256 = path.stat().st_size, file_sha256(path)
    manifest.save(out / "manifest.json")
    return path.resolve()


def read_all(out: Path, manifest: Manifest, layout: str = "interleaved"):
    shards = TokenShards.open(cfg(layout), manifest, out)
    return list(shards.token_stream(shards.train, "train")) + list(shards.token_stream(shards.val, "val"))


def test_a_layout_needing_a_stream_the_folder_lacks_is_refused(tmp_path):
    out, manifest = small_folder(tmp_path, streams=("acoustic",))
    for layout in ("semantic", "interleaved", "prefix"):
        with pytest.raises(NarratorError) as e:
            TokenShards.open(cfg(layout), manifest, out)
        assert one_line(e) == (f"{out / 'manifest.json'}: layout {layout!r} reads the semantic stream, which this token "
                               "folder lacks (streams: acoustic); tokenize it first")
    semantic_only, m = small_folder(tmp_path / "s", streams=("semantic",))
    with pytest.raises(NarratorError, match="reads the acoustic stream.*streams: semantic"):
        TokenShards.open(cfg("flat"), m, semantic_only)
    assert read_all(semantic_only, m, "semantic")


def test_keys_that_differ_between_streams_are_refused_naming_both_tars(tmp_path):
    out, manifest = small_folder(tmp_path)
    acoustic = (out / manifest.shards[0].files["acoustic"].path).resolve()
    semantic = rewrite(out, manifest, "semantic", 0, lambda items: [items[1], items[0], *items[2:]])
    with pytest.raises(NarratorError) as e:
        read_all(out, manifest)
    assert one_line(e) == (f"{semantic}: sample book0/000001 where {acoustic} has sample book0/000000 "
                           "(the streams' shards must hold the same chunks in the same order)")
    rewrite(out, manifest, "semantic", 0, lambda items: sorted(items)[:-1])  # one chunk short
    with pytest.raises(NarratorError) as e:
        read_all(out, manifest)
    assert one_line(e).startswith(f"{semantic}: ends before {acoustic}, which goes on with sample book0/000002")


def test_frame_counts_that_disagree_between_streams_are_refused_naming_both_tars(tmp_path):
    out, manifest = small_folder(tmp_path)
    acoustic = (out / manifest.shards[1].files["acoustic"].path).resolve()

    def shorten(items):
        key, fields = items[0]
        ids = decode_npy(fields["semantic.npy"])[:-2]
        record = fields["json"].replace(b'"frames": 100', b'"frames": 98')
        return [(key, {"semantic.npy": encode_npy(ids), "json": record}), *items[1:]]

    semantic = rewrite(out, manifest, "semantic", 1, shorten)
    with pytest.raises(NarratorError) as e:
        read_all(out, manifest)
    assert one_line(e) == f"{semantic}: sample book1/000000 has 98 frames but {acoustic} has 150 for 50 slots"


def test_a_corrupt_semantic_tar_is_one_line_naming_it(tmp_path):
    out, manifest = small_folder(tmp_path)
    shard = out / manifest.shards[0].files["semantic"].path
    data = bytearray(shard.read_bytes())
    data[:512] = b"\x07" * 512
    shard.write_bytes(bytes(data))
    with pytest.raises(NarratorError, match="truncated or corrupt") as e:
        read_all(out, manifest)
    assert one_line(e).startswith(f"shard {shard.resolve()} is truncated or corrupt")


def test_semantic_ids_out_of_range_or_misshapen_are_refused(tmp_path):
    out, manifest = small_folder(tmp_path)

    def two_rows(items):
        key, fields = items[0]
        ids = decode_npy(fields["semantic.npy"])
        return [(key, {**fields, "semantic.npy": encode_npy(np.stack([ids, ids]))}), *items[1:]]

    semantic = rewrite(out, manifest, "semantic", 0, two_rows)
    with pytest.raises(NarratorError) as e:
        read_all(out, manifest)
    assert one_line(e).startswith(f"{semantic}: sample book0/000000: expected semantic codes of shape [frames]")


def test_semantic_ids_stored_as_one_row_are_read_like_1d_ids(tmp_path):
    out, manifest = small_folder(tmp_path)
    before = read_all(out, manifest)
    rewrite(out, manifest, "semantic", 0, lambda items: [
        (key, {**fields, "semantic.npy": encode_npy(decode_npy(fields["semantic.npy"])[None])}) for key, fields in items])
    assert all(np.array_equal(a, b) for a, b in zip(before, read_all(out, manifest), strict=True))
