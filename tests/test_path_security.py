"""Paths cannot escape their dataset root: a manifest's shard and side-file entries stay inside its token
folder, a catalog's audio paths inside the catalog's folder ('..', absolute paths, symlinks pointing out),
unless the user allows it on the command line."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from narrator import cli
from narrator.config import load_config
from narrator.errors import NarratorError
from narrator.streaming.config import DataConfig
from narrator.streaming.dataset import TokenShards, open_folder
from narrator.tokenizers.catalog import resolve_inputs
from narrator.tokenfolder.manifest import ACOUSTIC, Manifest
from narrator.trainer import run
from narrator.trainer.config import TrainConfig

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_token_folder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "train" / "tiny.yaml"


@pytest.fixture
def folder(tmp_path) -> Path:
    """tmp/tokens: 2 books x 20 s in 4 shards; tmp/elsewhere: a folder beside it."""
    (tmp_path / "elsewhere").mkdir()
    return make_token_folder(tmp_path / "tokens")


def point_shard_0(folder: Path, path: str) -> None:
    """Make the manifest's shard 0 entry say `path` (its size and sha256 stay those of the real shard)."""
    manifest = Manifest.load(folder)
    manifest.shards[0].files[ACOUSTIC].path = path
    manifest.save(folder / "manifest.json")


def tokens(folder: Path, **data) -> np.ndarray:
    manifest, root = open_folder(folder)
    shards = TokenShards.open(DataConfig(manifest=str(folder), long_book_seconds=1.0, **data), manifest, root)
    return np.concatenate(list(shards.token_stream(shards.train, "train")))


def refusal(folder: Path) -> str:
    with pytest.raises(NarratorError) as raised:
        tokens(folder)
    assert "\n" not in str(raised.value)
    return str(raised.value)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_a_manifest_shard_outside_the_token_folder_is_refused_unless_allowed(folder, kind):
    expected = tokens(folder)
    shard = folder / "shards/acoustic/000000.tar"
    outside = folder.parent / "elsewhere" / "000000.tar"
    shutil.move(shard, outside)
    if kind == "dotdot":
        point_shard_0(folder, "shards/../../elsewhere/000000.tar")
        entry, why = "shards/../../elsewhere/000000.tar", "a '..' path"
    elif kind == "absolute":
        point_shard_0(folder, str(outside))
        entry, why = str(outside), "an absolute path"
    else:
        shard.symlink_to(outside)
        entry, why = "shards/acoustic/000000.tar", f"a symlink to {outside}"
    assert refusal(folder) == (f"{folder / 'manifest.json'}: shard 0's acoustic file {entry!r} lies outside the token "
                               f"folder {folder} ({why}); --set data.allow_outside_root=true reads it anyway")
    assert np.array_equal(tokens(folder, allow_outside_root=True), expected)  # the same shard, read where it lies


def test_a_token_folder_reached_through_a_symlink_is_inside_itself(folder, tmp_path):
    (tmp_path / "link").symlink_to(folder)  # runs/tokens -> /mnt/disk/tokens: its shards are still inside it
    assert np.array_equal(tokens(tmp_path / "link"), tokens(folder))


def test_a_side_file_outside_the_token_folder_is_refused(folder):
    manifest = Manifest.load(folder)
    manifest.streams[0].weights.file = "../../../etc/passwd"
    manifest.save(folder / "manifest.json")
    assert refusal(folder) == (f"{folder / 'manifest.json'}: the acoustic stream's file '../../../etc/passwd' lies "
                               f"outside the token folder {folder} (a '..' path); --set data.allow_outside_root=true "
                               "reads it anyway")


def test_training_refuses_with_one_line_and_the_config_key_allows(folder, tmp_path, capsys):
    point_shard_0(folder, "../tokens/shards/acoustic/000000.tar")  # back into the folder, but by a '..' path
    argv = ["--config", str(TINY), "--set", f"data.manifest={folder}", "--set", f"out={tmp_path / 'run'}"]
    assert run.main([*argv, "--set", "max_steps=1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"narrator train: error: {folder / 'manifest.json'}: shard 0's ")
    assert err[0].endswith("(a '..' path); --set data.allow_outside_root=true reads it anyway")
    cfg = load_config(TrainConfig, TINY, [f"data.manifest={folder}", "data.allow_outside_root=true"])
    assert cfg.data.allow_outside_root is True


def test_verify_lists_an_entry_outside_the_folder_without_reading_it(folder, capsys):
    point_shard_0(folder, "/etc/passwd")
    assert cli.main(["inspect", "--verify", str(folder)]) == 3
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "/etc/passwd: lies outside the token folder (an absolute path); not read"
    assert lines[1].startswith("1 of 8 files fail verification")


def catalog(path: Path, *audio: str) -> str:
    path.write_text("".join(json.dumps({"id": f"b{i}", "audio": a}) + "\n" for i, a in enumerate(audio)))
    return str(path)


@pytest.mark.parametrize("audio, why", [("../../etc/passwd", "a '..' path"), ("/etc/passwd", "an absolute path"),
                                        ("~/book.wav", "an absolute path"), ("linked/book.wav", "a symlink to ")])
def test_a_catalog_row_outside_the_catalog_folder_is_refused_naming_the_flag(tmp_path, audio, why):
    books = tmp_path / "books"
    books.mkdir()
    (tmp_path / "other").mkdir()
    (books / "linked").symlink_to(tmp_path / "other")
    rows = catalog(books / "books.jsonl", "inside.wav", "s3://bucket/remote.wav", audio)
    with pytest.raises(NarratorError) as raised:
        resolve_inputs([rows])
    assert str(raised.value).startswith(f"{rows} line 3: audio {audio!r} lies outside the catalog's folder {books} "
                                        f"({why}")
    assert str(raised.value).endswith("; narrator tokenize --allow-outside-root reads it anyway")
    sources = [b.source for b in resolve_inputs([rows], allow_outside_root=True)]
    assert sources[:2] == [str(books / "inside.wav"), "s3://bucket/remote.wav"] and len(sources) == 3


def test_txt_and_csv_catalogs_are_checked_too_and_the_cli_names_the_line(tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text("# books\nok.wav\n../escape.wav\n")
    table = tmp_path / "books.csv"
    table.write_text("id,audio\na,ok.wav\nb,/data/b.wav\n")
    assert cli.main(["tokenize", "--out", str(tmp_path / "tokens"), str(listing)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"narrator tokenize: error: {listing} line 3: audio '../escape.wav' lies outside the catalog's folder "
        f"{tmp_path} (a '..' path); narrator tokenize --allow-outside-root reads it anyway")
    with pytest.raises(NarratorError, match=r"books.csv line 3: audio '/data/b.wav' lies outside"):
        resolve_inputs([str(table)])
    assert not (tmp_path / "tokens").exists()  # refused before anything was written
    assert cli.build_parser().parse_args(["tokenize", "--out", "x", "--allow-outside-root", str(listing)]).allow_outside_root
    assert [b.source for b in resolve_inputs([str(listing), str(table)], allow_outside_root=True)][1:] == [
        str(tmp_path.parent / "escape.wav"), str(tmp_path / "ok.wav"), "/data/b.wav"]
