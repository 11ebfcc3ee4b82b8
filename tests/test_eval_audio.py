"""Audio at each evaluation: the trainer continues a fixed validation prompt, and training is none the different."""

import hashlib
from pathlib import Path

import numpy as np
import soundfile as sf
from safetensors.numpy import load_file

from narrator.cli import main as narrator
from narrator.trainer import run
from narrator.trainer.checkpoint import latest_checkpoint
from narrator.trainer.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "train" / "tiny.yaml"


def speech_tokens(tmp_path_factory, speech_wav) -> Path:
    """8 s of speech-like audio through `narrator tokenize` with random-init EnCodec (the folder keeps its weights
    file), made once per session: tests/test_report.py shares it. Needs the ray_local fixture."""
    root = tmp_path_factory.getbasetemp() / "speech-for-eval-audio"
    tokens = root / "tokens"
    if not (tokens / "manifest.json").is_file():
        root.mkdir(exist_ok=True)
        book = speech_wav(root / "book.wav", 8.0)
        assert narrator(["tokenize", "--config", str(REPO / "configs/tokenize/encodec_3kbps.yaml"), "--out", str(tokens),
                         str(book), "--set", "encodec.weights.mode=random", "--set", "chunking.chunk_seconds=4",
                         "--set", "ray.concurrency=1", "--set", "shards.target_mb=0.002"]) == 0
    return tokens


def train(tokens: Path, out: Path, *settings: str) -> int:
    argv = ["--config", str(TINY), "--set", f"data.manifest={tokens}", "--set", f"out={out}"]
    return run.main(argv + [x for s in settings for x in ("--set", s)])


def weights_digest(out: Path) -> dict[str, str]:
    weights = load_file(latest_checkpoint(out) / "model.safetensors")
    return {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in sorted(weights.items())}


def curve(out: Path, without: tuple[str, ...] = ()) -> list[dict]:
    """metrics.jsonl without its timing fields (and `without`)."""
    left_out = ("tokens_per_s", "tflops", "mfu", *without)
    return [{k: v for k, v in r.items() if k not in left_out} for r in read_metrics(out / "metrics.jsonl")]


def test_audio_at_evaluation_leaves_training_and_exact_resume_unchanged(tmp_path_factory, ray_local, speech_wav, tmp_path):
    tokens = speech_tokens(tmp_path_factory, speech_wav)
    # Dropout on: sampling must not draw from the RNG stream dropout uses (nor move the data). A constant schedule,
    # so a run of 6 steps resumed to 12 trains as one of 12.
    settings = ["model.dropout=0.1", "schedule.kind=constant", "max_steps=12", "eval_every=6", "checkpoint_every=6",
                "eval_audio_seconds=0.5"]
    heard, silent, resumed = tmp_path / "heard", tmp_path / "silent", tmp_path / "resumed"
    assert train(tokens, heard, *settings) == 0
    assert train(tokens, silent, *settings, "eval_audio_seconds=0") == 0
    assert train(tokens, resumed, *settings, "max_steps=6") == 0
    assert train(tokens, resumed, *settings) == 0  # resumed at step 6

    samples = {r["step"]: r["sample"] for r in read_metrics(heard / "metrics.jsonl") if "sample" in r}
    assert samples == {6: "samples/step_0000006.wav", 12: "samples/step_0000012.wav"}
    assert not [r for r in read_metrics(silent / "metrics.jsonl") if "sample" in r]
    assert not (silent / "samples").exists()
    assert weights_digest(heard) == weights_digest(silent) == weights_digest(resumed)
    assert curve(heard, without=("sample",)) == curve(silent)
    assert curve(resumed) == curve(heard)  # the `sample` field too: a path made from the step

    # The same prompt and seed every time: a resumed run's sample of a step is the uninterrupted run's, bit for bit.
    for step in (6, 12):
        assert (resumed / samples[step]).read_bytes() == (heard / samples[step]).read_bytes()
    audio = {step: sf.read(heard / path)[0] for step, path in samples.items()}
    prompt, rate = sf.read(heard / "samples" / "prompt.wav")
    assert rate == 24000 and len(prompt) == round(0.2 * rate)  # 5 whole 40 ms slots: a block of 64 holds 5 of 12 tokens
    for step, wav in audio.items():  # each starts with the prompt (re-synthesized with its continuation)
        assert len(wav) > len(prompt) and np.isfinite(wav).all() and np.abs(wav).max() > 0
    assert not np.array_equal(audio[6], audio[12])  # the model changed, nothing else did


def test_a_token_folder_without_codec_weights_trains_with_one_line_saying_there_is_no_audio(token_folder, tmp_path,
                                                                                             capsys):
    assert train(token_folder, tmp_path, "max_steps=2", "eval_every=2") == 0
    printed = capsys.readouterr()
    assert ("eval audio: none in this run: the codec cannot be loaded (stream 'acoustic' (config_hash test-tokens) "
            "records no EnCodec config to decode its codes with)\n") in printed.out
    assert "error" not in (printed.out + printed.err).lower()
    assert [r.get("sample") for r in read_metrics(tmp_path / "metrics.jsonl")] == [None, None]
