"""The policy server serving camera policies (cnn_gaussian: one action; cnn_flow: action chunks) to robots
that send frames over real websockets: the answer is the policy's own action or chunk for those pixels, raw
or zstd frames alike; several robots' requests share one forward pass and each robot's chunk follows its
own frames only; a request whose frames do not fit the robot's spec, miss a camera the policy reads, or
pass the byte limit is refused with the reason (the same for either kind), and the same link is served on
its next request."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np
import pytest
import torch
from websockets.asyncio.client import connect

from cloud.app import make_app, snapshot
from cloud.keys import POLICY_SERVER
from harness.inproc import serving
from harness.policies import cnn_flow_policy_file, cnn_policy_file
from harness.protocol import next_chunk
from shared.config import LearnerConfig
from shared.observations import image_shapes, state_sizes
from shared.policy_runner import load_policy
from shared.protocol import ActChunk, ActRequest, EdgeConnection, Limits, Welcome, inference
from shared.protocol import act_cameras as ac
from shared.protocol.frames import MsgType, encode_frame
from shared.schema import EpisodeSpec, FieldSpec
from shared.weights import load_weights_file

HWC = (16, 16, 3)
SPEC = EpisodeSpec(observation={"pos": FieldSpec((3,)), "front": FieldSpec(HWC, "uint8"),
                                "wrist": FieldSpec(HWC, "uint8")}, action_dim=2,
                   action_low=(-1.0,) * 2, action_high=(1.0,) * 2)
HORIZON = {"cnn_gaussian": 1, "cnn_flow": 6}  # actions per answer
TIMEOUT = 10.0
Link = Callable[..., Awaitable[tuple[Any, EdgeConnection]]]


def _obs(seed: int) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    pos = rng.standard_normal(3).astype(np.float32)
    front = rng.integers(0, 256, HWC, dtype=np.uint8)
    return {"pos": pos.tobytes()}, {"pos": pos, "front": front}


def _policy_file(tmp: Path, kind: str) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)  # reads "front" only, not "wrist"
    if kind == "cnn_flow":
        return cnn_flow_policy_file(tmp / "cnn_flow.safetensors", ["pos"], 3, 2, [("front", HWC)],
                                    horizon=HORIZON[kind], version=5)
    return cnn_policy_file(tmp / "cnn.safetensors", ["pos"], 3, 2, [("front", HWC)], version=5)


@contextlib.asynccontextmanager
async def serve(tmp: Path, kind: str = "cnn_gaussian", max_camera_bytes: int = 16 << 20,
                **inference_cfg: Any) -> AsyncIterator[tuple[Any, Link, Path]]:
    """A learner app serving a ``kind`` policy file; yields it, ``link(robot_id)`` (a robot's websocket and
    connection, past the handshake, closed before the app stops) and the weights file."""
    weights = await asyncio.to_thread(_policy_file, tmp, kind)
    cfg = LearnerConfig(
        data_dir=tmp / "run", server={"host": "127.0.0.1", "port": 0, "auth": "open"},
        learner={"learning_starts": 10**9, "hidden": [16, 16], "batch_size": 8},
        limits={"max_act_camera_bytes": max_camera_bytes},
        # A loaded machine may take more than the default 100 ms to load the policy for the first request:
        # these tests are about frames, not the budget (tests/cloud/test_cloud_policy_server.py has it).
        inference={"enabled": True, "weights": str(weights), "batch_window_ms": 5, "latency_budget_ms": 30_000,
                   **inference_cfg},
    )
    app = make_app(cfg)
    async with serving(app) as base, contextlib.AsyncExitStack() as sockets:
        url = base.replace("http", "ws", 1) + "/ws"

        async def link(robot_id: str = "cam-1") -> tuple[Any, EdgeConnection]:
            ws = await sockets.enter_async_context(connect(url, max_size=None, compression=None))
            conn = EdgeConnection(robot_id, SPEC.to_dict(), [], Limits(), None, (inference.FEATURE,))
            conn.receive(await ws.recv())
            await ws.send(conn.hello(0))
            assert isinstance(conn.receive(await ws.recv()), Welcome)
            return ws, conn

        yield app, link, weights


async def answer(ws: Any, conn: EdgeConnection) -> ActChunk:
    return await next_chunk(ws, conn, TIMEOUT)


def actions(chunk: ActChunk) -> np.ndarray:
    return np.frombuffer(chunk.actions, "<f4").reshape(chunk.horizon, chunk.action_dim)


def expected(weights: Path, obs: dict[str, np.ndarray]) -> np.ndarray:
    """The policy's own deterministic chunk [horizon, 2] for ``obs`` alone, computed here, outside the server."""
    policy = load_policy(load_weights_file(weights, None, 1 << 30), state_sizes(SPEC), 2, 10**9,
                         image_fields=image_shapes(SPEC), device=torch.device("cpu"))
    return np.asarray(policy.act_chunk_batch([obs], deterministic=True), np.float32)[0]


