"""Cloud inference on the link (robot -> ActRequest -> learner -> ActChunk): the hello feature that offers
it, every field check, and the refusals, through the two sans-I/O connection ends."""

from __future__ import annotations

import random

import numpy as np
import pytest

from harness.protocol import open_link, raw_frame
from shared.errors import FleetError, InvalidState, ProtocolError
from shared.protocol import (ActChunk, ActRequest, CloudConnection, EdgeConnection, MsgType, State, decode_frame,
                             inference)

SPEC = {"fields": {}, "action_dim": 2}
OBS = {"pos": np.arange(3, dtype=np.float32).tobytes(), "goal": np.ones(2, np.float32).tobytes()}


def frame(type_: int, meta: dict) -> bytes:
    return raw_frame(type_, meta)


def link(features: tuple[str, ...] = (inference.FEATURE,)) -> tuple[EdgeConnection, CloudConnection]:
    return open_link(SPEC, features)


def test_a_request_and_its_chunk_cross_the_link_intact():
    edge, cloud = link()
    req = cloud.receive(edge.act_request(7, 123, OBS, policy_version=4))
    assert req == ActRequest(7, 123, OBS, 4) and req.TYPE is MsgType.ACT_REQUEST == 14
    actions = np.linspace(-1, 1, 20, dtype=np.float32).reshape(10, 2)
    got = edge.receive(cloud.act_chunk(7, 123, 9, actions))
    assert isinstance(got, ActChunk) and got.TYPE is MsgType.ACT_CHUNK == 15
    assert (got.id, got.start_step, got.policy_version, got.horizon, got.action_dim) == (7, 123, 9, 10, 2)
    assert np.array_equal(np.frombuffer(got.actions, "<f4").reshape(10, 2), actions)
    assert cloud.takes_inference and cloud.state is State.OPEN and edge.state is State.OPEN


def test_a_refusal_carries_its_code_and_no_actions():
    edge, cloud = link()
    got = edge.receive(cloud.act_chunk(1, 5, 0, code=inference.RATE_LIMITED, message="over 20 requests/s"))
    assert got == ActChunk(1, 5, 0, code="rate_limited", message="over 20 requests/s")


def test_the_robot_offers_the_feature_only_when_configured_and_both_ends_hold_to_it():
    edge, cloud = link(features=())
    assert not cloud.takes_inference
    with pytest.raises(InvalidState):
        edge.act_request(1, 0, OBS)  # the robot cannot send one
    with pytest.raises(InvalidState):
        cloud.act_chunk(1, 0, 0, np.zeros((1, 2), np.float32))  # the learner never answers such a robot
    # A robot that sends one anyway (a bug, or hostile) broke the negotiation: refused, bad_state.
    with pytest.raises(ProtocolError) as e:
        cloud.receive(frame(MsgType.ACT_REQUEST, {"id": 1, "step": 0, "obs": OBS}))
    assert e.value.code == "bad_state"


def test_the_robot_does_not_take_a_request_and_the_learner_does_not_take_a_chunk():
    edge, cloud = link()
    with pytest.raises(ProtocolError) as e:
        edge.receive(frame(MsgType.ACT_REQUEST, {"id": 1, "step": 0, "obs": OBS}))
    assert e.value.code == "bad_state"
    with pytest.raises(ProtocolError) as e:
        cloud.receive(frame(MsgType.ACT_CHUNK, {"id": 1, "start_step": 0, "policy_version": 0, "code": "no_policy"}))
    assert e.value.code == "bad_state"


F = np.float32


