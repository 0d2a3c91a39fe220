"""Damaged data on disk is a FleetError that names the file, never a traceback.

A learner started on a data_dir whose buffer manifest or segments are damaged
must refuse to start with one line saying which file (exit 2), and must leave
the buffer exactly as it found it: nothing deleted as a "stray", nothing rewritten.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from cloud.buffer.storage import MANIFEST, Manifest, SegmentStore
from edge_agent.spool import SpoolCorrupt
from shared.errors import FleetError, StorageError

REPO = Path(__file__).resolve().parents[2]


def _run_toml(tmp: Path) -> Path:
    path = tmp / "run.toml"
    path.write_text(tomli_w.dumps({"data_dir": str(tmp / "run"), "server": {"port": 0},
                                   "metrics": {"port": 0}, "learner": {"learning_starts": 10**9}}))
    return path


def _serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cloud", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.parametrize("content", [b"{ not json", b'{"version": 99}', b'{"version": 1, "run_id": "x"}', b"[]"])
def test_serve_on_a_damaged_manifest_exits_2_with_one_line_naming_it(tmp_path: Path, content: bytes) -> None:
    buf = tmp_path / "run" / "buffer"
    (buf / "segments").mkdir(parents=True)
    manifest = buf / MANIFEST
    manifest.write_bytes(content)
    unknown = buf / "segments" / "seg-00000001.parquet"
    unknown.write_bytes(b"not named by any readable manifest")
    r = _serve(_run_toml(tmp_path))
    print(f"rc={r.returncode} stderr={r.stderr!r}")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr and "READY" not in r.stdout
    errors = [ln for ln in lines if ln.startswith("cloud-learner:")]
    assert len(errors) == 1 and str(manifest) in errors[0], lines
    assert manifest.read_bytes() == content  # left as it was
    assert unknown.exists()  # a segment is not deleted as a stray on the word of an unreadable manifest


def test_a_segment_the_manifest_names_but_cannot_be_read_is_a_storage_error(tmp_path: Path) -> None:
    root = tmp_path / "buffer"
    (root / "segments").mkdir(parents=True)
    m = Manifest(run_id="r", robot_bytes={})
    from cloud.buffer.storage import SegmentInfo

    m.segments.append(SegmentInfo("seg-00000001.parquet", 5, {"r1": [1, 1, 5]}))
    (root / MANIFEST).write_bytes(m.to_json())
    with pytest.raises(StorageError, match="seg-00000001.parquet"):
        SegmentStore(root)  # missing
    (root / "segments" / "seg-00000001.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(StorageError, match="seg-00000001.parquet.*cannot be read"):
        SegmentStore(root)  # footer damaged


def test_storage_errors_are_fleet_errors_with_stable_codes() -> None:
    assert issubclass(SpoolCorrupt, StorageError) and issubclass(StorageError, FleetError)
    assert SpoolCorrupt("x").code == "spool_corrupt"
    assert StorageError("x").code == "storage_corrupt"
