"""`narrator report RUN`: one self-contained report.html whose every image and audio player decodes."""

import base64
import io
import json
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from matplotlib.image import imread
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from narrator.cli import main as narrator
from narrator.trainer.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from test_eval_audio import speech_tokens, train  # noqa: E402


class Page(HTMLParser):
    """The parts of report.html a test checks: images, audio sources (with their table row's first cell), text."""

    def __init__(self, text: str):
        super().__init__()
        self.images: list[str] = []
        self.audio: list[tuple[str, str]] = []  # (row label, src)
        self.other_sources: list[str] = []  # any src or href outside those: a fetch the page would make
        self.text: list[str] = []
        self._row: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr":
            self._row = []
        elif tag == "td" and self._row is not None:
            self._row.append("")
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag in ("source", "audio") and attrs.get("src"):
            self.audio.append((self._row[0] if self._row else "", attrs["src"]))
        elif tag in ("script", "link", "iframe") or (attrs.get("src") or attrs.get("href")):
            self.other_sources.append(f"<{tag} {attrs}>")

    def handle_data(self, data):
        self.text.append(data)
        if self._row:
            self._row[-1] += data.strip()


def data_uri(src: str, kind: str) -> bytes:
    prefix = f"data:{kind};base64,"
    assert src.startswith(prefix), src[:60]
    return base64.b64decode(src[len(prefix):], validate=True)


@pytest.fixture(scope="module")
def heard_run(tmp_path_factory, ray_local, speech_wav) -> Path:
    """The tiny config (20 steps, evaluated at 10 and 20) with 1 s of audio at each evaluation, on real tokens."""
    out = tmp_path_factory.mktemp("heard") / "run"
    assert train(speech_tokens(tmp_path_factory, speech_wav), out, "eval_audio_seconds=1") == 0
    return out


def test_the_report_holds_curves_config_weights_and_a_player_for_the_prompt_and_each_sample(heard_run):
    assert narrator(["report", str(heard_run)]) == 0
    page = Page((heard_run / "report.html").read_text())
    assert not page.other_sources  # self-contained: nothing fetched

    assert len(page.images) >= 4  # loss, per codebook, lr, tokens/s
    for src in page.images:
        png = data_uri(src, "image/png")
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        pixels = imread(io.BytesIO(png))
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100

    records = read_metrics(heard_run / "metrics.jsonl")
    logged = [r["step"] for r in records if "sample" in r]
    assert logged == [10, 20]
    assert [label for label, _ in page.audio] == ["prompt"] + [f"step {s}" for s in logged]
    for label, src in page.audio:
        audio, rate = sf.read(io.BytesIO(data_uri(src, "audio/wav")))
        assert rate == 24000 and len(audio) > 0 and np.isfinite(audio).all(), label
    prompt = data_uri(page.audio[0][1], "audio/wav")
    assert prompt == (heard_run / "samples" / "prompt.wav").read_bytes()

    text = " ".join(page.text)
    assert "eval_audio_seconds: 1.0" in text and "preset: tiny" in text  # the resolved config
    streams = json.loads((heard_run / "streams.json").read_text())
    assert streams[0]["weights"]["sha256"] in text and streams[0]["config_hash"] in text
    assert "codebook usage" in text and "no evaluation yet" not in text

    # TensorBoard holds the prompt and one continuation per evaluation, each playable.
    events = EventAccumulator(str(heard_run / "tensorboard"), size_guidance={"audio": 0})
    events.Reload()
    assert {"eval_audio/prompt", "eval_audio/continuation"} <= set(events.Tags()["audio"])
    continuations = events.Audio("eval_audio/continuation")
    assert [a.step for a in continuations] == logged
    for event in continuations:
        audio, rate = sf.read(io.BytesIO(event.encoded_audio_string))
        assert rate == event.sample_rate == 24000 and len(audio) > 0


def test_a_run_without_eval_audio_logs_none_and_its_report_says_so(tmp_path_factory, ray_local, speech_wav, tmp_path):
    out = tmp_path / "run"
    assert train(speech_tokens(tmp_path_factory, speech_wav), out, "eval_audio_seconds=0", "max_steps=10") == 0
    assert not (out / "samples").exists()
    assert not [r for r in read_metrics(out / "metrics.jsonl") if "sample" in r]
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"audio": 0})
    events.Reload()
    assert events.Tags()["audio"] == []

    assert narrator(["report", str(out)]) == 0
    page = Page((out / "report.html").read_text())
    assert page.audio == [] and page.images
    assert "no audio: this run was trained with eval_audio_seconds: 0" in " ".join(page.text)


def test_a_folder_that_is_not_a_run_is_one_error_line(tmp_path, capsys):
    assert narrator(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == (f"narrator report: error: {tmp_path}: not a training run folder (no config.yaml; `narrator train` "
                   "writes it there with metrics.jsonl and checkpoints/)\n")


def test_a_sample_path_outside_the_run_folder_is_not_embedded(tmp_path):
    """metrics.jsonl may come from someone else: the page must not carry another file of this machine."""
    run, secret = tmp_path / "run", tmp_path / "secret.wav"
    sf.write(secret, np.zeros(2400, np.float32), 24000)
    (run / "samples").mkdir(parents=True)
    sf.write(run / "samples" / "prompt.wav", np.zeros(2400, np.float32), 24000)
    (run / "config.yaml").write_text("eval_audio_seconds: 1.0\n")
    records = [{"step": 1, "train_loss": 2.0, "lr": 0.1, "tokens_per_s": 10.0, "val_loss": 2.5,
                "sample": "../secret.wav"},
               {"step": 2, "train_loss": 1.5, "lr": 0.1, "tokens_per_s": 10.0, "val_loss": 2.0, "sample": str(secret)}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert narrator(["report", str(run)]) == 0
    page = Page((run / "report.html").read_text())
    assert [label for label, _ in page.audio] == ["prompt"]
    text = " ".join(page.text)
    assert "../secret.wav: not embedded (a '..' path;" in text and f"{secret}: not embedded (an absolute path;" in text
    assert "the config names no token folder" in text and f"{run / 'streams.json'}: missing" in text
