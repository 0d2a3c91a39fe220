"""Disks that fill up or rot: the agent pauses and recovers, the cloud holds
and recovers, damaged spool records are quarantined and reported, never silent."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import time
from pathlib import Path

import pytest

from harness import Agent, Learner, Proxy, assert_exactly_once, assert_logs_quiet, free_port, stored_rows, wait_for


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
    agent = Agent(tmp_path, "full", [f"ws://127.0.0.1:{port}/ws"], episodes=30, chunk_steps=10, spool_dir=spool,
                  spool={"quota_mb": 0})  # no quota: the disk's own limit is what is tested
    agent.start()
    # No learner yet: the spool fills to ENOSPC; the agent must hold, not crash.
    wait_for(lambda: agent.status().get("spool", {}).get("disk_error"), 60, "the spool disk to fill")
    assert agent.proc.poll() is None, "the agent crashed on a full disk"
    held = agent.ledger()["transitions"]
    learner = Learner(tmp_path, port=port).start()
    try:
        assert agent.wait(120) == 0, agent.log.read_text()[-2000:]
        assert agent.status()["spool"]["disk_error"] == "", "the agent stopped still failing to write its spool"
        assert "event=spool_write_recovered" in agent.log.read_text(), "the operator is told it recovered"
        print(f"spool full at {held} transitions; finished with {agent.ledger()['transitions']}")
        assert_exactly_once(learner.data_dir, [agent])
    finally:
        learner.stop()


def test_spool_quota_stops_new_episodes_until_acked(tmp_path: Path) -> None:
    port = free_port()
    agent = Agent(tmp_path, "quota", [f"ws://127.0.0.1:{port}/ws"], episodes=25, chunk_steps=10,
                  spool={"quota_mb": 0.05}, service={"status_interval_s": 0.2})
    agent.start()

    def paused() -> dict:
        s = agent.status()
        return s if s.get("control", {}).get("paused") == "spool_full" else {}

    held = wait_for(paused, 60, "the control loop to hold at the spool quota")
    wait_for(lambda: agent.ledger()["transitions"] % 50 == 0, 10, "the episode in progress to finish")
    n = agent.ledger()["transitions"]
    # The agent had its chance: five more status reports (its own clock), the loop still holding at the gate.
    later = wait_for(lambda: (s := agent.status()).get("time", 0) > held["time"] + 5 * 0.2 and s, 30,
                     "the agent to report its status again")
    assert later["control"]["paused"] == "spool_full", later["control"]
    assert later["control"]["steps"] == held["control"]["steps"], "the robot stepped over the quota"
    assert agent.ledger()["transitions"] == n, "a new episode started over the quota"
    assert agent.proc.poll() is None
    learner = Learner(tmp_path, port=port).start()
    try:
        assert agent.wait(120) == 0, agent.log.read_text()[-2000:]
        assert "event=spool_resumed" in agent.log.read_text()
        assert_exactly_once(learner.data_dir, [agent])
    finally:
        learner.stop()


REDIALS = 10  # redials watched while the learner holds
MAX_S = 1.0  # the agent's link.reconnect_max_s in the hold test


def test_cloud_disk_full_holds_robots_then_recovers(tmp_path: Path, tmpfs) -> None:
    """A full learner disk: robots are told to hold, back off across redials (not
    4 a second), both sides say so in their status, and the logs stay readable."""
    data = tmpfs("cloud", "400k")
    learner = Learner(tmp_path, data_dir=data / "run", learner={"learning_starts": 10**9}).start()
    proxy = Proxy(learner.port)  # counts the robot's connections
    agent = Agent(tmp_path, "hold", [proxy.url], episodes=40, chunk_steps=10, link={"reconnect_max_s": MAX_S})
    try:
        agent.start()
        wait_for(lambda: learner.status()["storage"]["holding"], 90, "the cloud disk to fill and robots to be held")
        assert learner.proc.poll() is None, "the learner crashed on a full disk"
        conns, t0 = proxy.connections, time.monotonic()
        wait_for(lambda: proxy.connections >= conns + REDIALS, 60, f"{REDIALS} redials while held")
        took = time.monotonic() - t0
        # 0.05 s doubling to MAX_S (+-20% jitter): at most ~5 quick tries, then one per 0.8 * MAX_S at the
        # soonest. A slow machine only stretches this; a redial storm (no backoff) takes well under a second.
        floor = (REDIALS - 6) * 0.8 * MAX_S
        print(f"held: {REDIALS} redials took {took:.1f} s (at least {floor:.1f} s with the backoff)")
        assert took >= floor, f"{REDIALS} reconnects in {took:.1f} s of a hold"
        failed = learner.status()["storage"]["write_failures"]
        assert failed <= proxy.connections, "each redial resends at most one window: at most one failed write"
        s = learner.status()
        assert s["storage"]["holding"] and "No space" in s["storage"]["last_write_error"], s["storage"]
        robot = json.loads((agent.state_dir / "status.json").read_text())
        assert robot["link"]["learner_holding"] and robot["link"]["last_error"].startswith("hold"), robot["link"]
        _grow(data, "64m")
        assert agent.wait(180) == 0, agent.log.read_text()[-2000:]
        assert not [p for p in (data / "run" / "buffer" / "segments").iterdir() if p.suffix == ".tmp"]
        assert_exactly_once(learner.data_dir, [agent])
        assert not learner.status()["storage"]["holding"]
        assert_logs_quiet(learner.log)
        assert_logs_quiet(agent.log)
        robot_log = agent.log.read_text()
        # The robot hears the cause (hold), not its symptoms (a gap in what was stored, a closed link).
        assert "bad_state" not in robot_log and "stream_gap" not in robot_log
    finally:
        proxy.close()
        learner.stop()


def test_publish_failure_is_logged_once_counted_and_recovers(tmp_path: Path, tmpfs, caplog) -> None:
    """The learner's policy directory on a full disk: every publish fails with a real
    OSError; robots stay on the last good version, and the operator is told."""
    from cloud.publisher import WeightPublisher
    from shared.weights import WeightsBlob, sha256

    mnt = tmpfs("policy", "64k")

    def blob(version: int, size: int) -> WeightsBlob:
        data = os.urandom(size)
        return WeightsBlob(version, sha256(data), data)

    async def run() -> WeightPublisher:
        pub = WeightPublisher(mnt / "policy")
        assert await pub.publish(blob(1, 1000))
        for v in range(2, 12):
            assert not await pub.publish(blob(v, 200_000)), "a publish that could not be written"
        assert pub.version == 1 and pub.failures == 10 and "No space" in pub.last_error
        assert not list((mnt / "policy").glob("*.tmp")), "a failed write leaves no temp file holding the space"
        assert await pub.publish(blob(12, 1000)), "the next publish that fits goes out"
        assert pub.version == 12 and pub.last_error == ""
        return pub

    with caplog.at_level(logging.INFO, logger="fleetrl.publisher"):
        pub = asyncio.run(run())
    lines = [r.getMessage() for r in caplog.records if r.name == "fleetrl.publisher"]
    failed = [m for m in lines if "event=publish_failed" in m]
    assert len(failed) == 1 and "version=2" in failed[0] and "robots_stay_on_v1" in failed[0], lines
    assert any("event=publish_recovered version=12" in m for m in lines), lines
    assert WeightPublisher(mnt / "policy").version == pub.version == 12, "the recovered version is the one on disk"


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
