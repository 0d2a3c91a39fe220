"""The manifest as snapshot + append-only log: one line per commit, compaction, torn tails, old manifests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

import cloud.buffer.storage as storage_mod
from cloud.buffer.manifest import LOG, MANIFEST
from cloud.buffer.storage import SegmentStore, read_manifest
from shared.errors import StorageError


def _table(robot: str, seq: int, n: int = 2) -> pa.Table:
    return pa.table({"robot_id": pa.array([robot] * n), "x": pa.array(range(n), pa.float32()),
                     "stream_seq": pa.array([seq] * n, pa.uint64())})


def _fill(st: SegmentStore, first: int, count: int, robot: str = "a") -> None:
    for seq in range(first, first + count):
        st.write_segment(_table(robot, seq), {robot: [seq, seq, 2]})


def test_a_commit_appends_one_line_and_leaves_the_snapshot_alone(tmp_path: Path) -> None:
    st = SegmentStore(tmp_path)
    snap = (tmp_path / MANIFEST).read_bytes()
    _fill(st, 1, 5)
    assert (tmp_path / MANIFEST).read_bytes() == snap  # not rewritten per commit
    assert len((tmp_path / LOG).read_bytes().splitlines()) == 5
    m = read_manifest(tmp_path)
    assert m is not None and m.hwm == {"a": 5} and m.rows == 10 and m.commits == 5
    st2 = SegmentStore(tmp_path)
    assert st2.manifest == st.manifest and st2.rows == 10


@pytest.mark.parametrize("tail", [b"0badc0de {\"n\": 6, \"op\"", b"\0\0\0\0\0\0", b"deadbeef {\"n\":6}\n"])
def test_a_torn_last_line_is_dropped_and_the_log_goes_on(tmp_path: Path, tail: bytes) -> None:
    st = SegmentStore(tmp_path)
    _fill(st, 1, 5)
    st.close()
    with open(tmp_path / LOG, "ab") as fh:
        fh.write(tail)  # a power cut mid-append
    st2 = SegmentStore(tmp_path)
    assert st2.manifest.hwm == {"a": 5} and st2.rows == 10
    assert st2.recovery_report["stray_removed"] == []
    _fill(st2, 6, 2)
    st3 = SegmentStore(tmp_path)
    assert st3.manifest.hwm == {"a": 7} and st3.rows == 14 and len(st3.manifest.segments) == 7


def test_damage_before_good_lines_is_an_error_naming_the_log(tmp_path: Path) -> None:
    st = SegmentStore(tmp_path)
    _fill(st, 1, 4)
    st.close()
    lines = (tmp_path / LOG).read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"a"', b'"b"')  # a bit flip: the crc no longer matches
    (tmp_path / LOG).write_bytes(b"".join(lines))
    before = sorted(p.name for p in (tmp_path / "segments").iterdir())
    with pytest.raises(StorageError, match="manifest.log is damaged at line 2"):
        SegmentStore(tmp_path)
    assert sorted(p.name for p in (tmp_path / "segments").iterdir()) == before  # nothing removed as a stray


def test_compaction_writes_a_snapshot_and_empties_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_mod, "COMPACT_MIN", 4)
    st = SegmentStore(tmp_path)
    _fill(st, 1, 9)  # a snapshot after 4 commits, then once the log holds as many as it has segments: after 8
    snap = json.loads((tmp_path / MANIFEST).read_bytes())
    assert snap["version"] == 2 and snap["commits"] == 8 and len(snap["segments"]) == 8
    assert len((tmp_path / LOG).read_bytes().splitlines()) == 1
    st2 = SegmentStore(tmp_path)
    assert st2.manifest == st.manifest and st2.manifest.hwm == {"a": 9} and st2.rows == 18


def test_a_crash_between_snapshot_and_emptying_the_log_replays_nothing_twice(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_mod, "COMPACT_MIN", 4)
    st = SegmentStore(tmp_path)
    _fill(st, 1, 3)
    shutil.copy(tmp_path / LOG, tmp_path / "log.copy")
    _fill(st, 4, 1)  # the 4th commit compacts
    full = (tmp_path / "log.copy").read_bytes()
    st.close()
    # as if killed after the snapshot was renamed, before the log was emptied: old lines still there
    (tmp_path / LOG).write_bytes(full + (tmp_path / LOG).read_bytes())
    st2 = SegmentStore(tmp_path)
    assert len(st2.manifest.segments) == 4 and st2.rows == 8 and st2.manifest.hwm == {"a": 4}
    _fill(st2, 5, 1)
    st3 = SegmentStore(tmp_path)
    assert [s.name for s in st3.manifest.segments] == [f"seg-{i:08d}.parquet" for i in range(1, 6)]


def test_a_log_from_another_snapshot_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_mod, "COMPACT_MIN", 4)
    st = SegmentStore(tmp_path)
    _fill(st, 1, 5)  # snapshot at 4, log holds commit 5
    st.close()
    snap = json.loads((tmp_path / MANIFEST).read_bytes())
    snap["commits"] = 2  # an older snapshot put back by hand: commits 3-4 are nowhere
    (tmp_path / MANIFEST).write_text(json.dumps(snap))
    with pytest.raises(StorageError, match="skips from commit"):
        SegmentStore(tmp_path)


def test_a_version_1_manifest_opens_and_is_rewritten_as_version_2(tmp_path: Path) -> None:
    (tmp_path / "segments").mkdir()
    storage_mod.SegmentStore(tmp_path).close()  # only to get a valid segment file written below
    (tmp_path / MANIFEST).unlink()
    (tmp_path / LOG).unlink()
    import pyarrow.parquet as pq

    pq.write_table(_table("a", 1), tmp_path / "segments" / "seg-00000001.parquet")
    old = {"version": 1, "run_id": "r0", "spec": None,  # as the previous build wrote it
           "segments": [{"name": "seg-00000001.parquet", "rows": 2, "robots": {"a": [1, 1, 2]}}],
           "hwm": {"a": 1}, "lost": [], "next_segment": 2, "extra": {"k": 1}, "robot_bytes": {"a": 100}}
    (tmp_path / MANIFEST).write_text(json.dumps(old, indent=1))
    st = SegmentStore(tmp_path)
    assert st.manifest.run_id == "r0" and st.rows == 2 and st.manifest.hwm == {"a": 1}
    assert json.loads((tmp_path / MANIFEST).read_bytes())["version"] == 2  # an older build refuses, never half-reads
    _fill(st, 2, 1)
    st.set_extra("k", 2)
    st2 = SegmentStore(tmp_path)
    assert st2.rows == 4 and st2.manifest.extra == {"k": 2} and st2.manifest.robot_bytes is not None
    assert st2.manifest.robot_bytes["a"] > 100


def test_spec_and_tags_are_log_records_too(tmp_path: Path) -> None:
    st = SegmentStore(tmp_path)
    st.set_spec({"x": 1})
    st.set_extra("sources", {"a": "sim"})
    st.write_segment(None, {"a": [1, 3, 0]}, [{"robot_id": "a", "first": 1, "last": 3, "reason": "bad disk"}])
    m = read_manifest(tmp_path)
    assert m is not None and m.spec == {"x": 1} and m.extra == {"sources": {"a": "sim"}}
    assert m.hwm == {"a": 3} and m.lost[0]["reason"] == "bad disk" and m.segments == []
