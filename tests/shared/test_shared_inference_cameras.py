"""Camera frames in an ActRequest (shared.protocol.act_cameras): raw and zstd frames cross the link intact,
a state-only request keeps its old bytes, a broken structure is a protocol error, and frames that do
not fit the negotiated spec or the byte limit are refused with a reason while the link stays open."""

from __future__ import annotations

import random
from dataclasses import replace

import msgpack
import numpy as np
import pytest

from harness.protocol import open_link, raw_frame
from shared import compression
from shared.errors import FleetError, ProtocolError
from shared.protocol import ActRequest, CloudConnection, EdgeConnection, MsgType, State, inference
from shared.protocol import act_cameras as ac
from shared.protocol.frames import HEADER
from shared.protocol.limits import Limits

SPEC = {"observation": {"pos": {"shape": [3], "dtype": "float32"},
                        "front": {"shape": [8, 6, 3], "dtype": "uint8"},
                        "wrist": {"shape": [4, 4, 1], "dtype": "uint8"}}, "action_dim": 2}
OBS = {"pos": np.arange(3, dtype=np.float32).tobytes()}
RNG = np.random.default_rng(0)
FRONT = RNG.integers(0, 256, (8, 6, 3), dtype=np.uint8)
WRIST = np.full((4, 4, 1), 7, np.uint8)


def link(limits: Limits | None = None) -> tuple[EdgeConnection, CloudConnection]:
    edge, cloud = open_link(SPEC, (inference.FEATURE,))
    if limits is not None:
        cloud.limits = limits
    return edge, cloud


def cams(codec: str = "raw", **extra: np.ndarray) -> dict[str, ac.CameraFrame]:
    frames = {"front": FRONT, "wrist": WRIST, **extra}
    return {n: ac.frame(a.tobytes(), a.shape, codec) for n, a in frames.items()}


def with_body(type_: int, meta: dict, body: bytes) -> bytes:
    packed = msgpack.packb(meta, use_bin_type=True)
    return HEADER.pack(b"FL", 1, int(type_), len(packed), len(body)) + packed + body


def encoded(frames: dict[str, ac.CameraFrame], obs: dict | None = None) -> bytes:
    """A request as a (possibly hostile) robot would send it, unchecked by the robot's own end."""
    req = ActRequest(1, 2, OBS if obs is None else obs, 0, frames)
    return with_body(MsgType.ACT_REQUEST, req.meta(), req.body)


@pytest.mark.parametrize("codec", ["raw", "zstd"])
def test_camera_frames_cross_the_link_intact_raw_or_compressed(codec):
    edge, cloud = link()
    req = cloud.receive(edge.act_request(7, 11, OBS, 3, cams(codec)))
    assert isinstance(req, ActRequest) and req.refusal is None and req.obs == OBS
    assert {n: (f.shape, f.codec) for n, f in req.cameras.items()} == {"front": ((8, 6, 3), "raw"),
                                                                       "wrist": ((4, 4, 1), "raw")}
    assert req.cameras["front"].data == FRONT.tobytes() and req.cameras["wrist"].data == WRIST.tobytes()
    assert cloud.state is State.OPEN


def test_a_state_only_request_is_the_same_bytes_as_before_cameras():
    edge, _ = link()
    before = raw_frame(MsgType.ACT_REQUEST, {"id": 7, "step": 11, "obs": OBS, "policy_version": 3})
    assert edge.act_request(7, 11, OBS, 3) == edge.act_request(7, 11, OBS, 3, {}) == before


def test_a_camera_only_request_needs_no_state_fields():
    edge, cloud = link()
    req = cloud.receive(edge.act_request(1, 0, {}, 0, cams()))
    assert req.obs == {} and set(req.cameras) == {"front", "wrist"}
    with pytest.raises(ProtocolError, match="1 to 64 fields"):  # no state and no cameras: still refused
        cloud.receive(raw_frame(MsgType.ACT_REQUEST, {"id": 1, "step": 0, "obs": {}}))


