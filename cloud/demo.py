"""``cloud-learner demo``: a learner and simulated robots as real processes on
this machine, linked by real websockets, with a live view of learning.

``--obs state`` trains on the state vectors (gripper, goal); ``--obs pixels``
on two camera views plus the gripper's own state, NOT the goal vector: the
policy must find the goal sphere in the images. Either way the run directory
gets ``success.png`` (success rate over time) and the series in summary.json.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .dashboard import dashboard_link
from .demo_fleet import Fleet, fleet_rate, group_lines, parse_fleet
from .plot import success_curve_png

console = Console()
OBS_MODES = ("state", "pixels")
CURVE_PNG = "success.png"
WINDOW = 50  # the learner's success rate is over its last 50 episodes

# -- the pixel demo: what the robots film and how the learner trains on it ---------------------
# Two fixed 64x64 views of the workspace. The goal is a 2 cm red sphere floating anywhere in a
# 30 cm cube; one view cannot tell its depth, and the gymnasium default view (2.5 m away) draws
# it 1-2 pixels wide and loses it behind the arm for ~20% of goals. external_camera_0 (above the
# table's far edge, looking down at the arm) sees it for every goal (median 10 px) but mixes
# depth and height; a side view 0.75 m from the workspace (the default free camera, moved)
# separates them (median 13 px, seen for 97% of goals at reset, 99% of steps while reaching).
# From the two sphere centroids a linear fit recovers the goal to ~2 cm (success is < 5 cm).
# Anti-aliasing is off: with software OpenGL a step with both views then takes ~6 ms, not ~16.
PIXEL_WORKSPACE = [1.34, 0.75, 0.55]  # centre of FetchReach's goal cube (m)
PIXEL_CAMERAS: list[dict[str, Any]] = [
    {"name": "overhead", "view": "external_camera_0", "size": 64, "codec": "raw"},
    {"name": "side", "view": "default", "size": 64, "codec": "raw",
     "lookat": PIXEL_WORKSPACE, "distance": 0.75, "azimuth": 90.0, "elevation": -15.0},
]
# raw frames: the chunk's zstd packs these flat-shaded renders to ~1.2 KB a frame; PNG gives ~1.9 KB
# at 10x the encode time on the robot and a decode on the learner.
PIXEL_ROBOT = {"camera_antialias": False}
PIXEL_RATE_HZ = 25.0  # the env's own control rate; each step draws two views on the robot's CPU
# Learner settings of the pixel demo, in one place to tune. These are for a CPU learner: one
# torch thread (two lose to the robots' rendering on a 2-core machine) and a 16-channel encoder
# (a 32-channel one costs ~3.3x per update at 64x64).
PIXEL_LEARNER: dict[str, Any] = {
    "observation_fields": ["observation"],  # the gripper's state; the goal comes from the cameras
    "image_fields": [c["name"] for c in PIXEL_CAMERAS],
    "policy": "cnn_gaussian",
    "encoder_channels": [16, 16, 16, 16],
    "encoder_latent": 50,
    "hidden": [256, 256],
    "augment_pad": 4,
    "batch_size": 128,
    "lr": 1e-3,
    "tau": 0.01,
    "learning_starts": 1000,
    "utd_ratio": 1.0,
    "publish_every": 100,
    "history_fraction": 0.0,  # image_memory_mb holds ~29 minutes of the demo's frames (24.6 KB a step)
    "image_memory_mb": 2048.0,
    "prefetch_batches": 2,
    "threads": 1,
}
# Replaces PIXEL_LEARNER entries when torch sees a GPU here (the learner's device is "auto").
PIXEL_LEARNER_GPU: dict[str, Any] = {"encoder_channels": [32, 32, 32, 32], "batch_size": 256, "utd_ratio": 2.0}
STATE_RATE_HZ = 50.0


def pixel_learner_settings(gpu: bool) -> dict[str, Any]:
    """The pixel demo's [learner] table (without the seed)."""
    return {**PIXEL_LEARNER, **(PIXEL_LEARNER_GPU if gpu else {})}


def _gpu_seen() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _write_configs(run_dir: Path, robots: int | str | Fleet, rate_hz: float, task: str, seed: int,
                   obs: str = "state") -> tuple[Path, list[Path]]:
    fleet = robots if isinstance(robots, Fleet) else parse_fleet(str(robots), task)
    run_dir.mkdir(parents=True, exist_ok=True)
    learner = run_dir / "learner.toml"
    algo: dict[str, Any] = {"seed": seed}
    if obs == "pixels":
        algo.update(pixel_learner_settings(_gpu_seen()))
    learner.write_text(tomli_w.dumps({
        "data_dir": "learner",
        # unenrolled simulated robots: the learner opts in to open mode, which binds loopback only
        "server": {"host": "127.0.0.1", "port": 0, "auth": "open"},
        "learner": algo,
        **({"groups": {"mode": "auto"}} if fleet.mixed else {}),  # each embodiment its own policy
    }))
    agents = []
    for i, (robot_id, kind) in enumerate(fleet.robots):
        p = run_dir / f"agent-{i}.toml"
        options: dict[str, Any] = {**kind.options, "seed": seed * 100 + i}
        if obs == "pixels":
            options.update(PIXEL_ROBOT, cameras=PIXEL_CAMERAS)
        p.write_text(tomli_w.dumps({
            "robot_id": robot_id,
            # replaced once the learner has its port; a robot without a credential takes weights
            # only from a learner on this computer, and only when told so
            "link": {"url": "ws://127.0.0.1:0/ws", "allow_unauthenticated": True},
            "robot": {"driver": kind.driver, "options": options},
            "control": {"rate_hz": rate_hz, "random_steps": 500, "seed": seed * 100 + i},
            "spool": {"dir": f"robots/{robot_id}/spool"},
            "state_dir": f"robots/{robot_id}/state",
        }))
        agents.append(p)
    return learner, agents


