"""Degraded states are bounded, visible and honest: a resume without a
checkpoint, a refused robot, a cut before the hello, a frame at the limit, an
enrollment check. Each says what happened in a status field or one log line."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import torch
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from cloud.keys import REJECTIONS
from edge_agent.handshake import open_link
from shared.policy import Actor
from shared.protocol import EdgeConnection, Reject
from tests.cloud.test_cloud_gateway import OTHER, TIMEOUT, Robot, serve
from harness.procs import stop
from harness import Agent, Learner, assert_logs_quiet, until, wait_for
from tests.security.test_security_link import add_robot, enroll


async def test_connection_closed_before_hello_is_counted_as_such(tmp_path: Path) -> None:
    async with serve(tmp_path) as (app, url, _):
        cut = await connect(url, compression=None, open_timeout=TIMEOUT)
        await cut.recv()  # the challenge
        cut.transport.abort()  # a cut: no close frame
        polite = await connect(url, compression=None, open_timeout=TIMEOUT)
        await polite.recv()
        await polite.close()
        await until(lambda: app[REJECTIONS]["closed_before_hello"] >= 2, "both links to be counted")
        assert app[REJECTIONS]["bad_state"] == 0, dict(app[REJECTIONS])


async def test_a_frame_of_exactly_the_documented_limit_passes_the_size_check(tmp_path: Path) -> None:
    """limits.max_frame_bytes is inclusive (docs/security.md: 64 MiB); one byte more is frame_too_large."""
    async with serve(tmp_path) as (app, url, _):
        limit = 64 << 20
        for judged, size in enumerate((limit, limit + 1), 1):
            ws = await connect(url, compression=None, open_timeout=TIMEOUT, max_size=None)
            await ws.recv()
            with contextlib.suppress(ConnectionClosed, ConnectionError):  # refused at its header: closed mid-send
                await ws.send(b"\0" * size)  # not a hello: refused, but by the protocol, not by its size
            await until(lambda n=judged: sum(app[REJECTIONS].values()) >= n, "the frame to be judged")
            with contextlib.suppress(ConnectionClosed):
                await ws.close()
        rej = dict(app[REJECTIONS])
        assert rej.get("frame_too_large") == 1 and sum(rej.values()) == 2, rej


async def test_spec_mismatch_names_the_field_and_both_values(tmp_path: Path) -> None:
    async with serve(tmp_path) as (app, url, _):
        first = Robot(url, "first")
        assert not hasattr(await first.open(), "code")
        other = Robot(url, "other", OTHER)
        rej = await other.open()
        assert rej.code == "spec_mismatch"
        assert "observation.pos" in rej.message and "[3]" in rej.message and "[7]" in rej.message, rej.message
        await first.close()
        await other.close()


async def test_an_empty_spec_hello_is_a_credential_check_not_a_fault(tmp_path: Path) -> None:
    """How an older `edge-agent enroll` checks its credential: a hello with no spec."""
    async with serve(tmp_path) as (app, url, _):
        conn = EdgeConnection("checker", {}, [])
        async with connect(url, compression=None, open_timeout=TIMEOUT) as ws:
            msg = await open_link(ws, conn, TIMEOUT)
        assert isinstance(msg, Reject) and msg.code == "credential_ok", msg
        assert not app[REJECTIONS], dict(app[REJECTIONS])


def test_enrollment_check_leaves_no_warning_on_the_learner(tmp_path: Path) -> None:
    learner = Learner(tmp_path, server={"auth": "required"}, learner={"learning_starts": 10**9}).start()
    try:
        robot = Agent(tmp_path, "newbie", [learner.url], episodes=1)
        enroll(robot, learner.url, add_robot(learner, "newbie"))
        log = learner.log.read_text()
        assert "robot_id=newbie" in log, "the learner saw the check"
        noisy = [line for line in log.splitlines() if "newbie" in line and ("level=WARNING" in line or "level=ERROR" in line)]
        assert not noisy and "bad_schema" not in log, noisy
    finally:
        learner.stop()


def test_refused_robot_says_so_in_its_status_and_its_spool_has_a_quota(tmp_path: Path) -> None:
    """A robot whose spec the run does not take keeps acting and recording, but
    its status says it is refused and why, and its spool is bounded by default."""
    learner = Learner(tmp_path, learner={"learning_starts": 10**9}).start()
    try:
        async def fix_the_run_spec() -> None:  # another robot (another spec) was here first
            r = Robot(learner.url, "first", OTHER)
            assert not hasattr(await r.open(), "code")
            await r.close()

        asyncio.run(fix_the_run_spec())
        # It runs until stopped (not for a few episodes): on a loaded machine a short run can end before
        # its link was even refused.
        agent = Agent(tmp_path, "odd", [learner.url], episodes=0, rate_hz=200)
        agent.start(drain_timeout=1)
        status_file = agent.state_dir / "status.json"

        def refused() -> dict:
            s = json.loads(status_file.read_text()) if status_file.exists() else {}
            return s if s.get("link", {}).get("refused") else {}

        wait_for(lambda: bool(refused()), 60, "the agent's status to say it is refused")
        s = refused()
        assert s["link"]["refused"].startswith("spec_mismatch: ") and "observation." in s["link"]["refused"], s["link"]
        assert s["spool"]["quota_bytes"] > 0, "a spool quota by default"
        log = agent.log.read_text()
        assert "event=robot_refused code=spec_mismatch" in log and "action=recording_into_the_spool" in log
        assert stop(agent.proc) == 0, log[-2000:]
        assert learner.status()["rejections"].get("spec_mismatch", 0) >= 1
        assert_logs_quiet(agent.log)
        assert_logs_quiet(learner.log)
    finally:
        learner.stop()


def test_resume_without_a_checkpoint_continues_from_the_published_policy(tmp_path: Path) -> None:
    """kill -9 after some policies went out but before the first checkpoint: --resume
    says so and trains on from the last published weights, not from scratch."""
    learner = Learner(tmp_path, learner={"checkpoint_every": 10**9, "learning_starts": 100, "publish_every": 20}).start()
    agent = Agent(tmp_path, "early", [learner.url], episodes=0, rate_hz=300, chunk_steps=10)
    try:
        agent.start()
        wait_for(lambda: learner.status()["policy_version"] >= 3, 120, "a few policies to be published")
        learner.kill()
        assert not (learner.data_dir / "checkpoints" / "learner.safetensors").exists()
        before = learner.policy()
        learner.start(resume=True)
        assert (f"event=resume_without_checkpoint checkpoint=none published_policy=v{before.version} "
                f"action=training_continues_from_published_policy_v{before.version}") in learner.log.read_text()
        wait_for(lambda: learner.status()["resumed_from_policy"] is not None, 60, "the trainer to start")
        assert learner.status()["resumed_from_policy"] == before.version
        after = wait_for(lambda: (w := learner.policy()).version > before.version and w, 60, "a newer policy")
        # The newer policy grew from the older one, not from a fresh network (the seeded init).
        a = before.arch["actor"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # learner.seed: how SAC seeds its networks
            init = Actor(a["obs_dim"], a["act_dim"], a["hidden"]).state_dict()

        def dist(x: dict, y: dict) -> float:
            return sum(float((x[k] - y[k]).pow(2).sum()) for k in x) ** 0.5

        assert dist(after.tensors, before.tensors) < dist(after.tensors, init), "retrained from scratch"
        assert learner.status()["publish_failures"] == 0
    finally:
        agent.kill()
        learner.stop()


def test_a_repeating_fault_logs_once_per_interval_and_counts_the_rest(monkeypatch, caplog) -> None:
    import logging

    from shared import lograte

    now = [100.0]
    monkeypatch.setattr(lograte.time, "monotonic", lambda: now[0])
    limiter, log = lograte.LogLimiter(30.0), logging.getLogger("fleetrl.test")
    with caplog.at_level(logging.INFO, logger="fleetrl.test"):
        for _ in range(5):
            limiter.log(log, logging.ERROR, "refused", "event=robot_refused code=%s", "spec_mismatch")
        limiter.log(log, logging.ERROR, "other", "event=other")
        now[0] += 30.0
        limiter.log(log, logging.ERROR, "refused", "event=robot_refused code=%s", "spec_mismatch")
    assert [r.getMessage() for r in caplog.records] == [
        "event=robot_refused code=spec_mismatch", "event=other", "event=robot_refused code=spec_mismatch repeated=4",
    ]


def test_the_spool_has_a_quota_by_default(tmp_path: Path) -> None:
    import shutil

    from edge_agent.spool import DEFAULT_QUOTA_SHARE, Spool

    spool = Spool(tmp_path / "spool", quota_bytes=None)
    free = shutil.disk_usage(tmp_path).free
    assert 0 < spool.quota_bytes and abs(spool.quota_bytes - free * DEFAULT_QUOTA_SHARE) < 0.01 * free
    assert Spool(tmp_path / "other", quota_bytes=0).quota_bytes == 0, "0 still means no quota"
