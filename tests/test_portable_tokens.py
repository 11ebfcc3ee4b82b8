"""Tokens made in one process resume and decode in another with other thread settings, because random
codec weights are built once and kept with the tokens; short recordings are tokenized; a clean run is quiet."""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

from narrator.tokenizers.encodec import random_weights_name
from narrator.tokenfolder.manifest import Manifest

REPO = Path(__file__).resolve().parents[1]
ERROR_LOOKING = re.compile(r"error|traceback|exception|warn|core_worker|\] E |^E\d{4}", re.IGNORECASE)
EXPECTED_NOTICE = "EnCodec weights: RANDOM init"  # the warning random mode always prints, by design

# Process B: other thread settings, and a rebuild of the random weights fails the run.
OTHER_PROCESS = """
import sys
import torch
torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)
import narrator.tokenizers.encodec as encodec
def rebuild(seed):
    raise SystemExit("the random weights were rebuilt instead of loaded")
encodec._random_model = rebuild
from narrator.cli import main
from narrator.tokenfolder.manifest import Manifest
status = main(sys.argv[2:])
tokenizer = encodec.load_tokenizer(Manifest.load(sys.argv[1]).stream("acoustic"), weights_dirs=[sys.argv[1]])
print("threads", torch.get_num_threads(), "sha256", tokenizer.weights_identity().sha256)
sys.exit(status)
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def error_looking(output: str) -> list[str]:
    lines = output.replace("\r", "\n").splitlines()
    return [line for line in lines if ERROR_LOOKING.search(line) and EXPECTED_NOTICE not in line]


def test_tokens_resume_and_decode_in_a_process_with_other_thread_settings(tmp_path, speech_wav):
    utterance = speech_wav(tmp_path / "84-121123-0000.flac", 5.0, seed=1, sample_rate=16_000)  # LibriSpeech-like
    clip = speech_wav(tmp_path / "p225_001.wav", 20.0, seed=2, sample_rate=48_000)  # VCTK-like
    later = speech_wav(tmp_path / "84-121123-0001.flac", 3.0, seed=3, sample_rate=16_000)
    out = tmp_path / "tokens"
    tokenize = ["tokenize", "--config", str(REPO / "configs/tokenize/encodec_3kbps.yaml"), "--out", str(out),
                "--set", "encodec.weights.mode=random"]  # 2 actors
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    first = subprocess.run([sys.executable, "-m", "narrator.cli", *tokenize, str(utterance), str(clip)],
                           env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert error_looking(first.stdout + first.stderr) == []  # no Ray core_worker line, no warnings
    m = Manifest.load(out)
    assert [(b.id, b.duration_s, b.chunks) for b in m.iter_books(out)] == [("84-121123-0000", 5.0, 1), ("p225_001", 20.0, 1)]
    weights = out / random_weights_name(0)
    acoustic = m.stream("acoustic")
    assert acoustic.weights.file == weights.name
    made = (sha256(weights), acoustic.weights.sha256, [(f.path, f.sha256) for s in m.shards for f in s.files.values()])

    second = subprocess.run([sys.executable, "-c", OTHER_PROCESS, str(out), *tokenize, str(utterance), str(clip), str(later)],
                            env={**os.environ, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert error_looking(second.stdout + second.stderr) == []  # one chunk for two actors: no Ray warning either
    assert f"threads 2 sha256 {made[1]}" in second.stdout
    m = Manifest.load(out)
    assert (sha256(weights), m.stream("acoustic").weights.sha256) == made[:2]
    assert [(f.path, f.sha256) for s in m.shards for f in s.files.values()][: len(made[2])] == made[2]  # finished shards untouched
    assert [b.id for b in m.iter_books(out)] == ["84-121123-0000", "p225_001", "84-121123-0001"]
