"""The layers import downwards only: tokenfolder/ <- tokenizers/, streaming/ <- evaluation/ <- trainer/.

Read from the source (ast), not from sys.modules: an import inside a function counts too.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# folder -> the narrator packages it must not import
FORBIDDEN = {
    "tokenfolder": ("narrator.tokenizers", "narrator.streaming", "narrator.trainer"),
    "tokenizers": ("narrator.streaming", "narrator.trainer", "narrator.evaluation"),  # kmeans-report's ABX comes in from cli
    "streaming": ("narrator.tokenizers", "narrator.trainer"),
    "evaluation": ("narrator.trainer",),  # the trainer runs evaluations, not the other way round
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement in a file, relative imports resolved against its package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join(["narrator", path.parent.name][: 3 - node.level] + ([module] if module else []))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def violations(folder: str, repo: Path = REPO) -> list[str]:
    bad = []
    for path in sorted((repo / folder).rglob("*.py")):
        for line, module in imported_modules(path):
            if any(module == f or module.startswith(f + ".") for f in FORBIDDEN[folder]):
                bad.append(f"{path.relative_to(repo)}:{line}: imports {module}")
    return bad


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_a_layer_never_imports_the_layers_above_it(folder):
    assert violations(folder) == []


def test_the_check_sees_an_upward_import(tmp_path):
    (tmp_path / "tokenizers").mkdir()
    (tmp_path / "tokenizers" / "x.py").write_text("def f():\n    from narrator.streaming.config import DataConfig\n")
    (tmp_path / "tokenizers" / "y.py").write_text("from narrator.tokenfolder import storage\n")
    assert violations("tokenizers", tmp_path) == ["tokenizers/x.py:2: imports narrator.streaming.config.DataConfig"]
