"""kill -9 of either side at the worst moments, and a learner that comes back
elsewhere: both sides recover by themselves, and every transition is stored once."""

from __future__ import annotations

import json
import time
from pathlib import Path

from harness import Agent, Learner, assert_exactly_once, free_port, wait_for


def test_agent_killed_mid_upload_then_restarted(tmp_path: Path) -> None:
    learner = Learner(tmp_path).start()
    agent = Agent(tmp_path, "k9", [learner.url], episodes=40, chunk_steps=5)
    try:
        agent.start()
        wait_for(lambda: learner.rows("k9") >= 300, 60, "uploads to be under way")
        agent.kill()  # SIGKILL while chunks are in flight and unacked
        killed_at = agent.ledger()["transitions"]
        agent.episodes = 5
        agent.start()
        assert agent.wait(120) == 0, agent.log.read_text()[-2000:]
        print(f"killed with {killed_at} transitions recorded; after restart {agent.ledger()['transitions']}")
        assert agent.ledger()["transitions"] > killed_at
        assert_exactly_once(learner.data_dir, [agent])
    finally:
        learner.stop()


def test_learner_killed_mid_seal_then_resumed(tmp_path: Path) -> None:
    """The learner dies after a segment is renamed into place but before the
    manifest names it: a stray segment whose chunks were never acked."""
    port = free_port()
    learner = Learner(tmp_path, port=port, env={"FLEETRL_CRASH_AT": "seal_before_manifest:8"}).start()
    agent = Agent(tmp_path, "seal", [learner.url], episodes=20, rate_hz=200, chunk_steps=10)
    try:
        agent.start()
        assert learner.proc.wait(60) == -9, "the crash point was not reached"
        report_before = json.loads((learner.data_dir / "buffer" / "manifest.json").read_text())
        learner.env = {}
        learner.start(resume=True)  # same port: the agent redials it by itself
        assert agent.wait(120) == 0, agent.log.read_text()[-2000:]
        log = learner.log.read_text()
        assert "event=stray_segments_removed count=1" in log
        print(f"segments at the crash: {len(report_before['segments'])}; stray removed on restart")
        assert_exactly_once(learner.data_dir, [agent])
    finally:
        learner.stop()


def test_learner_killed_mid_checkpoint_resumes_from_the_previous_one(tmp_path: Path) -> None:
    port = free_port()
    env = {"FLEETRL_CRASH_AT": "checkpoint_mid_write:2"}
    learner = Learner(tmp_path, port=port, env=env, learner={"checkpoint_every": 50, "learning_starts": 100}).start()
    agent = Agent(tmp_path, "ckpt", [learner.url], episodes=25, rate_hz=250, chunk_steps=10)
    try:
        agent.start()
        assert learner.proc.wait(90) == -9, "the crash point was not reached"
        ckpt = learner.data_dir / "checkpoints" / "learner.safetensors"
        assert ckpt.exists() and ckpt.with_name(ckpt.name + ".tmp").exists(), "torn temp file beside the intact checkpoint"
        learner.env = {}
        learner.start(resume=True)
        wait_for(lambda: learner.status()["resumed_from_update"] is not None, 60, "the trainer to resume")
        assert learner.status()["resumed_from_update"] == 50, "resumed from the last complete checkpoint"
        assert agent.wait(120) == 0, agent.log.read_text()[-2000:]
        versions = agent.ledger()["policy_versions_used"]
        assert versions == sorted(versions) and len(set(versions)) == len(versions), "policy versions never go back"
        assert_exactly_once(learner.data_dir, [agent])
    finally:
        learner.stop()


def test_robot_keeps_acting_while_learner_is_down_and_follows_it_to_a_new_address(tmp_path: Path) -> None:
    first = Learner(tmp_path, port=free_port()).start()
    second_port = free_port()
    agent = Agent(tmp_path, "mover", [first.url, f"ws://127.0.0.1:{second_port}/ws"], episodes=30, rate_hz=200,
                  chunk_steps=10)
    try:
        agent.start()
        wait_for(lambda: first.rows("mover") >= 300 and first.status()["policy_version"] > 0, 60, "a policy")
        first.kill()
        down_at = time.monotonic()
        before = agent.ledger()["transitions"]
        wait_for(lambda: agent.ledger()["transitions"] >= before + 100, 30, "the robot to keep recording")
        second = Learner(tmp_path, port=second_port, data_dir=first.data_dir, name="learner2").start(resume=True)
        assert agent.wait(120) == 0, agent.log.read_text()[-2000:]
        log = agent.log.read_text()
        assert f"url=ws://127.0.0.1:{second_port}/ws" in log, "the agent never reached the new address"
        print(f"learner down for {time.monotonic() - down_at:.1f} s; agent moved to port {second_port}")
        assert_exactly_once(first.data_dir, [agent])
        second.stop()
    finally:
        first.kill()


def test_link_process_killed_mid_upload_while_the_control_process_keeps_running(tmp_path: Path) -> None:
    """The uplink lives in its own process: kill -9 it mid-upload. The control process keeps
    acting and spooling, starts a new link process, and every transition is stored exactly once."""
    import os
    import signal

    learner = Learner(tmp_path).start()
    agent = Agent(tmp_path, "lk9", [learner.url], episodes=30, rate_hz=200, chunk_steps=5,
                  service={"status_interval_s": 0.2})
    try:
        agent.start()
        wait_for(lambda: learner.rows("lk9") >= 200, 60, "uploads to be under way")
        first = wait_for(lambda: agent.status().get("link", {}).get("process_pid"), 30, "the link process's pid")
        assert first != agent.proc.pid
        os.kill(first, signal.SIGKILL)
        steps_at_kill = agent.status()["control"]["steps"]
        second = wait_for(lambda: (p := agent.status()["link"]["process_pid"]) not in (None, first) and p, 60,
                          "a new link process")
        assert agent.proc.poll() is None, "the control process died with its link process"
        assert agent.status()["control"]["steps"] > steps_at_kill, "the robot stopped acting while the link was down"
        assert agent.status()["link"]["process_restarts"] >= 1
        assert agent.wait(120) == 0, agent.log.read_text()[-2000:]
        log = agent.log.read_text()
        assert "event=link_process_exited rc=-9" in log and f"event=link_process_started pid={second}" in log
        assert_exactly_once(learner.data_dir, [agent])
    finally:
        learner.stop()
