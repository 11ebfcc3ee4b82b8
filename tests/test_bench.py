"""`make bench` records its figures in RESULTS.md: a rerun on the same machine and day replaces that day's rows of
the figures it measured."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench import SECTION, Figure, record

RESULTS = """# Benchmark results

## Loader

| machine | date | tokens/s |
|---|---|---|
| cpu-2c | 2026-11-25 | 10.0 M |

## GPU

text after
"""


def figures(ratio: float) -> list[Figure]:
    return [Figure("trainer / bare loop (steps/s)", ratio, 0.95, f"{ratio:.3f}", "demo"),
            Figure("loader flat: tokens/s per process", 40.0, 5.0, "40.0 M", "in-process", unit=" M")]


def bench_rows(text: str) -> list[str]:
    section = text[text.index(SECTION):]
    section = section[:section.find("\n## ", 1) + 1 or None]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| machine")]


def test_a_rerun_replaces_its_figures_rows_of_the_day_and_keeps_every_other_line(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text(RESULTS)
    record(figures(0.91), "cpu-2c", "2026-11-26", results)
    first = results.read_text()
    assert first.startswith(RESULTS.rstrip("\n"))  # the other sections untouched, the new one appended
    assert bench_rows(first) == [
        "| cpu-2c | 2026-11-26 | trainer / bare loop (steps/s) | 0.910 | >= 0.95 | below target | demo |",
        "| cpu-2c | 2026-11-26 | loader flat: tokens/s per process | 40.0 M | >= 5 M | PASS | in-process |"]

    results.write_text(first + "\n## Later section\n\nkept\n")
    record(figures(0.97)[:1], "cpu-2c", "2026-11-26", results)  # same machine, day and figure: replaced
    record(figures(0.99), "h100", "2026-11-26", results)  # another machine: added
    text = results.read_text()
    assert [row.split(" | ")[:4] for row in bench_rows(text)] == [
        ["| cpu-2c", "2026-11-26", "loader flat: tokens/s per process", "40.0 M"],  # not remeasured: kept
        ["| cpu-2c", "2026-11-26", "trainer / bare loop (steps/s)", "0.970"],
        ["| h100", "2026-11-26", "trainer / bare loop (steps/s)", "0.990"],
        ["| h100", "2026-11-26", "loader flat: tokens/s per process", "40.0 M"]]
    assert text.endswith("\n## Later section\n\nkept\n") and "text after" in text
    assert text.count(SECTION) == 1 and text.count("| machine | date | figure |") == 1


def test_the_bound_on_two_actors_is_the_chunks_over_the_busiest_actors_share():
    from tokenize_speed import TokenizeSpeed

    def bound(chunks: int, batch: int, actors: int = 2) -> float:
        return TokenizeSpeed("", "", "", 0.0, chunks, 1.0, {}, {}, batch_size=batch).best_split(actors, batch)

    assert bound(17, 4) == 17 / 9  # calls 4, 4, 4, 4, 1: one actor gets 4 + 4 + 1
    assert bound(16, 4) == 2.0
    assert bound(9, 4) == 9 / 5  # 4, 4, 1
    assert bound(17, 1) == 17 / 9
    assert bound(3, 4) == 1.0  # one call: the second actor has nothing to do


def test_mfu_measures_a_variant_and_sorts_kernels_by_kind():
    import torch
    from mfu import Variant, kind_of, measure

    run = measure(Variant("tiny", block=32, batch=2, dropout=0.0, grad_accum=2), "tiny", steps=2, warmup=1,
                  device=torch.device("cpu"))
    assert run["tokens_per_s"] > 0 and run["tflops"] > 0 and run["mfu"] is None  # no peak known for a CPU
    assert kind_of("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26") == "attention"
    assert kind_of("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT") == "matmul"
    assert kind_of("triton_per_fused__to_copy_add_native_layer_norm_backward_view_7") == "fused elementwise / norm (Triton)"
    assert kind_of("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>") == "optimizer"


def test_the_short_item_cuts_the_long_recording_into_a_catalog_of_pieces_of_the_same_audio(tmp_path):
    import numpy as np
    import soundfile as sf
    from tokenize_speed import write_recordings

    from narrator.tokenizers.audio import probe
    from narrator.tokenizers.catalog import resolve_inputs
    from narrator.tokenizers.encodec import synthetic_speech

    audio = synthetic_speech(8.0, seed=1).astype(np.float32)
    for fmt in ("flac", "mp3"):
        long, catalog = write_recordings(audio, 24_000, 4, 2.0, tmp_path / fmt, fmt)
        books = resolve_inputs([str(catalog)])
        assert [b.id for b in books] == ["piece00000", "piece00001", "piece00002", "piece00003"]
        assert probe(long).duration_s == 8.0 and all(probe(b.source).duration_s == 2.0 for b in books)  # mp3: tagged, exact
        if fmt == "flac":
            whole = sf.read(str(long), dtype="float32")[0]
            assert np.array_equal(np.concatenate([sf.read(b.source, dtype="float32")[0] for b in books]), whole)
