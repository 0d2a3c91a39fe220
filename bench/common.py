"""What every benchmark shares: result rows and JSON, real learner/agent processes,
MuJoCo-rendered frames (clean and camera-noisy) and pre-filled robot spools.

Processes, waits and the exactly-once count come from the shared harness
package (harness/, beside tests/ and bench/; not part of the installed product).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import tomli_w

import harness
from harness import count_exactly_once, free_port, kill_all, log_events, read_ready, spawn, stop, wait_for  # noqa: F401
from shared.config import is_loopback

ROOT = harness.procs.ROOT
RESULTS = ROOT / "bench" / "results"

# Looser than the tests' harness.FAST_LINK: a WAN-like or loaded benchmark link must not flap.
FAST_LINK = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.5, "ping_interval_s": 1.0, "ping_timeout_s": 3.0,
             "connect_timeout_s": 3.0}


# ---------------------------------------------------------------- results


@dataclass
class Row:
    case: str
    metric: str
    value: float | None
    unit: str = ""
    baseline: float | None = None
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None  # None: reported, no target
    note: str = ""


@dataclass
class Result:
    name: str
    quick: bool
    rows: list[Row] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""

    def add(self, *a: Any, **k: Any) -> Row:
        r = Row(*a, **k)
        self.rows.append(r)
        return r

    @property
    def headline_ratio(self) -> float:
        """The first row with a ratio: what the CI smoke test checks is finite."""
        for r in self.rows:
            if r.ratio is not None:
                return r.ratio
        return float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "quick": self.quick, "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(self.seconds, 1), "error": self.error,
            "rows": [r.__dict__ for r in self.rows], "extra": self.extra, "notes": self.notes,
            "versions": versions(), "machine": machine(),
        }


def fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        a = abs(x)
        if a >= 1000:
            return f"{x:,.0f}"
        if a >= 10:
            return f"{x:.1f}"
        if a >= 0.1:
            return f"{x:.2f}"
        return f"{x:.3g}"
    return str(x)


def table_lines(res: Result, markdown: bool = False) -> list[str]:
    head = ["case", "metric", "value", "unit", "baseline", "ratio", "target", "ok"]
    body = []
    for r in res.rows:
        ok = "BLOCKED" if r.note.startswith("blocked") else "-" if r.ok is None else ("PASS" if r.ok else "MISS")
        body.append([r.case, r.metric, fmt(r.value), r.unit, fmt(r.baseline), fmt(r.ratio), r.target, ok])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
        return out
    w = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w[i]) for i, c in enumerate(cells))  # noqa: E731
    return [line(head), line(["-" * x for x in w]), *(line(row) for row in body)]


def print_result(res: Result) -> None:
    print(f"\n== {res.name}{' (quick)' if res.quick else ''}  [{res.seconds:.0f} s]")
    if res.error:
        print(f"ERROR: {res.error}")
    for ln in table_lines(res):
        print(ln)
    for n in res.notes:
        print(f"  note: {n}")
    sys.stdout.flush()


def save_result(res: Result) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"{res.name}{'-quick' if res.quick else ''}"
    data = json.dumps(res.to_json(), indent=1, default=str)
    (RESULTS / f"{stem}.json").write_text(data)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"{stem}-{stamp}.json"
    path.write_text(data)
    return path


@functools.lru_cache(1)
def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("fleetrl", "torch", "numpy", "pyarrow", "zstandard", "websockets", "aiohttp", "mujoco", "pillow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    try:
        out["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                    text=True, timeout=5).stdout.strip()
    except OSError:
        pass
    return out


@functools.lru_cache(1)
def machine() -> dict[str, Any]:
    model = platform.processor()
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                model = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "mem_mb": mem, "kernel": platform.release(),
            "load_avg": os.getloadavg()}


# ---------------------------------------------------------------- processes
# Starting, stopping and waiting on real processes is the test harness's (harness/), shared with tests/.


class Learner(harness.Learner):
    """``python -m cloud serve`` (or the bench host, which adds a publish route) on a TOML config:
    no training unless a benchmark asks, a big in-memory buffer."""

    DEFAULTS = {"learning_starts": 10**9, "batch_size": 256, "memory_capacity": 200_000}
    HEARTBEAT_S = 5.0
    CLEAN_EXIT = False  # a benchmark reports its figures; the fault suites check clean exits

    def __init__(self, root: Path, learner: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
                 host: str = "127.0.0.1", port: int = 0, data_dir: Path | None = None, name: str = "learner",
                 bench_host: bool = False):
        super().__init__(root, port=port, data_dir=data_dir, learner=learner, name=name, limits=limits, host=host)
        if bench_host:
            self.MODULE = ["bench._learner_host"]


def agent_config(root: Path, robot_id: str, url: str, *, camera: bool = False, codec: str = "raw",
                 control: dict[str, Any] | None = None, link: dict[str, Any] | None = None,
                 spool: dict[str, Any] | None = None, seed: int = 1) -> Path:
    d = root / robot_id
    d.mkdir(parents=True, exist_ok=True)
    opts: dict[str, Any] = {"seed": seed}
    if camera:
        opts.update(camera=True, camera_size=128, camera_codec=codec)
    cfg = {
        "robot_id": robot_id,
        # a robot without a credential takes weights only from a learner on this computer, opted in
        "link": {"url": url, **FAST_LINK, "allow_unauthenticated": is_loopback(urlsplit(url).hostname or ""), **(link or {})},
        "robot": {"driver": "mujoco_fetch", "options": opts},
        "control": {"rate_hz": 0, "max_episodes": 1, "chunk_steps": 50, **(control or {})},
        "spool": {"dir": str(d / "spool"), **(spool or {})},
        "state_dir": str(d / "state"),
        "service": {"metrics_port": 0},  # several agents on one machine
    }
    path = d / "agent.toml"
    path.write_text(tomli_w.dumps(cfg))
    return path


def start_agent(cfg: Path, drain_timeout: float = 300, probe: Path | None = None,
                prefix: list[str] | None = None) -> subprocess.Popen:
    """A real edge-agent; with ``probe`` the bench wrapper that also dumps the loop's period errors."""
    log = cfg.parent / "agent.log"
    if probe is None and "camera = true" in cfg.read_text():
        probe = cfg.parent / "probe.json"  # the plain agent cannot run a camera robot (see _agent_probe)
    if probe is not None:
        args = [sys.executable, "-m", "bench._agent_probe", str(cfg), str(probe), str(drain_timeout)]
    else:
        args = [sys.executable, "-m", "edge_agent", "run", "--config", str(cfg), "--drain-timeout", str(drain_timeout)]
    return spawn(args, log, prefix=prefix)


