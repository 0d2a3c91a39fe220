"""CI smoke: every benchmark's quick variant runs and yields a finite ratio.

Only that: the figures of a quick run on a shared CI machine mean nothing (the
full runs, `python -m bench all`, are for people; see docs/benchmarks.md).
"""

import math

import pytest

from bench.__main__ import NAMES, run_one
from bench.wan import cannot_run_reason


@pytest.mark.parametrize("name", list(NAMES))
def test_quick_variant_runs_and_reports_a_finite_ratio(name, monkeypatch):
    if name == "wan" and cannot_run_reason():
        pytest.skip(f"wan: {cannot_run_reason()}")
    if name == "pixels":  # a learning curve: half a minute shows the pipeline runs (its quick run is 3)
        monkeypatch.setattr("bench.pixels._minutes_override", 0.5)
    res = run_one(name, quick=True)
    assert not res.error, res.error
    assert res.rows, "no figures"
    assert math.isfinite(res.headline_ratio), [r.__dict__ for r in res.rows]
