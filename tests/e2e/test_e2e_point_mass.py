"""A second embodiment through the whole loop: an edge-agent process on the point-mass
driver (3-D: 9 observation values, 3 actions, unlike Fetch's 16 and 4) streams to a
real learner, which stores every step once and trains a policy of its sizes."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from harness import assert_exactly_once
from harness.procs import Agent, Learner

EPISODES = 30


def test_point_mass_agent_through_a_real_learner(tmp_path: Path) -> None:
    learner = Learner(tmp_path, learner={"learning_starts": 100, "publish_every": 10}).start()
    try:
        agent = Agent(tmp_path, "pm-0", [learner.url], episodes=EPISODES, rate_hz=0, chunk_steps=25,
                      driver="point_mass", driver_options={"dims": 3, "seed": 4},
                      control={"random_steps": 0}).start()
        assert agent.wait(120) == 0, agent.log.read_text()[-3000:]
        totals = assert_exactly_once(learner.data_dir, [agent])
        assert totals["pm-0"]["stored"] == totals["pm-0"]["generated"] > 0
        ledger = agent.ledger()
        assert ledger["episodes"] == EPISODES
        assert ledger["transitions"] <= EPISODES * 50  # episodes end at 50 steps, or earlier on success
        schema = pq.read_schema(next((learner.data_dir / "buffer" / "segments").glob("*.parquet")))
        for col in ("obs.position", "obs.velocity", "obs.goal", "next_obs.goal", "action", "policy_action"):
            assert schema.field(col).type.list_size == 3, col
        policy = learner.policy(60)  # trained on this robot's data: its sizes, its fields
        assert policy.version > 0
        assert (policy.arch["actor"]["obs_dim"], policy.arch["actor"]["act_dim"]) == (9, 3)
        assert sorted(policy.arch["obs_fields"]) == ["goal", "position", "velocity"]
    finally:
        learner.stop()
