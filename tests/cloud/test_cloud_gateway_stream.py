"""The gateway as a thin shell over shared.protocol.stream: the learner app in this process,
a real websocket, the robot's EdgeConnection. Credit, ack order and policy resume."""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import connect

from shared.protocol import Ack, Challenge, EdgeConnection, Policy, Reject, Welcome
from shared.protocol.stream import POLICY_PART_BYTES
from shared.weights import WeightsBlob, sha256
from cloud.keys import INGEST, PUBLISHER
from tests.cloud.test_cloud_gateway import SPEC, Robot, _status, serve

TIMEOUT = 10.0


async def test_a_robot_past_twice_its_credit_is_refused_and_counted(tmp_path):
    """Writes that never become durable: the robot may have 2 x max_inflight unacked, not one more."""
    async with serve(tmp_path, limits={"max_inflight_chunks": 2}) as (app, url, status_url):
        stalled: list[asyncio.Future[None]] = []

        async def never_durable(robot_id, msg):
            stalled.append(asyncio.get_running_loop().create_future())
            return stalled[-1]

        app[INGEST].accept = never_durable
        robot = Robot(url, "arm-1")
        assert isinstance(await robot.open(), Welcome)
        for seq in range(1, 6):
            await robot.send_chunk(seq)
        msg = await robot.recv()
        assert isinstance(msg, Reject) and msg.code == "too_many_inflight", msg
        assert len(stalled) == 4  # the fifth was refused before it reached storage
        assert (await _status(status_url))["rejections"] == {"too_many_inflight": 1}
        await robot.close()


async def test_acks_wait_for_the_earliest_write_then_cover_the_run(tmp_path):
    """Writes that finish out of order are acked in arrival order: no ack covers a write still going."""
    async with serve(tmp_path) as (app, url, _):
        writes: list[asyncio.Future[None]] = []
        three = asyncio.Event()

        async def held(robot_id, msg):
            writes.append(asyncio.get_running_loop().create_future())
            if len(writes) == 3:
                three.set()
            return writes[-1]

        app[INGEST].accept = held
        robot = Robot(url, "arm-1")
        assert isinstance(await robot.open(), Welcome)
        for seq in (1, 2, 3):
            await robot.send_chunk(seq)
        await asyncio.wait_for(three.wait(), TIMEOUT)
        writes[2].set_result(None)
        writes[1].set_result(None)
        with_ack = asyncio.create_task(robot.recv())
        done, _ = await asyncio.wait([with_ack], timeout=0.3)
        assert not done, "an ack went out while chunk 1 was still being written"
        writes[0].set_result(None)
        assert [await with_ack, await robot.recv(), await robot.recv()] == [Ack(1), Ack(2), Ack(3)]
        await robot.close()


async def test_a_policy_resumes_from_the_hellos_partial_download(tmp_path):
    blob = bytes(range(256)) * ((2 * POLICY_PART_BYTES + 1000) // 256)
    async with serve(tmp_path) as (app, url, _):
        assert await app[PUBLISHER].publish(WeightsBlob(7, sha256(blob), blob))
        robot = Robot(url, "arm-1")
        robot.conn = EdgeConnection("arm-1", SPEC.to_dict(), [])
        robot.ws = await connect(url, compression=None, max_size=None)  # parts are 4 MiB
        assert isinstance(await robot.recv(), Challenge)
        await robot.ws.send(robot.conn.hello(0, partial=(7, POLICY_PART_BYTES)))
        assert isinstance(await robot.recv(), Welcome)
        parts = []
        while not parts or parts[-1].offset + len(parts[-1].body) < len(blob):
            msg = await robot.recv()
            if isinstance(msg, Policy):
                parts.append(msg)
        assert [p.offset for p in parts] == [POLICY_PART_BYTES, 2 * POLICY_PART_BYTES]
        assert b"".join(p.body for p in parts) == blob[POLICY_PART_BYTES:]
        assert {p.version for p in parts} == {7}
        await robot.close()
