"""A checkpoint resumed on data it does not fit is refused before the first step, in one line naming both sides."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from narrator.tokenfolder.manifest import Manifest
from narrator.trainer import run
from narrator.trainer.checkpoint import STATE_NAME, list_checkpoints

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_token_folder  # noqa: E402

TINY = Path(__file__).resolve().parent.parent / "configs" / "train" / "tiny.yaml"


def train(tokens: Path, out: Path, *overrides: str) -> int:
    argv = ["--config", str(TINY), "--set", f"data.manifest={tokens}", "--set", f"out={out}"]
    return run.main(argv + [x for o in overrides for x in ("--set", o)])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, token_folder) -> Path:
    """A run of 2 steps on the flat layout of 4 codebooks x 1024 codes (vocab 4097, boundary token 4096)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert train(token_folder, out, "max_steps=2") == 0
    return out


def refusal(tokens: Path, out: Path, capsys, *overrides: str) -> str:
    """The one error line of resuming `out` on `tokens`; nothing is trained or written."""
    before = sorted(p.name for p in out.rglob("*"))
    assert train(tokens, out, "max_steps=4", *overrides) == 1
    captured = capsys.readouterr()
    [line] = [line for line in captured.err.splitlines() if "error" in line.lower()]
    assert "resumed from" not in captured.out and sorted(p.name for p in out.rglob("*")) == before
    return line


def test_tokens_of_another_tokenizer_are_refused(trained, token_folder, tmp_path, capsys):
    other = shutil.copytree(token_folder, tmp_path / "other")
    manifest = Manifest.load(other)
    manifest.streams[0].config_hash = "made-another-way"
    manifest.save(other / "manifest.json")
    line = refusal(other, trained, capsys)
    assert (f"checkpoint was trained on tokens with tokenizer config_hash test-tokens, but {other / 'manifest.json'} "
            "has made-another-way") in line


def test_tokens_of_another_vocabulary_are_refused(trained, tmp_path, capsys):
    two = make_token_folder(tmp_path / "two-codebooks", n_codebooks=2)  # same tokenizer hash, 2 codebooks: vocab 2049
    line = refusal(two, trained, capsys)
    assert f"checkpoint model differs from the one configured for {two / 'manifest.json'} (vocab_size 4097 != 2049)" in line


def test_another_layout_is_refused(trained, tmp_path, capsys):
    both = make_token_folder(tmp_path / "both", streams=("acoustic", "semantic"))
    line = refusal(both, trained, capsys, "data.layout=semantic")
    assert ("checkpoint was trained with data.layout 'flat', but this run reads "
            f"{both / 'manifest.json'} with layout 'semantic'") in line


def test_another_boundary_token_is_refused(trained, token_folder, tmp_path, capsys):
    # A checkpoint whose recordings were separated by another id (as an older layout numbered it), same vocabulary.
    old = shutil.copytree(trained, tmp_path / "old")
    [checkpoint] = list_checkpoints(old)
    state = json.loads((checkpoint / STATE_NAME).read_text())
    state["boundary_token"] = 0
    (checkpoint / STATE_NAME).write_text(json.dumps(state))
    line = refusal(token_folder, old, capsys)
    assert (f"checkpoint marks recording boundaries with token 0, but {token_folder / 'manifest.json'} read with this "
            "data config gives 4096") in line
