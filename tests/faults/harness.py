"""Real processes and a real TCP proxy for the fault-injection suite, and the
exact count every fault test ends with."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import tomli_w

LIVE: list[subprocess.Popen] = []  # every process a test started; the conftest kills leftovers


def _track(p: subprocess.Popen) -> subprocess.Popen:
    LIVE.append(p)
    return p


FAST_LINK = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.3, "ping_interval_s": 1.0, "ping_timeout_s": 2.0,
             "connect_timeout_s": 3.0}


def wait_for(predicate, timeout: float, what: str) -> None:
    """Poll a condition in a test (product code waits on events, tests watch from outside)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def admin_status(data_dir: Path) -> dict[str, Any]:
    """A running learner's /status: on its loopback admin listener, with the admin token."""
    import urllib.request

    endpoint = json.loads((data_dir / "endpoint.json").read_text())
    token = (data_dir / "admin_token").read_text().strip()
    req = urllib.request.Request(endpoint["status"], headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Learner:
    def __init__(self, root: Path, port: int = 0, data_dir: Path | None = None, env: dict[str, str] | None = None,
                 learner: dict[str, Any] | None = None, name: str = "learner", server: dict[str, Any] | None = None,
                 limits: dict[str, Any] | None = None):
        self.root, self.name = root, name
        self.data_dir = data_dir or root / "learner"
        self.cfg = root / f"{name}.toml"
        self.cfg.write_text(tomli_w.dumps({
            "data_dir": str(self.data_dir),
            # unenrolled test robots on loopback: opted in explicitly (the robots too, see Agent)
            "server": {"port": port, "heartbeat_s": 2.0, "auth": "open", **(server or {})},
            "limits": {**(limits or {})},
            "learner": {"learning_starts": 200, "publish_every": 20, "batch_size": 32, "hidden": [32, 32],
                        "checkpoint_every": 100, **(learner or {})},
        }))
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.log = root / f"{name}.log"

    def start(self, resume: bool = False) -> "Learner":
        args = [sys.executable, "-m", "cloud", "serve", "--config", str(self.cfg)] + (["--resume"] if resume else [])
        self.proc = _track(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(self.log, "ab"),
                                            env={**os.environ, **self.env}))
        line = self.proc.stdout.readline().decode()
        assert line.startswith("READY "), self.log.read_text()[-3000:]
        self.url = line.split()[1]
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(30) == 0, self.log.read_text()[-3000:]

    def status(self) -> dict[str, Any]:
        return admin_status(self.data_dir)


class Agent:
    def __init__(self, root: Path, robot_id: str, urls: list[str], episodes: int, rate_hz: float = 0,
                 chunk_steps: int = 10, spool: dict[str, Any] | None = None, spool_dir: Path | None = None,
                 link: dict[str, Any] | None = None):
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
        self.proc: subprocess.Popen | None = None

    def write_config(self) -> None:
        self.cfg.write_text(tomli_w.dumps({
            "robot_id": self.robot_id,
            "link": {"url": self.urls[0], "fallback_urls": self.urls[1:], **FAST_LINK, "allow_unauthenticated": True,
                     **self.link},
            "robot": {"driver": "mujoco_fetch", "options": {"seed": abs(hash(self.robot_id)) % 1000}},
            "control": {"rate_hz": self.rate_hz, "max_episodes": self.episodes, "chunk_steps": self.chunk_steps},
            "spool": {"dir": str(self.spool_dir), **self.spool},
            "state_dir": str(self.state_dir),
        }))

    def start(self, drain_timeout: float = 120, env: dict[str, str] | None = None) -> "Agent":
        self.write_config()
        self.proc = _track(subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(self.cfg), "--drain-timeout", str(drain_timeout)],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"), env={**os.environ, **(env or {})},
        ))
        return self

    def wait(self, timeout: float = 180) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout)
        return rc

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def ledger(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "ledger.json").read_text())

    def chunk_rows(self) -> dict[int, int]:
        rows: dict[int, int] = {}
        for line in (self.state_dir / "chunks.log").read_text().splitlines():
            seq, n = line.split()
            rows[int(seq)] = int(n)  # a reconciled chunk may appear twice: same rows
        return rows


