"""Cloud-served inference of camera policies, real at every hop: a learner process serving a small policy
over the front camera and the arm's state to an edge-agent process whose MuJoCo Fetch arm renders two
camera views (headless, MUJOCO_GL=egl) and sends its frames over its link with each request; after the
first answers, only the camera the served policy reads. The learner serves them (none refused for their
frames) and every step is stored exactly once, with the served version.

- ``cnn_gaussian`` answers one action, played a round trip after its observation and held until the next
  (none dropped as stale).
- ``cnn_flow`` answers chunks of ``horizon`` actions: the robot plays each from where the round trip left it
  (the recorded rows carry their index in the chunk), asks for the next before it runs out, and its status
  names the served version, which it never holds itself."""

from __future__ import annotations

import signal
from pathlib import Path

from harness import assert_exactly_once, stored_rows, wait_for
from harness.policies import cnn_flow_policy_file, cnn_policy_file
from harness.procs import Agent, Learner, stop

VERSION = 23
FLOW_VERSION = 29
VIEWS = [{"name": "front", "view": "default", "size": 32}, {"name": "top", "view": "external_camera_0", "size": 32}]


def test_a_camera_robot_acts_from_a_cnn_policy_served_from_the_cloud(tmp_path: Path) -> None:
    weights = cnn_policy_file(tmp_path / "cnn.safetensors", ["observation"], 10, 4, [("front", (32, 32, 3))],
                              version=VERSION)
    learner = Learner(tmp_path, learner={"learning_starts": 10**9},
                      inference={"enabled": True, "weights": str(weights), "batch_window_ms": 1}).start()
    agent = Agent(tmp_path, "cam-1", [learner.url], episodes=0, rate_hz=20, chunk_steps=25,
                  driver_options={"seed": 3, "cameras": VIEWS, "camera_antialias": False},
                  service={"status_interval_s": 0.2},
                  policy={"where": "cloud", "horizon": 1, "overlap": 0, "blend_steps": 0, "on_late": "hold",
                          "request_timeout_ms": 500, "camera_codec": "zstd"})
    try:
        agent.start(drain_timeout=20)
        def chunks() -> dict:
            return agent.status().get("chunks", {})

        wait_for(lambda: learner.status()["inference"]["served"] >= 40, 120, "40 camera requests served")
        wait_for(lambda: chunks().get("chunks", 0) >= 40, 60, "40 answers taken at the robot")
        served, robot = learner.status()["inference"], chunks()
        print("served:", served, "robot:", robot)
        # Answers of one action are played, not dropped as in the past: the only stale ones are late answers to
        # requests already given up as lost (a loaded machine), and a couple overtaken.
        assert robot["stale"] <= robot["lost"] + 2, robot
        assert not {"bad_observation", "observation_too_large"} & set(served["refusals"]), served
        # The first requests (before an answer named the cameras its policy read) carry both views; from then
        # on only the front one, which the policy reads: the top view no longer crosses the link.
        frames = served["camera_frames"]
        assert frames["front"] >= 40 and 1 <= frames.get("top", 0) <= 5, frames
        assert stop(agent.proc, signal.SIGTERM, 60) == 0
        assert_exactly_once(learner.data_dir, [agent])
        _, rows = stored_rows(learner.data_dir, ["policy_version", "chunk_index"])
        # Steps the served policy planned (index 0: the one action of its answer); the others are the safe
        # action at an episode's start, before its first answer (no index).
        planned = [r for r in rows if r["chunk_index"] is not None]
        assert len(planned) >= 30 and {(r["policy_version"], r["chunk_index"]) for r in planned} == {(VERSION, 0)}
    finally:
        agent.kill()
        learner.stop()


def test_a_camera_robot_executes_cnn_flow_chunks_served_from_the_cloud(tmp_path: Path) -> None:
    horizon, frame_bytes = 10, 32 * 32 * 3
    weights = cnn_flow_policy_file(tmp_path / "cnn_flow.safetensors", ["observation"], 10, 4,
                                   [("front", (32, 32, 3))], horizon=horizon, version=FLOW_VERSION)
    learner = Learner(tmp_path, learner={"learning_starts": 10**9},
                      inference={"enabled": True, "weights": str(weights), "batch_window_ms": 1}).start()
    agent = Agent(tmp_path, "cam-1", [learner.url], episodes=0, rate_hz=20, chunk_steps=25,
                  driver_options={"seed": 4, "cameras": VIEWS, "camera_antialias": False},
                  service={"status_interval_s": 0.2},
                  policy={"where": "cloud", "horizon": horizon, "overlap": 2, "blend_steps": 2, "on_late": "hold",
                          "request_timeout_ms": 500, "max_inflight": 3, "camera_codec": "raw"})
    try:
        agent.start(drain_timeout=20)

        def chunks() -> dict:
            return agent.status().get("chunks", {})

        wait_for(lambda: chunks().get("chunks", 0) >= 20, 120, "20 cnn_flow chunks taken at the robot")
        robot, served = chunks(), learner.status()["inference"]
        print("robot:", robot, "served:", served)
        # The status names the version of the chunks it plays: the served policy's (the robot holds none).
        assert (robot["where"], robot["policy_version"]) == ("cloud", FLOW_VERSION)
        assert agent.status()["policy_version"] == 0
        assert not {"bad_observation", "observation_too_large"} & set(served["refusals"]), served
        # Every request carried the front view, which the policy reads; the top view only went with the
        # requests out before the first answer named the cameras read (at most max_inflight of them, more
        # only if some were lost and asked again).
        frames = served["camera_frames"]
        assert frames["front"] == served["requests"] >= 20, frames
        assert 1 <= frames.get("top", 0) <= 3 + robot["lost"], (frames, robot)
        assert served["camera_bytes"] == (frames["front"] + frames["top"]) * frame_bytes
        assert stop(agent.proc, signal.SIGTERM, 60) == 0
        assert_exactly_once(learner.data_dir, [agent])
        _, rows = stored_rows(learner.data_dir, ["policy_version", "chunk_index"])
        planned = [r for r in rows if r["chunk_index"] is not None]
        # Several actions of each chunk were played (from the index the round trip left, up to the next chunk),
        # all planned by the served version; the others are safe actions (no index): before an episode's first
        # chunk (version 0), or a late tick's hold after the served version's chunk ran out.
        # (A Gaussian's rows all say index 0; how far into a chunk the robot plays depends on the round trips.)
        index = sorted({r["chunk_index"] for r in planned})
        print("planned steps:", len(planned), "of", len(rows), "chunk indices played:", index)
        assert len(planned) >= 40 and {r["policy_version"] for r in planned} == {FLOW_VERSION}
        assert set(index) <= set(range(horizon)) and len(index) >= 2 and index[-1] >= 2, index
        assert {r["policy_version"] for r in rows} <= {0, FLOW_VERSION}
    finally:
        agent.kill()
        learner.stop()