# ---------------------------------------------------------------- data


@functools.lru_cache(4)
def trajectory(camera: bool, steps: int, seed: int = 0) -> tuple[Any, list[dict[str, np.ndarray]]]:
    """(episode spec, observations o_0..o_steps) from the real MuJoCo Fetch driver, random actions."""
    from hal_drivers import registry

    opts: dict[str, Any] = {"seed": seed}
    if camera:
        opts.update(camera=True, camera_size=128)
    robot = registry.create("mujoco_fetch", opts)
    try:
        spec = robot.describe().episode_spec()
        rng = np.random.default_rng(seed)
        obs = [robot.reset()]
        for i in range(steps):
            res = robot.step(rng.uniform(-1, 1, 4).astype(np.float32))
            obs.append(res.observation)
            if res.terminated or res.truncated:
                obs[-1] = robot.reset()
    finally:
        robot.close()
    return spec, obs


def add_camera_noise(frames: list[np.ndarray], sigma: float = 4.0, seed: int = 1) -> list[np.ndarray]:
    """Sensor-like read noise (Gaussian per pixel and channel) and a small per-frame gain flicker."""
    rng = np.random.default_rng(seed)
    out = []
    for f in frames:
        gain = 1.0 + rng.normal(0, 0.01)
        noisy = f.astype(np.float32) * gain + rng.normal(0, sigma, f.shape)
        out.append(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
    return out


def observations(kind: str, steps: int) -> tuple[Any, list[dict[str, np.ndarray]]]:
    """kind: state | clean | noisy."""
    spec, obs = trajectory(kind != "state", steps)
    if kind == "noisy":
        frames = add_camera_noise([o["camera"] for o in obs])
        obs = [{**o, "camera": f} for o, f in zip(obs, frames)]
    return spec, obs


def with_codec(spec: Any, codec: str, quality: int | None = None) -> Any:
    from shared.schema import EpisodeSpec, FieldSpec

    fields = {k: (FieldSpec(v.shape, v.dtype, codec=codec, quality=quality if codec == "jpeg" else None)
                  if v.is_image else v) for k, v in spec.observation.items()}
    return EpisodeSpec(fields, spec.action_dim, spec.action_low, spec.action_high)


@dataclass
class ChunkSet:
    spec: Any
    chunks: list[tuple[str, int, int, bytes]]  # episode id, rows, raw size, body

    @property
    def rows(self) -> int:
        return sum(c[1] for c in self.chunks)

    @property
    def raw_bytes(self) -> int:
        return sum(c[2] for c in self.chunks)

    @property
    def wire_bytes(self) -> int:
        return sum(len(c[3]) for c in self.chunks)


def make_chunks(kind: str, transitions: int, robot_id: str, chunk_steps: int = 50, distinct: int = 100,
                codec: str = "raw") -> ChunkSet:
    """Episode chunks exactly as the agent encodes them (shared.chunk.make_chunk), from
    ``distinct`` real steps cycled (more than a chunk, so zstd sees no repeats in one chunk)."""
    from shared.chunk import StepRecord, make_chunk

    spec, obs = observations(kind, distinct)
    if codec != "raw":
        spec = with_codec(spec, codec, 90)
    rng = np.random.default_rng(7)
    chunks, t = [], 0
    ep = 0
    while t < transitions:
        eid = f"bench-{ep:06d}"
        ep += 1
        for start in range(0, 50, chunk_steps):
            n = min(chunk_steps, 50 - start, transitions - t)
            if n <= 0:
                break
            steps = []
            for i in range(n):
                k = (t + i) % distinct
                step = start + i
                steps.append(StepRecord(obs=obs[k], action=rng.uniform(-1, 1, 4).astype(np.float32), reward=-0.1,
                                        next_obs=obs[k + 1], terminated=False, truncated=step == 49, step=step))
            c = make_chunk(spec, robot_id, eid, steps)
            chunks.append((eid, c.rows, c.raw_size, c.body))
            t += n
    return ChunkSet(spec, chunks)


def prefill_spool(spool_dir: Path, cs: ChunkSet) -> None:
    """Write chunks into a robot spool with the agent's own Spool class (not timed)."""
    from edge_agent.spool import Spool
    from shared.chunk import checksum

    sp = Spool(spool_dir, fsync="never")
    for eid, rows, raw, body in cs.chunks:
        sp.append(eid, rows, raw, checksum(body), body)
    sp.close()


def ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or b == 0:
        return float("nan")
    return a / b