def stored_rows(data_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    buf = data_dir / "buffer"
    manifest = json.loads((buf / "manifest.json").read_text())
    rows: list[dict[str, Any]] = []
    for s in manifest["segments"]:
        t = pq.read_table(buf / "segments" / s["name"], columns=["robot_id", "episode_id", "step", "stream_seq"])
        rows.extend(t.to_pylist())
    return manifest, rows


def assert_exactly_once(data_dir: Path, agents: list[Agent]) -> dict[str, dict[str, int]]:
    """Every transition each agent recorded is stored once; nothing else is stored.

    Chunks the robot reported lost (damaged on its disk) are the only rows
    allowed missing, and they must be listed in the manifest.
    """
    manifest, rows = stored_rows(data_dir)
    by_robot = Counter(r["robot_id"] for r in rows)
    assert set(by_robot) <= {a.robot_id for a in agents}, f"rows from unknown robots: {set(by_robot)}"
    totals = {}
    for a in agents:
        ledger = a.ledger()
        per_chunk = a.chunk_rows()
        lost_seqs = {s for r in manifest["lost"] if r["robot_id"] == a.robot_id for s in range(r["first"], r["last"] + 1)}
        lost_rows = sum(per_chunk.get(s, 0) for s in lost_seqs)
        mine = [r for r in rows if r["robot_id"] == a.robot_id]
        keys = Counter((r["episode_id"], r["step"], r["stream_seq"]) for r in mine)
        dupes = sum(c - 1 for c in keys.values() if c > 1)
        seqs = {r["stream_seq"] for r in mine}
        totals[a.robot_id] = {"generated": ledger["transitions"], "stored": len(mine), "duplicates": dupes,
                              "lost_reported": lost_rows, "chunks": ledger["chunks"]}
        print(f"ledger {a.robot_id}: {totals[a.robot_id]}")
        assert dupes == 0, f"{a.robot_id}: {dupes} transitions stored twice"
        assert len(mine) == ledger["transitions"] - lost_rows, f"{a.robot_id}: {totals[a.robot_id]}"
        assert seqs | lost_seqs == set(range(1, ledger["last_seq"] + 1)), f"{a.robot_id}: stream seqs missing"
        assert manifest["hwm"].get(a.robot_id, 0) == ledger["last_seq"]
    return totals


class Proxy:
    """A TCP proxy on loopback that cuts, stalls and delays the link on demand.

    ``cut_after``: (lo, hi) bytes; each connection is cut (both sockets
    aborted) after a random count in that range, summed over both directions.
    """

    def __init__(self, target_port: int, cut_after: tuple[int, int] | None = None, seed: int = 0,
                 max_cuts: int | None = None):
        self.target_port, self.cut_after, self.max_cuts = target_port, cut_after, max_cuts
        self.rng = random.Random(seed)
        self.cuts = 0
        self.connections = 0
        self.stalled = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._resume = asyncio.Event()
        self._resume.set()
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def stall(self, on: bool) -> None:
        """Stop forwarding without closing anything: a half-open link."""
        self.loop.call_soon_threadsafe(self._resume.clear if on else self._resume.set)

    async def _handle(self, r1: asyncio.StreamReader, w1: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            r2, w2 = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            w1.close()
            return
        budget = None
        if self.cut_after and (self.max_cuts is None or self.cuts < self.max_cuts):
            budget = [self.rng.randint(*self.cut_after)]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(4096):
                await self._resume.wait()
                if budget is not None:
                    if len(data) >= budget[0]:
                        w.write(data[: budget[0]])
                        raise ConnectionAbortedError("cut")
                    budget[0] -= len(data)
                w.write(data)
                await w.drain()

        tasks = [asyncio.ensure_future(pipe(r1, w2)), asyncio.ensure_future(pipe(r2, w1))]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if [t for t in done if isinstance(t.exception(), ConnectionAbortedError)]:  # every exception retrieved
            self.cuts += 1
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for w in (w1, w2):
            w.transport.abort()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


# Progress lines, not symptoms of a fault: they may come often (a fast learner publishes many times a second).
PROGRESS_EVENTS = {"policy_published", "policy_swapped", "checkpoint_saved", "drained", "status"}


def assert_logs_quiet(path: Path, per_second: int = 1) -> Counter:
    """A fault run's log, as an operator reads it: no unretrieved-exception or
    other tracebacks, and at most ``per_second`` lines per event kind (per robot)
    in any one second. Returns the count of lines per event kind."""
    import re

    text = path.read_text()
    assert "never retrieved" not in text, f"{path.name}: an unretrieved exception:\n" + _lines_with(text, "never retrieved")
    assert "traceback=" not in text and "Traceback" not in text, f"{path.name}: a traceback:\n" + _lines_with(text, "raceback")
    per: Counter = Counter()
    kinds: Counter = Counter()
    for line in text.splitlines():
        m = re.search(r" event=(\w+)", line)
        if not m or m.group(1) in PROGRESS_EVENTS:
            continue
        robot = re.search(r" robot_id=(\S+)", line)
        kinds[m.group(1)] += 1
        per[(line[:19], m.group(1), robot.group(1) if robot else "")] += 1
    worst = per.most_common(1)
    assert not worst or worst[0][1] <= per_second, \
        f"{path.name}: {worst[0][1]} lines of {worst[0][0][1:]} in the second {worst[0][0][0]}"
    return kinds


def _lines_with(text: str, needle: str) -> str:
    return "\n".join([line[:600] for line in text.splitlines() if needle in line][:3])
