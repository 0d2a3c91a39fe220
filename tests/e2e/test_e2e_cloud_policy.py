"""Cloud-served inference, real at every hop: a learner process serving a small flow policy, an edge-agent
process (point mass at 50 Hz, ``policy.where = "cloud"``) acting from the chunks it gets over its link.

The robot acts from cloud chunks (the recorded rows carry the served policy's version, which the robot
itself never holds), every step is stored exactly once, and when its link to the learner goes silent
mid-run (a proxy stops forwarding) the robot takes its configured safe action (zero), counts the lost
chunks, and resumes acting from chunks once the link is back. Stored rows carry each step's position in its chunk (``chunk_index``)."""

from __future__ import annotations

import signal
from pathlib import Path

from harness import Proxy, assert_exactly_once, stored_rows, wait_for
from harness.policies import flow_policy_file
from harness.procs import Agent, Learner, stop

VERSION = 41


def test_a_robot_acts_from_cloud_chunks_and_rides_out_a_silent_link(tmp_path: Path) -> None:
    weights = flow_policy_file(tmp_path / "flow.safetensors", ["position", "velocity", "goal"], 6, 2, horizon=10,
                               version=VERSION)
    learner = Learner(tmp_path, learner={"learning_starts": 10**9},
                      inference={"enabled": True, "weights": str(weights), "batch_window_ms": 1}).start()
    proxy = Proxy(learner.port)
    agent = Agent(tmp_path, "pm-1", [proxy.url], episodes=0, rate_hz=50, chunk_steps=25, driver="point_mass",
                  driver_options={"dims": 2, "seed": 3, "max_episode_steps": 1000},
                  service={"status_interval_s": 0.2},
                  policy={"where": "cloud", "horizon": 10, "overlap": 3, "blend_steps": 2, "on_late": "zero",
                          "request_timeout_ms": 200})
    try:
        agent.start(drain_timeout=20)

        def chunks() -> dict:
            return agent.status().get("chunks", {})

        wait_for(lambda: chunks().get("chunks", 0) >= 30, 60, "30 chunks from the cloud")
        before = chunks()
        print("chunks before the cut:", before)
        assert before["where"] == "cloud"
        served = learner.status()["inference"]
        assert served["served"] >= 30 and served["latency_p99_ms"] is not None

        def safe_ticks(c: dict) -> int:  # ticks that ran the safe action: mid-episode (late), or at an episode's
            return c.get("late_ticks", 0) + c.get("start_ticks", 0)  # start (an episode may end while it is cut)

        proxy.stall(True)  # the link goes silent: requests are lost, the robot takes its safe action
        wait_for(lambda: safe_ticks(chunks()) >= safe_ticks(before) + 20, 30, "safe-action ticks while cut")
        wait_for(lambda: chunks().get("lost", 0) > before["lost"], 30, "a lost chunk counted")
        down = chunks()
        print("chunks while cut:", down)
        proxy.stall(False)
        wait_for(lambda: chunks().get("chunks", 0) >= down["chunks"] + 30, 60, "chunks again after the cut")
        assert stop(agent.proc, signal.SIGTERM, 60) == 0  # drains: everything spooled reaches the learner
        # Every step stored exactly once; rows acted from chunks carry the served version (which this robot
        # never held itself) and their position in the chunk; the safe actions of the cut, no position.
        assert_exactly_once(learner.data_dir, [agent])
        _, rows = stored_rows(learner.data_dir, ["robot_id", "policy_version", "chunk_index"])
        versions = {r["policy_version"] for r in rows}
        assert VERSION in versions and versions <= {0, VERSION}
        index = [r["chunk_index"] for r in rows]
        assert all(i is None or 0 <= i < 10 for i in index)
        assert sum(i is not None for i in index) >= 60
        assert sum(i is None for i in index) >= 20
    finally:
        agent.kill()
        proxy.close()
        learner.stop()
