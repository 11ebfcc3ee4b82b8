"""An item set on disk: index.json (the items, clip lengths, sha256s) beside audio.npy (every clip, float32).

Written to a temporary folder and renamed, so a crash never leaves a half set; read back only
if audio.npy and the whole set still hash to what the index recorded.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from narrator.errors import NarratorError
from narrator.tokenfolder.storage import sha256 as file_sha256

from .items import VERSION, Item, ItemSet, content_sha256

FORMAT = "narrator-eval-items/1"
INDEX, AUDIO = "index.json", "audio.npy"


def write_item_set(folder: Path, item_set: ItemSet) -> ItemSet:
    """Write the set into `folder` (which must not exist yet) and return it with `path` set."""
    folder = Path(folder)
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    clips = [clip for pair in zip(item_set.real_audio, item_set.fake_audio) for clip in pair]
    np.save(tmp / AUDIO, np.concatenate(clips).astype(np.float32), allow_pickle=False)
    index = {
        "format": FORMAT, "suite": item_set.suite, "version": item_set.version, "seed": item_set.seed,
        "sample_rate": item_set.sample_rate, "source": item_set.source, "sha256": item_set.sha256,
        "audio": {"file": AUDIO, "sha256": file_sha256(tmp / AUDIO)},
        "items": [{**asdict(item), "real_samples": len(real), "fake_samples": len(fake)}
                  for item, real, fake in zip(item_set.items, item_set.real_audio, item_set.fake_audio)],
    }
    (tmp / INDEX).write_text(json.dumps(index, indent=1) + "\n")
    try:
        tmp.rename(folder)
    except OSError:  # another process finished the same set first: theirs is as good
        shutil.rmtree(tmp, ignore_errors=True)
        return read_item_set(folder)
    return ItemSet(**{**{f.name: getattr(item_set, f.name) for f in fields(ItemSet)}, "path": folder})


def read_item_set(folder: Path) -> ItemSet:
    """The set cached in `folder`, refused in one line naming the file if anything in it changed."""
    folder = Path(folder)
    index_path, audio_path = folder / INDEX, folder / AUDIO
    try:
        index = json.loads(index_path.read_text())
        if index.get("format") != FORMAT:
            raise ValueError(f"format {index.get('format')!r}, expected {FORMAT!r}")
        if index["version"] != VERSION:
            raise ValueError(f"item set version {index['version']!r}, this narrator makes {VERSION!r}")
        item_keys = {f.name for f in fields(Item)}
        items = tuple(Item(**{k: row[k] for k in item_keys}) for row in index["items"])
        lengths = [(int(row["real_samples"]), int(row["fake_samples"])) for row in index["items"]]
        suite, seed, rate, recorded = index["suite"], int(index["seed"]), int(index["sample_rate"]), index["sha256"]
        audio_sha = index["audio"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise NarratorError(f"{index_path}: not a readable item set index ({e}); delete {folder} to rebuild it") from None
    if not audio_path.is_file():
        raise NarratorError(f"{audio_path}: missing from the cached item set; delete {folder} to rebuild it")
    if file_sha256(audio_path) != audio_sha:
        raise NarratorError(f"{audio_path}: sha256 differs from the one in {INDEX} (the cached audio was changed); "
                            f"delete {folder} to rebuild it")
    audio = np.load(audio_path, allow_pickle=False)
    ends = np.cumsum([n for pair in lengths for n in pair])
    if audio.dtype != np.float32 or audio.ndim != 1 or (len(ends) and ends[-1] != len(audio)):
        raise NarratorError(f"{index_path}: its clip lengths do not match {AUDIO}; delete {folder} to rebuild it")
    clips = np.split(audio, ends[:-1]) if len(ends) else []
    real, fake = tuple(clips[0::2]), tuple(clips[1::2])
    actual = content_sha256(suite, VERSION, seed, rate, items, real, fake)
    if actual != recorded:
        raise NarratorError(f"{index_path}: the item set's sha256 is {actual[:12]}..., the index records "
                            f"{recorded[:12]}... (the cached items were changed); delete {folder} to rebuild it")
    return ItemSet(suite, VERSION, seed, rate, str(index.get("source", "")), items, real, fake, recorded, folder)
