"""`narrator report RUN`: one self-contained RUN/report.html to look at and listen to a training run.

Everything is inside the one file (plots as PNG data URIs, audio as WAV data URIs, no scripts, nothing
fetched), so it opens anywhere without the run folder. It is drawn from what the run wrote:
metrics.jsonl (curves, samples), config.yaml, streams.json (tokenizer and weights identity), samples/
(audio) and the token folder the config names (token statistics, via `narrator inspect`'s summary).
A piece that is missing (no evaluation yet, no audio logged) is a note on the page, not a failure.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure

from narrator.errors import NarratorError
from narrator.evaluation.scores import PairScore
from narrator.tokenfolder import storage
from narrator.tokenizers.inspect import inspect_tokens
from narrator.trainer.checkpoint import STREAMS_NAME, latest_checkpoint, list_checkpoints
from narrator.trainer.eval_audio import PROMPT_NAME, SAMPLES
from narrator.trainer.evaluate import RESULTS, verdict
from narrator.trainer.metrics import METRICS_NAME, read_metrics

REPORT_NAME = "report.html"
# Fields of metrics.jsonl drawn in their own sections; every other numeric field (mfu, tflops, ...) gets a plot.
KNOWN_FIELDS = {"step", "train_loss", "val_loss", "lr", "tokens_per_s"}


def write_report(run: str | Path, max_audio: int = 24) -> Path:
    """Write RUN/report.html (atomically) and return its path; at most `max_audio` continuations get a player."""
    run = Path(run)
    if max_audio < 1:
        raise NarratorError(f"--max-audio {max_audio}: give at least 1 (the last sample always gets a player)")
    config_file = run / "config.yaml"
    if not config_file.is_file():
        raise NarratorError(f"{run}: not a training run folder (no config.yaml; `narrator train` writes it there "
                            "with metrics.jsonl and checkpoints/)")
    config_text = config_file.read_text()
    try:
        config = yaml.safe_load(config_text) or {}
    except yaml.YAMLError as e:
        raise NarratorError(f"{config_file}: not YAML ({str(e).splitlines()[0]})") from None
    try:
        records = read_metrics(run / METRICS_NAME)
    except (json.JSONDecodeError, KeyError) as e:
        raise NarratorError(f"{run / METRICS_NAME}: unreadable ({e})") from None
    sections = [
        ("Summary", _summary(run, records)),
        ("Curves", _curves(records)),
        ("Evaluation", _evaluation(run, records)),
        ("Audio", _audio(run, records, config, max_audio)),
        ("Tokenizer and weights", _identity(run)),
        ("Token statistics", _token_stats(config)),
        ("Epoch coverage", _coverage(records)),
        ("Config", f"<p>{_e(config_file)}</p><pre>{_e(config_text)}</pre>"),
    ]
    body = "\n".join(f'<section id="{_e(title.lower().replace(" ", "-"))}"><h2>{_e(title)}</h2>\n{content}</section>'
                     for title, content in sections)
    page = PAGE.format(title=_e(f"training run {run.resolve()}"), body=body)
    out = run / REPORT_NAME
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 70em; margin: 1em auto; padding: 0 1em; color: #222; }}
h2 {{ border-bottom: 1px solid #ccc; margin-top: 1.5em; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }}
td, th {{ border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }}
figure {{ display: inline-block; margin: 0.5em; }}
pre {{ background: #f6f6f6; padding: 0.5em; overflow-x: auto; }}
.note {{ color: #666; font-style: italic; }}
code {{ word-break: break-all; }}
</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _summary(run: Path, records: list[dict]) -> str:
    checkpoints = list_checkpoints(run)
    rows = [["checkpoints", ", ".join(p.name for p in checkpoints) or "none"]]
    if not records:
        return _table(["", ""], rows) + _note(f"no metrics logged yet ({run / METRICS_NAME} is missing or empty)")
    last = records[-1]
    rows.insert(0, ["steps logged", f"{len(records)}, the last at step {last['step']}"])
    rows.insert(1, ["train loss", f"{last['train_loss']:.4f} at step {last['step']}"])
    val = [r for r in records if r.get("val_loss") is not None]
    if val:
        best = min(val, key=lambda r: r["val_loss"])
        last_val = f"{val[-1]['val_loss']:.4f} at step {val[-1]['step']}"
        rows.insert(2, ["val loss", f"{last_val} (best {best['val_loss']:.4f} at step {best['step']})"])
    return _table(["", ""], rows)


# --- curves -------------------------------------------------------------------------------------------------------

Series = dict[str, list[tuple[int, float]]]


def _points(records: list[dict], value: Callable[[dict], Any]) -> list[tuple[int, float]]:
    points = []
    for r in records:
        v = value(r)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            points.append((r["step"], float(v)))
    return points


def _keyed(records: list[dict], field: str) -> Series:
    """{key: points} of a field holding a dict per record (val_loss_per_stream) or a list (val_loss_per_codebook)."""
    series: Series = {}
    for r in records:
        value = r.get(field)
        items = value.items() if isinstance(value, dict) else enumerate(value or [])
        for key, v in items:
            if isinstance(v, (int, float)) and math.isfinite(v):
                series.setdefault(str(key) if isinstance(value, dict) else f"codebook {key}", []).append((r["step"], v))
    return series


def _curves(records: list[dict]) -> str:
    if not records:
        return _note("no metrics logged yet")
    figures = [_plot("loss", {"train": _points(records, lambda r: r.get("train_loss")),
                              "val": _points(records, lambda r: r.get("val_loss"))})]
    if not any(r.get("val_loss") is not None for r in records):
        figures.append(_note("no evaluation yet: the validation curves appear after the first eval_every steps"))
    per_stream = _keyed(records, "val_loss_per_stream")
    if len(per_stream) > 1:
        figures.append(_plot("val loss per stream", per_stream))
    per_codebook = _keyed(records, "val_loss_per_codebook") or _keyed(records, "val_loss_per_group")
    if len(per_codebook) > 1:
        figures.append(_plot("val loss per codebook", per_codebook))
    figures.append(_plot("learning rate", {"lr": _points(records, lambda r: r.get("lr"))}))
    figures.append(_plot("tokens/s", {"tokens/s": _points(records, lambda r: r.get("tokens_per_s"))}))
    others = sorted({k for r in records for k, v in r.items()
                     if k not in KNOWN_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool)})
    for key in others:  # mfu, tflops and whatever the trainer records next
        figures.append(_plot(key, {key: _points(records, lambda r, key=key: r.get(key))}))
    return "\n".join(figures)


def _plot(title: str, series: Series) -> str:
    """A line plot of each non-empty series as an inline PNG <figure>."""
    series = {name: points for name, points in series.items() if points}
    if not series:
        return _note(f"{title}: no values")
    fig = Figure(figsize=(5.5, 3.4), dpi=100)  # the Agg canvas, without pyplot's global state
    ax = fig.add_subplot()
    for name, points in series.items():
        steps, values = zip(*points)
        ax.plot(steps, values, marker="." if len(points) < 50 else None, linewidth=1.2, label=name)
    if len(series) > 1:
        ax.legend(fontsize="x-small", ncol=2)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    image = f'<img src="data:image/png;base64,{data}" alt="{_e(title)}">'
    return f"<figure>{image}<figcaption>{_e(title)}</figcaption></figure>"


# --- evaluation ---------------------------------------------------------------------------------------------------

def _evaluation(run: Path, records: list[dict]) -> str:
    """`narrator eval`'s results (RUN/eval/step_N.json), newest first, and a pointer to eval_suite's curves."""
    parts = []
    if any(r.get("bits_per_second") is not None or r.get("lexical_accuracy") is not None for r in records):
        parts.append(_note("eval_suite's figures at each evaluation (bits_per_second, lexical_accuracy, "
                           "syntactic_accuracy) are drawn under Curves"))
    files = sorted((run / RESULTS).glob("step_*.json"), reverse=True)
    if not files:
        parts.append(_note(f"no `narrator eval` results yet (`narrator eval --checkpoint {run}` writes "
                           f"{run / RESULTS}/step_N.json)"))
    for path in files:
        try:
            result = json.loads(path.read_text())
            parts.append(_eval_result(path, result))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            parts.append(_note(f"{path}: unreadable ({e})"))
    return "\n".join(parts)


def _eval_result(path: Path, r: dict) -> str:
    out = [f"<h3>step {_e(r['step'])} ({_e(path.name)}, layout {_e(r.get('layout'))})</h3>"]
    if r.get("random_weights"):
        out.append(_note(r["random_weights"]))
    if r.get("bits_per_second") is not None:
        unigram = r.get("unigram_bits_per_second_per_stream") or {}
        rows = [[name, f"{v:.1f}", f"{unigram.get(name, float('nan')):.1f}",
                 f"{(r.get('nats_per_token_per_stream') or {}).get(name, float('nan')):.3f}"]
                for name, v in r["bits_per_second_per_stream"].items()]
        rows.append(["total", f"{r['bits_per_second']:.1f}", f"{r.get('unigram_bits_per_second', float('nan')):.1f}", ""])
        if r.get("dedup_unigram_bits_per_second") is not None:
            rows.append(["semantic, repeats collapsed", "", f"{r['dedup_unigram_bits_per_second']:.1f}", ""])
        out.append(f"<p>bits per second of audio on the validation split ({_e(r.get('val_seconds'))} s, "
                   f"{_e(r.get('val_windows'))} windows); the unigram is each codebook's own id frequencies there</p>")
        out.append(_table(["stream", "model bits/s", "unigram bits/s", "nats/token"], rows))
    rows = []
    for suite in ("lexical", "syntactic"):
        if suite in r:
            s = r[suite]
            score = PairScore(s["accuracy"], s["n"], tuple(s["ci95"]), s["length_baseline"])
            rows.append([suite, f"{score.accuracy:.3f}", f"{score.ci95[0]:.3f}-{score.ci95[1]:.3f}", score.n,
                         f"{score.length_baseline:.3f}", verdict(score), s["items"]["sha256"][:16]])
    if rows:
        out.append("<p>spoken minimal pairs: the share where the real item's summed log-likelihood beats the fake's; "
                   "length-only: the share a model would get from 'the shorter side wins'</p>")
        out.append(_table(["suite", "accuracy", "95% interval", "n", "length-only", "verdict", "items sha256"], rows))
    for suite, why in (r.get("skipped") or {}).items():
        out.append(_note(f"{suite}: skipped: {why}"))
    return "\n".join(out)


# --- audio --------------------------------------------------------------------------------------------------------

def _player(run: Path, rel: str) -> str:
    """An inline player of the wav at `rel` in the run folder; a metrics.jsonl from elsewhere must not make the page
    carry some other file of this machine."""
    outside = storage.escape(run, rel)
    if outside is not None or not rel.endswith(".wav"):
        return _note(f"{rel}: not embedded ({outside or 'not a .wav file'}; the report plays only wav files inside "
                     f"{run})")
    path = run / rel
    if not path.is_file():
        return _note(f"{path}: missing")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<audio controls preload="none"><source src="data:audio/wav;base64,{data}" type="audio/wav"></audio>'


def _audio(run: Path, records: list[dict], config: dict, max_audio: int) -> str:
    samples = [r for r in records if r.get("sample")]
    if not samples:
        if config.get("eval_audio_seconds") == 0:
            return _note("no audio: this run was trained with eval_audio_seconds: 0")
        return _note("no audio logged yet (the training log's 'eval audio' line says why a run logs none)")
    shown = samples
    parts = []
    if len(samples) > max_audio:  # evenly spaced, the last one always
        shown = [samples[round(i * (len(samples) - 1) / (max_audio - 1))] for i in range(max_audio)] if max_audio > 1 \
            else samples[-1:]
        parts.append(_note(f"{len(shown)} of {len(samples)} samples shown, evenly spaced; all are in {run / SAMPLES}"))
    prompt = _player(run, f"{SAMPLES}/{PROMPT_NAME}")
    rows = [f"<tr><td>prompt</td><td></td><td>{prompt}</td></tr>"]
    for r in shown:
        val = f"{r['val_loss']:.4f}" if isinstance(r.get("val_loss"), (int, float)) else ""
        player = _player(run, str(r["sample"]))
        rows.append(f"<tr><td>step {_e(r['step'])}</td><td>{_e(val)}</td><td>{player}</td></tr>")
    parts.insert(0, _note(f"each sample continues the prompt (the start of the first validation window) with the "
                          f"same seed ({config.get('eval_audio_seconds', '?')} s, temperature "
                          f"{config.get('eval_audio_temperature', '?')}, top_k {config.get('eval_audio_top_k', '?')}), "
                          "so successive samples differ only by the model"))
    return "\n".join(parts) + "<table><tr><th>audio</th><th>val loss</th><th></th></tr>" + "".join(rows) + "</table>"


# --- tokens -------------------------------------------------------------------------------------------------------

def _identity(run: Path) -> str:
    """The streams trained on: how their tokens were made, and exactly which weights made them."""
    path = run / STREAMS_NAME
    if not path.is_file():
        latest = latest_checkpoint(run)
        path = latest / STREAMS_NAME if latest is not None else path
    if not path.is_file():
        return _note(f"{path}: missing (training writes it when it starts)")
    try:
        streams = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return _note(f"{path}: unreadable ({e})")
    rows = []
    for s in streams:
        weights = s.get("weights") or {}
        shape = f"{s.get('n_codebooks')} x {s.get('codebook_size')} ids at {s.get('frame_rate')} Hz"
        kmeans = (s.get("kmeans") or {}).get("sha256", "")
        rows.append([s.get("name"), s.get("kind"), shape, s.get("config_hash"), weights.get("mode"),
                     weights.get("source"), weights.get("sha256"), kmeans])
    return f"<p>{_e(path)}</p>" + _table(["stream", "kind", "tokens", "config hash", "weights", "source",
                                          "weights sha256", "k-means sha256"], rows)


def _token_stats(config: dict) -> str:
    data = config.get("data") or {}
    folders = [m["manifest"] for m in data.get("mix") or [] if isinstance(m, dict) and m.get("manifest")]
    folders = folders or ([data["manifest"]] if data.get("manifest") else [])
    if not folders:
        return _note("the config names no token folder")
    parts = []
    for folder in folders:
        try:
            summary = json.loads(inspect_tokens(folder, as_json=True))
        except (NarratorError, OSError) as e:
            parts.append(_note(f"{folder}: not readable from here ({e}); the identity above is what streams.json "
                               "recorded"))
            continue
        rows = []
        for s in summary["streams"]:
            stats = s.get("stats") or {}
            usage = ", ".join(f"{u:.0%}" for u in stats.get("usage", []))
            entropy = ", ".join(f"{b:.2f}" for b in stats.get("entropy_bits", []))
            rows.append([s["name"], f"{s['tokens']:,}", f"{s['tokens_per_hour']:,.0f}", usage,
                         f"{entropy} of {stats.get('max_entropy_bits', 0):.0f}", stats.get("shards_read", 0)])
        parts.append(f"<p>{_e(summary['folder'])}: {summary['books']} books, {summary['hours']:.3f} h, "
                     f"{summary['shards']} shards, {summary['tokens']:,} tokens</p>"
                     + _table(["stream", "tokens", "tokens/hour", "codebook usage", "entropy (bits, per codebook)",
                               "shards read"], rows))
    return "\n".join(parts)


def _coverage(records: list[dict]) -> str:
    reports = [(r["step"], c) for r in records for c in r.get("epoch_coverage") or []]
    if not reports:
        return _note("no epoch finished yet")
    mix = any("source" in c for _, c in reports)  # a data.mix counts each token folder's epochs
    rows = [[step, *([c.get("source", "")] if mix else []), c.get("epoch"), f"{c.get('tokens', 0):,}",
             f"{c.get('covered', 0):,}", f"{c.get('share', 0):.2%}"] for step, c in reports]
    header = ["step", *(["token folder"] if mix else []), "epoch", "training tokens", "in a window", "share"]
    return _note("the share of each epoch's training tokens that landed in a training window") + _table(header, rows)
