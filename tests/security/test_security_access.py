"""Who may link, who may see /status, and whether a revocation really lands.

Behind a proxy or a port-forward every client comes from 127.0.0.1, so the
source address must never stand in for a credential; the learner's state is
served only on its loopback admin listener, with the admin token; a revoked,
rotated or expired credential stops working on live links, and a CLI that
could not tell a running learner says so loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import tomli_w

from cloud.admin import ADMIN_URL
from cloud.app import make_app
from cloud.keys import ADMIN_TOKEN, REGISTRY
from cloud.robots import RobotRegistry
from shared import auth
from shared.config import AgentConfig, LearnerConfig, validate
from shared.errors import ConfigError
from shared.protocol import Reject, Welcome
from tests.faults.harness import Agent, Learner, Proxy, wait_for
from harness.inproc import serving
from tests.security.attacks import fetch_spec, handshake, refusal


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cloud", *args], capture_output=True, text=True, timeout=60, input=stdin)


def add_robot(cfg: Path, name: str, *extra: str) -> str:
    r = cli("robots", "add", name, "--config", str(cfg), *extra)
    assert r.returncode == 0, r.stderr
    return next(line for line in r.stdout.splitlines() if line.startswith("fr1_"))


def default_auth_learner(root: Path, **server) -> Learner:
    """A learner whose config does not mention server.auth: what a fresh install gets."""
    learner = Learner(root, learner={"learning_starts": 10**9})
    data = __import__("tomllib").loads(learner.cfg.read_text())
    data["server"].pop("auth", None)
    data["server"].update(server)
    learner.cfg.write_text(tomli_w.dumps(data))
    return learner


# ---------------------------------------------------------------- item 1: no credential by source address


def test_unauthenticated_client_through_a_local_forwarding_proxy_is_refused(tmp_path: Path) -> None:
    learner = default_auth_learner(tmp_path).start()
    proxy = Proxy(learner.port)  # nginx, `ssh -L`, `kubectl port-forward`: the learner sees 127.0.0.1
    try:
        async def attempt() -> tuple[object, str, bool]:
            ws, _, reply = await handshake(proxy.url, "squatter", fetch_spec())
            code, closed = await refusal(ws)
            return reply, code, closed

        reply, code, closed = asyncio.run(attempt())
        assert isinstance(reply, Reject) and reply.code == "auth_failed", reply
        assert closed
        st = learner.status()
        assert st["robots"] == {} and st["buffer_rows"] == 0 and st["rejections"] == {"auth_failed": 1}
        assert "auth_open" not in learner.log.read_text()
    finally:
        proxy.close()
        learner.stop()


def test_auth_modes_in_config() -> None:
    assert validate(LearnerConfig, {}).server.auth == "required"
    with pytest.raises(ConfigError, match=r'server\.auth.*"auto" was removed.*"required".*"open"'):
        validate(LearnerConfig, {"server": {"auth": "auto"}})
    with pytest.raises(ConfigError, match=r'server\.auth = "open" needs a loopback'):
        validate(LearnerConfig, {"server": {"auth": "open", "host": "0.0.0.0", "allow_insecure": True}})
    assert validate(LearnerConfig, {"server": {"auth": "open", "host": "::1"}}).server.open
    with pytest.raises(ConfigError, match=r"admin\.host"):
        validate(LearnerConfig, {"admin": {"host": "0.0.0.0"}})
    with pytest.raises(ConfigError, match=r"allow_unauthenticated: wss://learner.example/ws is not on this computer"):
        validate(AgentConfig, {"robot_id": "r", "link": {"url": "wss://learner.example/ws", "allow_unauthenticated": True}})


# ---------------------------------------------------------------- item 3: /status off the robot port


@contextlib.asynccontextmanager
async def in_process(tmp_path: Path, **server):
    cfg = LearnerConfig(data_dir=tmp_path / "run", server={"host": "127.0.0.1", "port": 0, **server},
                        learner={"learning_starts": 10**9, "hidden": [16, 16], "batch_size": 8})
    app = make_app(cfg)
    async with serving(app) as base:
        yield app, base, base.replace("http", "ws", 1) + "/ws"


async def _get(url: str, token: str | None = None) -> tuple[int, object]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=headers) as r:
            return r.status, (await r.json() if r.content_type == "application/json" else await r.text())


async def test_status_is_only_on_the_admin_listener_with_the_token(tmp_path: Path) -> None:
    async with in_process(tmp_path) as (app, robot_port, _):
        assert (await _get(f"{robot_port}/status"))[0] == 404  # the robot-facing port serves only /ws
        assert (await _get(f"{robot_port}/status", app[ADMIN_TOKEN]))[0] == 404
        admin = app[ADMIN_URL]
        assert admin.startswith("http://127.0.0.1:")
        assert (await _get(f"{admin}/status"))[0] == 403
        assert (await _get(f"{admin}/status", "x" * 48))[0] == 403
        code, st = await _get(f"{admin}/status", app[ADMIN_TOKEN])
        assert code == 200 and st["robots"] == {} and "data_dir" in st


async def test_a_robot_cannot_forge_learner_side_status(tmp_path: Path) -> None:
    async with in_process(tmp_path, auth="open") as (app, _, url):
        ws, conn, welcome = await handshake(url, "liar", fetch_spec())  # open mode: unauthenticated
        assert isinstance(welcome, Welcome)
        await ws.send(conn.status({"authenticated": True, "chunks": 10**6, "since": 0, "policy_version": 7}))
        token, admin = app[ADMIN_TOKEN], app[ADMIN_URL]

        async def reported() -> dict:
            return (await _get(f"{admin}/status", token))[1]["robots"]["liar"]

        deadline = time.monotonic() + 10
        while not (r := await reported()).get("reported"):
            assert time.monotonic() < deadline, r
            await asyncio.sleep(0.05)  # a poll on a condition; harness until() cannot await an HTTP predicate
        assert r["authenticated"] is False and r["chunks"] == 0 and r["since"] > 0
        assert r["reported"] == {"authenticated": True, "chunks": 10**6, "since": 0, "policy_version": 7}
        await ws.close()


# ---------------------------------------------------------------- item 4: revocation that lands, or fails loudly


def test_revocation_reaches_a_learner_bound_to_all_addresses(tmp_path: Path) -> None:
    learner = default_auth_learner(tmp_path, host="::", allow_insecure=True).start()
    try:
        cred = add_robot(learner.cfg, "bot")
        endpoint = json.loads((learner.data_dir / "endpoint.json").read_text())
        assert endpoint["admin"].startswith("http://127.0.0.1:") and endpoint["status"].startswith("http://127.0.0.1:")

        async def linked_then_revoked() -> tuple[str, subprocess.CompletedProcess]:
            ws, _, welcome = await handshake(f"ws://[::1]:{learner.port}/ws", "bot", fetch_spec(), cred)
            assert isinstance(welcome, Welcome)
            r = await asyncio.to_thread(cli, "robots", "revoke", "bot", "--config", str(learner.cfg))
            code, _ = await refusal(ws, timeout=10)
            return code, r

        code, r = asyncio.run(linked_then_revoked())
        assert r.returncode == 0 and "links closed: bot" in r.stdout, (r.stdout, r.stderr)
        assert code == "revoked"
    finally:
        learner.stop()


def test_a_reload_that_fails_is_loud_and_a_stopped_learner_is_reported_truthfully(tmp_path: Path) -> None:
    learner = default_auth_learner(tmp_path).start()
    token = learner.data_dir / "admin_token"
    good = token.read_text()
    try:
        add_robot(learner.cfg, "a")
        r = cli("status", "--config", str(learner.cfg))  # `cloud-learner status` reads the admin listener
        assert r.returncode == 0 and json.loads(r.stdout)["robots"] == {}, r.stderr
        token.write_text("f" * 48)  # the CLI now holds a token the running learner does not accept
        r = cli("robots", "revoke", "a", "--config", str(learner.cfg))
        assert r.returncode != 0, r.stdout
        assert "did NOT reach the running learner" in r.stderr and "read the change when it starts" not in r.stdout
        token.write_text(good)
    finally:
        learner.stop()
    r = cli("robots", "add", "b", "--config", str(learner.cfg))
    assert r.returncode == 0 and "no learner is running" in r.stdout
    learner.start()
    learner.kill()  # endpoint.json stays behind; its pid is gone
    r = cli("robots", "revoke", "b", "--config", str(learner.cfg))
    assert r.returncode == 0 and "no learner is running" in r.stdout, (r.stdout, r.stderr)


def test_rotation_and_a_direct_edit_close_links_without_being_told(tmp_path: Path) -> None:
    learner = default_auth_learner(tmp_path).start()
    try:
        old = add_robot(learner.cfg, "rot")
        victim = add_robot(learner.cfg, "edited")

        async def scenario() -> tuple[str, str, str]:
            spec = fetch_spec()
            ws, _, welcome = await handshake(learner.url, "rot", spec, old)
            assert isinstance(welcome, Welcome)
            new = await asyncio.to_thread(add_robot, learner.cfg, "rot", "--rotate")
            rotated, _ = await refusal(ws, timeout=10)
            ws, _, welcome = await handshake(learner.url, "rot", spec, new)
            assert isinstance(welcome, Welcome), "the new credential works"
            await ws.close()
            # Nobody tells the learner: the file changes under it (a script, an editor, a failed reload).
            ws, _, welcome = await handshake(learner.url, "edited", spec, victim)
            assert isinstance(welcome, Welcome)
            RobotRegistry(learner.data_dir / "robots.json").revoke("edited")
            edited, _ = await refusal(ws, timeout=10)
            ws, _, reply = await handshake(learner.url, "rot", spec, old)
            return rotated, edited, reply.code if isinstance(reply, Reject) else "welcomed"

        rotated, edited, old_again = asyncio.run(scenario())
        assert rotated == "credential_rotated" and edited == "revoked" and old_again == "auth_failed"
    finally:
        learner.stop()


async def test_expiry_closes_a_live_link(tmp_path: Path) -> None:
    async with in_process(tmp_path) as (app, _, url):
        cred = RobotRegistry(app[REGISTRY].path).add("brief", expires_days=4 / 86400)  # ~4 s from now
        app[REGISTRY].reload()  # at once, as `robots add` has the learner do; no file change follows
        ws, _, welcome = await handshake(url, "brief", fetch_spec(), cred)
        assert isinstance(welcome, Welcome), "linked while still valid"
        code, closed = await refusal(ws, timeout=15)
        assert code == "credential_expired" and closed


async def test_an_open_mode_link_must_prove_itself_once_its_name_is_enrolled(tmp_path: Path) -> None:
    async with in_process(tmp_path, auth="open") as (app, _, url):
        ws, _, welcome = await handshake(url, "squatter", fetch_spec())
        assert isinstance(welcome, Welcome)
        RobotRegistry(app[REGISTRY].path).add("squatter")  # the real robot gets enrolled under that name
        code, closed = await refusal(ws, timeout=10)
        assert code == "auth_failed" and closed


# ---------------------------------------------------------------- item 10: files and secrets


def test_robots_json_is_never_readable_by_others(tmp_path: Path, monkeypatch) -> None:
    import shared.fsutil as fsutil

    seen: list[int] = []
    real = os.replace

    def replace(src, dst):
        seen.append(stat.S_IMODE(os.stat(src).st_mode))  # the mode while the bytes sit under the temp name
        return real(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", replace)
    old = os.umask(0o022)
    try:
        reg = RobotRegistry(tmp_path / "robots.json")
        reg.add("a")
        reg.revoke("a")
    finally:
        os.umask(old)
    assert seen and all(m == 0o600 for m in seen), [oct(m) for m in seen]
    assert stat.S_IMODE((tmp_path / "robots.json").stat().st_mode) == 0o600


@pytest.mark.parametrize("content", ["", "\n", "short"])
def test_an_empty_or_short_admin_token_is_refused(tmp_path: Path, content: str) -> None:
    data = tmp_path / "run"
    data.mkdir()
    (data / "admin_token").write_text(content)
    (data / "admin_token").chmod(0o600)
    with pytest.raises(ConfigError, match="admin_token"):
        make_app(LearnerConfig(data_dir=data))


def test_enroll_reads_the_credential_from_a_file_or_stdin(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "quiet", ["ws://127.0.0.1:1/ws"], episodes=0)
    agent.write_config()
    cred = auth.new_credential()

    def enroll(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edge_agent", "enroll", "ws://127.0.0.1:1/ws", "--config",
                               str(agent.cfg), "--no-check", *args], capture_output=True, text=True, timeout=60,
                              input=stdin)

    secret = tmp_path / "cred.txt"
    secret.write_text(cred + "\n")
    r = enroll("--credential-file", str(secret))
    assert r.returncode == 0, r.stderr
    stored = agent.state_dir / "credential"
    assert stored.read_text().strip() == cred and stat.S_IMODE(stored.stat().st_mode) == 0o600
    stored.unlink()
    r = enroll("--credential", "-", stdin=cred + "\n")
    assert r.returncode == 0 and stored.read_text().strip() == cred, r.stderr
    r = enroll("--credential", cred)  # still accepted, with a warning
    assert r.returncode == 0 and "shows in `ps`" in r.stderr


# ---------------------------------------------------------------- item 5: no weights without a credential


def test_a_robot_without_a_credential_takes_no_weights(tmp_path: Path) -> None:
    learner = Learner(tmp_path, learner={"learning_starts": 100, "publish_every": 10}).start()  # open mode (harness)
    plain = Agent(tmp_path, "plain", [learner.url], episodes=400, rate_hz=200, link={"allow_unauthenticated": False})
    optin = Agent(tmp_path, "optin", [learner.url], episodes=400, rate_hz=200)  # the harness opts in
    try:
        plain.start()
        optin.start()

        def status(a: Agent) -> dict:
            try:
                return json.loads((a.state_dir / "status.json").read_text())
            except (OSError, ValueError):
                return {}

        wait_for(lambda: status(optin).get("policy_version", 0) > 0, 120, "the opted-in robot to take a policy")
        wait_for(lambda: learner.status()["policy_version"] >= 2, 60, "a second policy to be pushed")
        wait_for(lambda: status(plain).get("link", {}).get("connected"), 30, "a fresh status from the plain robot")
        s = status(plain)
        assert s["policy_version"] == 0, "a robot without a credential took weights from an unproven learner"
        assert "no credential" in s["link"]["policy_refused_reason"]
        assert learner.status()["rows_by_robot"].get("plain", 0) > 0, "its data still uploads to an open learner"
        assert plain.log.read_text().count("event=policy_refused_unauthenticated") == 1
    finally:
        plain.kill()
        optin.kill()
        learner.stop()
