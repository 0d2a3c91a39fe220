"""The robot's side of the learner's operator commands: what its hello offers, what the
uplink forwards (only from a learner it can verify), and what the control process
applies to the operator controls the loop reads (or refuses, by its config)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import serve

from edge_agent.link_process import offered
from edge_agent.operator import OperatorControls
from edge_agent.remote_commands import RemoteCommands
from edge_agent.spool import Spool
from edge_agent.uplink import Uplink
from shared import auth
from shared.chunk import checksum
from shared.config import AgentConfig, LinkConfig
from shared.protocol import Chunk, CloudConnection, Command, EdgeConnection, Limits, MsgType, commands, encode_frame
from tests.security.robot_link import run_until


def cfg(remote_commands: bool = True, allow_unauthenticated: bool = False) -> AgentConfig:
    return AgentConfig.model_validate({"robot_id": "arm-1", "control": {"remote_commands": remote_commands},
                                       "link": {"allow_unauthenticated": allow_unauthenticated}})


# ------------------------------------------------------------------ what the hello offers

@pytest.mark.parametrize("remote,unauth,credential,offers", [
    (True, False, "cred", True),
    (True, True, None, True),  # a learner on this computer, opted in (the demo, tests)
    (True, False, None, False),  # the robot would not trust the learner's commands: it does not offer them
    (False, False, "cred", False),  # the site refuses them
    (False, True, None, False),
])
def test_the_hello_offers_commands_only_where_they_would_be_applied(remote, unauth, credential, offers):
    assert offered(cfg(remote, unauth), credential) == ((commands.FEATURE,) if offers else ())


def test_remote_commands_default_on_and_are_checked():
    assert AgentConfig(robot_id="a").control.remote_commands is True
    with pytest.raises(Exception, match="remote_commands"):
        AgentConfig.model_validate({"robot_id": "a", "control": {"remote_commands": "maybe"}})


# ------------------------------------------------------------------ the control process applies them

def test_each_kind_reaches_the_operator_controls(caplog):
    op = OperatorControls()
    rc = RemoteCommands(op, lambda: True)
    with caplog.at_level(logging.INFO, "fleetrl.agent"):
        assert rc.handle(["pause", True])
        assert not op.running.is_set()
        assert rc.handle(["pause", False])
        assert op.running.is_set()
        assert rc.handle(["stop_episode", None])
        assert not op.episodes_allowed.is_set()
        assert rc.handle(["start_episode", None])
        assert op.episodes_allowed.is_set()
        assert rc.handle(["label", "success"]) and rc.handle(["reward", 0.5])
    assert op.take() == (True, 0.5, ("success",))  # the stop, the reward, the label: read by the next tick
    assert rc.applied == 6 and rc.refused == 0
    assert "event=remote_command kind=pause value=True" in caplog.text
    assert "event=remote_command kind=label value='success'" in caplog.text


def test_a_site_that_refuses_them_logs_and_applies_nothing(caplog):
    op = OperatorControls()
    allowed = {"on": False}
    rc = RemoteCommands(op, lambda: allowed["on"])
    with caplog.at_level(logging.INFO, "fleetrl.agent"):
        assert not rc.handle(["pause", True])
        assert not rc.handle(["label", "failure"])
    assert op.running.is_set() and op.take() == (False, 0.0, ())
    assert rc.refused == 2 and rc.applied == 0
    assert "event=remote_command_refused kind=pause value=True reason=control.remote_commands_is_false" in caplog.text
    allowed["on"] = True  # read per command: the running config decides
    assert rc.handle(["pause", True]) and not op.running.is_set()


@pytest.mark.parametrize("payload", [["fly", 1], ["pause", "yes"], ["reward", float("nan")], "pause", ["pause"], None,
                                     ["label", "win", 3]])
def test_a_malformed_payload_is_logged_not_applied(payload, caplog):
    op = OperatorControls()
    rc = RemoteCommands(op, lambda: True)
    with caplog.at_level(logging.INFO, "fleetrl.agent"):
        assert not rc.handle(payload)
    assert op.running.is_set() and op.episodes_allowed.is_set() and op.take() == (False, 0.0, ())
    assert "event=remote_command_invalid" in caplog.text


# ------------------------------------------------------------------ the uplink forwards them

def _uplink(tmp: Path, url: str, credential: str | None, **link: Any) -> tuple[Uplink, list[Command]]:
    spool = Spool(tmp / "spool", fsync="never")
    body = b"x" * 100
    spool.append("ep-1", 1, 100, checksum(body), body)
    lc = LinkConfig(url=url, reconnect_min_s=0.05, reconnect_max_s=0.2, status_interval_s=0.2, **link)

    async def no_policy(*_: Any) -> None:
        raise AssertionError("no policy in this test")

    up = Uplink(lc, lambda: EdgeConnection("arm-1", {}, [], Limits(), credential, (commands.FEATURE,)), spool, no_policy,
                lambda: {}, lambda: 0, Limits())
    got: list[Command] = []
    up.on_command = got.append
    return up, got


async def _learner(credential: str | None, sent: list[str]):
    """A learner that sends a pause (raw, as a confused one might), then acks the robot's chunk."""
    stored = auth.stored_key(auth.client_key(credential)) if credential else None

    async def handler(ws: Any) -> None:
        conn = CloudConnection()
        await ws.send(conn.challenge())
        conn.receive(await ws.recv())
        await ws.send(conn.welcome("run", 0, 0, stored))
        await ws.send(encode_frame(MsgType.COMMAND, Command("pause", True).meta()))
        sent.append("pause")
        while not isinstance(msg := conn.receive(await ws.recv()), Chunk):
            pass
        await ws.send(conn.ack(msg.seq))  # after the command: once the robot has it, it has seen the command
        await ws.wait_closed()

    return await serve(handler, "127.0.0.1", 0, compression=None)


def test_a_verified_learners_command_is_forwarded(tmp_path: Path) -> None:
    cred = auth.new_credential()
    sent: list[str] = []

    async def main() -> list[Command]:
        server = await _learner(cred, sent)
        try:
            up, got = _uplink(tmp_path, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws", cred)
            await run_until(up, up.wait_drained)
            assert up.reconnects == 0, up.last_error
            return got
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(main()) == [Command("pause", True)] and sent == ["pause"]


def test_an_unproven_learners_command_is_dropped_and_the_link_stays(tmp_path: Path, caplog) -> None:
    sent: list[str] = []

    async def main() -> tuple[Uplink, list[Command]]:
        server = await _learner(None, sent)
        try:
            up, got = _uplink(tmp_path, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws", None)
            await run_until(up, up.wait_drained)
            return up, got
        finally:
            server.close()
            await server.wait_closed()

    with caplog.at_level(logging.INFO, "fleetrl.uplink"):
        up, got = asyncio.run(main())
    assert sent == ["pause"] and got == []
    assert up.reconnects == 0 and up.policy_refused_reason, "dropped, not a reason to cut the link"
    assert "event=remote_command_refused kind=pause value=True reason=unauthenticated_learner" in caplog.text
