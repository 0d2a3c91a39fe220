"""Channel binding: the robot's proof and the learner's signature cover the SHA-256 of
the TLS certificate each end sees. A relay that terminates TLS with its own certificate
and forwards to the real learner passes neither, and enrollment pins only what a signed
Welcome vouched for."""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from shared import auth
from shared.errors import ProtocolError
from shared.protocol import CloudConnection, EdgeConnection, Welcome
from tests.faults.harness import Agent, Learner, wait_for
from tests.security.test_security_link import add_robot
from tests.security.test_security_tls_tunnel import self_signed


def _sha(cert: Path) -> str:
    return auth.certificate_sha256(cert)


def test_proof_and_signature_are_bound_to_the_certificate() -> None:
    cred = auth.new_credential()
    stored = auth.stored_key(auth.client_key(cred))
    a, b = "a" * 64, "b" * 64
    edge, cloud = EdgeConnection("arm-1", {}, [], credential=cred), CloudConnection(channel=b)
    edge.receive(cloud.challenge())
    cloud.receive(edge.hello(0, channel=a))  # the robot sees certificate a (a relay's), the learner owns b
    assert not cloud.verify(stored)
    # A learner that does not check, or a relay that got the welcome signed by the real one: the robot refuses.
    with pytest.raises(ProtocolError) as e:
        edge.receive(cloud.welcome("run", 0, 0, stored))
    assert e.value.code == "learner_unverified"
    edge, cloud = EdgeConnection("arm-1", {}, [], credential=cred), CloudConnection(channel=b)
    edge.receive(cloud.challenge())
    cloud.receive(edge.hello(0, channel=b))
    assert cloud.verify(stored)
    assert isinstance(edge.receive(cloud.welcome("run", 0, 0, stored)), Welcome)


def test_certificate_sha256_is_what_a_tls_client_sees(tmp_path: Path) -> None:
    import ssl as ssl_mod

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    cert, _ = self_signed(tmp_path, "learner")
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(Encoding.DER)
    assert _sha(cert) == hashlib.sha256(der).hexdigest() == hashlib.sha256(
        ssl_mod.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()
    assert auth.certificate_sha256(None) == ""


class TlsRelay:
    """A man in the middle: terminates the robot's TLS with its own certificate, opens its
    own TLS link to the real learner and copies bytes both ways, untouched."""

    def __init__(self, target_port: int, cert: Path, key: Path):
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)
        client_ctx = ssl.create_default_context()
        client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE
        ready = threading.Event()

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, ssl.SSLError, OSError):
                pass
            finally:
                w.close()

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.connections += 1
            ur, uw = await asyncio.open_connection("127.0.0.1", target_port, ssl=client_ctx)
            await asyncio.gather(pipe(r, uw), pipe(ur, w))

        async def main() -> None:
            self.server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()
            try:
                async with self.server:
                    await self.server.serve_forever()
            except asyncio.CancelledError:
                pass

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(main(),), daemon=True)
        self.thread.start()
        assert ready.wait(10)
        self.url = f"wss://127.0.0.1:{self.port}/ws"

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.thread.join(5)


def _enroll(agent: Agent, url: str, credential: str, *extra: str) -> subprocess.CompletedProcess:
    agent.write_config()
    return subprocess.run([sys.executable, "-m", "edge_agent", "enroll", url, "--config", str(agent.cfg),
                           "--credential", credential, *extra], capture_output=True, text=True, timeout=120)


@pytest.fixture
def tls_learner(tmp_path: Path):
    cert, key = self_signed(tmp_path, "learner")
    learner = Learner(tmp_path, server={"auth": "required", "tls_cert": str(cert), "tls_key": str(key)},
                      learner={"learning_starts": 10**9}).start()
    relay_cert, relay_key = self_signed(tmp_path, "relay")
    relay = TlsRelay(learner.port, relay_cert, relay_key)
    try:
        yield learner, cert, relay, relay_cert
    finally:
        relay.close()
        learner.stop()


def test_enrollment_through_a_tls_relay_fails_and_stores_nothing(tmp_path: Path, tls_learner) -> None:
    learner, cert, relay, relay_cert = tls_learner
    cred = add_robot(learner, "bound")
    robot = Agent(tmp_path, "bound", [relay.url], episodes=1, link={"allow_unauthenticated": False})
    r = _enroll(robot, relay.url, cred)  # trust on first use, through the relay
    assert r.returncode != 0, f"enrollment through a relay succeeded: {r.stdout}"
    assert relay.connections >= 1
    assert "auth_failed" in r.stderr and "Nothing stored" in r.stderr, r.stderr
    assert not (robot.state_dir / "credential").exists() and not (robot.state_dir / "learner.json").exists()
    # The documented path: --pin with the learner's own certificate, straight to it.
    r = _enroll(robot, learner.url, cred, "--pin", _sha(cert))
    assert r.returncode == 0, r.stderr
    assert json.loads((robot.state_dir / "learner.json").read_text())["pin_sha256"] == _sha(cert)


