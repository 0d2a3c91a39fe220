"""The real path for RL-Co: a learner and edge-agents running the real twin, as separate processes.

D_real is recorded the way a person records demonstrations (``edge-agent record`` with the
``scripted_fetch`` operator into a learner that does not train: spool, link, ingest, Parquet),
and evaluation runs a stage's policy on edge-agents the same way robots run any policy: the
weights are placed where a learner keeps its newest published policy (``<data_dir>/policy``),
a learner started on that folder with training off serves them at once, and each robot acts
with the mean action (``control.deterministic``). Rows are read back from the learner's
Parquet segments. Nothing here is new machinery: it is ``cloud serve`` and ``edge-agent``.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import tomli_w

from cloud.buffer.storage import read_manifest, segment_path
from shared.fsutil import atomic_write
from shared.schema import EpisodeSpec
from shared.weights import WeightsBlob

LINK = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.5, "ping_interval_s": 1.0, "ping_timeout_s": 3.0,
        "connect_timeout_s": 3.0, "allow_unauthenticated": True}
NO_TRAINING = {"learning_starts": 10**9, "checkpoint_every": 10**6, "threads": 1, "device": "cpu"}


class RealPathError(RuntimeError):
    """A learner or agent of the real path failed; the message carries its log's tail."""


def _tail(log: Path, n: int = 1500) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _spawn(args: list[str], log: Path, stdout: Any = subprocess.DEVNULL) -> subprocess.Popen:
    with open(log, "ab") as err:
        return subprocess.Popen(args, stdout=stdout, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _stop(p: subprocess.Popen, timeout: float = 30) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


@contextmanager
def learner(root: Path, name: str, policy: WeightsBlob | None = None) -> Iterator[tuple[str, Path]]:
    """A loopback learner that never trains, serving ``policy`` (if given) from the start; (url, data_dir)."""
    data_dir = root / name
    if policy is not None:
        pdir = data_dir / "policy"
        pdir.mkdir(parents=True, exist_ok=True)
        atomic_write(pdir / "latest.safetensors", policy.data)
        atomic_write(pdir / "latest.json", json.dumps({"version": policy.version, "sha256": policy.sha256}).encode())
    cfg = root / f"{name}.toml"
    cfg.write_text(tomli_w.dumps({
        "data_dir": str(data_dir), "server": {"host": "127.0.0.1", "port": 0, "auth": "open"},
        "learner": dict(NO_TRAINING), "metrics": {"port": 0}}))
    log = root / f"{name}.log"
    p = _spawn([sys.executable, "-m", "cloud", "serve", "--config", str(cfg)], log, stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(p.stdout, selectors.EVENT_READ)
            if not sel.select(90):
                raise RealPathError(f"learner {name} did not start in 90 s: {_tail(log)}")
        line = p.stdout.readline().decode()
        if not line.startswith("READY "):
            raise RealPathError(f"learner {name} did not start: {_tail(log)}")
        yield line.split()[1], data_dir
    finally:
        _stop(p)


def agent_config(root: Path, robot_id: str, url: str, robot: dict[str, Any], control: dict[str, Any],
                 teleop: dict[str, Any] | None = None, policy: dict[str, Any] | None = None) -> Path:
    """An agent's TOML; ``policy``: its ``[policy]`` table (how a chunked policy's chunks are played)."""
    d = root / robot_id
    d.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {
        "robot_id": robot_id, "link": {"url": url, **LINK},
        "robot": {"driver": "mujoco_fetch", "options": robot},
        "control": {"rate_hz": 0, "chunk_steps": 50, **control},
        "spool": {"dir": str(d / "spool"), "fsync": "never"}, "state_dir": str(d / "state"),
        "service": {"metrics_port": 0},
    }
    if teleop is not None:
        cfg["teleop"] = {"device": "scripted_fetch", "options": teleop}
    if policy is not None:
        cfg["policy"] = dict(policy)
    path = d / "agent.toml"
    path.write_text(tomli_w.dumps(cfg))
    return path


def run_agents(cmds: list[tuple[list[str], Path]], timeout: float) -> None:
    """Start the agents, wait for all to exit 0 (RealPathError with the failing one's log otherwise)."""
    procs = [(_spawn(args, log), log) for args, log in cmds]
    deadline = time.monotonic() + timeout
    try:
        for p, log in procs:
            try:
                rc = p.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise RealPathError(f"edge-agent did not finish in {timeout:g} s: {_tail(log)}") from None
            if rc != 0:
                raise RealPathError(f"edge-agent exited {rc}: {_tail(log)}")
    finally:
        for p, _ in procs:
            _stop(p, 10)


def stored_table(data_dir: Path, spec: EpisodeSpec) -> pa.Table:
    """Every row the learner stored, in the row schema of ``spec`` (the buffer's own extra columns dropped)."""
    buf = data_dir / "buffer"
    m = read_manifest(buf)
    if m is None:
        raise RealPathError(f"{buf}: no buffer manifest: the learner stored nothing")
    import pyarrow.parquet as pq

    schema = spec.arrow_schema()
    parts = [pq.read_table(segment_path(buf, s), columns=schema.names) for s in m.segments]
    if not parts:
        return schema.empty_table()
    return pa.concat_tables([t.cast(schema) for t in parts])


def record(root: Path, robot: dict[str, Any], operator: dict[str, Any], episodes: int, spec: EpisodeSpec,
           timeout: float = 600) -> pa.Table:
    """``edge-agent record --episodes N`` with the scripted operator on ``robot``; the stored rows."""
    root.mkdir(parents=True, exist_ok=True)
    with learner(root, "demo-learner") as (url, data_dir):
        cfg = agent_config(root, "real-demo-0", url, robot, {"seed": int(robot.get("seed", 0))}, teleop=operator)
        run_agents([([sys.executable, "-m", "edge_agent", "record", "--config", str(cfg), "--episodes", str(episodes),
                      "--drain-timeout", "60"], cfg.parent / "agent.log")], timeout)
    return stored_table(data_dir, spec)