def _meta(**change) -> list[dict]:
    m = {"name": "wrist", "shape": [4, 4, 1], "codec": "raw", "size": 16}
    return [{**m, **change}]


@pytest.mark.parametrize("cameras,body,why", [
    ("x", b"", "must be a list"),
    ([], b"", "1 to 16 frames"),
    ([{"name": f"c{i}", "shape": [1, 1, 1], "codec": "raw", "size": 1} for i in range(17)], b"\0" * 17,
     "1 to 16 frames"),
    (["wrist"], b"\0" * 16, "must be a map"),
    (_meta(name="a/../b"), b"\0" * 16, "not a valid field name"),
    (_meta(name=5), b"\0" * 16, "not a valid field name"),
    (_meta(name="pos"), b"\0" * 16, "appears twice"),
    (_meta() * 2, b"\0" * 32, "appears twice"),
    (_meta(shape=[4, 4]), b"\0" * 16, "must be [H, W, C]"),
    (_meta(shape="4x4x1"), b"\0" * 16, "must be [H, W, C]"),
    (_meta(shape=[0, 4, 1]), b"", "shape[0] must be an int"),
    (_meta(shape=[4, 4.0, 1]), b"\0" * 16, "shape[1] must be an int"),
    (_meta(shape=[4, 4, 99]), b"\0" * 16, "shape[2] must be an int"),
    (_meta(shape=[1 << 20, 4, 1]), b"\0" * 16, "shape[0] must be an int"),
    (_meta(codec="png"), b"\0" * 16, "codec must be one of"),
    (_meta(size=17), b"\0" * 16, "size must be an int in 0..16"),
    (_meta(size=-1), b"\0" * 16, "size must be an int"),
    (_meta(size=True), b"\0" * 16, "size must be an int"),
    (_meta(size=8), b"\0" * 8, "holds 8 bytes, not 16"),
    (_meta(), b"\0" * 20, "body holds 20 bytes, its cameras 16"),
    (None, b"\0" * 4, "no cameras"),
])
def test_a_broken_camera_structure_is_a_protocol_error_by_name(cameras, body, why):
    _, cloud = link()
    meta = {"id": 1, "step": 0, "obs": OBS, **({} if cameras is None else {"cameras": cameras})}
    with pytest.raises(ProtocolError) as e:
        cloud.receive(with_body(MsgType.ACT_REQUEST, meta, body))
    assert e.value.code == "bad_meta" and why in e.value.message


def _zstd(raw: bytes) -> bytes:
    return compression.compress(raw)


@pytest.mark.parametrize("frames,code,why", [
    ({"rear": ac.CameraFrame((4, 4, 1), "raw", bytes(16))}, "bad_observation", "'rear' is not in this robot's spec"),
    ({"wrist": ac.CameraFrame((4, 2, 2), "raw", bytes(16))}, "bad_observation", "'wrist' is 4x2x2, the robot's spec "
     "says 4x4x1"),
    ({"wrist": ac.CameraFrame((4, 4, 1), "zstd", b"\x28\xb5\x2f\xfd garbage")}, "bad_observation", "camera 'wrist'"),
    ({"wrist": ac.CameraFrame((4, 4, 1), "zstd", _zstd(bytes(15)))}, "bad_observation", "holds 15 bytes"),
    ({"wrist": ac.CameraFrame((4, 4, 1), "zstd", _zstd(bytes(17)))}, "bad_observation", "exceeds limit 16"),
    ({"wrist": ac.CameraFrame((4, 4, 1), "zstd", _zstd(bytes(16))[:-2])}, "bad_observation", "truncated"),
    ({"front": ac.CameraFrame((8, 6, 3), "raw", bytes(144)), "wrist": ac.CameraFrame((4, 4, 1), "raw", bytes(16))},
     "observation_too_large", "160 bytes, over limits.max_act_camera_bytes (100)"),
])
def test_frames_that_do_not_fit_the_spec_are_refused_with_a_reason_and_the_link_lives(frames, code, why):
    _, cloud = link(Limits(max_act_camera_bytes=100))
    req = cloud.receive(encoded(frames))
    assert isinstance(req, ActRequest) and req.cameras == {} and req.refusal is not None
    assert req.refusal[0] == code and code in inference.REFUSALS and why in req.refusal[1]
    assert cloud.state is State.OPEN
    ok = cloud.receive(encoded({"wrist": ac.CameraFrame((4, 4, 1), "raw", bytes(16))}))  # the next one is served
    assert ok.refusal is None and ok.cameras["wrist"].data == bytes(16)