@pytest.mark.parametrize("meta,why", [
    ({"step": 0, "obs": OBS}, "lacks field 'id'"),
    ({"id": -1, "step": 0, "obs": OBS}, "out of range"),
    ({"id": 2**32, "step": 0, "obs": OBS}, "out of range"),
    ({"id": True, "step": 0, "obs": OBS}, "must be int"),
    ({"id": 1, "step": 0, "obs": {}}, "1 to 64 fields"),
    ({"id": 1, "step": 0, "obs": []}, "must be a map"),
    ({"id": 1, "step": 0}, "must be a map"),
    ({"id": 1, "step": 0, "obs": {"p": b"abc"}}, "whole float32"),
    ({"id": 1, "step": 0, "obs": {"p": [1.0, 2.0]}}, "bytes of float32"),
    ({"id": 1, "step": 0, "obs": {"p": np.array([np.nan], F).tobytes()}}, "NaN or inf"),
    ({"id": 1, "step": 0, "obs": {"p": np.array([np.inf], F).tobytes()}}, "NaN or inf"),
    ({"id": 1, "step": 0, "obs": {"p/../x": b"\0\0\0\0"}}, "not a valid field name"),
    ({"id": 1, "step": 0, "obs": {"p": np.zeros(inference.MAX_FIELD_FLOATS + 1, F).tobytes()}}, "more than"),
    ({"id": 1, "step": 0, "obs": {f"f{i}": b"\0\0\0\0" for i in range(65)}}, "1 to 64 fields"),
])
def test_every_bad_request_field_is_refused_by_name(meta, why):
    _, cloud = link()
    with pytest.raises(ProtocolError) as e:
        cloud.receive(frame(MsgType.ACT_REQUEST, meta))
    assert e.value.code in ("bad_meta", "frame_too_large") and (why in e.value.message or e.value.code != "bad_meta")


GOOD = {"id": 1, "start_step": 0, "policy_version": 1, "horizon": 2, "action_dim": 1,
        "actions": np.array([0.5, -0.5], F).tobytes()}


@pytest.mark.parametrize("change,why", [
    ({"horizon": 3}, "not 3x1"),
    ({"horizon": 0}, "horizon must be an int in 1..1024"),
    ({"horizon": 2000}, "horizon must be an int"),
    ({"action_dim": 5000}, "action_dim must be an int"),
    ({"action_dim": 1.0}, "action_dim must be an int"),
    ({"actions": np.array([0.5, 1.5], F).tobytes()}, "leave [-1, 1]"),
    ({"actions": np.array([0.5, np.nan], F).tobytes()}, "NaN or inf"),
    ({"actions": b"\0" * 7}, "whole float32"),
    ({"actions": "xx"}, "bytes of float32"),
    ({"code": 5}, "short string"),
    ({"message": 5}, "message must be str"),
    ({"start_step": -3}, "out of range"),
])
def test_every_bad_chunk_field_is_refused_by_name(change, why):
    edge, _ = link()
    with pytest.raises(ProtocolError) as e:
        edge.receive(frame(MsgType.ACT_CHUNK, {**GOOD, **change}))
    assert e.value.code == "bad_meta" and why in e.value.message


def test_the_learner_cannot_encode_a_chunk_the_robot_would_refuse():
    _, cloud = link()
    with pytest.raises(ProtocolError):
        cloud.act_chunk(1, 0, 0, np.full((2, 2), 3.0, F))
    with pytest.raises(ProtocolError):
        cloud.act_chunk(1, 0, 0, np.zeros(4, F))


def test_fuzzed_act_frames_are_refused_cleanly_never_crash():
    rng = random.Random(0)
    edge, cloud = link()
    good_req = frame(MsgType.ACT_REQUEST, {"id": 1, "step": 2, "obs": OBS})
    good_chunk = frame(MsgType.ACT_CHUNK, GOOD)
    for _ in range(3000):
        for end, data in ((cloud, good_req), (edge, good_chunk)):
            b = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            try:
                end.receive(bytes(b))
            except FleetError:
                pass
            end.state = State.OPEN  # a reject frame would close it; keep fuzzing the open state
    assert decode_frame(good_req, cloud.limits).type is MsgType.ACT_REQUEST
