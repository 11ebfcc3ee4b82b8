"""A LibriSpeech-style corpus: 200 recordings of 1-12 s plus two long books become a handful of shards,
a rerun does nothing, ten more recordings add only new shards, and training with block 2048 puts
at least 99% of the training tokens in a window each epoch."""

import json
from pathlib import Path

import numpy as np
import pytest

from narrator.cli import main as narrator
from narrator.config import load_config
from narrator.streaming.config import DataConfig
from narrator.streaming.dataset import TokenShards, window_coverage
from narrator.tokenizers.config import TokenizeConfig
from narrator.tokenizers.inspect import inspect_tokens
from narrator.tokenfolder.split import id_hash
from narrator.tokenfolder.manifest import Manifest
from narrator.tokenizers.pipeline import tokenize

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_corpus_of_short_recordings(tmp_path, ray_local, speech_wav, capsys):
    rng = np.random.default_rng(5)
    clips = [speech_wav(tmp_path / f"utt{i:03d}.flac", round(float(rng.uniform(1, 12)), 2), seed=100 + i,
                        sample_rate=16_000) for i in range(210)]
    books = [speech_wav(tmp_path / f"book{i}.wav", 75.0, seed=i + 1) for i in range(2)]
    catalog = tmp_path / "corpus.txt"
    catalog.write_text("".join(f"{p.name}\n" for p in clips[:100] + books[:1] + clips[100:200] + books[1:]))
    out = tmp_path / "tokens"
    cfg = load_config(TokenizeConfig, REPO / "configs/tokenize/encodec_3kbps.yaml",
                      ["encodec.weights.mode=random", "shards.target_mb=0.25"])

    report = tokenize(cfg, out, [str(catalog)])
    m = Manifest.load(out)
    assert report.failed == [] and m.books == 202 and sum(s.samples for s in m.shards) == 200 + 2 * 3
    files = [s.files["acoustic"] for s in m.shards]
    assert 4 <= len(m.shards) <= 6, [f.path for f in files]  # not 202
    assert all(f.bytes < 0.3e6 for f in files) and max(s.books.pieces for s in m.shards) > 30
    # The short recordings held out whole come last, in a shard of their own; validation also reads the two long
    # books' mid windows, and no other shard.
    assert (m.shards[-1].train_slots, m.shards[-1].val_slots > 0) == (0, True)
    assert sum(s.val_slots > 0 for s in m.shards) <= 3
    mtimes = {f.path: (out / f.path).stat().st_mtime_ns for f in files}

    again = tokenize(cfg, out, [str(catalog)])
    assert (again.added, again.shards_written, again.chunks_encoded) == ([], 0, 0)

    more = tokenize(cfg, out, [str(p) for p in clips[200:]])
    held = [p.stem for p in clips[200:] if id_hash(p.stem) < cfg.split.val_fraction]  # in a shard of their own
    assert more.added == [p.stem for p in clips[200:]] and more.shards_written == 1 + bool(held) and held
    m = Manifest.load(out)
    assert {f.path: (out / f.path).stat().st_mtime_ns for s in m.shards for f in s.files.values() if f.path in mtimes} == mtimes
    new = [b.id for s in m.shards[len(files):] for b in m.book_index(out, s)]
    assert m.books == 212 and sorted(new) == sorted(more.added)

    text = inspect_tokens(out)
    assert f"books:     212 ({m.seconds / 3600:.3f} h)" in text
    assert f"shards:    {len(m.shards)} written, 0 pending" in text and f"shards/acoustic/{len(m.shards) - 1:06d}.tar" in text
    assert "2 books of >= 60 s hold out 5%" in text and "shorter recordings are held out whole" in text

    data = DataConfig(manifest=str(out))
    coverage = window_coverage(TokenShards.open(data, m, out), block_size=2048)
    with capsys.disabled():
        print(f"\n{m.books} recordings in {len(m.shards)} shards; block 2048: {coverage.share:.2%} of "
              f"{coverage.tokens:,} training tokens in a window")
    assert coverage.share >= 0.99

    # The trainer reports the same per epoch (batch 8 x 2048: one epoch is ~26 steps here).
    train = tmp_path / "train"
    capsys.readouterr()
    assert narrator(["train", "--config", str(REPO / "configs/train/tiny.yaml"), "--set", f"data.manifest={out}",
                     "--set", f"out={train}", "--set", "model.block_size=2048", "--set", "batch_size=8",
                     "--set", "data.shuffle_buffer=8", "--set", "max_steps=30", "--set", "eval_every=30",
                     "--set", "checkpoint_every=30", "--set", "log_every=5"]) == 0
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if line.startswith("epoch 0: "))
    assert f"of {coverage.tokens:,} training tokens landed in a window (block 2048)" in line
    records = [json.loads(r) for r in (train / "metrics.jsonl").read_text().splitlines()]
    logged = [c for r in records for c in r.get("epoch_coverage") or []]
    assert logged and logged[0]["epoch"] == 0 and logged[0]["share"] >= 0.99
    with capsys.disabled():
        print(f"trainer: {line}")
