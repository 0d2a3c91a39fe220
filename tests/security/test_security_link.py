"""Attacks over a real socket while an honest robot streams: each is refused
with its reason code, the attacker stores nothing, the honest robot loses nothing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from shared import auth
from shared.chunk import checksum
from shared.protocol import Hello, MsgType, Reject, encode_frame
from tests.faults.harness import Agent, Learner, assert_exactly_once, wait_for
from tests.security.attacks import chunk_body, fetch_spec, handshake, outcome, refusal


def cli(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "cloud", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def add_robot(learner: Learner, name: str, *extra: str) -> str:
    out = cli("robots", "add", name, "--config", str(learner.cfg), *extra)
    return next(line for line in out.splitlines() if line.startswith("fr1_"))


def enroll(agent: Agent, url: str, credential: str, *extra: str) -> None:
    agent.write_config()
    r = subprocess.run([sys.executable, "-m", "edge_agent", "enroll", url, "--config", str(agent.cfg),
                        "--credential", credential, *extra], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.fixture
def guarded(tmp_path: Path):
    learner = Learner(tmp_path, server={"auth": "required", "handshake_timeout_s": 1.0, "max_connections": 3},
                      limits={"max_frame_bytes": 2 << 20, "max_decompressed_bytes": 4 << 20},
                      learner={"learning_starts": 10**9}).start()
    honest_cred = add_robot(learner, "honest")
    honest = Agent(tmp_path, "honest", [learner.url], episodes=40, rate_hz=150, chunk_steps=10)
    enroll(honest, learner.url, honest_cred)
    honest.start()
    wait_for(lambda: learner.status()["rows_by_robot"].get("honest", 0) > 0, 60, "the honest robot to stream")
    yield learner, honest
    learner.stop()


async def _attacks(learner: Learner, mallory: str) -> dict[str, tuple[str, bool]]:
    url, spec = learner.url, fetch_spec()
    seen: dict[str, tuple[str, bool]] = {}

    ws, _, reply = await handshake(url, "honest", spec)  # no credential for an enrolled robot
    seen["missing credential"] = await outcome(ws, reply)
    ws, _, reply = await handshake(url, "honest", spec, auth.new_credential())
    seen["wrong credential"] = await outcome(ws, reply)
    ws, _, reply = await handshake(url, "nobody", spec, auth.new_credential())
    seen["unknown robot"] = await outcome(ws, reply)
    ws, _, reply = await handshake(url, "honest", spec, mallory)
    seen["another robot's id with own credential"] = await outcome(ws, reply)

    # Replay: capture a genuine hello of mallory's, then play it to a fresh challenge.
    from shared.protocol import EdgeConnection

    async with connect(url, compression=None) as ws:
        conn = EdgeConnection("mallory", spec.to_dict(), [], credential=mallory)
        conn.receive(await ws.recv())
        captured = conn.hello(0)
        await ws.send(captured)
        await ws.recv()  # the genuine welcome
    ws = await connect(url, compression=None)
    await ws.recv()  # a new challenge, with a new nonce
    await ws.send(captured)
    seen["replayed hello"] = await refusal(ws)

    # Authenticated as mallory, write rows that say they are the honest robot's.
    ws, conn, _ = await handshake(url, "mallory", spec, mallory)
    eid, rows, raw, body = chunk_body(spec, "honest")
    await ws.send(conn.chunk(1, eid, rows, raw, checksum(body), body))
    seen["writing another robot's stream"] = await refusal(ws)

    ws, conn, _ = await handshake(url, "mallory", spec, mallory)
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (64 << 20))
    await ws.send(conn.chunk(1, "e", 5, 1 << 30, checksum(bomb), bomb))
    seen["decompression bomb"] = await refusal(ws)

    ws, conn, _ = await handshake(url, "mallory", spec, mallory)
    try:
        await ws.send(b"\0" * (3 << 20))
    except ConnectionClosed:  # the learner may close (1009, too big) before our send completes
        pass
    seen["oversized frame"] = await refusal(ws)

    ws, conn, _ = await handshake(url, "mallory", spec, mallory)
    eid, rows, raw, body = chunk_body(spec, "mallory")
    await ws.send(conn.chunk(1, eid, rows, raw, checksum(body), body)[:-40])
    seen["truncated frame"] = await refusal(ws)

    async with connect(url, compression=None) as ws:
        await ws.recv()
        await ws.send(encode_frame(MsgType.HELLO, Hello("mallory", (99,), spec.to_dict()).meta()))
        seen["unknown protocol version"] = await refusal(ws)

    async with connect(url, compression=None) as ws:  # slow loris: take the challenge, never answer
        await ws.recv()
        seen["slow-loris handshake"] = await refusal(ws, timeout=5)

    # A flood: 40 links at once that never say hello; each is refused (server.max_pending_per_source) or cut
    # at the handshake timeout.
    flood = [await connect(url, compression=None) for _ in range(40)]
    results = await asyncio.gather(*(refusal(w, timeout=5) for w in flood))
    seen["connection flood"] = ("", all(closed for _, closed in results))

    # More authenticated links than max_connections (3): with the honest robot linked, mallory + 1 fit and
    # the next does not. The honest robot may have finished its episodes on a slow machine, so open up to
    # four: one of them is refused either way, and never while fewer than three links are held.
    creds = {"mallory": mallory, **{f"eve{i}": add_robot(learner, f"eve{i}") for i in range(3)}}
    held = []
    for robot, cred in creds.items():
        ws, _, reply = await handshake(url, robot, spec, cred)
        if isinstance(reply, Reject):
            assert len(held) >= 2, f"refused with only {len(held)} links held besides the honest robot's"
            seen["too many links"] = await outcome(ws, reply)
            break
        held.append(ws)
    for ws in held:
        await ws.close()
    return seen


def test_attacks_are_refused_and_the_honest_robot_loses_nothing(guarded) -> None:
    learner, honest = guarded
    mallory = add_robot(learner, "mallory")
    seen = asyncio.run(_attacks(learner, mallory))
    for attack, (code, closed) in seen.items():
        print(f"{attack:<40} -> {code or '(closed)'}, link closed: {closed}")
    expect = {
        "missing credential": "auth_failed", "wrong credential": "auth_failed", "unknown robot": "auth_failed",
        "another robot's id with own credential": "auth_failed", "replayed hello": "auth_failed",
        "writing another robot's stream": "wrong_robot", "decompression bomb": "too_large",
        "oversized frame": "", "truncated frame": "truncated", "unknown protocol version": "unsupported_version",
        "slow-loris handshake": "", "connection flood": "", "too many links": "too_many_connections",
    }
    for attack, code in expect.items():
        got, closed = seen[attack]
        assert closed, f"{attack}: the link stayed open"
        if code:
            assert got == code, f"{attack}: refused with {got!r}, expected {code!r}"
    rejections = learner.status()["rejections"]
    print("learner rejection counters:", rejections)
    # the flood: each link is cut at the handshake timeout, or refused at once over the pending-handshake caps
    assert rejections.get("handshake_timeout", 0) + rejections.get("too_many_handshakes", 0) >= 41
    assert rejections.get("frame_too_large", 0) >= 1
    assert honest.wait(120) == 0, honest.log.read_text()[-2000:]
    assert_exactly_once(learner.data_dir, [honest])  # also: no row from any other robot id


def test_revocation_closes_an_open_link_at_once_and_expiry_refuses(tmp_path: Path) -> None:
    learner = Learner(tmp_path, server={"auth": "required"}, learner={"learning_starts": 10**9}).start()
    try:
        robot = Agent(tmp_path, "doomed", [learner.url], episodes=0, rate_hz=50, chunk_steps=10)
        enroll(robot, learner.url, add_robot(learner, "doomed"))
        robot.start()
        wait_for(lambda: "doomed" in learner.status()["robots"], 60, "the robot to link")
        out = cli("robots", "revoke", "doomed", "--config", str(learner.cfg))
        assert "links closed: doomed" in out
        wait_for(lambda: "code=revoked" in robot.log.read_text(), 5, "the robot to hear it was revoked")
        assert "doomed" not in learner.status()["robots"]
        listing = cli("robots", "list", "--config", str(learner.cfg))
        assert "revoked" in listing.split("doomed")[1].splitlines()[0]

        short = add_robot(learner, "brief", "--expires-days", "0.00001")  # ~1 s
        late = Agent(tmp_path, "brief", [learner.url], episodes=0, rate_hz=50)  # runs until refused: one episode
        # can end (drained) before its link was even tried
        late.write_config()
        (late.state_dir).mkdir(parents=True, exist_ok=True)
        cred_file = late.state_dir / "credential"
        cred_file.write_text(short)
        cred_file.chmod(0o600)
        wait_for(lambda: json.loads((learner.data_dir / "robots.json").read_text())["robots"]["brief"]["expires"]
                 < __import__("time").time(), 5, "the credential to expire")
        late.start(drain_timeout=1)
        wait_for(lambda: "code=credential_expired" in late.log.read_text(), 60, "the expired credential to be refused")
        late.kill()
    finally:
        learner.stop()
