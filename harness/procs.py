"""Real learner and edge-agent processes for tests and benchmarks: started on
a TOML config, told apart by their logs, and all tracked in ``LIVE`` so a
failed test or benchmark leaves none running (tests/conftest.py kills leftovers)."""

from __future__ import annotations

import json
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import tomli_w

from shared.config import is_loopback

ROOT = Path(__file__).resolve().parent.parent
LIVE: list[subprocess.Popen] = []  # every process started here, until someone stops it

# Quick redials and keepalives: a cut or a dead link is noticed within seconds, not minutes.
FAST_LINK = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.3, "ping_interval_s": 1.0, "ping_timeout_s": 2.0,
             "connect_timeout_s": 3.0}


PORTS = range(20000, 32768)  # below Linux's ephemeral range (32768-60999 by default): see free_port
_next_port: list[int] = []


def free_port() -> int:
    """A free port on 127.0.0.1 for a server a test starts (or restarts) later, or for a URL nobody serves.

    Not one the kernel hands out itself (bind to port 0, the source port of an outgoing connection): a
    robot redialling a stopped learner's port could otherwise be given that very port as its source and
    connect to itself, holding it, and a port picked that way can be taken by anything in the meantime.
    pytest-xdist worker k of n draws only ports = k mod n, each once per process (so a test that asks
    twice before binding gets two), starting at a random place."""
    n = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    k = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    mine = range(PORTS.start + (k - PORTS.start) % n, PORTS.stop, n)
    if not _next_port:
        _next_port.append(random.SystemRandom().randrange(len(mine)))
    for _ in range(len(mine)):
        port = mine[_next_port[0] % len(mine)]
        _next_port[0] += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (another program's fixed port, a server of this test run)
            return port
    raise RuntimeError(f"no free port in {mine}")


def spawn(args: list[str], log: Path, stdout: int | IO[Any] = subprocess.DEVNULL, env: dict[str, str] | None = None,
          prefix: list[str] | None = None) -> subprocess.Popen:
    """Start a process from the repository root, its stderr appended to ``log``, tracked in LIVE."""
    with open(log, "ab") as err:  # the child holds its own copy of the descriptor
        p = subprocess.Popen((prefix or []) + args, stdout=stdout, stderr=err, cwd=ROOT,
                             env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    LIVE.append(p)
    return p


def stop(p: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
    """Signal a process and reap it (SIGKILL if it does not exit in ``timeout``); its exit code."""
    if p is None:
        return None
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    return p.returncode


def kill_all() -> None:
    """SIGKILL every tracked process still running (after a test or a benchmark)."""
    while LIVE:
        stop(LIVE.pop(), signal.SIGKILL, 10)


def read_ready(p: subprocess.Popen, log: Path, timeout: float = 90) -> str:
    """The URL from the ``READY <url>`` line a learner prints on stdout once it listens."""
    assert p.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(p.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"no READY line after {timeout} s: {log.read_text()[-2000:]}")
    line = p.stdout.readline().decode()
    if not line.startswith("READY "):
        raise AssertionError(f"process did not start: {line!r} {log.read_text()[-3000:]}")
    return line.split()[1]


def admin_status(data_dir: Path) -> dict[str, Any]:
    """A running learner's /status: on its loopback admin listener (endpoint.json), with the admin token."""
    import urllib.request

    endpoint = json.loads((data_dir / "endpoint.json").read_text())
    token = (data_dir / "admin_token").read_text().strip()
    req = urllib.request.Request(endpoint["status"], headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


class Learner:
    """``python -m cloud serve`` on a TOML config written from these arguments.

    ``DEFAULTS`` is the [learner] table a subclass may change (the benchmarks do:
    no training unless asked); ``learner=`` overrides single keys.
    """

    DEFAULTS: dict[str, Any] = {"learning_starts": 200, "publish_every": 20, "batch_size": 32, "hidden": [32, 32],
                                "checkpoint_every": 100}
    HEARTBEAT_S = 2.0
    MODULE = ["cloud", "serve"]
    CLEAN_EXIT = True  # stop() asserts a SIGTERM ends the learner with exit code 0

    def __init__(self, root: Path, port: int = 0, data_dir: Path | None = None, env: dict[str, str] | None = None,
                 learner: dict[str, Any] | None = None, name: str = "learner", server: dict[str, Any] | None = None,
                 limits: dict[str, Any] | None = None, host: str = "127.0.0.1", groups: dict[str, Any] | None = None,
                 inference: dict[str, Any] | None = None):
        self.root, self.name = root, name
        root.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir or root / name
        self.cfg = root / f"{name}.toml"
        cfg: dict[str, Any] = {
            "data_dir": str(self.data_dir),
            # unenrolled test robots: opted in explicitly, and only a loopback learner may be open (the robots too)
            "server": {"host": host, "port": port, "heartbeat_s": self.HEARTBEAT_S,
                       "auth": "open" if is_loopback(host) else "required", **(server or {})},
            "learner": {**self.DEFAULTS, **(learner or {})},
        }
        if limits:
            cfg["limits"] = limits
        if groups:
            cfg["groups"] = groups
        if inference:
            cfg["inference"] = inference
        self.cfg.write_text(tomli_w.dumps(cfg))
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.log = root / f"{name}.log"

    def start(self, resume: bool = False, prefix: list[str] | None = None, timeout: float = 90) -> "Learner":
        args = [sys.executable, "-m", *self.MODULE, "--config", str(self.cfg)] + (["--resume"] if resume else [])
        self.proc = spawn(args, self.log, stdout=subprocess.PIPE, env=self.env, prefix=prefix)
        self.url = read_ready(self.proc, self.log, timeout)
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    @property
    def http(self) -> str:
        return self.url.replace("ws://", "http://").rsplit("/ws", 1)[0]

    def kill(self) -> None:
        stop(self.proc, signal.SIGKILL, 10)

    def stop(self) -> None:
        running = self.proc is not None and self.proc.poll() is None
        rc = stop(self.proc, signal.SIGTERM, 30)
        if self.CLEAN_EXIT and running:
            assert rc == 0, f"{self.name} exited with {rc} on SIGTERM: {self.log.read_text()[-3000:]}"

    def status(self) -> dict[str, Any]:
        return admin_status(self.data_dir)

    def policy(self, timeout: float = 30, root: Path | None = None) -> Any:
        """The published policy on disk (shared.weights.Weights), read as a restarted learner reads
        it: latest.safetensors is replaced atomically and carries its own version, so it wins over
        latest.json, which a kill -9 between the two writes leaves one version behind.
        ``root``: an embodiment group's folder (its ``data_dir`` in /status ``groups``) instead of the run's."""
        from shared.errors import WeightsError
        from shared.weights import decode_weights, sha256

        from .waits import wait_for

        d = (root or self.data_dir) / "policy"

        def read() -> Any:
            try:
                blob = (d / "latest.safetensors").read_bytes()
                return decode_weights(blob, sha256(blob), 1 << 31)
            except (OSError, ValueError, WeightsError):
                return None

        return wait_for(read, timeout, f"a consistent published policy in {d}")

    def rows(self, robot_id: str) -> int:
        """Rows the learner says it stored for a robot; 0 while it is down or not yet listening."""
        try:
            return self.status()["rows_by_robot"].get(robot_id, 0)
        except OSError:
            return 0


class Agent:
    """``python -m edge_agent run`` for one simulated robot, on fast link settings.

    The robot is MuJoCo Fetch unless ``driver`` names another; ``driver_options`` is its
    [robot.options] table as given (default: a seed derived from the robot id). ``MODULE`` is what
    ``python -m`` runs: a subclass may name a module that registers a driver first
    (:class:`harness.pixel_mass.PixelAgent`)."""

    MODULE = ["edge_agent"]

    def __init__(self, root: Path, robot_id: str, urls: list[str], episodes: int, rate_hz: float = 0,
                 chunk_steps: int = 10, spool: dict[str, Any] | None = None, spool_dir: Path | None = None,
                 link: dict[str, Any] | None = None, service: dict[str, Any] | None = None,
                 control: dict[str, Any] | None = None, driver: str = "mujoco_fetch",
                 driver_options: dict[str, Any] | None = None, policy: dict[str, Any] | None = None):
        self.root, self.robot_id = root, robot_id
        self.dir = root / robot_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.dir / "state"
        self.spool_dir = spool_dir or self.dir / "spool"
        self.cfg = self.dir / "agent.toml"
        self.log = self.dir / "agent.log"
        self.urls, self.episodes, self.rate_hz, self.chunk_steps = urls, episodes, rate_hz, chunk_steps
        self.spool = spool or {}
        self.link = link or {}
        self.service = service or {}
        self.control = control or {}  # more [control] keys (e.g. remote_commands)
        self.policy = policy or {}  # the [policy] table (where = "cloud", horizon, on_late, ...)
        self.driver = driver
        self.driver_options = {"seed": abs(hash(robot_id)) % 1000} if driver_options is None else dict(driver_options)
        self.proc: subprocess.Popen | None = None

    def write_config(self) -> None:
        service = {"service": self.service} if self.service else {}
        self.cfg.write_text(tomli_w.dumps({
            "robot_id": self.robot_id,
            "link": {"url": self.urls[0], "fallback_urls": self.urls[1:], **FAST_LINK, "allow_unauthenticated": True,
                     **self.link},
            "robot": {"driver": self.driver, "options": self.driver_options},
            "control": {"rate_hz": self.rate_hz, "max_episodes": self.episodes, "chunk_steps": self.chunk_steps,
                        **self.control},
            "spool": {"dir": str(self.spool_dir), **self.spool},
            "state_dir": str(self.state_dir),
            **service,
            **({"policy": self.policy} if self.policy else {}),
        }))

    def start(self, drain_timeout: float = 120, env: dict[str, str] | None = None) -> "Agent":
        self.write_config()
        self.proc = spawn([sys.executable, "-m", *self.MODULE, "run", "--config", str(self.cfg),
                           "--drain-timeout", str(drain_timeout)], self.log, env=env)
        return self

    def wait(self, timeout: float = 180) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        stop(self.proc, signal.SIGKILL, 10)

    def ledger(self) -> dict[str, Any]:
        from .ledger import read_ledger

        return read_ledger(self.state_dir)

    def chunk_rows(self) -> dict[int, int]:
        from .ledger import chunk_rows

        return chunk_rows(self.state_dir)

    def status(self) -> dict[str, Any]:
        """The agent's status.json ({} until it wrote one)."""
        p = self.state_dir / "status.json"
        return json.loads(p.read_text()) if p.exists() else {}