def _raw_request(req: ActRequest) -> bytes:
    """A request as a robot that skips its own checks would send it."""
    return encode_frame(MsgType.ACT_REQUEST, req.meta(), req.body)


KINDS = pytest.mark.parametrize("kind", ["cnn_gaussian", "cnn_flow"])


@KINDS
async def test_a_camera_policy_answers_with_its_own_chunk_for_the_frames(tmp_path: Path, kind: str) -> None:
    async with serve(tmp_path, kind) as (app, link, weights):
        ws, conn = await link()
        for i, codec in enumerate(("raw", "zstd")):
            state, obs = _obs(i)
            wrist = np.zeros(HWC, np.uint8)
            await ws.send(conn.act_request(i + 1, 10 * i, state, 0, {
                "front": ac.frame(obs["front"].tobytes(), HWC, codec), "wrist": ac.frame(wrist.tobytes(), HWC, codec)}))
            got = await answer(ws, conn)
            assert (got.id, got.start_step, got.policy_version, got.code) == (i + 1, 10 * i, 5, "")
            assert got.cameras == ("front",)  # what the policy read: the robot sends only that one next
            acts = actions(got)
            want = await asyncio.to_thread(expected, weights, obs)
            assert acts.shape == (HORIZON[kind], 2) and np.allclose(acts, want, atol=1e-5)
        # Other pixels, another chunk: the frames reach the network (not zeros, not a cached answer).
        state, obs = _obs(0)
        obs["front"] = 255 - obs["front"]
        await ws.send(conn.act_request(9, 0, state, 0, {"front": ac.frame(obs["front"].tobytes(), HWC)}))
        other = actions(await answer(ws, conn))
        assert np.allclose(other, await asyncio.to_thread(expected, weights, obs), atol=1e-5)
        assert not np.allclose(other, acts, atol=1e-3)
        inf = snapshot(app)["inference"]
        assert inf["served"] == 3 and not inf["refusals"]
        assert inf["camera_frames"] == {"front": 3, "wrist": 2} and inf["camera_bytes"] == 5 * 16 * 16 * 3


async def test_cnn_flow_chunks_for_several_robots_share_a_batch_and_follow_each_robots_own_frames(
        tmp_path: Path) -> None:
    """Four camera robots' requests go through the cnn_flow policy in one forward pass (max_batch = 4 closes
    the batch when the fourth arrives, well inside the window). All send the same state, so their chunks
    differ by their frames alone; each is the policy's chunk for that robot's observation computed on its
    own, and when one robot's frames change, only its chunk does."""
    robots = 4
    async with serve(tmp_path, "cnn_flow", max_batch=robots, batch_window_ms=1_000) as (app, link, weights):
        links = [await link(f"cam-{i}") for i in range(robots)]
        state, obs = _obs(0)
        frames = [np.random.default_rng(10 + i).integers(0, 256, HWC, dtype=np.uint8) for i in range(robots)]

        async def ask(first_id: int) -> list[np.ndarray]:
            for i, (ws, conn) in enumerate(links):
                codec = "zstd" if i % 2 else "raw"
                await ws.send(conn.act_request(first_id + i, 40, state, 0, {"front": ac.frame(frames[i].tobytes(), HWC,
                                                                                               codec)}))
            got = [await answer(ws, conn) for ws, conn in links]
            assert [(c.id, c.start_step, c.policy_version, c.code, c.cameras) for c in got] == [
                (first_id + i, 40, 5, "", ("front",)) for i in range(robots)]
            return [actions(c) for c in got]

        first = await ask(1)
        for i, chunk in enumerate(first):
            alone = await asyncio.to_thread(expected, weights, {"pos": obs["pos"], "front": frames[i]})
            assert chunk.shape == (HORIZON["cnn_flow"], 2) and np.allclose(chunk, alone, atol=1e-5), i
        for i in range(1, robots):  # the same state: the frames alone set the chunks apart
            assert not np.allclose(first[i], first[0], atol=1e-3), i
        frames[0] = 255 - frames[0]  # robot 0 sees something else; the others send what they sent
        second = await ask(11)
        assert not np.allclose(second[0], first[0], atol=1e-3)
        for i in range(1, robots):
            np.testing.assert_allclose(second[i], first[i], atol=1e-6, err_msg=f"robot {i}")
        inf = snapshot(app)["inference"]
        assert (inf["served"], inf["batches"], inf["max_batch_seen"], inf["refusals"]) == (2 * robots, 2, robots, {})


