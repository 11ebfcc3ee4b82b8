"""Training faults injected into real runs: killed inside a checkpoint save, a full disk while saving, NaN losses."""

import errno
import hashlib
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from narrator.errors import NarratorError
from narrator.tokenfolder import storage
from narrator.trainer import run
from narrator.trainer.checkpoint import list_checkpoints, load_for_inference, read_state
from narrator.trainer.metrics import read_metrics
from narrator.trainer.model import GPT

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "train" / "tiny.yaml"
FILE_LIMIT = 512 * 1024  # above every file of a tiny run but the checkpoint's weights and optimizer state


def argv(tokens: Path, out: Path, *overrides: str) -> list[str]:
    return ["--config", str(TINY), "--set", f"data.manifest={tokens}", "--set", f"out={out}",
            *(x for o in overrides for x in ("--set", o))]


def train_process(tokens: Path, out: Path, *overrides: str, **popen) -> subprocess.Popen:
    """`python trainer/run.py` in a process of its own, printing into OUT.log."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".log"), "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, str(ROOT / "trainer" / "run.py"), *argv(tokens, out, *overrides)],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                **popen)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_save_killed_midway_is_never_loaded_and_resume_takes_the_previous_checkpoint(token_folder, tmp_path, capsys):
    # A checkpoint every step; SIGKILL the moment a second save's step_X.tmp appears, so the kill lands inside it.
    for attempt in range(5):
        out = tmp_path / f"run{attempt}"
        proc = train_process(token_folder, out, "max_steps=200", "checkpoint_every=1", "eval_every=1000",
                             "log_every=1000", "plot_every=1000")
        folder = out / "checkpoints"
        while proc.poll() is None:
            names = os.listdir(folder) if folder.is_dir() else []
            if any(n.endswith(".tmp") for n in names) and any(not n.endswith(".tmp") for n in names):
                proc.kill()
                break
        proc.wait()
        partial = sorted(folder.glob("step_*.tmp"))
        if partial:
            break
    assert partial, "no SIGKILL landed inside a checkpoint save in 5 runs"
    [partial] = partial
    complete = list_checkpoints(out)
    assert complete and int(complete[-1].name[5:]) < int(partial.name[5:12])
    previous = complete[-1]
    assert not (partial / "trainer_state.json").is_file() or partial not in complete  # never listed

    step = read_state(previous).step
    refused = f"{partial}: an incomplete checkpoint (its save or deletion was killed), never loaded"
    assert run.main([*argv(token_folder, out, f"max_steps={step + 2}"), "--resume", str(partial)]) == 1
    assert refused in capsys.readouterr().err
    with pytest.raises(NarratorError, match=re.escape(refused)):
        load_for_inference(partial)  # narrator generate --checkpoint PATH
    assert run.main(argv(token_folder, out, f"max_steps={step + 2}", "checkpoint_every=1000")) == 0
    printed = capsys.readouterr().out
    assert f"removed {partial}: an incomplete checkpoint of a killed save (never loaded)" in printed
    assert f"resumed from {previous} at step {step}" in printed
    assert not list(folder.glob("step_*.tmp"))
    assert read_state(list_checkpoints(out)[-1]).step == step + 2


def _file_limit() -> None:
    """In the child: a file-size limit, and writes past it fail with EFBIG instead of killing the process."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def test_a_full_disk_while_saving_is_one_line_keeps_the_last_checkpoint_and_a_rerun_completes(token_folder, tmp_path,
                                                                                               capsys):
    out = tmp_path / "run"
    assert run.main(argv(token_folder, out, "max_steps=10")) == 0
    [first] = list_checkpoints(out)
    before = {p.relative_to(first): sha256(p) for p in first.rglob("*") if p.is_file()}

    # The same run continued to step 20 where no file may grow past 512 KiB: the step-20 checkpoint cannot be written.
    proc = train_process(token_folder, out, "max_steps=20", preexec_fn=_file_limit)
    assert proc.wait(timeout=300) == 1
    printed = out.with_suffix(".log").read_text()
    assert "Traceback" not in printed
    assert printed.lower().count("error") == 1, printed  # one error-looking line, the progress bar before it
    faults = re.findall(r"narrator train: error: .*", printed)
    tmp = out / "checkpoints" / "step_0000020.tmp"
    assert faults[0].startswith(f"narrator train: error: {tmp}: cannot write the checkpoint (File too large")
    assert f"the last complete checkpoint {first} is kept; free space and rerun the same command" in faults[0]
    assert not tmp.exists() and list_checkpoints(out) == [first]
    assert {p.relative_to(first): sha256(p) for p in first.rglob("*") if p.is_file()} == before

    # Space freed (no limit): the rerun resumes from step 10 and completes.
    assert run.main(argv(token_folder, out, "max_steps=20")) == 0
    assert f"resumed from {first} at step 10" in capsys.readouterr().out
    assert read_state(list_checkpoints(out)[-1]).step == 20


