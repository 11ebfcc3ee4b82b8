"""Where books and token folders live: a local path or any fsspec URL (s3://, gs://, ...).

The only module that knows fsspec. A location is a local Path or a `URL` (a string that joins with
`/` like a Path; pathlib would fold `s3://` into `s3:/`). Local paths keep plain os/pathlib calls. Writes are
atomic everywhere, so a reader never sees part of a file: local files go through `<name>.tmp` and
os.replace, objects through a `<key>.tmp` moved onto the final key (S3: copy, then delete).
Credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL,
AWS_DEFAULT_REGION for s3://; GOOGLE_APPLICATION_CREDENTIALS for gs://), so Ray actors and
DataLoader workers get them the same way; every storage fault is one NarratorError naming the location.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import posixpath
import re
import resource
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from narrator.errors import NarratorError

URL_PATTERN = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
TEMP_SUFFIX = ".tmp"
# Read through object stores in blocks of this size: a 30 s chunk of a book costs a ranged GET or
# two, never a download of the whole file.
READ_BLOCK_BYTES = 4 << 20
# Environment variables that give fsspec's object stores their endpoint and credentials.
CREDENTIAL_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                   "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE",
                   "GOOGLE_APPLICATION_CREDENTIALS")
# Schemes webdataset's gopen opens itself (http(s) with curl, no shell); other URLs go through fsspec.
WEBDATASET_SCHEMES = ("http", "https")


class URL(str):
    """A URL such as s3://bucket/prefix that joins like a Path: `url / "manifest.json"`, `.name`, `.parent`."""

    def __truediv__(self, part: str) -> URL:
        return join(self, str(part))

    @property
    def name(self) -> str:
        return name(self)

    @property
    def parent(self) -> URL:
        return parent(self)


Location = str | Path  # a local path, or a URL


def scheme(location: Location) -> str:
    """"s3", "gs", ... for a URL; "" for a local path (file:// URLs count as local)."""
    match = URL_PATTERN.match(str(location)) if isinstance(location, str) else None
    return "" if match is None or match.group(1).lower() == "file" else match.group(1).lower()


def is_url(location: Location) -> bool:
    return scheme(location) != ""


def root(location: Location) -> Location:
    """A token folder or book as given: a Path for a local path (file:// stripped), a URL otherwise."""
    text = str(location)
    if is_url(text):
        return URL(text.rstrip("/"))
    return Path(text.removeprefix("file://")).expanduser()


def join(base: Location, *parts: str) -> Path | URL:
    """`base / part / ...`, for local paths (a Path) and URLs alike."""
    if is_url(base):
        return URL("/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)]))
    return Path(base).joinpath(*parts)


def name(location: Location) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1] if is_url(location) else Path(location).name


def parent(location: Location) -> Path | URL:
    return URL(str(location).rstrip("/").rsplit("/", 1)[0]) if is_url(location) else Path(location).parent


def escape(root: Location, rel: str) -> str | None:
    """Why `root / rel` would lie outside `root` ("an absolute path", "a URL", "a '..' path", "a symlink to X"),
    or None when it stays inside.

    A manifest or catalog may come from someone else: a name in it must not reach other files of this
    machine or bucket. Local symlinks are followed, so a link inside the folder to a file outside counts as outside.
    """
    if URL_PATTERN.match(rel) or rel.startswith("pipe:"):
        return "a URL"
    if rel.startswith(("/", "~")):  # "~" too: catalog paths are expanded
        return "an absolute path"
    if posixpath.normpath(rel).split("/")[0] == "..":
        return "a '..' path"
    if not is_url(root):
        base = _real_folder(str(root))
        target = real_path(os.path.join(base, rel))
        if not (target + os.sep).startswith(base.rstrip(os.sep) + os.sep):
            return f"a symlink to {target}"
    return None


def real_path(path: str) -> str:
    """os.path.realpath of a local file, its folder's resolved once: a catalog of 1 M rows in a few thousand
    folders costs one lstat a row, not one per path component."""
    folder, name = os.path.split(os.path.abspath(path))
    target = os.path.join(_real_folder(folder), name)
    return os.path.realpath(target) if os.path.islink(target) else target


@functools.lru_cache(maxsize=4096)
def _real_folder(folder: str) -> str:
    return os.path.realpath(folder)


def _fs(url: str) -> tuple[Any, str]:
    import fsspec  # only for URLs: local runs never import it

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise NarratorError(f"{url}: cannot open {scheme(url)}:// URLs ({str(e).splitlines()[0]})") from None


def _bucket(path: str) -> str:
    return path.split("/", 1)[0]


@contextlib.contextmanager
def _errors(url: str) -> Iterator[None]:
    """Turn an object store's fault into one line that names the location and what to do."""
    try:
        yield
    except NarratorError:
        raise
    except Exception as e:  # noqa: BLE001 - botocore/gcsfs/aiohttp errors share no base class; filtered below
        raise storage_error(url, e) from None


