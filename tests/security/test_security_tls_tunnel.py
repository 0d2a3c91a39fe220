"""TLS with a pinned learner certificate, impostor learners, the reverse
tunnel's allowlist, and no pickle anywhere."""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness.procs import stop
from tests.faults.harness import LIVE, Agent, Learner, assert_exactly_once, free_port, wait_for
from tests.security.test_security_link import add_robot, enroll

REPO = Path(__file__).resolve().parents[2]


def self_signed(tmp: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    c, k = tmp / f"{name}.crt", tmp / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return c, k


def test_wss_with_a_pinned_certificate_and_impostors_refused(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "learner")
    learner = Learner(tmp_path, server={"auth": "required", "tls_cert": str(cert), "tls_key": str(key)},
                      learner={"learning_starts": 50, "publish_every": 5, "batch_size": 16}).start()
    assert learner.url.startswith("wss://")
    imp_cert, imp_key = self_signed(tmp_path, "impostor")
    impostor_tls = Learner(tmp_path, name="impostor-tls", data_dir=tmp_path / "impostor-tls",
                           server={"tls_cert": str(imp_cert), "tls_key": str(imp_key)}).start()
    impostor_plain = _Impostor()
    try:
        robot = Agent(tmp_path, "pinned", [learner.url], episodes=0, rate_hz=150, chunk_steps=10)
        enroll(robot, learner.url, add_robot(learner, "pinned"))  # trust on first use: records the pin
        pin = __import__("json").loads((robot.state_dir / "learner.json").read_text())["pin_sha256"]
        assert re.fullmatch(r"[0-9a-f]{64}", pin)
        robot.start()
        # It runs until it acts with weights that came over the pinned link (however slowly a loaded
        # machine trains), then drains on SIGTERM: everything it recorded is stored once.
        wait_for(lambda: robot.status().get("policy_version", 0) > 0, 120, "weights over the pinned link")
        assert stop(robot.proc) == 0, robot.log.read_text()[-2000:]
        assert_exactly_once(learner.data_dir, [robot])
        assert robot.ledger()["policy_versions_used"], "steps acted with the weights that came over the pinned link"

        # The same robot pointed at impostors: one with another certificate, one over plain ws
        # that lets anyone in but cannot sign the welcome. Neither gets a byte of data.
        # It runs until refused, as before (episodes=0): a run of one episode can end, drained, before its link
        # was even tried on a loaded machine.
        robot.urls = [impostor_tls.url]
        robot.start(drain_timeout=2)
        wait_for(lambda: "code=pin_mismatch" in robot.log.read_text(), 60, "the pin check to refuse the impostor")
        robot.kill()
        robot.urls = [impostor_plain.url]
        robot.start(drain_timeout=2)
        wait_for(lambda: "code=learner_unverified" in robot.log.read_text(), 60, "the robot to refuse an unsigned welcome")
        robot.kill()
        assert impostor_tls.status()["buffer_rows"] == 0
        assert impostor_plain.chunks == 0 and impostor_plain.hellos > 0
    finally:
        for p in (learner, impostor_tls):
            p.stop()
        impostor_plain.close()


class _Impostor:
    """A hostile learner: welcomes anyone (it cannot sign: it lacks the robot's stored key)."""

    def __init__(self) -> None:
        from websockets.asyncio.server import serve

        from shared.protocol import Chunk, CloudConnection

        self.hellos = self.chunks = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def handler(ws) -> None:
            conn = CloudConnection()
            await ws.send(conn.challenge())
            conn.receive(await ws.recv())
            self.hellos += 1
            await ws.send(conn.welcome("evil-run", 0, 0))  # no stored key: no valid signature
            async for data in ws:
                if isinstance(conn.receive(data), Chunk):
                    self.chunks += 1

        async def main() -> None:
            self.server = await serve(handler, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()
            await self.server.wait_closed()

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(main(),), daemon=True)
        self.thread.start()
        ready.wait(10)
        self.url = f"ws://127.0.0.1:{self.port}/ws"

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.thread.join(5)


def test_plain_ws_beyond_loopback_is_refused_by_config(tmp_path: Path) -> None:
    from shared.config import AgentConfig, LearnerConfig, validate
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="link.*plain ws://"):
        validate(AgentConfig, {"robot_id": "r", "link": {"url": "ws://192.0.2.10:8765/ws"}})
    validate(AgentConfig, {"robot_id": "r", "link": {"url": "ws://192.0.2.10:8765/ws", "allow_insecure": True}})
    with pytest.raises(ConfigError, match="server.*tls_cert"):
        validate(LearnerConfig, {"server": {"host": "0.0.0.0"}})


def _echo_server() -> tuple[int, threading.Thread]:
    srv = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return srv.getsockname()[1], t


def _open_tunnel(learner: Learner, robot: str, port: int) -> tuple[subprocess.Popen, int]:
    p = subprocess.Popen([sys.executable, "-m", "cloud", "tunnel", robot, str(port), "--config", str(learner.cfg)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    LIVE.append(p)
    line = p.stdout.readline()
    assert line.startswith("TUNNEL "), p.stderr.read() if p.poll() is not None else line
    return p, int(line.split()[1].rsplit(":", 1)[1])


def test_reverse_tunnel_reaches_only_allowlisted_ports(tmp_path: Path) -> None:
    echo_port, echo = _echo_server()
    closed_port = free_port()
    learner = Learner(tmp_path, learner={"learning_starts": 10**9}).start()
    robot = Agent(tmp_path, "tunnelled", [learner.url], episodes=0, rate_hz=20, link={"tunnel_allow": [echo_port]})
    try:
        robot.start()
        wait_for(lambda: "tunnelled" in learner.status()["robots"], 60, "the robot to link")
        tun, local = _open_tunnel(learner, "tunnelled", echo_port)
        payload = os.urandom(1 << 20)
        with socket.create_connection(("127.0.0.1", local), timeout=20) as s:
            sender = threading.Thread(target=s.sendall, args=(payload,))
            sender.start()
            got = bytearray()
            while len(got) < len(payload):
                chunk = s.recv(65536)
                assert chunk, "tunnel closed early"
                got += chunk
            sender.join()
        assert bytes(got) == payload, "bytes through the tunnel arrive intact"
        tun.kill()

        tun, local = _open_tunnel(learner, "tunnelled", closed_port)  # not on the allowlist
        with socket.create_connection(("127.0.0.1", local), timeout=20) as s:
            s.sendall(b"hello?")
            assert s.recv(100) == b"", "a refused port gives an immediate close, no data"
        wait_for(lambda: "not on this robot's tunnel allowlist" in learner.log.read_text(), 10, "the refusal reason")
        assert "event=tunnel_refused" in robot.log.read_text()
        tun.kill()
    finally:
        learner.stop()


def test_no_pickle_in_product_code() -> None:
    """Nothing we ship may unpickle: not the wire, not stored data, not checkpoints."""
    bad = re.compile(r"^\s*(import pickle|from pickle|import cloudpickle|import dill)|torch\.load\(|allow_pickle\s*=\s*True", re.M)
    hits = [str(p.relative_to(REPO)) for pkg in ("shared", "cloud", "edge_agent", "hal_drivers")
            for p in (REPO / pkg).rglob("*.py") if bad.search(p.read_text())]
    assert hits == []
