"""DeepSpeed ZeRO-3 and ZeRO-2 with CPU optimizer offload under `accelerate launch`, 2 CPU processes: trained,
killed or stopped, resumed, exported; and a DeepSpeed config whose batch sizes disagree, refused."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch

from narrator.cli import main as narrator
from narrator.trainer.checkpoint import latest_checkpoint, list_checkpoints, load_for_inference, read_state
from narrator.trainer.generate import BOUNDARY_SILENCE_S
from narrator.trainer.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from test_accelerate_launch import REPO, check_two_process_run, launch, launch_command  # noqa: E402

# DeepSpeed's CPU accelerator; cpu: true in the training config would make Accelerate drop DeepSpeed.
DEEPSPEED_ENV = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
# What a clean run must not print (DeepSpeed's per-step FutureWarnings, torch's "no CUDA runtime" W-line).
FAULT_WORDS = ("Traceback", "Error", "error", "Warning", "WARNING")


@pytest.fixture(scope="module")
def speech_tokens(tmp_path_factory, ray_local, speech_wav) -> tuple[Path, Path]:
    """(token folder, book): 8 s of speech-like audio through `narrator tokenize` with random-init EnCodec, whose
    weights file the folder keeps (generate needs it), in 2 shards of one 4 s chunk."""
    root = tmp_path_factory.mktemp("speech")
    book, tokens = speech_wav(root / "book.wav", 8.0), root / "tokens"
    assert narrator(["tokenize", "--config", str(REPO / "configs/tokenize/encodec_3kbps.yaml"), "--out", str(tokens),
                     str(book), "--set", "encodec.weights.mode=random", "--set", "chunking.chunk_seconds=4",
                     "--set", "ray.concurrency=1", "--set", "shards.target_mb=0.002"]) == 0
    return tokens, book


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def kill_job(launcher: subprocess.Popen) -> None:
    """SIGKILL the launcher's process group and every rank's: torchrun starts each rank in a session of its own,
    so killing the launcher alone would leave the ranks training (a lost node takes all of them)."""
    ranks = child_pids(launcher.pid)
    for group in [launcher.pid, *ranks]:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    launcher.wait()


def assert_clean(done: subprocess.CompletedProcess) -> None:
    faults = [line for line in (done.stdout + done.stderr).splitlines() if any(w in line for w in FAULT_WORDS)]
    assert not faults, "\n".join(faults[:10])


def test_zero3_killed_mid_run_resumes_and_its_consolidated_weights_generate_a_wav(speech_tokens, tmp_path):
    tokens, book = speech_tokens
    out, sample = tmp_path / "run", tmp_path / "sample.wav"
    command = launch_command("deepspeed_zero3.yaml", tokens, out, "max_steps=1000", "cpu=false")
    log = tmp_path / "killed.log"  # a file, not a pipe nobody reads while it trains
    with open(log, "w") as printing:
        launcher = subprocess.Popen(command, cwd=REPO, env={**os.environ, **DEEPSPEED_ENV}, start_new_session=True,
                                    stdout=printing, stderr=subprocess.STDOUT)
    try:  # killed while it trains: a step logged after the first complete checkpoint
        deadline = time.monotonic() + 300
        while launcher.poll() is None and time.monotonic() < deadline:
            first = latest_checkpoint(out)
            if first is not None and len(read_metrics(out / "metrics.jsonl")) > read_state(first).step:
                break
            time.sleep(0.1)
    finally:
        kill_job(launcher)
    printed = log.read_text()
    assert launcher.returncode == -signal.SIGKILL, printed[-3000:]
    assert "rank 0/2: device cpu, DEEPSPEED" in printed and "rank 1/2: device cpu, DEEPSPEED" in printed
    killed = latest_checkpoint(out)  # the newest complete one; a save cut short leaves only a .tmp folder
    step = read_state(killed).step
    assert 2 <= step < 1000

    resumed = launch("deepspeed_zero3.yaml", tokens, out, f"max_steps={step + 2}", "cpu=false", env=DEEPSPEED_ENV)
    assert f"resumed from {killed} at step {step}" in resumed.stdout
    assert_clean(resumed)
    final = latest_checkpoint(out)
    state = read_state(final)
    assert (state.step, state.world_size) == (step + 2, 2)
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, step + 3))

    # ZeRO-3's own partitioned checkpoint holds the tied embedding as ONE parameter, lm_head an alias of it.
    shards = final / "accelerate" / "pytorch_model"
    ranks = [torch.load(shards / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["ds_config"]["zero_optimization"]["stage"] == 3
    assert ranks[0]["shared_params"] == {"lm_head.weight": "transformer.wte.weight"}
    partitioned = {name: shape for group in ranks[0]["param_shapes"] for name, shape in group.items()}
    assert "lm_head.weight" not in partitioned

    # The consolidated model.safetensors loads on one process, tied, with exactly the partitioned parameters.
    model, _, meta = load_for_inference(out)
    assert meta.path == final and model.lm_head.weight is model.transformer.wte.weight
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == {n: tuple(s) for n, s in partitioned.items()}

    assert narrator(["generate", "--checkpoint", str(out), "--prompt", str(book), "--prompt-seconds", "1",
                     "--seconds", "1", "--out", str(sample)]) == 0
    audio, rate = sf.read(sample)
    boundaries = (audio.shape[0] / rate - 2.0) / (BOUNDARY_SILENCE_S - 1 / 75)  # a sampled boundary adds a pause
    assert rate == 24000 and boundaries > -0.05 and abs(boundaries - round(boundaries)) < 0.05


def test_zero2_offload_keeps_optimizer_state_on_the_cpu_trains_resumes_and_exports(token_folder, tmp_path):
    out = tmp_path / "run"
    # Accelerate swaps in DeepSpeed's CPU Adam, a C++ op compiled on first use (75 s of CPU time here; g++ and
    # ninja) and cached in TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions).
    launch("deepspeed_zero2_offload.yaml", token_folder, out, "max_steps=4", "cpu=false", env=DEEPSPEED_ENV)
    states = list_checkpoints(out)[-1] / "accelerate" / "pytorch_model" / "mp_rank_00_model_states.pt"
    saved = torch.load(states, weights_only=True)
    zero = saved["ds_config"]["zero_optimization"]
    assert zero["stage"] == 2 and zero["offload_optimizer"] == {"device": "cpu", "nvme_path": None, "pin_memory": True}
    assert saved["ds_config"]["train_batch_size"] == 2 * 4  # 2 processes x batch_size 4 x grad_accum 1
    resumed = launch("deepspeed_zero2_offload.yaml", token_folder, out, "max_steps=6", "cpu=false", env=DEEPSPEED_ENV)
    assert "at step 4" in resumed.stdout
    assert_clean(resumed)
    check_two_process_run(out, 6)  # steps, tokens, falling loss, the exported model loads tied


def test_deepspeed_config_file_whose_batch_size_disagrees_is_refused_before_training(token_folder, tmp_path):
    # The file leaves the micro-batch to the trainer ("auto") but fixes the global batch at 16, where the
    # training config gives batch_size 4 x grad_accum 1 x 2 processes = 8.
    ds_file = tmp_path / "ds.json"
    ds_file.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "train_batch_size": 16,
                                   "zero_optimization": {"stage": 2}}))
    config = tmp_path / "zero2_from_file.yaml"
    config.write_text(f"distributed_type: DEEPSPEED\ndeepspeed_config:\n  deepspeed_config_file: {ds_file}\n"
                      "  zero3_init_flag: false\nnum_machines: 1\nnum_processes: 2\n")
    out = tmp_path / "run"
    command = launch_command(str(config), token_folder, out, "cpu=false")
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, **DEEPSPEED_ENV},
                          timeout=300)
    assert done.returncode != 0
    expected = (f"narrator train: error: {ds_file}: train_batch_size=16, but the training config gives batch_size 4 "
                'x grad_accum 1 x 2 processes = 8; set it to "auto" or remove it')
    assert expected in done.stderr.splitlines(), done.stderr[-3000:]
    assert "model:" not in done.stdout and not out.joinpath("checkpoints").exists()
