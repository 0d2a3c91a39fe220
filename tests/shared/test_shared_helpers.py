"""The one home of each helper both sides use: action scaling, observation
flattening, the chunk builder, the rate meter and the verified policy load.

Each was written two or three times (robot, sim worker, learner, bench); these
pin the behaviour all of them now share, on real arrays, chunks and networks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.actions import ActionScale
from shared.chunk import StepRecord, decode_chunk, make_chunk, single_value
from shared.errors import WeightsError
from shared.metrics import RateMeter
from shared.observations import flatten, flatten_batch, state_sizes
from shared.policy import Actor
from shared.policy_runner import load_policy
from shared.protocol import Chunk
from shared.schema import EpisodeSpec, FieldSpec
from shared.weights import decode_weights, encode_weights

SPEC = EpisodeSpec({"joints": FieldSpec((3,)), "goal": FieldSpec((2,)), "cam": FieldSpec((4, 4, 3), "uint8", codec="raw")},
                   action_dim=2, action_low=(-2.0, 0.0), action_high=(2.0, 10.0))


def _obs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"joints": rng.normal(size=3).astype(np.float32), "goal": rng.normal(size=2).astype(np.float32),
            "cam": rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)}


# ---------------------------------------------------------------- actions


def test_action_scale_maps_the_policy_range_onto_the_robots_and_back() -> None:
    s = ActionScale(SPEC.action_low, SPEC.action_high)
    np.testing.assert_allclose(s.to_robot(np.array([-1.0, -1.0])), [-2.0, 0.0])
    np.testing.assert_allclose(s.to_robot(np.array([1.0, 1.0])), [2.0, 10.0])
    np.testing.assert_allclose(s.to_robot(np.array([0.0, 0.0])), [0.0, 5.0])
    a = np.random.default_rng(0).uniform(-1, 1, (100, 2)).astype(np.float32)
    np.testing.assert_allclose(s.normalise(s.to_robot(a)), a, atol=1e-6)  # the learner trains on what the robot did


def test_action_scale_defaults_and_a_fixed_dimension() -> None:
    s = ActionScale.for_spec(None, None, 3)  # no bounds: the robot already speaks [-1, 1]
    x = np.array([0.3, -1.0, 1.0], np.float32)
    np.testing.assert_allclose(s.to_robot(x), x, atol=1e-6)
    np.testing.assert_allclose(s.normalise(x), x, atol=1e-6)
    fixed = ActionScale([1.0], [1.0])  # low == high: normalises to 0, never inf/nan
    assert np.isfinite(fixed.normalise(np.array([1.0]))).all()
    with pytest.raises(ValueError, match="shape"):
        ActionScale([0.0, 0.0], [1.0])


def test_random_exploration_is_in_bounds_and_the_stream_the_loop_always_drew() -> None:
    s = ActionScale(SPEC.action_low, SPEC.action_high)
    one = s.sample(np.random.default_rng(5))
    assert one.dtype == np.float32 and one.shape == (2,)
    ref = np.random.default_rng(5).uniform(s.low, s.high).astype(np.float32)  # what the control loop did inline
    np.testing.assert_array_equal(one, ref)
    many = s.sample(np.random.default_rng(6), 500)
    assert many.shape == (500, 2) and (many >= s.low).all() and (many <= s.high).all()


# ---------------------------------------------------------------- observations


def test_flatten_follows_the_policys_field_order_not_the_dicts() -> None:
    obs = {"joints": np.array([1, 2, 3]), "goal": np.array([[4, 5]])}
    np.testing.assert_array_equal(flatten(obs, ["goal", "joints"]), [4, 5, 1, 2, 3])
    assert flatten(obs, ["joints"]).dtype == np.float32
    batch = flatten_batch([obs, {"joints": np.zeros(3), "goal": np.ones(2)}], ["joints", "goal"])
    np.testing.assert_array_equal(batch, [[1, 2, 3, 4, 5], [0, 0, 0, 1, 1]])
    assert state_sizes(SPEC) == {"joints": 3, "goal": 2}  # images are not state


# ---------------------------------------------------------------- chunks


def test_make_chunk_is_what_the_receiver_decodes() -> None:
    rng = np.random.default_rng(1)
    obs = [_obs(rng) for _ in range(8)]
    steps = [StepRecord(obs[i], np.array([0.5, 3.0]), -1.0, obs[i + 1], False, i == 6, step=i) for i in range(7)]
    c = make_chunk(SPEC, "arm-1", "ep-1", steps)
    msg = c.message(42)
    assert isinstance(msg, Chunk) and (msg.seq, msg.episode_id, msg.rows) == (42, "ep-1", 7)
    batch = decode_chunk(msg.body, SPEC, max_decompressed=1 << 20, max_rows=100)
    assert batch.num_rows == 7 and single_value(batch, "robot_id") == "arm-1"
    assert batch.nbytes == c.raw_size
    import zlib

    assert zlib.crc32(c.body) == c.crc32


# ---------------------------------------------------------------- rate meter


def test_rate_meter_measures_between_readings_and_ignores_a_too_close_one() -> None:
    m = RateMeter()
    assert m.update(0, now=10.0) == 0.0
    assert m.update(100, now=12.0) == 50.0
    slow = RateMeter(min_interval_s=0.5)
    slow.update(0, now=0.0)
    assert slow.update(10, now=1.0) == 10.0
    assert slow.update(1000, now=1.1) == 10.0  # 0.1 s after the last: keeps the last rate
    assert slow.update(30, now=2.0) == 20.0  # measured from the last taken reading (1.0 s, 10)


# ---------------------------------------------------------------- verified policy load


def _weights(obs_fields: list[str], obs_dim: int, act_dim: int = 2, version: int = 3):
    torch.manual_seed(0)
    actor = Actor(obs_dim, act_dim, hidden=(16,))
    blob = encode_weights(actor.state_dict(), version, {"actor": actor.arch(), "obs_fields": obs_fields})
    return actor, decode_weights(blob.data, blob.sha256, 1 << 26)


def test_loaded_policy_acts_like_its_network_one_at_a_time_or_batched() -> None:
    actor, w = _weights(["goal", "joints"], 5)
    p = load_policy(w, state_sizes(SPEC), 2, max_params=10_000)
    rng = np.random.default_rng(2)
    obs = [_obs(rng) for _ in range(4)]
    x = torch.from_numpy(flatten_batch(obs, ["goal", "joints"]))
    expect = actor.act(x, deterministic=True).numpy()
    np.testing.assert_allclose(p.act_batch(obs, deterministic=True), expect, atol=1e-6)
    np.testing.assert_allclose(p.act(obs[1], deterministic=True), expect[1], atol=1e-6)
    assert p.version == 3 and p.obs_fields == ("goal", "joints")


def test_load_policy_refuses_what_does_not_fit() -> None:
    _, w = _weights(["joints", "cam"], 3 + 48)
    with pytest.raises(WeightsError, match="does not have"):
        load_policy(w, state_sizes(SPEC), 2, max_params=100_000)
    _, w = _weights(["joints"], 3)
    with pytest.raises(WeightsError, match="limit 10 ") as e:
        load_policy(w, state_sizes(SPEC), 2, max_params=10)
    assert e.value.code == "too_large"
    with pytest.raises(WeightsError, match="does not fit"):
        load_policy(w, state_sizes(SPEC), 3, max_params=100_000)
