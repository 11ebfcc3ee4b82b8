"""data.mix: several token folders trained together, each window drawn in proportion to its folder's weight."""

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

from narrator.errors import NarratorError
from narrator.streaming.config import DataConfig, MixSource
from narrator.streaming.dataset import build_train_loader, open_folder, open_sources, val_windows
from narrator.tokenfolder.manifest import Manifest
from narrator.trainer import run
from narrator.trainer.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_token_folder  # noqa: E402

BLOCK = 63  # 16 frames of 4 codebooks (+1 target)
TINY = Path(__file__).resolve().parent.parent / "configs" / "train" / "tiny.yaml"


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory) -> tuple[Path, Path]:
    """Folder a: random ids < 16 in every codebook. Folder b: codebook 0 counts frames (mostly >= 16)."""
    root = tmp_path_factory.mktemp("mix")
    a = make_token_folder(root / "a", books=2, seconds=8.0, chunk_seconds=4.0)
    b = make_token_folder(root / "b", books=3, seconds=8.0, chunk_seconds=4.0, codes="position")
    return a, b


def mix(a: Path, b: Path, weights: tuple[float, float], **kw) -> DataConfig:
    return DataConfig(mix=[MixSource(str(a), weights[0]), MixSource(str(b), weights[1])], shuffle_buffer=8, **kw)


def from_b(x: np.ndarray) -> bool:
    """Whether a window came from folder b: its codebook-0 codes (flat layout: every 4th token) reach 16."""
    codebook0 = [t for t in x.tolist() if t < 1024]
    return max(codebook0) >= 16


def test_windows_come_from_each_folder_in_proportion_to_its_weight(two_folders):
    cfg = mix(*two_folders, weights=(1.0, 3.0))
    sources = open_sources(cfg, [open_folder(s.manifest) for s in cfg.sources])
    assert [(s.source, s.weight) for s in sources] == [(0, 1.0), (1, 3.0)]
    loader = build_train_loader(cfg, sources, BLOCK - 1, batch_size=16, rank=0, world_size=1, seed=0)
    windows = [x.numpy() for batch in itertools.islice(loader, 40) for x in batch.x]
    share_b = sum(from_b(w) for w in windows) / len(windows)
    assert 0.68 < share_b < 0.82, share_b  # 3 / 4, over 640 windows
    # Reproducible for a seed, and another seed draws another sequence.
    again = [x.numpy() for batch in itertools.islice(build_train_loader(cfg, sources, BLOCK - 1, 16, 0, 1, seed=0), 40)
             for x in batch.x]
    assert all(np.array_equal(p, q) for p, q in zip(windows, again))
    other = [x.numpy() for batch in itertools.islice(build_train_loader(cfg, sources, BLOCK - 1, 16, 0, 1, seed=1), 4)
             for x in batch.x]
    assert not all(np.array_equal(p, q) for p, q in zip(windows, other))


def test_validation_reads_every_folder_with_its_own_books_held_out(two_folders):
    cfg = mix(*two_folders, weights=(1.0, 1.0))
    a, b = open_sources(cfg, [open_folder(s.manifest) for s in cfg.sources])
    both = val_windows([a, b], BLOCK - 1, 0, 1)
    assert len(both) == len(val_windows(a, BLOCK - 1, 0, 1)) + len(val_windows(b, BLOCK - 1, 0, 1))
    assert 0 < sum(from_b(w) for w in both) < len(both)


def test_a_mix_of_other_tokens_is_refused_naming_both_folders(two_folders, tmp_path):
    a, _ = two_folders
    other = make_token_folder(tmp_path / "other", books=2, seconds=10.0)
    manifest = Manifest.load(other)
    manifest.streams[0].config_hash = "another-config"
    manifest.save(other / "manifest.json")
    cfg = mix(a, other, weights=(1.0, 1.0))
    with pytest.raises(NarratorError) as e:
        open_sources(cfg, [open_folder(s.manifest) for s in cfg.sources])
    message = str(e.value)
    assert "\n" not in message and str(other / "manifest.json") in message and str(a / "manifest.json") in message
    assert "another-config" in message


def test_trainer_trains_on_a_weighted_mix_and_reports_coverage_per_folder(two_folders, tmp_path, capsys):
    a, b = two_folders
    out = tmp_path / "run"
    argv = ["--config", str(TINY), "--set", f"data.mix=[{{manifest: {a}, weight: 1}}, {{manifest: {b}, weight: 2}}]",
            "--set", f"out={out}", "--set", "max_steps=12", "--set", "batch_size=16"]
    assert run.main(argv) == 0
    printed = capsys.readouterr().out
    assert "books of 2 token folders" in printed
    records = read_metrics(out / "metrics.jsonl")
    assert records[-1]["step"] == 12 and "val_loss" in records[-1]
    sources = {c["source"] for r in records for c in r.get("epoch_coverage") or []}
    assert sources == {str(a), str(b)}, sources  # both folders finished an epoch in 12 x 16 windows
