"""Action chunks from stored steps (cloud.learner.chunks) and the flow policy's SFT (cloud.learner.flow_sft):
no chunk crosses into another episode or over a lost range; padding repeats the last action and is marked."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from cloud.learner.chunks import build_chunks, chunk_indices, table_chunks
from cloud.learner.flow_sft import CHUNK, CHUNK_VALID, FlowSFT, chunk_batch, train_offline
from shared.schema import EpisodeSpec, FieldSpec


def _episodes(lengths: list[int], act_dim: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows of consecutive episodes; each action encodes (episode, step) so a chunk shows where it came from."""
    ep = np.concatenate([np.full(n, i) for i, n in enumerate(lengths)])
    step = np.concatenate([np.arange(n) for n in lengths])
    actions = np.stack([ep * 100 + step] * act_dim, axis=1).astype(np.float32)
    obs = np.stack([ep, step], axis=1).astype(np.float32)
    return obs, actions, ep, step


def test_chunks_stay_inside_their_episode_and_pad_with_its_last_action() -> None:
    obs, actions, ep, step = _episodes([5, 2, 4])
    c = build_chunks(obs, actions, ep, step, horizon=3)
    assert len(c) == 11 and c.actions.shape == (11, 3, 2) and c.valid.shape == (11, 3)
    for i in range(11):
        src = c.actions[i, :, 0]
        assert np.all(src // 100 == ep[i]), f"row {i}'s chunk crossed into another episode: {src}"
    # episode 0 (steps 0..4): row 3 -> steps 3, 4, then 4 again (padding)
    np.testing.assert_array_equal(c.actions[3, :, 0], [3, 4, 4])
    np.testing.assert_array_equal(c.valid[3], [True, True, False])
    np.testing.assert_array_equal(c.actions[4, :, 0], [4, 4, 4])
    np.testing.assert_array_equal(c.valid[4], [True, False, False])
    # episode 1 has two steps: its first row's chunk is step 0, step 1, then step 1 repeated
    np.testing.assert_array_equal(c.actions[5, :, 0], [100, 101, 101])
    # a chunk fully inside its episode has nothing padded
    np.testing.assert_array_equal(c.actions[7, :, 0], [200, 201, 202])
    assert c.valid[7].all()
    np.testing.assert_array_equal(c.obs, obs)


def test_a_lost_range_ends_a_run_like_an_episode_end() -> None:
    ep = np.zeros(6, int)
    step = np.array([0, 1, 2, 5, 6, 7])  # steps 3 and 4 were lost
    idx, valid = chunk_indices(ep, step, 4)
    np.testing.assert_array_equal(idx[1], [1, 2, 2, 2])  # stops before the gap
    np.testing.assert_array_equal(valid[1], [True, True, False, False])
    np.testing.assert_array_equal(idx[3], [3, 4, 5, 5])


def test_horizon_one_is_the_plain_action() -> None:
    obs, actions, ep, step = _episodes([3, 3])
    c = build_chunks(obs, actions, ep, step, horizon=1)
    np.testing.assert_array_equal(c.actions[:, 0], actions)
    assert c.valid.all()


@pytest.mark.parametrize(("ep", "step", "horizon", "match"), [
    ([0, 0, 0], [0, 2, 1], 3, "ordered by episode and step: row 2"),
    ([0, 0], [0, 0], 3, "ordered by episode and step"),
    ([0, 0], [0, 1, 2], 3, "one entry per row"),
    ([0, 0], [0, 1], 0, "horizon must be an int >= 1"),
])
def test_bad_rows_are_refused(ep: list[int], step: list[int], horizon: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        chunk_indices(np.array(ep), np.array(step), horizon)


def test_stored_rows_in_any_order_give_per_episode_chunks() -> None:
    spec = EpisodeSpec({"joints": FieldSpec((2,)), "goal": FieldSpec((1,))}, action_dim=2)
    schema = spec.arrow_schema()
    rows = []
    # two robots whose episodes share an id, interleaved as chunks from several robots land in a segment
    for robot, n in (("r1", 4), ("r2", 3)):
        for s in range(n):
            v = float({"r1": 0, "r2": 10}[robot] + s)
            rows.append({"robot_id": robot, "episode_id": "ep-1", "step": s, "joints": [v, v], "goal": [v],
                         "action": [v, -v]})
    rows = rows[::2] + rows[1::2]
    cols = {"robot_id": [r["robot_id"] for r in rows], "episode_id": [r["episode_id"] for r in rows],
            "step": [r["step"] for r in rows], "obs.joints": [r["joints"] for r in rows],
            "obs.goal": [r["goal"] for r in rows], "action": [r["action"] for r in rows]}
    table = pa.table({k: pa.array(v, schema.field(k).type) for k, v in cols.items()})
    c = table_chunks(table, ["joints", "goal"], horizon=3)
    assert len(c) == 7
    np.testing.assert_array_equal(c.obs[:, 2], [0, 1, 2, 3, 10, 11, 12])  # sorted by robot, episode, step
    np.testing.assert_array_equal(c.actions[2, :, 0], [2, 3, 3])  # r1's last steps, padded with its own
    np.testing.assert_array_equal(c.actions[4, :, 0], [10, 11, 12])  # r2's episode of the same id: its own
    np.testing.assert_array_equal(c.actions[4, :, 1], [-10, -11, -12])
    with pytest.raises(ValueError, match="lack observation fields"):
        table_chunks(table, ["wrist"], horizon=3)
    with pytest.raises(ValueError, match=r"need columns \['step'\]"):
        table_chunks(table.drop_columns(["step"]), ["joints"], horizon=3)


@pytest.mark.usefixtures("one_torch_thread")
def test_flow_sft_fits_demonstrated_chunks_and_resumes_exactly() -> None:
    rng = np.random.default_rng(0)
    lengths = [20] * 8
    ep = np.concatenate([np.full(n, i) for i, n in enumerate(lengths)])
    step = np.concatenate([np.arange(n) for n in lengths])
    goal = rng.uniform(-1, 1, (len(lengths), 2))[ep]
    obs = np.concatenate([goal, step[:, None] / 20.0], axis=1).astype(np.float32)
    actions = (0.5 * goal * (1 - step[:, None] / 20.0)).astype(np.float32)  # a smooth, obs-determined plan
    chunks = build_chunks(obs, actions, ep, step, horizon=4)
    sft = train_offline(chunks, updates=400, batch_size=64, hidden=(64, 64), steps=8)
    pred = sft.actor.sample(torch.from_numpy(obs), deterministic=True).numpy()
    err = float(np.mean(((pred - chunks.actions) ** 2)[chunks.valid]))
    assert err < 0.1 * float(np.mean(chunks.actions[chunks.valid] ** 2))

    a = FlowSFT(3, 2, horizon=4, hidden=(16,), seed=3)
    b = FlowSFT(3, 2, horizon=4, hidden=(16,), seed=4)
    rng_a = np.random.default_rng(1)
    a.update(chunk_batch(chunks, 16, rng_a))
    b.load_state_dict(a.state_dict())
    batch = chunk_batch(chunks, 16, rng_a)
    assert a.update(batch) == b.update(batch)
    assert b.updates == 2
    with pytest.raises(ValueError, match="does not match this learner"):
        FlowSFT(3, 2, horizon=5, hidden=(16,)).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match=f"no {CHUNK!r}"):
        a.update({"obs": batch["obs"], "action": batch[CHUNK][:, 0]})
    assert set(batch) == {"obs", CHUNK, CHUNK_VALID}