def _set_url(path: Path, url: str) -> None:
    from shared.config import read_toml

    d = read_toml(path.read_text())
    d["link"]["url"] = url
    path.write_text(tomli_w.dumps(d))


async def _start(args: list[str], log: Path) -> asyncio.subprocess.Process:
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = await asyncio.to_thread(open, log, "ab")
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=fh, start_new_session=True
    )


async def _stop(proc: asyncio.subprocess.Process, timeout: float) -> int | None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
    return proc.returncode


async def _demo(fleet: Fleet, minutes: float, target: float, rate_hz: float, task: str, run_dir: Path, seed: int,
                obs: str) -> int:
    learner_cfg, agent_cfgs = _write_configs(run_dir, fleet, rate_hz, task, seed, obs)
    logs = run_dir / "logs"
    seen = "two camera views + the gripper's state (no goal vector)" if obs == "pixels" else "state vectors"
    what = fleet.describe() + " robots" + (", one policy per embodiment" if fleet.mixed else "")
    console.print(f"[bold]fleetrl demo[/]: 1 learner + {what}, the policy sees {seen}; run dir [cyan]{run_dir}[/]")
    console.print("[yellow]open mode[/]: the learner lets robots in without a credential and listens on 127.0.0.1 only "
                  "(real robots: server.auth = \"required\" and `cloud-learner robots add`)")
    learner = await _start(["-m", "cloud", "serve", "--config", str(learner_cfg)], logs / "learner.log")
    agents: list[asyncio.subprocess.Process] = []
    try:
        assert learner.stdout is not None
        line = await asyncio.wait_for(learner.stdout.readline(), 60)
        if not line.startswith(b"READY "):
            console.print(f"[red]the learner did not start[/]; see {logs / 'learner.log'}")
            return 1
        url = line.split()[1].decode()
        data_dir = run_dir / "learner"  # /status is on the learner's loopback admin listener, with its token
        endpoint = json.loads((data_dir / "endpoint.json").read_text())
        status = (endpoint["status"], (data_dir / "admin_token").read_text().strip())
        console.print(f"watch it live in a browser: [cyan]{dashboard_link(endpoint['admin'], status[1])}[/] "
                      "(the learner's dashboard; the link holds its admin token)")
        for i, p in enumerate(agent_cfgs):
            _set_url(p, url)
            agents.append(await _start(["-m", "edge_agent", "run", "--config", str(p)], logs / f"agent-{i}.log"))
        title = f"fleetrl demo: {fleet.describe()}, {obs}; success over the last {WINDOW} episodes"
        return await _watch(status, agents, learner, minutes, target, run_dir, title)
    finally:
        for a in agents:
            await _stop(a, 30)
        await _stop(learner, 30)


class Curve:
    """Success rate over time as the demo polls it: one point per change in the episode count."""

    def __init__(self) -> None:
        self.t_s: list[float] = []
        self.success_rate: list[float | None] = []
        self.episodes: list[int] = []

    def add(self, t_s: float, rate: float | None, episodes: int) -> None:
        if self.episodes and episodes == self.episodes[-1]:
            return
        self.t_s.append(round(t_s, 2))
        self.success_rate.append(rate)
        self.episodes.append(episodes)

    def to_dict(self) -> dict[str, list[Any]]:
        return {"t_s": self.t_s, "success_rate": self.success_rate, "episodes": self.episodes}


