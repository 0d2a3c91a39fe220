"""The link breaks at any byte, or goes silent: nothing lost, nothing twice."""

from __future__ import annotations

import time
from pathlib import Path

from harness import Agent, Learner, Proxy, assert_exactly_once, assert_logs_quiet, wait_for


def test_link_cut_at_random_bytes_hundreds_of_times(tmp_path: Path) -> None:
    learner = Learner(tmp_path).start()
    proxy = Proxy(learner.port, cut_after=(1_000, 30_000), seed=7)
    agents = [Agent(tmp_path, f"cut-{i}", [proxy.url], episodes=40, chunk_steps=5) for i in range(2)]
    try:
        for a in agents:
            a.start()
        for a in agents:
            assert a.wait(240) == 0, a.log.read_text()[-2000:]
        print(f"proxy: {proxy.connections} connections, {proxy.cuts} cut at random byte offsets")
        assert proxy.cuts >= 100
        assert_exactly_once(learner.data_dir, agents)
        # Hundreds of cuts read as an operator sees them: no stray tracebacks, no line storms.
        kinds = assert_logs_quiet(learner.log)
        for a in agents:
            kinds += assert_logs_quiet(a.log)
        print(f"log lines by event: {dict(kinds)}")
    finally:
        proxy.close()
        learner.stop()


def test_half_open_link_is_detected_and_healed(tmp_path: Path) -> None:
    """The proxy stops forwarding without closing: keepalive pings notice, the agent redials."""
    learner = Learner(tmp_path).start()
    proxy = Proxy(learner.port)
    agent = Agent(tmp_path, "stall", [proxy.url], episodes=12, rate_hz=100, chunk_steps=10)
    try:
        agent.start()
        wait_for(lambda: learner.rows("stall") >= 200, 30, "the agent to stream")
        conns = proxy.connections
        proxy.stall(True)
        stalled_at = time.monotonic()
        # Nothing comes back on a stalled link: only the agent's keepalive can notice, and a redial proves it did.
        wait_for(lambda: proxy.connections > conns, 60, "the agent to give up on the silent link and redial")
        proxy.stall(False)
        assert agent.wait(120) == 0, agent.log.read_text()[-2000:]
        log = agent.log.read_text()
        assert "event=link_down" in log, "the dead link was not reported"
        print(f"stalled {time.monotonic() - stalled_at:.1f} s ago; connections {conns} -> {proxy.connections}")
        assert_exactly_once(learner.data_dir, [agent])
    finally:
        proxy.close()
        learner.stop()


def test_large_policy_arrives_in_parts_and_resumes_across_cuts(tmp_path: Path) -> None:
    """A ~17 MB policy (5 parts) through a link cut every few MB: the robot still gets it,
    resuming where each cut left off instead of starting over."""
    learner = Learner(tmp_path, learner={"hidden": [2048, 2048], "publish_every": 5, "learning_starts": 50,
                                         "batch_size": 8}).start()
    proxy = Proxy(learner.port, cut_after=(3_000_000, 7_000_000), seed=3)
    agent = Agent(tmp_path, "big", [proxy.url], episodes=0, rate_hz=50, chunk_steps=10)
    try:
        agent.start()
        wait_for(lambda: "event=policy_swapped" in agent.log.read_text(), 120, "a large policy to arrive")
        print(f"proxy cuts: {proxy.cuts}")
        assert proxy.cuts >= 1
        assert "event=policy_resume" in learner.log.read_text(), "a cut transfer resumed mid-way"
    finally:
        agent.kill()
        proxy.close()
        learner.stop()