def test_a_robot_pinned_to_a_relay_is_refused_by_the_learner(tmp_path: Path, tls_learner) -> None:
    """Even a robot talked into pinning the relay's certificate gets no link through it:
    its proof names the relay's certificate, the learner checks against its own."""
    learner, cert, relay, relay_cert = tls_learner
    cred = add_robot(learner, "fooled")
    # It runs until refused: a run of a few episodes can end (drained) before its link was even tried.
    robot = Agent(tmp_path, "fooled", [learner.url], episodes=0, rate_hz=50, link={"allow_unauthenticated": False})
    assert _enroll(robot, learner.url, cred, "--pin", _sha(cert)).returncode == 0
    linked = learner.log.read_text().count("event=robot_linked")  # the enrollment handshake's link
    robot.urls = [relay.url]
    robot.link = {"allow_unauthenticated": False, "pin_sha256": _sha(relay_cert)}
    try:
        robot.start(drain_timeout=1)
        wait_for(lambda: "auth_failed" in robot.log.read_text(), 60, "the learner to refuse the relayed proof")
        wait_for(lambda: "code=auth_failed" in learner.log.read_text(), 10, "the learner's log line")
    finally:
        robot.kill()
    assert relay.connections >= 1
    assert learner.log.read_text().count("event=robot_linked") == linked, "a relayed link was let in"


def test_enrollment_needs_a_signed_welcome(tmp_path: Path) -> None:
    """A fake learner that answers every hello with some rejection proves nothing: not enrolled."""
    from websockets.asyncio.server import serve

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict = {}

    async def handler(ws) -> None:
        conn = CloudConnection()
        await ws.send(conn.challenge())
        conn.receive(await ws.recv())
        await ws.send(conn.reject("spec_mismatch", "robot's episode spec differs from this run's spec"))

    async def main() -> None:
        state["server"] = server = await serve(handler, "127.0.0.1", 0)
        state["port"] = server.sockets[0].getsockname()[1]
        ready.set()
        await server.wait_closed()

    t = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    t.start()
    assert ready.wait(10)
    try:
        robot = Agent(tmp_path, "gullible", ["ws://127.0.0.1:1/ws"], episodes=1, link={"allow_unauthenticated": False})
        r = _enroll(robot, f"ws://127.0.0.1:{state['port']}/ws", auth.new_credential())
        assert r.returncode != 0 and "spec_mismatch" in r.stderr, r.stdout + r.stderr
        assert not (robot.state_dir / "credential").exists()
    finally:
        loop.call_soon_threadsafe(state["server"].close)
        t.join(5)


def test_the_learner_binds_to_its_own_certificate(tmp_path: Path) -> None:
    """Direct wss link with the real certificate still works end to end (enroll proves it)."""
    cert, key = self_signed(tmp_path, "learner")
    learner = Learner(tmp_path, server={"auth": "required", "tls_cert": str(cert), "tls_key": str(key)},
                      learner={"learning_starts": 10**9}).start()
    try:
        robot = Agent(tmp_path, "direct", [learner.url], episodes=1, link={"allow_unauthenticated": False})
        r = _enroll(robot, learner.url, add_robot(learner, "direct"))  # no --pin: first use, but proven by the welcome
        assert r.returncode == 0, r.stderr
        assert json.loads((robot.state_dir / "learner.json").read_text())["pin_sha256"] == _sha(cert)
    finally:
        learner.stop()



def test_the_robot_checks_the_signature_in_constant_time(monkeypatch) -> None:
    import hmac

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    cred = auth.new_credential()
    stored = auth.stored_key(auth.client_key(cred))
    edge, cloud = EdgeConnection("arm-1", {}, [], credential=cred), CloudConnection()
    edge.receive(cloud.challenge())
    cloud.receive(edge.hello(0))
    welcome = cloud.welcome("run", 0, 0, stored)
    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert isinstance(edge.receive(welcome), Welcome)
    assert calls, "the welcome's signature was compared with ==, not hmac.compare_digest"
