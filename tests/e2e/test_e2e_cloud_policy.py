"""Cloud-served inference, real at every hop: a learner process serving a small flow policy, an edge-agent
process (point mass at 50 Hz, ``policy.where = "cloud"``) acting from the chunks it gets over its link.

The robot acts from cloud chunks (the recorded rows carry the served policy's version, which the robot
itself never holds), every step is stored exactly once, and when the learner goes away mid-run the
robot takes its configured safe action (zero), counts the lost chunks, and resumes acting from
chunks once the learner is back. Stored rows carry each step's position in its chunk (``chunk_index``)."""

from __future__ import annotations

import signal
from pathlib import Path

from harness import assert_exactly_once, stored_rows, wait_for
from harness.policies import flow_policy_file
from harness.procs import Agent, Learner, stop

VERSION = 41


def test_a_robot_acts_from_cloud_chunks_and_rides_out_a_learner_outage(tmp_path: Path) -> None:
    weights = flow_policy_file(tmp_path / "flow.safetensors", ["position", "velocity", "goal"], 6, 2, horizon=10,
                               version=VERSION)
    inference = {"enabled": True, "weights": str(weights), "batch_window_ms": 1}
    learner = Learner(tmp_path, learner={"learning_starts": 10**9}, inference=inference).start()
    port = learner.port
    agent = Agent(tmp_path, "pm-1", [learner.url], episodes=0, rate_hz=50, chunk_steps=25, driver="point_mass",
                  driver_options={"dims": 2, "seed": 3, "max_episode_steps": 200},
                  service={"status_interval_s": 0.2},
                  policy={"where": "cloud", "horizon": 10, "overlap": 3, "blend_steps": 2, "on_late": "zero",
                          "request_timeout_ms": 200})
    try:
        agent.start(drain_timeout=20)

        def chunks() -> dict:
            return agent.status().get("chunks", {})

        wait_for(lambda: chunks().get("chunks", 0) >= 20, 60, "20 chunks from the cloud")
        before = chunks()
        print("chunks before the outage:", before)
        assert before["where"] == "cloud"
        served = learner.status()["inference"]
        assert served["served"] >= 20 and served["latency_p99_ms"] is not None

        learner.stop()  # the learner goes away: requests are lost, the robot takes its safe action
        wait_for(lambda: chunks().get("late_ticks", 0) >= before["late_ticks"] + 10, 30, "late ticks while down")
        down = chunks()
        assert down["lost"] + down["refused"] >= 1  # lost in flight, or refused at once (link_down)

        learner = Learner(tmp_path, port=port, learner={"learning_starts": 10**9}, inference=inference)
        learner.start(resume=True)
        wait_for(lambda: chunks().get("chunks", 0) >= down["chunks"] + 20, 60, "chunks again after the outage")
        assert stop(agent.proc, signal.SIGTERM, 60) == 0  # drains: everything spooled reaches the learner
        # Every step stored exactly once; rows acted from chunks carry the served version, which this robot
        # never held itself (the safe action's rows too: the version of the chunk they stand in for).
        assert_exactly_once(learner.data_dir, [agent])
        _, rows = stored_rows(learner.data_dir, ["robot_id", "policy_version", "chunk_index"])
        versions = {r["policy_version"] for r in rows}
        assert VERSION in versions and versions <= {0, VERSION}
        index = [r["chunk_index"] for r in rows]
        assert all(i is None or 0 <= i < 10 for i in index)
        assert sum(i is not None for i in index) > len(index) // 2  # most steps acted from a chunk
        assert sum(i is None for i in index) >= 10  # the outage's safe actions: from no chunk
    finally:
        agent.kill()
        learner.stop()