def storage_error(url: str, e: BaseException) -> BaseException:
    """The NarratorError for a storage fault at `url`; `e` itself when it is not one (a bug stays a traceback)."""
    kind = type(e).__name__
    module = type(e).__module__.split(".")[0]
    text = str(e).splitlines()[0] if str(e) else kind
    if kind == "NoCredentialsError" or "credentials" in text.lower() and module in ("botocore", "google"):
        hint = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and AWS_ENDPOINT_URL for a server other than AWS"
                if scheme(url) == "s3" else "set GOOGLE_APPLICATION_CREDENTIALS" if scheme(url) == "gs"
                else "see the credential settings of its fsspec filesystem")
        return NarratorError(f"{url}: no credentials for {scheme(url)}:// ({hint})")
    if isinstance(e, FileNotFoundError):
        if "bucket" in text.lower():
            return NarratorError(f"{url}: bucket {_bucket(_fs(url)[1])!r} does not exist")
        return NarratorError(f"{url}: not found")
    if isinstance(e, PermissionError):
        return NarratorError(f"{url}: access denied ({text}); check the credentials")
    if isinstance(e, OSError) or module in ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "fsspec", "google"):
        return NarratorError(f"{url}: storage error ({kind}: {text})")
    return e


def check_bucket(url: str) -> None:
    """Refuse a URL whose bucket is missing or unreachable before anything is written (object stores
    may create buckets on upload, or fail late)."""
    fs, path = _fs(url)
    with _errors(url):
        try:
            fs.info(_bucket(path))
        except FileNotFoundError:
            raise NarratorError(f"{url}: bucket {_bucket(path)!r} does not exist (create it first)") from None


def exists(location: Location) -> bool:
    """Whether a file (not a folder) is there."""
    if not is_url(location):
        return Path(location).is_file()
    return _url_type(str(location)) == "file"


def _url_type(url: str) -> str | None:
    """"file", "directory" or None (nothing there); other faults (no credentials, ...) raise.

    fsspec's own exists/isfile answer False for any fault, which would turn "no credentials" into "not found".
    """
    fs, path = _fs(url)
    with _errors(url):
        try:
            return fs.info(path)["type"]
        except FileNotFoundError:
            return None


def size(location: Location) -> int:
    if not is_url(location):
        return Path(location).stat().st_size
    fs, path = _fs(str(location))
    with _errors(str(location)):
        return int(fs.size(path))


def read_bytes(location: Location) -> bytes:
    if not is_url(location):
        return Path(location).read_bytes()
    fs, path = _fs(str(location))
    with _errors(str(location)):
        return fs.cat_file(path)


def read_text(location: Location) -> str:
    return read_bytes(location).decode() if is_url(location) else Path(location).read_text()


