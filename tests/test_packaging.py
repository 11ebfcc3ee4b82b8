"""The editable install maps our folders under `narrator.*` and leaves the top-level names alone.

Each check runs in a fresh interpreter whose working directory is an empty temp folder, so the
repository is not on sys.path and only the installed package can answer.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ["narrator", "tokenizers", "tokenfolder", "streaming", "trainer", "evaluation"]

PROBE = """
import json
import narrator.streaming, narrator.tokenfolder, narrator.tokenizers, narrator.trainer, tokenizers
try:
    import streaming
    streaming_file = streaming.__file__
except ModuleNotFoundError:
    streaming_file = None
print(json.dumps({
    "narrator.tokenizers": narrator.tokenizers.__file__,
    "narrator.tokenfolder": narrator.tokenfolder.__file__,
    "narrator.streaming": narrator.streaming.__file__,
    "narrator.trainer": narrator.trainer.__file__,
    "tokenizers": tokenizers.__file__,
    "streaming": streaming_file,
}))
"""


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=True)


@pytest.fixture(scope="module")
def modules(tmp_path_factory) -> dict[str, str | None]:
    # -I ignores PYTHONPATH and the user site: only what is installed in the venv is visible.
    proc = _run([sys.executable, "-I", "-c", PROBE], tmp_path_factory.mktemp("elsewhere"))
    return json.loads(proc.stdout.splitlines()[-1])


def _installed_elsewhere(path: str) -> bool:
    """True for a dependency's file: in site-packages (the venv may sit in the repo), not in our folders."""
    path = Path(path).resolve()
    return "site-packages" in path.parts and not any(path.is_relative_to(REPO / d) for d in PACKAGE_DIRS)


@pytest.mark.parametrize("folder", ["tokenizers", "tokenfolder", "streaming", "trainer"])
def test_namespaced_packages_resolve_to_the_repo_folders(modules, folder):
    assert Path(modules[f"narrator.{folder}"]).resolve() == REPO / folder / "__init__.py"


def test_top_level_tokenizers_is_hugging_face_not_ours(modules):
    assert _installed_elsewhere(modules["tokenizers"])


def test_top_level_streaming_is_absent_or_not_ours(modules):
    assert modules["streaming"] is None or _installed_elsewhere(modules["streaming"])


def test_console_script_lists_every_subcommand(tmp_path):
    script = Path(sys.executable).parent / "narrator"
    assert script.is_file()
    help_text = _run([str(script), "--help"], tmp_path).stdout
    listed = set(re.search(r"\{([\w,-]+)\}", help_text).group(1).split(","))  # argparse's {a,b,...}
    assert {"sample-book", "tokenize", "inspect", "train", "generate", "demo"} <= listed
