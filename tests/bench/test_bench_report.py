"""docs/benchmarks.md from results files: a benchmark run on this machine replaces its own section, and the
sections of benchmarks whose results are not here (a clone holds none: results are git-ignored) stay as the
page has them instead of becoming "not run yet"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import common as C
from bench import report


def _result(results: Path, name: str, value: float) -> None:
    res = C.Result(name, False)
    res.add("case", "metric", value, "s", 2.0, value / 2.0, "<= 1x", value <= 2.0)
    res.notes.append(f"{name} note")
    d = {"quick": False, "rows": [r.__dict__ for r in res.rows], "notes": res.notes, "seconds": 3.0, "error": None,
         "when": "2026-12-01T00:00:00+00:00",
         "machine": {"cpus": 2, "cpu_model": "test", "mem_mb": 1, "kernel": "k"}, "versions": {"python": "3"}}
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(d))


@pytest.fixture
def page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(C, "ROOT", tmp_path)
    monkeypatch.setattr(C, "RESULTS", tmp_path / "bench" / "results")
    (tmp_path / "docs").mkdir()
    return tmp_path / "docs" / "benchmarks.md"


def test_one_benchmark_run_keeps_the_others_sections(page: Path) -> None:
    _result(C.RESULTS, "ingest", 1.0)
    _result(C.RESULTS, "weights", 1.5)
    report.write_docs()
    first = page.read_text()
    assert "ingest note" in first and "weights note" in first
    (C.RESULTS / "weights.json").unlink()  # as on another machine, where only ingest ran
    _result(C.RESULTS, "ingest", 4.0)
    report.write_docs()
    now = page.read_text()
    sections = report.documented_sections(now)
    assert sections["weights"] == report.documented_sections(first)["weights"]  # kept word for word
    assert "| 4.00 |" in sections["ingest"] and "| 1.00 |" not in sections["ingest"]  # replaced by the new run
    assert sections["compress"].strip() == "### compress\n\nnot run yet"  # never documented: says so
    assert "Machine (ingest):" in now  # the machine line names what it describes
    assert now.count("### weights\n") == 1 and now.count("## Where the time goes") == 1