def test_skip_nonfinite_skips_and_logs_up_to_n_updates_then_stops(token_folder, tmp_path, monkeypatch, capsys):
    # The fault is the NaN itself: the real model's loss is poisoned on chosen training forwards; all else is real.
    forward, calls, poisoned = GPT.forward, [0], {3, 4}

    def nan_on_some_steps(self, idx, targets=None, *args, **kwargs):
        logits, loss = forward(self, idx, targets, *args, **kwargs)
        if targets is not None and self.training:
            calls[0] += 1
            if calls[0] in poisoned:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", nan_on_some_steps)
    out = tmp_path / "run"
    assert run.main(argv(token_folder, out, "max_steps=8", "optim.skip_nonfinite=3", "checkpoint_every=4")) == 0
    printed = capsys.readouterr().out
    skips = [line for line in printed.splitlines() if "non-finite loss" in line]
    assert skips == ["step 3: non-finite loss (nan) or gradient norm; skipped the update (1 of optim.skip_nonfinite 3)",
                     "step 3: non-finite loss (nan) or gradient norm; skipped the update (2 of optim.skip_nonfinite 3)"]
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))  # skipped forwards are not steps
    assert [r.get("skipped_nonfinite") for r in records] == [None, None, 2, None, None, None, None, None]
    model, _, _ = load_for_inference(out)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    optimizer = torch.load(list_checkpoints(out)[-1] / "accelerate" / "optimizer.bin", weights_only=True)
    assert {int(s["step"]) for s in optimizer["state"].values()} == {8}  # AdamW stepped only by the 8 finite updates

    # The count runs over the whole run, resumes included: 2 skipped before, so the resumed run skips its first NaN
    # (the 3rd) and stops at the next one, naming the last checkpoint.
    calls[0], poisoned = 0, {1, 2}
    assert run.main(argv(token_folder, out, "max_steps=20", "optim.skip_nonfinite=3", "checkpoint_every=100")) == 1
    captured = capsys.readouterr()
    assert [line for line in captured.out.splitlines() if "skipped the update" in line] == [
        "step 9: non-finite loss (nan) or gradient norm; skipped the update (3 of optim.skip_nonfinite 3)"]
    [line] = [line for line in captured.err.splitlines() if "error" in line]
    assert line == (f"narrator train: error: non-finite loss (nan) at step 9: training diverged (lower optim.lr, check "
                    f"the data); last good checkpoint: {list_checkpoints(out)[-1]} (3 non-finite steps skipped before, "
                    "optim.skip_nonfinite 3)")


def test_skip_nonfinite_is_refused_when_negative(token_folder, tmp_path, capsys):
    assert run.main(argv(token_folder, tmp_path / "run", "optim.skip_nonfinite=-1")) == 1
    assert "'optim.skip_nonfinite': -1 must be >= 0" in capsys.readouterr().err


FAULT_OF_TORCH_SAVE = """
import resource, signal, sys, torch
from narrator.tokenfolder import storage
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    torch.save({"w": torch.zeros(10_000)}, sys.argv[1])
except Exception as e:
    print(type(e).__name__, "->", storage.write_fault(e, sys.argv[1]))
"""


def test_write_fault_names_a_full_disk_however_the_writer_reports_it(tmp_path):
    # torch.save's C++ writer loses errno ("unexpected pos ..."): the limit in force is what names the fault.
    result = subprocess.run([sys.executable, "-c", FAULT_OF_TORCH_SAVE, str(tmp_path / "x.pt")], capture_output=True,
                            text=True, timeout=120, check=True)
    assert result.stdout.strip() == "RuntimeError -> File too large (file-size limit 4,096 bytes)"
    assert storage.write_fault(OSError(errno.ENOSPC, "No space left on device"), tmp_path) == "No space left on device"
    assert storage.write_fault(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path) == "Disk quota exceeded"
    assert storage.write_fault(PermissionError(errno.EACCES, "Permission denied"), tmp_path) is None  # space no cure
