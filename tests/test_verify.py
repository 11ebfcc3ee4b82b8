"""Verified shards: `narrator inspect --verify` names every shard whose bytes changed after tokenize, and
training refuses such a shard when it reads it (hashed as it streams, not read twice)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from narrator import cli
from narrator.errors import NarratorError
from narrator.streaming.config import DataConfig
from narrator.streaming.dataset import TokenShards, build_train_loader, open_folder
from narrator.tokenizers.inspect import VERIFY_FAILED
from narrator.tokenfolder.manifest import ACOUSTIC, Manifest
from narrator.trainer import run

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_token_folder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "train" / "tiny.yaml"


@pytest.fixture
def folder(tmp_path) -> Path:
    """A token folder of 2 books x 20 s in 8 shards of one 5 s chunk each."""
    return make_token_folder(tmp_path / "tokens", samples_per_shard=1)


def flip_byte(shard: Path) -> None:
    """Change one byte inside a sample's data, keeping the file's size (what a size check cannot see)."""
    data = bytearray(shard.read_bytes())
    at = data.index(b"\x93NUMPY") + 200  # inside the first sample's codes
    data[at] ^= 0x01
    shard.write_bytes(bytes(data))


def shard_path(folder: Path, index: int) -> Path:
    return folder / Manifest.load(folder).shards[index].files[ACOUSTIC].path


def test_a_clean_folder_verifies_in_one_line(folder, capsys):
    assert cli.main(["inspect", "--verify", str(folder)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and len(out.splitlines()) == 1
    assert out.startswith("verified 8 shard files (0.") and f"sha256 match {folder / 'manifest.json'}" in out


def test_verify_names_exactly_the_shard_with_a_flipped_byte_and_exits_3(folder):
    flip_byte(shard_path(folder, 3))
    result = subprocess.run([sys.executable, "-m", "narrator.cli", "inspect", "--verify", str(folder)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == VERIFY_FAILED == 3 and result.stdout == ""
    bad, summary = result.stderr.splitlines()
    assert bad.startswith(f"{folder}/shards/acoustic/000003.tar: sha256 ")
    assert bad.endswith("bytes (same size: changed in place)")
    assert summary.startswith(f"1 of 16 files fail verification against {folder / 'manifest.json'}")


def test_verify_names_every_bad_shard_missing_and_truncated_too(folder, capsys):
    for index in (1, 5):
        flip_byte(shard_path(folder, index))
    shard_path(folder, 6).unlink()
    with open(shard_path(folder, 7), "r+b") as f:
        f.truncate(1000)
    assert cli.main(["inspect", "--verify", str(folder)]) == VERIFY_FAILED
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [f"{folder}/shards/acoustic/{i:06d}.tar" for i in (1, 5, 6, 7)]
    entry = Manifest.load(folder).shards[6].files[ACOUSTIC]
    assert lines[2].endswith(f"missing (manifest says {entry.bytes:,} bytes, sha256 {entry.sha256[:12]}...)")
    assert " in 1,000 bytes, manifest says " in lines[3]
    assert lines[-1].startswith("4 of 16 files fail verification")


def test_the_loader_refuses_a_changed_shard_when_it_has_read_it(folder):
    flip_byte(shard_path(folder, 0))
    manifest, root = open_folder(folder)
    data = DataConfig(manifest=str(folder), long_book_seconds=1.0)  # books cut, not held out whole
    shards = TokenShards.open(data, manifest, root)
    first = shards.urls[0]
    # Read only in part (a slot's share may end inside a shard): no alarm, the bytes were not all seen.
    assert sum(len(t) for t in shards.token_stream([0], "train", slice(0, 1))) > 0
    with pytest.raises(NarratorError) as raised:
        list(shards.token_stream([0], "train"))
    expected = (f"shard {first[ACOUSTIC].url}: sha256 mismatch (manifest says "
                f"{manifest.shards[0].files[ACOUSTIC].sha256[:12]}..., read ")
    assert str(raised.value).startswith(expected) and "\n" not in str(raised.value)
    assert str(raised.value).endswith(f"the file changed after tokenize; narrator inspect --verify {root} lists every "
                                      "bad shard")
    loader = build_train_loader(DataConfig(manifest=str(folder), num_workers=1), [shards], 64, 4, 0, 1, seed=0)
    with pytest.raises(NarratorError, match=r"^shard .*000000\.tar: sha256 mismatch"):
        next(iter(loader))  # through a DataLoader worker, still one line


def test_training_refuses_a_changed_shard_with_one_line(folder, tmp_path, capsys):
    held = next(s.index for s in Manifest.load(folder).shards if s.val_slots)
    flip_byte(shard_path(folder, held))
    argv = ["--config", str(TINY), "--set", f"data.manifest={folder}", "--set", f"out={tmp_path / 'run'}",
            "--set", "max_steps=2"]
    assert run.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("narrator train: error: shard ")
    assert f"{(folder / f'shards/acoustic/{held:06d}.tar').resolve()}: sha256 mismatch" in err[0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # before the first step: validation reads its shards


def test_verify_checks_the_k_means_arrays_the_manifest_records(tmp_path, capsys):
    from narrator.tokenizers.config import KmeansConfig
    from narrator.tokenizers.kmeans import EmbeddingSource, fit_kmeans, kmeans_paths, save_kmeans

    folder = make_token_folder(tmp_path / "tokens", streams=(ACOUSTIC, "semantic"), semantic_k=8)
    frames = np.random.default_rng(0).standard_normal((400, 16)).astype(np.float32)
    source = EmbeddingSource(model="tiny.en", layer=-1, dims=16, weights_sha256="ab" * 32)
    model = fit_kmeans(frames, None, KmeansConfig(k=8, sample_frames=400, batch_size=128, passes=2), source)
    save_kmeans(model, folder / "kmeans/semantic")
    manifest = Manifest.load(folder)
    manifest.stream("semantic").kmeans = {
        "file": "kmeans/semantic.json", "centroids_sha256": model.meta.centroids.sha256,
        "files": [str(p.relative_to(folder)) for p in kmeans_paths(folder / "kmeans/semantic") if p.is_file()]}
    manifest.save(folder / "manifest.json")
    assert cli.main(["inspect", "--verify", str(folder)]) == 0
    assert " and 1 side file in " in capsys.readouterr().out
    centroids = folder / "kmeans/semantic.npy"
    data = bytearray(centroids.read_bytes())
    data[-1] ^= 0x01
    centroids.write_bytes(bytes(data))
    assert cli.main(["inspect", "--verify", str(folder)]) == VERIFY_FAILED
    bad, summary = capsys.readouterr().err.splitlines()
    assert bad.startswith(f"{folder / 'kmeans/semantic.json'}: {centroids}: sha256 ")
    assert bad.endswith("recorded in semantic.json") and summary.startswith("1 of 13 files fail verification")


def test_a_changed_book_index_is_named_by_verify_and_refused_by_the_loader(folder, capsys):
    manifest, root = open_folder(folder)
    index = folder / manifest.shards[2].books.path
    index.write_text(index.read_text().replace('"held_out":[0,0]', '"held_out":[0,1]', 1) + "\n")
    assert cli.main(["inspect", "--verify", str(folder)]) == VERIFY_FAILED
    bad, summary = capsys.readouterr().err.splitlines()
    assert bad.startswith(f"{folder}/index/000002.jsonl: sha256 ") and summary.startswith("1 of ")
    shards = TokenShards.open(DataConfig(manifest=str(folder)), manifest, root)
    with pytest.raises(NarratorError, match=f"^{index}: book index sha256 mismatch \\(the file changed after tokenize\\)"):
        list(shards.token_stream([2], "train"))
