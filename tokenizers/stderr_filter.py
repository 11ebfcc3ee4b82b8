"""Drop known lines from the process's stderr (fd 2), written by C or C++ code, while passing everything else through.

Ray Data always puts its actors' constructor in the object store and restarts actors that die, so
Ray's C++ core worker logs an error-looking line for every actor pool it starts. Its own switch
(RAY_BACKEND_LOG_LEVEL) would hide real errors too; this drops exactly that line. libmpg123 (inside
libsndfile) prints its notes on damaged MP3 frames, which name no file, straight to fd 2; tokenize's
actors collect them per chunk they read, and the driver names the book in one line.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

RAY_ACTOR_RESTART_NOTICE = re.compile(
    rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store and max_restarts > 0")
MPG123_NOTICE = re.compile(rb"^(\[src/libmpg123/|Note: (Illegal Audio-MPEG-Header|Trying to resync|Skipped \d+ bytes))")
_MPG123_SOURCE = re.compile(r"^(\[src/libmpg123/[^\]]*\]\s*(error|warning):\s*|Note:\s*)")
# A seek lands on a frame whose bit reservoir (data in the frames before it) was not read: libmpg123 says so once,
# as the first note of a read that starts mid-file, about a clean file too (measured on LibriVox chapters).
SEEK_NOTE = re.compile(r"part2_3_length \(\d+\) too large for available bit count")
ID3_NOTE = "[src/libmpg123/id3.c:"  # about the file's tags, not its audio
_LINE_END = re.compile(rb"(?<=[\r\n])")


def plain_note(line: str) -> str:
    """A libmpg123 line without its source-code prefix ("[src/libmpg123/layer3.c:...] error: ", "Note: ")."""
    return _MPG123_SOURCE.sub("", line)


def damage_notes(lines: list[str], after_seek: bool) -> list[str]:
    """libmpg123's notes on one read that say the audio data is damaged: not its notes on the ID3 tag (printed at
    every open of the file), nor the one a seek itself causes."""
    notes = [plain_note(line) for line in lines if not line.startswith(ID3_NOTE)]
    return notes[1:] if after_seek and notes and SEEK_NOTE.search(notes[0]) else notes


@contextmanager
def drop_stderr_lines(pattern: re.Pattern[bytes], into: list[str] | None = None) -> Iterator[None]:
    """Within the block, lines written to fd 2 (by Python or C++) that match `pattern` are not shown (they are
    appended to `into`, if given, once the block ends). fd 2 is the process's: blocks may nest, but two threads'
    blocks at once would swap each other's fd 2.

    Text is forwarded as soon as it cannot start a matching line (the lines dropped start with '[' or
    "Note: "), so progress bars that redraw with '\\r' stay live.
    """
    sys.stderr.flush()
    shown = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        pending = b""
        while data := os.read(read_end, 1 << 16):
            *lines, pending = _LINE_END.split(pending + data)
            out = b"".join(line for line in lines if not _dropped(line))
            if pending and not (pending.startswith(b"[") or b"Note: ".startswith(pending[:6])):
                out, pending = out + pending, b""
            if out:
                os.write(shown, out)
        if pending and not _dropped(pending):
            os.write(shown, pending)

    def _dropped(line: bytes) -> bool:
        if not pattern.search(line):
            return False
        if into is not None:
            into.append(line.decode(errors="replace").strip())
        return True

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(shown, 2)  # closes the pipe's last write end: the pump reads to the end and stops
        thread.join(timeout=5)
        os.close(read_end)
        os.close(shown)
