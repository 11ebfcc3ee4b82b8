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
