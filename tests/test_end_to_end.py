"""Synthesized speech -> tokens (2 Ray actors) -> shards -> training, killed and resumed -> a wav."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf

from narrator.cli import main as narrator
from narrator.tokenfolder.manifest import Manifest
from narrator.trainer.generate import BOUNDARY_SILENCE_S

REPO = Path(__file__).resolve().parents[1]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"trainer exited ({proc.returncode}) before writing {path}"
        assert time.time() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


def test_book_to_tokens_to_model_to_wav(tmp_path, ray_local, capsys):
    book, tokens, train, sample = tmp_path / "book.wav", tmp_path / "tokens", tmp_path / "train", tmp_path / "sample.wav"
    assert narrator(["sample-book", str(book), "--minutes", "0.4"]) == 0

    assert narrator(["tokenize", "--config", str(REPO / "configs/tokenize/encodec_3kbps.yaml"), "--out", str(tokens),
                     str(book), "--set", "encodec.weights.mode=random", "--set", "chunking.chunk_seconds=4",
                     "--set", "ray.concurrency=2", "--set", "shards.target_mb=0.01"]) == 0  # 2 chunks of 4 s a shard
    manifest = Manifest.load(tokens)
    assert [b.chunks for b in manifest.iter_books(tokens)] == [6]
    assert len(manifest.shards) == 3 and manifest.total_tokens == 24 * 75 * 4
    weights = manifest.stream("acoustic").weights
    assert (weights.mode, weights.file) == ("random", "encodec_random_seed0.safetensors")

    # Train in a separate process, kill it hard after its first checkpoint, then resume.
    command = [sys.executable, str(REPO / "trainer/run.py"), "--config", str(REPO / "configs/train/tiny.yaml"),
               "--set", f"data.manifest={tokens}", "--set", f"out={train}", "--set", "checkpoint_every=10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command + ["--set", "max_steps=400"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for(train / "checkpoints" / "step_0000010" / "trainer_state.json", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    resumed = subprocess.run(command + ["--set", "max_steps=40"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from" in resumed.stdout
    assert (train / "checkpoints" / "step_0000040").is_dir()

    records = [json.loads(line) for line in (train / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)) and steps[-1] == 40
    losses = [r["train_loss"] for r in records]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert (train / "train_loss.png").stat().st_size > 0 and (train / "val_loss.png").stat().st_size > 0

    # The codec's random weights travel with each checkpoint: generate needs neither the token folder nor a rebuild.
    checkpoint = train / "checkpoints" / "step_0000040"
    assert (checkpoint / weights.file).is_file()
    (tokens / weights.file).rename(tmp_path / weights.file)
    assert narrator(["generate", "--checkpoint", str(train), "--prompt", str(book), "--prompt-seconds", "1",
                     "--seconds", "1", "--out", str(sample)]) == 0
    printed = capsys.readouterr().out
    boundaries = int(printed.split("the model sampled ")[1].split()[0]) if "the model sampled" in printed else 0
    audio, rate = sf.read(sample)
    expected = 2.0 + boundaries * (BOUNDARY_SILENCE_S - 1 / 75)  # a sampled boundary frame becomes a pause
    assert rate == 24000 and abs(len(audio) / rate - expected) < 0.05
    assert (tmp_path / "sample.yaml").is_file()
