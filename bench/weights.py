"""weights: publish a policy to 1 and 8 connected robots until each has verified and swapped it.

A real learner app (bench._learner_host: cloud.app.make_app plus a route that
calls the app's own WeightPublisher.publish, as the trainer thread does) and
real edge-agent processes. Time: from publish() to the last agent's
``event=policy_swapped`` log line (sha256 verified, safetensors parsed, network
built and loaded, swapped between two ticks). Baseline in the same run: one
raw websocket send of the same bytes to one client (aiohttp -> websockets),
timed until the client has the whole message.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from . import common as C
from ._rawws import receive_one

OBS_DIM, ACT_DIM = 16, 4  # the simulated Fetch arm's state fields (observation 10 + goals 3 + 3)


def hidden_for(params: int) -> int:
    # Actor(16, 4, [h, h]) has h^2 + 26 h + 8 parameters
    return int((-26 + math.sqrt(26**2 + 4 * (params - 8))) / 2)


def make_blob(params: int, version: int, path: Path) -> int:
    import torch

    from shared.policy import Actor
    from shared.weights import encode_weights

    torch.manual_seed(version)
    actor = Actor(OBS_DIM, ACT_DIM, [hidden_for(params)] * 2)
    n = sum(p.numel() for p in actor.parameters())
    blob = encode_weights(actor.state_dict(), version,
                          {"actor": actor.arch(), "obs_fields": ["observation", "achieved_goal", "desired_goal"]})
    path.write_bytes(blob.data)
    path.with_suffix(".json").write_text(json.dumps({"version": version, "sha256": blob.sha256}))
    return n


def raw_send_seconds(path: Path, root: Path) -> float:
    log = root / "rawws-source.log"
    best = float("inf")
    for _ in range(2):
        p = C.spawn([sys.executable, "-m", "bench._rawws", "source", str(path)], log, stdout=subprocess.PIPE)
        try:
            url = C.read_ready(p, log)
            asyncio.run(receive_one(url))
            line = p.stdout.readline().decode()
            best = min(best, float(line.split()[1]))
        finally:
            C.stop(p)
    return best


def publish(learner: C.Learner, path: Path) -> float:
    req = urllib.request.Request(f"{learner.http}/bench/publish?path={path}", method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())["t_publish"]


def swap_times(logs: list[Path], version: int, timeout: float) -> list[float | None]:
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for log in logs:
            ts = [t for t, ln in C.log_events(log, "policy_swapped") if f"version={version}" in ln]
            found.append(ts[0] if ts else None)
        if all(f is not None for f in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def run(quick: bool = False) -> C.Result:
    res = C.Result("weights", quick)
    sizes = [1_000_000] if quick else [10_000_000, 100_000_000]
    fleet = 1 if quick else 8
    with tempfile.TemporaryDirectory(prefix="fleetrl-bench-weights-") as d:
        root = Path(d)
        learner = C.Learner(root, bench_host=True, limits={"max_frame_bytes": 1 << 30}).start()
        agents: list[subprocess.Popen] = []
        logs: list[Path] = []

        def add_agents(n: int) -> None:
            for i in range(len(agents), n):
                cfg = C.agent_config(root, f"w{i}", learner.url, seed=i,
                                     control={"rate_hz": 10, "max_episodes": 0, "random_steps": 10**9},
                                     link={"ping_interval_s": 5.0, "ping_timeout_s": 10.0})  # product defaults
                agents.append(C.start_agent(cfg, drain_timeout=5))
                logs.append(cfg.parent / "agent.log")
            C.wait_for(lambda: len(learner.status()["robots"]) >= n, 120, f"{n} robots linked", 0.25)

        try:
            version = 0
            add_agents(1)
            for params in sizes:
                version += 1
                blob = root / f"policy-{version}.safetensors"
                n_params = make_blob(params, version, blob)
                size_mb = blob.stat().st_size / 1e6
                base = raw_send_seconds(blob, root)
                label = f"{n_params / 1e6:.0f}M params ({size_mb:.0f} MB)"
                counts = sorted({1, fleet})
                for n in counts:
                    if n > 1:
                        add_agents(n)
                        # late joiners were sent the current policy on connect: let them settle first
                        swap_times(logs[:n], version, 180)
                        version += 1
                        make_blob(params, version, blob)
                    t0 = publish(learner, blob)
                    swaps = swap_times(logs[:n], version, 180)
                    if any(s is None for s in swaps):
                        err = ""
                        downs = C.log_events(logs[0], "link_down")
                        if downs:
                            err = downs[-1][1].split("error=", 1)[-1][:160]
                        done = sum(s is not None for s in swaps)
                        res.add(f"{label} -> {n} agent(s)", "publish to all swapped", None, "s", base, None,
                                "<= 1.5x" if n == 1 else "", None,
                                note=f"blocked: {done}/{n} swapped in 180 s; agent link: {err}")
                        res.notes.append(f"{label} -> {n}: BLOCKED, not every agent swapped; agent log: {err}")
                        continue
                    secs = max(swaps) - t0
                    r = secs / base
                    res.add(f"{label} -> {n} agent(s)", "publish to all swapped", secs, "s", base, r,
                            "<= 1.5x" if n == 1 else "report", (r <= 1.5) if n == 1 else None)
                    res.extra[f"{params}/{n}"] = {"per_agent_s": [s - t0 for s in swaps], "baseline_s": base,
                                                  "bytes": blob.stat().st_size, "params": n_params}
                if fleet > 1:
                    one, many = res.extra.get(f"{params}/1"), res.extra.get(f"{params}/{fleet}")
                    if one and many:
                        res.add(f"{label} scaling", f"time {fleet} agents / 1 agent",
                                max(many["per_agent_s"]) / max(one["per_agent_s"]), "x")
                # back to one agent before the next size
                for p in agents[1:]:
                    C.stop(p)
                del agents[1:], logs[1:]
        finally:
            for p in agents:
                C.stop(p)
            learner.stop()
    res.notes.append("agents act with random actions (control.random_steps) so the timed work is transfer, "
                     "verify, load and swap, not inference of the big network")
    return res
