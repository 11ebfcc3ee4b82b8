"""launch/accelerate/multi_node.yaml as 2 machines on one host: one `accelerate launch` per machine rank, 1 process
each, gloo on the CPU; the ranks train together and read disjoint shards."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from narrator.tokenfolder.manifest import Manifest
from narrator.trainer.checkpoint import latest_checkpoint, read_state
from narrator.trainer.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from test_accelerate_launch import ACCELERATE, LAUNCH, REPO, free_port  # noqa: E402

# Imported by every Python process the launchers start (PYTHONPATH): records each shard a DataLoader worker
# opens, with its rank. Training reads only in the worker (data.num_workers=1); validation reads every shard,
# but in the rank's main process, so it is left out.
SHARD_LOG_HOOK = '''
import os, sys

def _log_shard(event, args):
    if event == "open" and isinstance(args[0], str) and args[0].endswith(".tar"):
        data = sys.modules.get("torch.utils.data")
        if data is not None and data.get_worker_info() is not None:
            with open(os.environ["SHARD_LOG"], "a") as log:
                log.write(f"{os.environ['RANK']} {os.path.basename(args[0])}\\n")

sys.addaudithook(_log_shard)
'''


def machine_command(machine_rank: int, port: int, tokens: Path, out: Path, *overrides: str) -> list[str]:
    """The command of one machine, as launch/README.md gives it (with 1 process per machine)."""
    return [str(ACCELERATE), "launch", "--config_file", str(LAUNCH / "multi_node.yaml"),
            "--machine_rank", str(machine_rank), "--num_machines", "2", "--num_processes", "2",
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
            "trainer/run.py", "--config", "configs/train/tiny.yaml", "--set", f"data.manifest={tokens}",
            "--set", f"out={out}"] + [x for o in overrides for x in ("--set", o)]


def test_two_machines_on_one_host_train_together_on_disjoint_shards(token_folder, tmp_path):
    out, log, hook = tmp_path / "run", tmp_path / "shards.log", tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SHARD_LOG_HOOK)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SHARD_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    port = free_port()
    # 3 steps of 4 windows per rank stay inside the first epoch (each rank's share holds ~45 windows).
    logs = [tmp_path / f"machine{rank}.log" for rank in (0, 1)]  # files: each machine prints while the other runs
    machines = []
    for rank, log_file in enumerate(logs):
        with open(log_file, "w") as printing:
            command = machine_command(rank, port, token_folder, out, "max_steps=3", "data.num_workers=1")
            machines.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=printing, stderr=subprocess.STDOUT))
    try:
        for machine in machines:
            machine.wait(timeout=300)
    finally:
        for machine in machines:
            machine.kill()
    printed = [log_file.read_text() for log_file in logs]
    for machine, text in zip(machines, printed):
        assert machine.returncode == 0, text[-3000:]
    for rank, text in enumerate(printed):  # one process per machine: its rank is the machine rank
        assert f"rank {rank}/2: device cpu" in text and "MULTI_CPU" in text
    assert "done: 3 steps" in printed[0]  # rank 0 reports for both
    faults = [line for text in printed for line in text.splitlines()
              if any(word in line for word in ("Traceback", "Error", "error", "Warning", "WARNING"))]
    assert not faults, faults  # a clean run
    state = read_state(latest_checkpoint(out))
    assert (state.step, state.world_size, state.tokens_seen) == (3, 2, 3 * 2 * 4 * 64)
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]

    read = {"0": set(), "1": set()}
    for line in log.read_text().splitlines():
        rank, shard = line.split()
        read[rank].add(shard)
    assert read["0"] and read["1"] and not read["0"] & read["1"], read
    training = {f"{s.index:06d}.tar" for s in Manifest.load(token_folder).shards if s.train_slots}
    assert read["0"] | read["1"] == training  # every shard holding training slots (a held-out recording's are not)


def test_multi_node_config_without_main_address_is_refused_in_one_line(capsys, monkeypatch):
    # accelerate launch itself would hang here: torchrun retries the host "None" before the trainer starts.
    spec = importlib.util.spec_from_file_location("check_config", LAUNCH / "check_config.py")
    check_config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_config)
    monkeypatch.chdir(REPO)
    assert check_config.main(["launch/accelerate/multi_node.yaml"]) == 2
    missing = capsys.readouterr()
    assert missing.out == "" and missing.err.splitlines() == [
        "launch/accelerate/multi_node.yaml: num_machines is 2 but main_process_ip is not set: give node 0's address "
        "(--main_process_ip ADDR, the same on every machine)"]
    assert check_config.main(["launch/accelerate/multi_node.yaml", "--main_process_ip", "127.0.0.1",
                              "--num_processes", "2"]) == 0
    assert capsys.readouterr().out == ("launch/accelerate/multi_node.yaml: ok: 2 machine(s) x 1 process(es), "
                                       "MULTI_GPU, main process 127.0.0.1:29500\n")
