"""The exact length of an MP3 from its frame headers, without decoding it.

An MP3 whose first frame carries a Xing/Info/VBRI tag states its length (and, from LAME, the
encoder's delay and padding), and libsndfile reports it exactly. Without a tag libsndfile guesses
from the file size and the first frame's bitrate: off by a quarter second on a CBR file stripped of
its tag, by more on a VBR one. The decoder then outputs every frame whole, so the exact length is
the sum of the frames' sample counts, read here by walking the 4-byte frame headers (each says its
own size) from one to the next: a read of the file's bytes, no decoding.
"""

from __future__ import annotations

from typing import IO

# MPEG version bits -> sample rates by index; 1 (reserved) is absent.
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_KBPS_MPEG1_LAYER3 = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_KBPS_MPEG2_LAYER3 = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
_LAYER3 = 1  # the layer bits of Layer III


def _frame(data: bytes, pos: int) -> tuple[int, int] | None:
    """(size in bytes, samples) of the Layer III frame whose header starts at `pos`, or None."""
    if data[pos] != 0xFF or data[pos + 1] & 0xE0 != 0xE0:
        return None
    version, layer = (data[pos + 1] >> 3) & 3, (data[pos + 1] >> 1) & 3
    bitrate, rate, padding = data[pos + 2] >> 4, (data[pos + 2] >> 2) & 3, (data[pos + 2] >> 1) & 1
    if version == 1 or layer != _LAYER3 or bitrate in (0, 15) or rate == 3:
        return None
    sample_rate = _RATES[version][rate]
    if version == 3:
        return 144_000 * _KBPS_MPEG1_LAYER3[bitrate] // sample_rate + padding, 1152
    return 72_000 * _KBPS_MPEG2_LAYER3[bitrate] // sample_rate + padding, 576


def _has_length_tag(data: bytes, pos: int) -> bool:
    """Whether the frame at `pos` is a Xing/Info (after the side information) or VBRI (at byte 36) tag frame."""
    mpeg1, mono = (data[pos + 1] >> 3) & 3 == 3, data[pos + 3] >> 6 == 3
    side = (17 if mono else 32) if mpeg1 else (9 if mono else 17)
    return data[pos + 4 + side: pos + 8 + side] in (b"Xing", b"Info") or data[pos + 36: pos + 40] == b"VBRI"


def untagged_mp3_samples(f: IO[bytes]) -> int | None:
    """Samples per channel that decoding the MP3 `f` gives, when its first frame holds no length tag; None
    when it does (then its header is exact) or when no Layer III frame is found."""
    head = f.read(10)
    start = 0
    if head[:3] == b"ID3" and len(head) == 10:  # an ID3v2 tag: 10-byte header, 28-bit size, optional 10-byte footer
        start = 10 + (head[6] << 21 | head[7] << 14 | head[8] << 7 | head[9]) + (10 if head[5] & 0x10 else 0)
    f.seek(start)
    data = f.read(1 << 16)  # the first frame lies here: the whole file is read only when it holds no tag
    first = _next_frame(data, 0)
    if first is None or _has_length_tag(data, first):
        return None
    data += f.read()
    samples, pos = 0, first
    while (pos := _next_frame(data, pos)) is not None:
        size, count = _frame(data, pos)
        samples += count
        pos += size
    return samples or None


def _next_frame(data: bytes, pos: int) -> int | None:
    """The first frame header at or after `pos` whose successor (or the end, or an ID3v1 'TAG') lies where it says
    it ends, so a stray 0xFF byte in the data is not taken for a frame."""
    while pos + 4 <= len(data):
        frame = _frame(data, pos)
        if frame is not None:
            after = pos + frame[0]
            if after + 4 > len(data) or _frame(data, after) is not None or data[after: after + 3] == b"TAG":
                return pos
        pos += 1
    return None