# Write faults that freeing space (or raising a limit) cures: the user is told which, never shown a traceback.
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def write_fault(e: BaseException, path: Location) -> str | None:
    """Why writing `path` failed when the disk is full or a file-size limit was hit ("No space left on device",
    "File too large"); None for any other fault, which stays the exception it is."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_FULL:
            return os.strerror(seen.errno)
        code = re.search(r"os error (\d+)", str(seen))  # safetensors' Rust writer: "File too large (os error 27)"
        if code and int(code[1]) in DISK_FULL:
            return os.strerror(int(code[1]))
        seen = seen.__cause__ or seen.__context__
    if is_url(path) or not isinstance(e, RuntimeError):  # an OSError's errno above is the whole answer
        return None
    # torch.save's C++ writer drops errno ("unexpected pos 576 vs 534"): ask the filesystem and the limits.
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if shutil.disk_usage(folder).free < (1 << 20):
        return os.strerror(errno.ENOSPC)
    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit != resource.RLIM_INFINITY:
        return f"{os.strerror(errno.EFBIG)} (file-size limit {limit:,} bytes)"
    return None


def write_bytes(location: Location, data: bytes) -> None:
    """Write `data` to `location` atomically (parent folders made as needed); a full disk is one NarratorError
    and leaves the file as it was."""
    if not is_url(location):
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + TEMP_SUFFIX)
        try:
            tmp.write_bytes(data)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            reason = write_fault(e, tmp)
            if reason is None:
                raise
            raise NarratorError(f"{path}: cannot write ({reason}); free space and rerun") from None
        os.replace(tmp, path)
        return
    fs, path = _fs(str(location))
    with _errors(str(location)):
        fs.pipe_file(path + TEMP_SUFFIX, data)
        fs.mv(path + TEMP_SUFFIX, path)


def write_text(location: Location, text: str) -> None:
    write_bytes(location, text.encode())


def upload(local: Path, location: Location) -> None:
    """Move the finished local file `local` to `location` atomically; `local` is gone afterwards."""
    if not is_url(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, location)
        return
    fs, path = _fs(str(location))
    with _errors(str(location)):
        fs.put_file(str(local), path + TEMP_SUFFIX)
        fs.mv(path + TEMP_SUFFIX, path)
    Path(local).unlink()


def download(location: Location, local: Path) -> None:
    """Copy `location` to the local file `local`."""
    if not is_url(location):
        shutil.copy2(location, local)
        return
    fs, path = _fs(str(location))
    with _errors(str(location)):
        fs.get_file(path, str(local))


def append_lines(folder: Location, log: str, record: str, lines: list[str]) -> None:
    """Append `lines` to the log `folder/log` (one JSON object a line) in one write and one fsync, so a crash tears at
    most the last line. An object store cannot append: there each call is an object of its own,
    `folder/<log stem>/<record>.json`."""
    text = "".join(line + "\n" for line in lines)
    if is_url(folder):
        write_text(join(folder, posixpath.splitext(log)[0], record + ".json"), text)
        return
    path = Path(folder) / log
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        reason = write_fault(e, path)
        if reason is None:
            raise
        raise NarratorError(f"{path}: cannot write ({reason}); free space and rerun the same command") from None


def read_lines(folder: Location, log: str) -> list[str]:
    """The lines `append_lines` wrote to `folder/log`, in both forms (a torn last line is the caller's to skip)."""
    lines = read_text(join(folder, log)).splitlines() if exists(join(folder, log)) else []
    if is_url(folder):
        lines += [line for data in read_folder(join(folder, posixpath.splitext(log)[0])).values()
                  for line in data.decode().splitlines()]
    return lines


def open_read(location: Location) -> IO[bytes]:
    """A seekable binary file; object stores are read in READ_BLOCK_BYTES ranges as the reader seeks."""
    if not is_url(location):
        return open(location, "rb")
    fs, path = _fs(str(location))
    with _errors(str(location)):
        return fs.open(path, "rb", block_size=READ_BLOCK_BYTES)


def glob_files(pattern: str) -> list[str]:
    """The file URLs a URL glob matches (`**`: any depth), sorted."""
    fs, path = _fs(pattern)
    with _errors(pattern):
        found = fs.glob(path, detail=True)
    return sorted(fs.unstrip_protocol(name) for name, info in found.items() if info.get("type") == "file")


def list_sizes(folder: Location) -> dict[str, int]:
    """Name -> size of the files directly in `folder` (empty when it does not exist); temp files are left out."""
    if not is_url(folder):
        with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(folder) as entries:
            return {e.name: e.stat().st_size for e in entries if e.is_file() and not e.name.endswith(TEMP_SUFFIX)}
        return {}
    fs, path = _fs(str(folder))
    with _errors(str(folder)):
        try:
            found = fs.ls(path, detail=True, refresh=True)
        except FileNotFoundError as e:
            if "bucket" in str(e).lower():
                raise
            return {}
    return {name(f["name"]): int(f["size"]) for f in found
            if f["type"] == "file" and not f["name"].endswith(TEMP_SUFFIX)}


def read_folder(folder: Location) -> dict[str, bytes]:
    """Name -> content of every file directly in `folder` (temp files left out); an object store's are fetched
    concurrently, not one request after another."""
    names = sorted(list_sizes(folder))
    if not is_url(folder):
        return {n: (Path(folder) / n).read_bytes() for n in names}
    fs, path = _fs(str(folder))
    with _errors(str(folder)):
        found = fs.cat([f"{path}/{n}" for n in names]) if names else {}
    return {name(key): data for key, data in sorted(found.items())}


def sha256(location: Location) -> str:
    return checksum(location)[0]


def checksum(location: Location) -> tuple[str, int]:
    """sha256 and byte count of a file, read in 1 MiB blocks (hashlib releases the GIL: threads hash in parallel)."""
    h, size = hashlib.sha256(), 0
    with _errors(str(location)) if is_url(location) else contextlib.nullcontext(), open_read(location) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


@contextlib.contextmanager
def local_copy(location: Location) -> Iterator[Path]:
    """A local path holding the file at `location`: the file itself when local, a temporary download otherwise."""
    if not is_url(location):
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="narrator-") as folder:
        local = Path(folder) / name(location)
        download(location, local)
        yield local


def credentials_env() -> dict[str, str]:
    """The storage variables set here, for processes that do not inherit this environment (Ray actors
    on other nodes)."""
    return {key: os.environ[key] for key in CREDENTIAL_VARS if key in os.environ}


def register_webdataset_schemes(*urls: str) -> None:
    """Let webdataset's gopen open these URLs' schemes through fsspec (it has no s3/gs handler).

    gopen_schemes is per process: call this in every process that opens shards (DataLoader workers
    run it through the pickled dataset's `__iter__`). Never `pipe:`: no shell runs a manifest's words.
    """
    from webdataset.gopen import gopen_schemes

    for url in urls:
        s = scheme(url)
        if s and s not in WEBDATASET_SCHEMES and gopen_schemes.get(s) is not _gopen_fsspec:
            gopen_schemes[s] = _gopen_fsspec


def _gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> IO[bytes]:
    """webdataset's opener for fsspec URLs: the shard streamed in READ_BLOCK_BYTES ranges."""
    fs, path = _fs(url)
    with _errors(url):
        return fs.open(path, mode, block_size=READ_BLOCK_BYTES)
