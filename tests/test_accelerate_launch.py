"""`accelerate launch` with the shipped launch configs: 2-process CPU DDP and DeepSpeed ZeRO-2, with resume
(ZeRO-3 and ZeRO-2 offload: test_deepspeed_launch.py; several machines: test_multi_node.py)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from narrator.trainer.checkpoint import latest_checkpoint, list_checkpoints, load_for_inference, read_state
from narrator.trainer.config import OptimConfig
from narrator.trainer.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch" / "accelerate"
ACCELERATE = Path(sys.executable).with_name("accelerate")
TOKENS_PER_STEP = 2 * 4 * 64  # 2 processes x batch_size 4 x block_size 64 (configs/train/tiny.yaml)


def test_launch_configs_load_and_agree_with_the_trainer():
    configs = {p.stem: load_config_from_file(str(p)) for p in LAUNCH.glob("*.yaml")}
    assert configs.keys() == {"single_gpu", "multi_gpu", "multi_node", "deepspeed_zero2", "deepspeed_zero2_offload",
                              "deepspeed_zero3"}
    assert (configs["single_gpu"].distributed_type, configs["single_gpu"].num_processes) == (DistributedType.NO, 1)
    assert (configs["multi_gpu"].distributed_type, configs["multi_gpu"].num_processes) == (DistributedType.MULTI_GPU, 8)
    node = configs["multi_node"]
    assert (node.num_machines, node.num_processes, node.main_process_port) == (2, 16, 29500)
    assert node.main_process_ip is None  # node 0's address is given on the command line, never a placeholder
    deepspeed = {"deepspeed_zero2": (2, "none"), "deepspeed_zero2_offload": (2, "cpu"), "deepspeed_zero3": (3, "none")}
    for name, (stage, optimizer_device) in deepspeed.items():  # optimizer_device: where AdamW's state lives
        ds = configs[name]
        assert ds.distributed_type == DistributedType.DEEPSPEED and ds.deepspeed_config["zero_stage"] == stage
        assert ds.deepspeed_config["offload_optimizer_device"] == optimizer_device
        assert ds.deepspeed_config["offload_param_device"] == "none"
        assert ds.deepspeed_config["gradient_clipping"] == OptimConfig().grad_clip
        assert "gradient_accumulation_steps" not in ds.deepspeed_config  # it would override grad_accum
        assert ds.deepspeed_config["deepspeed_multinode_launcher"] == "standard"  # not pdsh: one launch per machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(config: str, tokens: Path, out: Path, *overrides: str) -> list[str]:
    return [str(ACCELERATE), "launch", "--config_file", str(LAUNCH / config), "--num_processes", "2",
            "--main_process_port", str(free_port()), "trainer/run.py", "--config", "configs/train/tiny.yaml",
            "--set", f"data.manifest={tokens}", "--set", f"out={out}", "--set", "checkpoint_every=2",
            "--set", "eval_every=2"] + [x for o in overrides for x in ("--set", o)]


def launch(config: str, tokens: Path, out: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(launch_command(config, tokens, out, *overrides), cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def check_two_process_run(out: Path, steps: int) -> None:
    state = read_state(latest_checkpoint(out))
    assert (state.step, state.world_size, state.tokens_seen) == (steps, 2, steps * TOKENS_PER_STEP)
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert records[-1]["train_loss"] < records[0]["train_loss"] - 0.2
    model, _, _ = load_for_inference(out)
    assert model.transformer.wte.weight is model.lm_head.weight


def test_two_process_cpu_ddp_stops_on_sigterm_and_resumes(token_folder, tmp_path):
    out = tmp_path / "run"
    # A long run with a DataLoader worker per rank, stopped with SIGTERM to the launcher once it
    # trains: torchrun signals every rank's process group, workers included.
    cmd = launch_command("multi_gpu.yaml", token_folder, out, "max_steps=1000", "data.num_workers=1")
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while len(read_metrics(out / "metrics.jsonl")) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert "rank 0/2: device cpu" in stdout and "rank 1/2: device cpu" in stdout and "MULTI_CPU" in stdout
    assert stderr.count("SIGTERM: stopping after this step") == 2, stderr[-3000:]  # both ranks
    [stopped] = [line for line in stdout.splitlines() if line.startswith("stopped by SIGTERM at step")]
    step = int(stopped.split("at step ")[1].split(";")[0])
    assert 3 <= step < 1000 and read_state(latest_checkpoint(out)).step == step

    resumed = launch("multi_gpu.yaml", token_folder, out, f"max_steps={step + 2}")
    assert f"at step {step}" in resumed.stdout
    check_two_process_run(out, step + 2)


def test_deepspeed_zero2_on_two_cpu_processes_trains_and_resumes(token_folder, tmp_path):
    out = tmp_path / "run"
    # DeepSpeed's CPU accelerator JIT-compiles a shared-memory op on first use (~1 min, needs g++ and
    # ninja), cached in TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions). cpu: true would
    # make Accelerate drop DeepSpeed.
    env = {"DS_ACCELERATOR": "cpu"}
    first = launch("deepspeed_zero2.yaml", token_folder, out, "max_steps=4", "cpu=false", env=env)
    assert "DEEPSPEED" in first.stdout
    assert (list_checkpoints(out)[-1] / "accelerate" / "pytorch_model").is_dir()  # DeepSpeed's own format
    second = launch("deepspeed_zero2.yaml", token_folder, out, "max_steps=6", "cpu=false", env=env)
    assert "at step 4" in second.stdout
    check_two_process_run(out, 6)
