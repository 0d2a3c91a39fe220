"""Cumulative acks: the acked mark is exact in memory, written to disk now and then, and never ahead of
what the files still hold (real files, real fsync, a real SIGKILLed process)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

import edge_agent.spool as spool_mod
from edge_agent.spool import Spool

ROOT = Path(__file__).resolve().parents[2]


def _fill(sp: Spool, n: int) -> None:
    for _ in range(n):
        body = f"chunk-{sp.last_seq + 1:06d}".encode() * 20
        sp.append("ep", 1, len(body), zlib.crc32(body), body)


def test_many_acks_write_the_state_file_once_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_mod, "ACK_PERSIST_S", 1e9)  # count-based only: no dependence on the clock
    sp = Spool(tmp_path, segment_bytes=4096)
    _fill(sp, 1000)
    gen = sp._state.generation
    for seq in range(1, 1001):
        sp.ack(seq)
        assert sp.acked_seq == seq and sp.pending() == 1000 - seq  # exact in memory at once
    assert sp._state.generation - gen == 1000 // spool_mod.ACK_PERSIST_EVERY
    sp.close()


def test_close_writes_the_latest_mark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_mod, "ACK_PERSIST_S", 1e9)
    sp = Spool(tmp_path)
    _fill(sp, 30)
    for seq in range(1, 18):
        sp.ack(seq)
    assert Spool(tmp_path).acked_seq < 17  # another reader of the files: not written yet
    sp.close()
    again = Spool(tmp_path)
    assert again.acked_seq == 17 and again.pending() == 13 and again.read(18).seq == 18


def test_files_are_deleted_only_up_to_the_mark_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_mod, "ACK_PERSIST_S", 1e9)
    sp = Spool(tmp_path, segment_bytes=1024)  # a few records per file
    _fill(sp, 40)
    files = sorted(tmp_path.glob("*.seg"))
    sp.ack(39)
    assert sorted(tmp_path.glob("*.seg")) == files and sp.pending() == 1  # not on disk yet: files kept
    sp.sync_acks()
    assert len(list(tmp_path.glob("*.seg"))) == 1 and len(files) > 1
    sp.ack(40)
    assert sp._state.read()["acked"] == 39 and sp.pending() == 0
    sp.sync_acks()
    assert sp._state.read()["acked"] == 40 and not list(tmp_path.glob("*.seg"))


def test_adopting_the_clouds_mark_writes_it_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_mod, "ACK_PERSIST_S", 1e9)
    sp = Spool(tmp_path)
    _fill(sp, 3)
    sp.ack(1)
    sp.adopt_cloud_mark(50)  # a fresh disk behind the cloud: seqs up to 50 must never be reused
    state = sp._state.read()
    assert state["acked"] == 50 and state["last"] == 50


_KILLED = textwrap.dedent("""
    import os, signal, sys, zlib
    import edge_agent.spool as m
    m.ACK_PERSIST_S = 1e9
    sp = m.Spool(sys.argv[1], segment_bytes=2048)
    for i in range(300):
        body = f"chunk-{i + 1:06d}".encode() * 20
        sp.append("ep", 1, len(body), zlib.crc32(body), body)
    for seq in range(1, 251):
        sp.ack(seq)
    print(sp._state.read()["acked"], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no close(): the newest acks never reached the disk
""")


def test_killed_with_unsaved_acks_every_record_above_the_disk_mark_is_still_there(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-c", _KILLED, str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    on_disk = int(r.stdout.split()[0])
    assert on_disk == 200  # written every ACK_PERSIST_EVERY acks; the last 50 were not
    sp = Spool(tmp_path)
    assert sp.acked_seq == on_disk and sp.pending() == 100 and sp.lost == []
    for seq in range(on_disk + 1, 301):  # resent; the cloud drops those it has by (robot, seq)
        assert sp.read(seq).body == f"chunk-{seq:06d}".encode() * 20


def test_the_last_acks_of_a_burst_reach_disk_without_another_ack(tmp_path: Path) -> None:
    """A full disk waits for acked files to go: the mark must not wait for an ack that never comes."""
    from harness.waits import wait_for

    sp = Spool(tmp_path, segment_bytes=1024)
    _fill(sp, 20)
    sp.ack(5)  # written at once (the first after a quiet spell)
    sp.ack(20)  # deferred...
    wait_for(lambda: sp._state.read().get("acked") == 20 and not list(tmp_path.glob("*.seg")), 10,
             "the deferred mark to be written and the acked files freed")
    sp.close()


def test_over_its_quota_an_ack_frees_the_files_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent checks ``full`` right after an ack to let a new episode start: it must see the space freed."""
    monkeypatch.setattr(spool_mod, "ACK_PERSIST_S", 1e9)
    sp = Spool(tmp_path, segment_bytes=1024, quota_bytes=2048)
    _fill(sp, 20)
    assert sp.full
    sp.ack(20)
    assert not sp.full and sp._state.read()["acked"] == 20
    sp.close()
