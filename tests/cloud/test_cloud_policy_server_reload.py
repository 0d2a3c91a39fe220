"""Weights move while robots are served: a newer published version loads in the background while
the loaded one keeps answering (no refusal, no wait), is swapped in between batches, and a version
that cannot be loaded leaves the one before it serving, visibly. A real learner app, a real websocket,
real published blobs; the only hook holds the loader thread until the test lets it go."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import torch

from cloud.app import snapshot
from cloud.keys import POLICY_SERVER, PUBLISHER
from shared.policy import FlowActor
from shared.weights import WeightsBlob, encode_weights

from .test_cloud_policy_server import OBS, answer, link, serve

TIMEOUT = 10.0


def _blob(version: int, act_dim: int = 4) -> WeightsBlob:
    torch.manual_seed(version)
    actor = FlowActor(6, act_dim, horizon=10, hidden=(16, 16), steps=2)
    return encode_weights(actor.state_dict(), version, {"actor": actor.arch(), "obs_fields": ["goal", "pos"]})


def hold_loads(app: Any) -> threading.Event:
    """Make the server's loader wait for the returned event before each load (the load itself is real)."""
    server = app[POLICY_SERVER]
    go = threading.Event()
    real = server._load_blob

    def held(blob: Any, spec: Any) -> Any:
        go.wait(TIMEOUT * 3)
        return real(blob, spec)

    server._load_blob = held
    return go


async def ask(ws: Any, conn: Any, rid: int) -> Any:
    await ws.send(conn.act_request(rid, rid, OBS))
    return await answer(ws, conn)


async def until_version(ws: Any, conn: Any, version: int, first_id: int) -> int:
    """Requests until one is answered by ``version`` (each answered at once by some version); the id used."""
    rid = first_id
    async with asyncio.timeout(TIMEOUT):
        while True:
            got = await ask(ws, conn, rid)
            assert got.code == "", got
            if got.policy_version == version:
                return rid
            rid += 1


async def test_requests_during_a_reload_are_answered_by_the_loaded_version_then_the_new_one(tmp_path: Path) -> None:
    async with serve(tmp_path, from_file=False) as (app, url):
        ws, conn = await link(url, "arm-1")
        assert await app[PUBLISHER].publish(_blob(1))
        first = await ask(ws, conn, 1)
        assert (first.code, first.policy_version) == ("", 1)
        go = hold_loads(app)
        assert await app[PUBLISHER].publish(_blob(2))
        # Version 2 cannot finish loading until `go`: had the server waited for it, these would hang.
        during = [await ask(ws, conn, 10 + i) for i in range(5)]
        assert [(c.code, c.policy_version) for c in during] == [("", 1)] * 5
        assert snapshot(app)["inference"]["policy_versions"] == [1]
        go.set()
        await until_version(ws, conn, 2, 20)
        inf = snapshot(app)["inference"]
        assert inf["policy_versions"] == [2] and not inf["refusals"] and not inf["unusable_versions"]


async def test_an_unloadable_version_leaves_the_one_before_it_serving_and_says_so(tmp_path: Path) -> None:
    async with serve(tmp_path, from_file=False) as (app, url):
        ws, conn = await link(url, "arm-1")
        assert await app[PUBLISHER].publish(_blob(1))
        assert (await ask(ws, conn, 1)).policy_version == 1
        assert await app[PUBLISHER].publish(_blob(2, act_dim=3))  # does not fit this robot's 4 actions
        async with asyncio.timeout(TIMEOUT):
            rid = 2
            while not snapshot(app)["inference"]["unusable_versions"]:
                got = await ask(ws, conn, rid)
                assert (got.code, got.policy_version) == ("", 1)
                rid += 1
        assert snapshot(app)["inference"]["unusable_versions"] == [2]
        got = await ask(ws, conn, 100)  # still served, by version 1, and version 2 is not retried
        assert (got.code, got.policy_version) == ("", 1)
        assert await app[PUBLISHER].publish(_blob(3))
        await until_version(ws, conn, 3, 200)
        inf = snapshot(app)["inference"]
        assert inf["policy_versions"] == [3] and not inf["unusable_versions"] and not inf["refusals"]