@KINDS
async def test_frames_that_do_not_fit_are_refused_by_reason_and_the_link_is_served_after(tmp_path: Path,
                                                                                         kind: str) -> None:
    async with serve(tmp_path, kind, max_camera_bytes=1024) as (app, link, _):
        ws, conn = await link()
        state, obs = _obs(0)
        small = {"front": ac.CameraFrame((8, 8, 3), "raw", bytes(192))}  # not the spec's 16x16x3
        await ws.send(_raw_request(ActRequest(1, 0, state, 0, small)))
        got = await answer(ws, conn)
        assert got.code == inference.BAD_OBSERVATION and "16x16x3" in got.message
        await ws.send(conn.act_request(2, 0, state))  # no cameras: the policy reads "front"
        got = await answer(ws, conn)
        assert got.code == inference.BAD_OBSERVATION and "lacks camera 'front'" in got.message
        await ws.send(conn.act_request(3, 0, state, 0, {"wrist": ac.frame(bytes(16 * 16 * 3), HWC, "zstd")}))
        got = await answer(ws, conn)  # a frame that fits, but not the one the policy reads
        assert got.code == inference.BAD_OBSERVATION and "lacks camera 'front'" in got.message
        await ws.send(_raw_request(ActRequest(4, 0, state, 0, {"front": ac.frame(obs["front"].tobytes(), HWC)})))
        got = await answer(ws, conn)  # 768 bytes fit 1024 ...
        assert got.code == "" and got.horizon == HORIZON[kind]
        both = {n: ac.frame(obs["front"].tobytes(), HWC) for n in ("front", "wrist")}
        await ws.send(_raw_request(ActRequest(5, 0, state, 0, both)))
        got = await answer(ws, conn)  # ... 1536 do not
        assert got.code == inference.OBSERVATION_TOO_LARGE and "max_act_camera_bytes (1024)" in got.message
        await ws.send(conn.act_request(6, 0, state, 0, {"front": ac.frame(obs["front"].tobytes(), HWC, "zstd")}))
        got = await answer(ws, conn)
        assert got.code == "" and got.id == 6  # the same link, served
        refusals = app[POLICY_SERVER].refusals
        assert refusals == {inference.BAD_OBSERVATION: 3, inference.OBSERVATION_TOO_LARGE: 1}


def test_a_frame_of_another_shape_than_the_policys_is_not_fed_to_it() -> None:
    """The connection checks frames against the robot's own hello; the server checks them against the spec of
    the group whose policy it runs (the same in practice: a group is one spec), so a forward pass never
    meets a wrong-sized frame and refuses a whole batch."""
    from cloud.policy_server import _observation

    state, obs = _obs(0)
    req = ActRequest(1, 0, state, 0, {"front": ac.frame(obs["front"].tobytes(), HWC)})
    got = _observation(req, ("pos",), {"pos": 3}, {"front": (8, 32, 3)})
    assert got == "camera 'front' is 16x16x3, the policy reads 8x32x3"
    ok = _observation(req, ("pos",), {"pos": 3}, {"front": HWC})
    assert isinstance(ok, dict) and np.array_equal(ok["front"], obs["front"]) and np.array_equal(ok["pos"], obs["pos"])
