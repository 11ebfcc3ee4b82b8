"""Catalogs of many books: JSONL/CSV rows with ids and metadata, .txt lists, bad rows named by line,
and a catalog with rows added tokenizes only the new books."""

import contextlib
import io
import json

import pytest

from narrator.config import load_config
from narrator.errors import NarratorError
from narrator.tokenizers.catalog import resolve_inputs
from narrator.tokenizers.config import TokenizeConfig
from narrator.tokenfolder.manifest import Manifest
from narrator.tokenizers.pipeline import tokenize
from narrator.tokenfolder.shards import file_sha256


def jsonl(path, *rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_jsonl_and_csv_rows_are_books_with_their_ids_sources_and_metadata(tmp_path):
    (tmp_path / "audio").mkdir()
    catalog = jsonl(tmp_path / "books.jsonl",
                    {"id": "ch01", "audio": "audio/ch01.mp3", "reader": "Ruth Golding", "licence": "public domain",
                     "year": 1911},
                    {"id": "ch02", "audio": "/data/ch02.flac"},
                    {"id": "remote", "audio": "s3://bucket/books/ch03.mp3", "reader": None})
    (tmp_path / "more.csv").write_text("id,audio,reader,licence\nlj001,../lj/LJ001.wav,Linda Johnson,CC0\n\n")
    books = resolve_inputs([catalog, str(tmp_path / "more.csv"), str(tmp_path / "x.wav")], allow_outside_root=True)
    assert [(b.id, b.source) for b in books] == [
        ("ch01", str(tmp_path / "audio/ch01.mp3")), ("ch02", "/data/ch02.flac"), ("remote", "s3://bucket/books/ch03.mp3"),
        ("lj001", str(tmp_path.parent / "lj/LJ001.wav")), ("x", str(tmp_path / "x.wav"))]
    assert books[0].meta == {"reader": "Ruth Golding", "licence": "public domain", "year": "1911"}
    assert books[2].meta == {} and books[3].meta == {"reader": "Linda Johnson", "licence": "CC0"}
    assert books[1].given == f"{catalog} line 2 (/data/ch02.flac)"  # how a skipped book is named


def test_txt_lists_keep_urls_and_make_ids_from_file_names(tmp_path):
    catalog = tmp_path / "list.txt"
    catalog.write_text("# urls are kept as given\ns3://bucket/a/chapter.mp3\ns3://bucket/b/chapter.mp3\nlocal.wav\n")
    books = resolve_inputs([str(catalog)])
    assert [b.source for b in books] == ["s3://bucket/a/chapter.mp3", "s3://bucket/b/chapter.mp3", str(tmp_path / "local.wav")]
    assert books[0].id.startswith("chapter-") and books[1].id.startswith("chapter-") and books[0].id != books[1].id
    assert books[2].id == "local"


@pytest.mark.parametrize("rows, message", [
    ([{"id": "a", "audio": "a.wav"}, {"id": "a", "audio": "b.wav"}], "line 2: id 'a' is already used by line 1"),
    ([{"id": "a/b", "audio": "a.wav"}], "line 1: id 'a/b' may hold only letters, digits, '_' and '-'"),
    ([{"id": "..", "audio": "a.wav"}], "line 1: id '..' may hold only letters, digits, '_' and '-'"),
    ([{"id": "a", "audio": "a.wav"}, {"id": "b", "path": "b.wav"}], ("line 2: no audio (a catalog row needs id and audio; "
                                                                     "columns here: id, path)")),
    ([{"audio": "a.wav"}], "line 1: no id"),
    (["not a row"], "line 1: expected a JSON object with id and audio"),
])
def test_a_malformed_catalog_row_is_one_line_naming_the_catalog_and_line(tmp_path, rows, message):
    catalog = jsonl(tmp_path / "books.jsonl", *rows)
    with pytest.raises(NarratorError) as raised:
        resolve_inputs([catalog])
    assert str(raised.value).startswith(f"{catalog} {message}")


def test_malformed_files_and_ids_across_inputs_are_refused(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "audio": "a.wav"}\n{"id": "b", audio}\n')
    with pytest.raises(NarratorError, match=r"bad.jsonl line 2: not JSON \(Expecting property name"):
        resolve_inputs([str(tmp_path / "bad.jsonl")])
    (tmp_path / "wide.csv").write_text("id,audio\na,a.wav,extra\n")
    with pytest.raises(NarratorError, match="wide.csv line 2: more cells than header columns"):
        resolve_inputs([str(tmp_path / "wide.csv")])
    with pytest.raises(NarratorError, match="missing.csv: catalog file not found"):
        resolve_inputs([str(tmp_path / "missing.csv")])
    one = jsonl(tmp_path / "one.jsonl", {"id": "x", "audio": "elsewhere/x.wav"})
    with pytest.raises(NarratorError, match=r"x.wav: book id 'x' is also the id of .*one.jsonl line 1 \(elsewhere/x.wav\); give each book its own id"):
        resolve_inputs([one, str(tmp_path / "x.wav")])  # a file named x.wav gets the id x too


def test_rows_added_to_a_catalog_tokenize_only_the_new_books(tmp_path, ray_local, speech_wav):
    for name, seconds, seed in [("a", 2.0, 1), ("b", 1.5, 2), ("c", 2.0, 3)]:
        speech_wav(tmp_path / f"{name}.wav", seconds, seed=seed)
    rows = [{"id": "book-a", "audio": "a.wav", "reader": "R. A.", "licence": "CC0"}, {"id": "book-b", "audio": "b.wav"}]
    catalog = tmp_path / "books.jsonl"
    cfg = load_config(TokenizeConfig, None, ["encodec.weights.mode=random", "chunking.chunk_seconds=1.0",
                                             "shards.target_mb=0.005", "ray.concurrency=1", "ray.batch_size=2"])
    out = tmp_path / "tokens"
    first = tokenize(cfg, out, [jsonl(catalog, *rows)])
    assert first.added == ["book-a", "book-b"] and not first.failed
    made = {s.index: {f.path: f.sha256 for f in s.files.values()} for s in Manifest.load(out).shards}

    jsonl(catalog, *rows, {"id": "book-c", "audio": "c.wav", "reader": "C."}, {"id": "lost", "audio": "gone/lost.wav"})
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        second = tokenize(cfg, out, [str(catalog)])
    assert second.added == ["book-c"] and second.chunks_encoded == 2  # book-c's two chunks, nothing else
    assert f"skipped {catalog} line 4 (gone/lost.wav): file not found" in printed.getvalue().splitlines()
    manifest = Manifest.load(out)
    assert [(f.source, f.error) for f in manifest.failed] == [(str(tmp_path / "gone/lost.wav"), "file not found")]
    assert {s.index: {f.path: f.sha256 for f in s.files.values()} for s in manifest.shards if s.index in made} == made
    assert all(file_sha256(out / path) == sha for files in made.values() for path, sha in files.items())
    # book-a, the smaller id_hash of two short recordings, is held out whole: planned after book-b
    assert [(b.id, b.meta) for b in manifest.iter_books(out)] == [("book-b", {}), ("book-a", {"reader": "R. A.", "licence": "CC0"}),
                                                                  ("book-c", {"reader": "C."})]


def touch(root, *names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def test_a_glob_expands_recursively_in_sorted_order_with_ids_from_file_names(tmp_path, monkeypatch):
    touch(tmp_path, "corpus/b/2.flac", "corpus/a/1.flac", "corpus/top.flac", "corpus/a/notes.txt", "corpus/c/1.flac")
    monkeypatch.chdir(tmp_path)
    books = resolve_inputs(["corpus/**/*.flac"])
    assert [(b.id, b.source, b.given) for b in books] == [
        (f"1-{books[0].id[2:]}", str(tmp_path / "corpus/a/1.flac"), "corpus/a/1.flac"),
        ("2", str(tmp_path / "corpus/b/2.flac"), "corpus/b/2.flac"),
        (books[2].id, str(tmp_path / "corpus/c/1.flac"), "corpus/c/1.flac"),
        ("top", str(tmp_path / "corpus/top.flac"), "corpus/top.flac")]  # `**` matches no folder too
    assert books[0].id.startswith("1-") and books[2].id.startswith("1-") and books[0].id != books[2].id
    # The pattern decides: `*` takes every file as audio (tokenize skips what it cannot read), never a folder.
    assert [b.id for b in resolve_inputs([str(tmp_path / "corpus/a/*")])] == ["1", "notes"]
    # Overlapping globs and plain paths name each file once.
    assert len(resolve_inputs(["corpus/*/*.flac", "corpus/a/1.flac", "corpus/**/1.flac"])) == 3


def test_a_glob_that_matches_nothing_is_one_line(tmp_path):
    touch(tmp_path, "corpus/a.wav")
    for pattern in [f"{tmp_path}/corpus/**/*.mp3", f"{tmp_path}/nowhere/*.wav", f"{tmp_path}/corpus/[xyz].wav"]:
        with pytest.raises(NarratorError) as raised:
            resolve_inputs([pattern])
        assert str(raised.value) == f"{pattern}: the glob matches no file"


def test_a_glob_of_catalogs_reads_each_as_a_catalog_and_a_file_named_like_a_glob_is_that_file(tmp_path):
    jsonl(tmp_path / "part1.jsonl", {"id": "a", "audio": "a.wav"})
    jsonl(tmp_path / "part2.jsonl", {"id": "b", "audio": "b.wav"})
    assert [b.id for b in resolve_inputs([str(tmp_path / "part*.jsonl")])] == ["a", "b"]
    touch(tmp_path, "take[1].wav")
    assert [b.source for b in resolve_inputs([str(tmp_path / "take[1].wav")])] == [str(tmp_path / "take[1].wav")]
    assert [b.source for b in resolve_inputs(["https://example.org/book.mp3?sig=x*y"])] == [
        "https://example.org/book.mp3?sig=x*y"]  # an http(s) query is not a glob


def test_a_url_glob_expands_through_fsspec(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    for key in ["globtest/x/1.mp3", "globtest/2.mp3", "globtest/x/readme.md"]:
        fs.pipe_file(f"/{key}", b"")
    try:
        books = resolve_inputs(["memory://globtest/**/*.mp3"])
        assert [(b.id, b.source) for b in books] == [("2", "memory:///globtest/2.mp3"), ("1", "memory:///globtest/x/1.mp3")]
        with pytest.raises(NarratorError, match=r"^memory://globtest/\*\.flac: the glob matches no file$"):
            resolve_inputs(["memory://globtest/*.flac"])
    finally:
        fs.rm("/globtest", recursive=True)


def test_the_same_audio_under_two_ids_is_two_books_and_the_same_path_twice_is_one(tmp_path):
    catalog = jsonl(tmp_path / "books.jsonl", {"id": "reading-1", "audio": "a.wav", "reader": "R."},
                    {"id": "reading-1-again", "audio": "a.wav", "reader": "R. (catalogued twice)"})
    books = resolve_inputs([catalog, str(tmp_path / "a.wav"), str(tmp_path / "a.wav")])
    assert [(b.id, b.source) for b in books] == [("reading-1", str(tmp_path / "a.wav")),
                                                ("reading-1-again", str(tmp_path / "a.wav")),
                                                ("a", str(tmp_path / "a.wav"))]  # tokenized once per id