async def _watch(status: tuple[str, str], agents, learner, minutes: float, target: float, run_dir: Path,
                 title: str = "fleetrl demo") -> int:
    status_url, token = status
    t0 = time.monotonic()
    first_rate: float | None = None
    reached_at: float | None = None
    s: dict[str, Any] = {}
    curve = Curve()
    failed: str | None = None
    cols = (TextColumn("[bold]{task.description}"), BarColumn(bar_width=12), TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    async with aiohttp.ClientSession() as http:
        with Progress(*cols, console=console, refresh_per_second=4) as progress:
            bar = progress.add_task("", total=1.0, info="waiting for robots")
            while time.monotonic() - t0 < minutes * 60:
                dead = [p for p in (learner, *agents) if p.returncode is not None]
                if dead:
                    failed = f"a process exited early (code {dead[0].returncode})"
                    console.print(f"[red]{failed}[/]; logs in {run_dir / 'logs'}")
                    break
                try:
                    async with http.get(status_url, headers={"Authorization": f"Bearer {token}"}) as r:
                        s = await r.json()
                except aiohttp.ClientError:
                    pass
                rate, episodes = fleet_rate(s)  # with several groups: the slowest group's
                curve.add(time.monotonic() - t0, rate, int(s.get("episodes", 0)))
                if rate is not None and first_rate is None and episodes >= 20:
                    first_rate = rate
                if len(s.get("groups") or {}) > 1:  # each group's success and policy: "point_mass 40% v12 | ..."
                    info = " | ".join(f"{n.rsplit('-', 1)[0]} {g.get('success_rate') or 0:>4.0%} v{g.get('policy_version', 0)}"
                                      for n, g in sorted(s["groups"].items())) + f" | steps {s.get('buffer_rows', 0)}"
                else:
                    info = (
                        f"success {0 if rate is None else rate:>4.0%} | steps {s.get('buffer_rows', 0)} "
                        f"eps {s.get('episodes', 0)} | policy v{s.get('policy_version', 0)} "
                        f"| {s.get('updates', 0)} upd ({s.get('updates_per_s', 0):.0f}/s)"
                    )
                progress.update(bar, completed=rate or 0.0, info=info)
                if rate is not None and rate >= target and episodes >= WINDOW:
                    reached_at = time.monotonic() - t0
                    break
                await asyncio.sleep(0.5)  # screen refresh interval, not synchronisation
    elapsed = time.monotonic() - t0
    console.print()
    if reached_at is not None:
        console.print(f"[green bold]reached {target:.0%} success[/] over the last {WINDOW} episodes in {reached_at:.0f} s")
    elif not failed:
        console.print(f"[yellow]did not reach {target:.0%} in {elapsed:.0f} s[/]")
    lines = group_lines(s)
    if lines:  # a mixed fleet: the slowest group's success, then each group's
        console.print(f"success of the slowest group: {0 if first_rate is None else first_rate:.0%} (first 20 episodes) "
                      f"-> {fleet_rate(s)[0] or 0:.0%} (last {WINDOW}); {s.get('buffer_rows', 0)} transitions in "
                      f"{s.get('episodes', 0)} episodes")
    else:
        console.print(
            f"success: {0 if first_rate is None else first_rate:.0%} (first 20 episodes) -> {s.get('success_rate') or 0:.0%} (last {WINDOW}); "
            f"{s.get('buffer_rows', 0)} transitions in {s.get('episodes', 0)} episodes; policy v{s.get('policy_version', 0)}; "
            f"{s.get('updates', 0)} updates"
        )
    png = success_curve_png(run_dir / CURVE_PNG, curve.t_s, curve.success_rate, title, target=target)
    for line in lines:
        console.print(line)
    console.print(f"success over time: [cyan]{png}[/]")
    console.print(f"data: Parquet segments in [cyan]{run_dir / 'learner' / 'buffer'}[/]"
                  + (f" (later groups: [cyan]{run_dir / 'learner' / 'groups'}[/])" if lines else "")
                  + f", logs in [cyan]{run_dir / 'logs'}[/]")
    console.print(f"continue this run: cloud-learner serve --resume --config {run_dir / 'learner.toml'}")
    (run_dir / "summary.json").write_text(json.dumps({
        "reached_s": reached_at, "target": target, "elapsed_s": round(elapsed, 1), "first_rate": first_rate,
        "failed": failed, "curve": curve.to_dict(), "curve_png": CURVE_PNG, "status": s,
    }, indent=1))
    if failed:
        return 1
    return 0 if reached_at is not None else 3


def run_demo(robots: int | str, minutes: float, target: float, rate_hz: float | None, task: str, run_dir: Path | None,
             seed: int, obs: str = "state") -> int:
    """Run the demo; 0 when the target was reached, 3 when time ran out, 1 when a process failed.

    ``robots``: a count of Fetch robots of ``task``, or a mixed fleet (``"reach:2,point_mass:2"``: each
    embodiment in its own group, the target reached once every group reaches it).
    ``rate_hz`` None: 50 Hz for state, 25 Hz (the env's own rate) for pixels."""
    if obs not in OBS_MODES:
        raise ValueError(f"obs: {obs!r} is not one of {', '.join(OBS_MODES)}")
    fleet = parse_fleet(str(robots), task)
    if obs == "pixels" and any(k.name != "reach" for k in fleet.kinds):
        raise ValueError("obs: pixels runs Fetch reach robots only (its cameras frame the reach goal)")
    if rate_hz is None:
        rate_hz = PIXEL_RATE_HZ if obs == "pixels" else STATE_RATE_HZ
    run_dir = (run_dir or Path("fleetrl-runs") / time.strftime("demo-%Y%m%d-%H%M%S")).resolve()
    return asyncio.run(_demo(fleet, minutes, target, rate_hz, task, run_dir, seed, obs))
