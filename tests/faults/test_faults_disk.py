"""Disks that fill up or rot: the agent pauses and recovers, the cloud holds
and recovers, damaged spool records are quarantined and reported, never silent."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.faults.harness import Agent, Learner, assert_exactly_once, free_port, stored_rows, wait_for


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A small real file system that really fills up (root only)."""
    mounts = []

    def make(name: str, size: str) -> Path:
        mnt = tmp_path / name
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {r.stderr.decode().strip()}")
        mounts.append(mnt)
        return mnt

    yield make
    for m in mounts:
        subprocess.run(["umount", "-l", str(m)], check=False)


def _grow(mnt: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)


def test_robot_spool_disk_full_pauses_then_recovers(tmp_path: Path, tmpfs) -> None:
    spool = tmpfs("spool", "160k")
    port = free_port()
    agent = Agent(tmp_path, "full", [f"ws://127.0.0.1:{port}/ws"], episodes=30, chunk_steps=10, spool_dir=spool)
    agent.start()
    # No learner yet: the spool fills to ENOSPC; the agent must hold, not crash.
    wait_for(lambda: "event=spool_write_failed" in agent.log.read_text(), 60, "the spool disk to fill")
    assert agent.proc.poll() is None, "the agent crashed on a full disk"
    held = agent.ledger()["transitions"]
    learner = Learner(tmp_path, port=port).start()
    try:
        assert agent.wait(120) == 0, agent.log.read_text()[-2000:]
        log = agent.log.read_text()
        assert "event=spool_write_recovered" in log
        print(f"spool full at {held} transitions; finished with {agent.ledger()['transitions']}")
        assert_exactly_once(learner.data_dir, [agent])
    finally:
        learner.stop()


def test_spool_quota_stops_new_episodes_until_acked(tmp_path: Path) -> None:
    port = free_port()
    agent = Agent(tmp_path, "quota", [f"ws://127.0.0.1:{port}/ws"], episodes=25, chunk_steps=10,
                  spool={"quota_mb": 0.05})
    agent.start()
    wait_for(lambda: "event=spool_full" in agent.log.read_text(), 60, "the quota to be reached")
    wait_for(lambda: agent.ledger()["transitions"] % 50 == 0, 10, "the episode in progress to finish")
    n = agent.ledger()["transitions"]
    time.sleep(1.5)  # watching that nothing happens: no new episode starts while the spool is over quota
    assert agent.ledger()["transitions"] == n, "a new episode started over the quota"
    assert agent.proc.poll() is None
    learner = Learner(tmp_path, port=port).start()
    try:
        assert agent.wait(120) == 0, agent.log.read_text()[-2000:]
        assert "event=spool_resumed" in agent.log.read_text()
        assert_exactly_once(learner.data_dir, [agent])
    finally:
        learner.stop()


def test_cloud_disk_full_holds_robots_then_recovers(tmp_path: Path, tmpfs) -> None:
    data = tmpfs("cloud", "400k")
    learner = Learner(tmp_path, data_dir=data / "run", learner={"learning_starts": 10**9}).start()
    agent = Agent(tmp_path, "hold", [learner.url], episodes=40, chunk_steps=10)
    try:
        agent.start()
        wait_for(lambda: "event=segment_write_failed" in learner.log.read_text(), 90, "the cloud disk to fill")
        assert "code=hold" in learner.log.read_text() or "event=link_hold" in learner.log.read_text()
        assert learner.proc.poll() is None, "the learner crashed on a full disk"
        _grow(data, "64m")
        assert agent.wait(180) == 0, agent.log.read_text()[-2000:]
        assert not [p for p in (data / "run" / "buffer" / "segments").iterdir() if p.suffix == ".tmp"]
        assert_exactly_once(learner.data_dir, [agent])
    finally:
        learner.stop()


def test_torn_tail_and_flipped_byte_in_the_spool(tmp_path: Path) -> None:
    port = free_port()
    agent = Agent(tmp_path, "rot", [f"ws://127.0.0.1:{port}/ws"], episodes=6, chunk_steps=10,
                  spool={"segment_bytes": 20_000})
    agent.start(drain_timeout=0.5)  # no learner: everything stays in the spool
    assert agent.wait(60) == 0
    segs = sorted(agent.spool_dir.glob("*.seg"))
    assert len(segs) >= 3
    mid = bytearray(segs[1].read_bytes())
    mid[len(mid) // 2] ^= 0x5A  # rot inside a record in the middle of the spool
    segs[1].write_bytes(bytes(mid))
    with open(segs[-1], "ab") as fh:
        fh.write(os.urandom(37))  # a torn write at the tail
    learner = Learner(tmp_path, port=port).start()
    try:
        agent.episodes = 1
        agent.start()
        assert agent.wait(120) == 0, agent.log.read_text()[-2000:]
        log = agent.log.read_text()
        assert "event=spool_record_quarantined" in log and "event=spool_torn_tail" in log
        assert list((agent.spool_dir / "quarantine").iterdir())
        manifest, _ = stored_rows(learner.data_dir)
        assert [r["robot_id"] for r in manifest["lost"]] == ["rot"], "the loss reached the cloud's manifest"
        totals = assert_exactly_once(learner.data_dir, [agent])
        assert totals["rot"]["lost_reported"] == 10, "exactly the damaged chunk is missing"
    finally:
        learner.stop()
