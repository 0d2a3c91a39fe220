"""``cloud-learner demo``: a learner and simulated robots as real processes on
this machine, linked by real websockets, with a live view of learning."""

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

console = Console()


def _write_configs(run_dir: Path, robots: int, rate_hz: float, task: str, seed: int) -> tuple[Path, list[Path]]:
    run_dir.mkdir(parents=True, exist_ok=True)
    learner = run_dir / "learner.toml"
    learner.write_text(tomli_w.dumps({
        "data_dir": "learner",
        # unenrolled simulated robots: the learner opts in to open mode, which binds loopback only
        "server": {"host": "127.0.0.1", "port": 0, "auth": "open"},
        "learner": {"seed": seed},
    }))
    agents = []
    for i in range(robots):
        p = run_dir / f"agent-{i}.toml"
        p.write_text(tomli_w.dumps({
            "robot_id": f"sim-{i}",
            # replaced once the learner has its port; a robot without a credential takes weights
            # only from a learner on this computer, and only when told so
            "link": {"url": "ws://127.0.0.1:0/ws", "allow_unauthenticated": True},
            "robot": {"driver": "mujoco_fetch", "options": {"task": task, "seed": seed * 100 + i}},
            "control": {"rate_hz": rate_hz, "random_steps": 500, "seed": seed * 100 + i},
            "spool": {"dir": f"robots/sim-{i}/spool"},
            "state_dir": f"robots/sim-{i}/state",
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


async def _demo(robots: int, minutes: float, target: float, rate_hz: float, task: str, run_dir: Path, seed: int) -> int:
    learner_cfg, agent_cfgs = _write_configs(run_dir, robots, rate_hz, task, seed)
    logs = run_dir / "logs"
    console.print(f"[bold]fleetrl demo[/]: 1 learner + {robots} simulated Fetch-{task} robots; run dir [cyan]{run_dir}[/]")
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
        status = (json.loads((data_dir / "endpoint.json").read_text())["status"], (data_dir / "admin_token").read_text().strip())
        for i, p in enumerate(agent_cfgs):
            _set_url(p, url)
            agents.append(await _start(["-m", "edge_agent", "run", "--config", str(p)], logs / f"agent-{i}.log"))
        return await _watch(status, agents, learner, minutes, target, run_dir)
    finally:
        for a in agents:
            await _stop(a, 30)
        await _stop(learner, 30)


async def _watch(status: tuple[str, str], agents, learner, minutes: float, target: float, run_dir: Path) -> int:
    status_url, token = status
    t0 = time.monotonic()
    first_rate: float | None = None
    reached_at: float | None = None
    s: dict[str, Any] = {}
    cols = (TextColumn("[bold]{task.description}"), BarColumn(bar_width=12), TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    async with aiohttp.ClientSession() as http:
        with Progress(*cols, console=console, refresh_per_second=4) as progress:
            bar = progress.add_task("", total=1.0, info="waiting for robots")
            while time.monotonic() - t0 < minutes * 60:
                dead = [p for p in (learner, *agents) if p.returncode is not None]
                if dead:
                    console.print(f"[red]a process exited early[/] (code {dead[0].returncode}); logs in {run_dir / 'logs'}")
                    return 1
                try:
                    async with http.get(status_url, headers={"Authorization": f"Bearer {token}"}) as r:
                        s = await r.json()
                except aiohttp.ClientError:
                    pass
                rate = s.get("success_rate")
                if rate is not None and first_rate is None and s.get("episodes", 0) >= 20:
                    first_rate = rate
                info = (
                    f"success {0 if rate is None else rate:>4.0%} | steps {s.get('buffer_rows', 0)} "
                    f"eps {s.get('episodes', 0)} | policy v{s.get('policy_version', 0)} "
                    f"| {s.get('updates', 0)} upd ({s.get('updates_per_s', 0):.0f}/s)"
                )
                progress.update(bar, completed=rate or 0.0, info=info)
                if rate is not None and rate >= target and s.get("episodes", 0) >= 50:
                    reached_at = time.monotonic() - t0
                    break
                await asyncio.sleep(0.5)  # screen refresh interval, not synchronisation
    elapsed = time.monotonic() - t0
    console.print()
    if reached_at is not None:
        console.print(f"[green bold]reached {target:.0%} success[/] over the last 50 episodes in {reached_at:.0f} s")
    else:
        console.print(f"[yellow]did not reach {target:.0%} in {elapsed:.0f} s[/]")
    console.print(
        f"success: {0 if first_rate is None else first_rate:.0%} (first 20 episodes) -> {s.get('success_rate') or 0:.0%} (last 50); "
        f"{s.get('buffer_rows', 0)} transitions in {s.get('episodes', 0)} episodes; policy v{s.get('policy_version', 0)}; "
        f"{s.get('updates', 0)} updates"
    )
    console.print(f"data: Parquet segments in [cyan]{run_dir / 'learner' / 'buffer'}[/], logs in [cyan]{run_dir / 'logs'}[/]")
    console.print(f"continue this run: cloud-learner serve --resume --config {run_dir / 'learner.toml'}")
    (run_dir / "summary.json").write_text(json.dumps({"reached_s": reached_at, "first_rate": first_rate, "status": s}, indent=1))
    return 0 if reached_at is not None else 3


def run_demo(robots: int, minutes: float, target: float, rate_hz: float, task: str, run_dir: Path | None, seed: int) -> int:
    run_dir = (run_dir or Path("fleetrl-runs") / time.strftime("demo-%Y%m%d-%H%M%S")).resolve()
    return asyncio.run(_demo(robots, minutes, target, rate_hz, task, run_dir, seed))
