"""Policy parts reassemble, resume, and refuse what does not fit."""

from __future__ import annotations

import hashlib
import os

import pytest

from edge_agent.policy_download import PolicyDownload
from shared.errors import WeightsError
from shared.protocol import Policy

BLOB = os.urandom(10_000)
SHA = hashlib.sha256(BLOB).hexdigest()


def parts(version: int = 1, size: int = 3000, blob: bytes = BLOB, start: int = 0):
    return [Policy(version, SHA, len(blob), o, blob[o : o + size]) for o in range(start, len(blob), size)]


def test_parts_reassemble_and_report_progress() -> None:
    d = PolicyDownload(1 << 20)
    ps = parts()
    assert d.add(ps[0]) is None and d.partial == (1, 3000)
    for p in ps[1:-1]:
        assert d.add(p) is None
    assert d.add(ps[-1]) == (1, SHA, BLOB)
    assert d.partial == (0, 0)


def test_a_cut_transfer_resumes_from_what_arrived() -> None:
    d = PolicyDownload(1 << 20)
    d.add(parts()[0])
    resumed = parts(start=d.partial[1])
    out = [d.add(p) for p in resumed]
    assert out[-1] == (1, SHA, BLOB)


def test_a_newer_version_replaces_a_partial_one_and_gaps_are_refused() -> None:
    d = PolicyDownload(1 << 20)
    d.add(parts()[0])
    other = os.urandom(500)
    sha2 = hashlib.sha256(other).hexdigest()
    assert d.add(Policy(2, sha2, 500, 0, other)) == (2, sha2, other)
    d.add(parts()[0])
    with pytest.raises(WeightsError, match="expected 3000"):
        d.add(parts()[2])
    with pytest.raises(WeightsError, match="nothing of it"):
        PolicyDownload(1 << 20).add(parts()[1])
    with pytest.raises(WeightsError) as e:
        PolicyDownload(100).add(parts()[0])
    assert e.value.code == "too_large"
