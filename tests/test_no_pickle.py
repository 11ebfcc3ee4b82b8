"""Nothing the package reads from disk is unpickled or run: a scan of its sources for the calls that would."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["narrator", "tokenizers", "tokenfolder", "streaming", "trainer", "evaluation", "benchmarks", "launch"]
PICKLERS = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}


def dotted(node: ast.AST) -> str:
    """`np.load` for the call target `np.load`, "" for targets that are not plain names."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def keyword_is(call: ast.Call, name: str, allowed: tuple) -> bool:
    """Whether `call` passes `name=` one of the constants or names in `allowed`."""
    for kw in call.keywords:
        if kw.arg == name:
            value = kw.value
            return (isinstance(value, ast.Constant) and value.value in allowed) or dotted(value) in allowed
    return False


def findings(path: Path, rel: str | None = None) -> list[str]:
    """`file:line: why` for each forbidden call or literal in one source file (`rel`: its name relative to ROOT)."""
    rel = rel or path.relative_to(ROOT).as_posix()
    tree = ast.parse(path.read_text(), str(path))
    found = []
    # A `pipe:` literal may appear only where it is refused: tested with startswith, or in a raised message.
    refusals = {inner for node in ast.walk(tree)
                if isinstance(node, ast.Raise)
                or isinstance(node, ast.Call) and dotted(node.func).endswith("startswith")
                for inner in ast.walk(node)}
    refusals |= {owner.body[0].value for owner in ast.walk(tree)  # docstrings
                 if isinstance(owner, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                 and owner.body and isinstance(owner.body[0], ast.Expr)}
    for node in ast.walk(tree):
        where = f"{rel}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name.split(".")[0] in PICKLERS:
                    found.append(f"{where}: imports {name}")
        literal = isinstance(node, ast.Constant) and isinstance(node.value, str)
        if literal and "pipe:" in node.value and node not in refusals:
            found.append(f"{where}: a 'pipe:' literal outside the checks that refuse it")
        if not isinstance(node, ast.Call):
            continue
        target = dotted(node.func)
        last = target.rsplit(".", 1)[-1]
        if target in ("eval", "exec", "compile", "__import__") or target.split(".")[0] in PICKLERS:
            found.append(f"{where}: {target}()")
        elif target in ("np.load", "numpy.load") and not keyword_is(node, "allow_pickle", (False,)):
            found.append(f"{where}: {target} without allow_pickle=False")
        elif target == "torch.load" and not keyword_is(node, "weights_only", (True,)):
            found.append(f"{where}: torch.load without weights_only=True")
        elif target in ("yaml.load", "yaml.load_all") and not keyword_is(node, "Loader", ("yaml.SafeLoader",
                                                                                           "yaml.CSafeLoader")):
            found.append(f"{where}: {target} without a SafeLoader (use yaml.safe_load)")
        elif target in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
            found.append(f"{where}: {target}")
        elif last in ("autodecode", "decode") and target.split(".")[0] in ("wds", "webdataset"):
            found.append(f"{where}: {target}: webdataset's decoders unpickle .pyd/.pickle members")
    return found


def sources() -> list[Path]:
    return sorted(p for folder in SOURCES for p in (ROOT / folder).rglob("*.py"))


def test_the_package_never_unpickles_or_evaluates_what_it_reads():
    assert len(sources()) > 40  # the scan sees the package
    problems = [line for path in sources() for line in findings(path)]
    assert problems == []


@pytest.mark.parametrize("code, why", [
    ("import pickle\npickle.loads(b'')", "imports pickle"),
    ("import numpy as np\nnp.load('x.npy')", "np.load without allow_pickle=False"),
    ("import numpy as np\nnp.load('x.npy', allow_pickle=True)", "np.load without allow_pickle=False"),
    ("import torch\ntorch.load('x.pt')", "torch.load without weights_only=True"),
    ("import torch\ntorch.load('x.pt', weights_only=False)", "torch.load without weights_only=True"),
    ("import yaml\nyaml.load(open('c.yaml'), Loader=yaml.Loader)", "yaml.load without a SafeLoader"),
    ("import yaml\nyaml.unsafe_load('a: 1')", "yaml.unsafe_load"),
    ("eval('1 + 1')", "eval()"),
    ("import webdataset as wds\nwds.WebDataset('x.tar').compose(wds.decode())", "wds.decode"),
    ("def read(url):\n    return f'pipe:curl {url}'", "a 'pipe:' literal"),
])
def test_the_scan_catches_each_forbidden_call(tmp_path, code, why):
    bad = tmp_path / "probe.py"
    bad.write_text(code + "\n")
    problems = findings(bad, "benchmarks/probe.py")
    assert problems and all(p.startswith("benchmarks/probe.py:") for p in problems)
    assert any(why in p for p in problems), problems


def test_the_scan_accepts_the_safe_forms(tmp_path):
    safe = tmp_path / "probe.py"
    safe.write_text("import numpy as np, torch, yaml\n"
                    "np.load('x.npy', allow_pickle=False)\n"
                    "torch.load('x.pt', map_location='cpu', weights_only=True)\n"
                    "yaml.safe_load('a: 1')\n"
                    "yaml.load('a: 1', Loader=yaml.SafeLoader)\n")
    assert findings(safe, "benchmarks/probe.py") == []