def test_the_robot_cannot_encode_a_frame_its_own_spec_or_limit_refuses():
    edge, _ = link()
    with pytest.raises(ProtocolError, match="'wrist' is 2x8x1"):
        edge.act_request(1, 0, OBS, 0, {"wrist": ac.frame(bytes(16), (2, 8, 1))})
    with pytest.raises(ProtocolError, match="not in this robot's spec"):
        edge.act_request(1, 0, OBS, 0, {"rear": ac.frame(bytes(16), (4, 4, 1))})
    with pytest.raises(ProtocolError, match="holds 15 bytes"):
        edge.act_request(1, 0, OBS, 0, {"wrist": ac.CameraFrame((4, 4, 1), "raw", bytes(15))})
    edge.limits = Limits(max_act_camera_bytes=10)
    with pytest.raises(ProtocolError, match="max_act_camera_bytes"):
        edge.act_request(1, 0, OBS, 0, {"wrist": ac.frame(bytes(16), (4, 4, 1))})


def test_a_refused_request_keeps_its_id_and_step_for_the_answer():
    _, cloud = link()
    req = cloud.receive(encoded({"wrist": ac.CameraFrame((1, 1, 1), "raw", b"\0")}))
    assert (req.id, req.step) == (1, 2) and req == replace(req, refusal=req.refusal)
    assert "refusal" not in req.meta() and req.body == b""


@pytest.mark.parametrize("codec", ["raw", "zstd"])
def test_fuzzed_camera_requests_are_refused_cleanly_never_crash(codec):
    rng = random.Random(1)
    _, cloud = link()
    good = encoded(cams(codec))
    outcomes = set()
    for _ in range(3000):
        b = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        try:
            req = cloud.receive(bytes(b))
        except FleetError:
            outcomes.add("error")
        else:
            if isinstance(req, ActRequest):
                outcomes.add("refused" if req.refusal else "served")
                for name, f in req.cameras.items():  # whatever got through is exactly the spec's shape, raw
                    assert f.codec == "raw" and len(f.data) == f.raw_size and f.shape == ac.spec_shapes(SPEC)[name]
        cloud.state = State.OPEN  # a reject frame would close it; keep fuzzing the open state
    assert "error" in outcomes and "served" in outcomes
    assert cloud.receive(good).refusal is None


def test_a_chunk_names_the_cameras_its_policy_read_and_a_state_chunk_keeps_its_bytes():
    edge, cloud = link()
    acts = np.zeros((2, 2), np.float32)
    got = edge.receive(cloud.act_chunk(1, 0, 3, acts, cameras=("front",)))
    assert got.cameras == ("front",)
    plain = cloud.act_chunk(1, 0, 3, acts)
    assert edge.receive(plain).cameras == () and b"cameras" not in plain
    good = {"id": 1, "start_step": 0, "policy_version": 1, "horizon": 1, "action_dim": 2, "actions": acts[0].tobytes()}
    for bad, why in (("front", "must be a list"), (["a/b"], "not a valid field name"), ([1], "not a valid field name"),
                     ([f"c{i}" for i in range(17)], "at most 16")):
        with pytest.raises(ProtocolError, match=why):
            edge.receive(raw_frame(MsgType.ACT_CHUNK, {**good, "cameras": bad}))
