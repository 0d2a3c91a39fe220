"""Watching a run: a real learner (the aiohttp app, its buffer on disk, ingest and
the trainer thread; chunks go in through ingest as a robot link hands them over)
trains briefly, and what it shows is read back with the readers an operator uses:
TensorBoard's own event reader, prometheus_client's text parser on ``/metrics``,
and the Grafana dashboard in examples/ checked against the metrics exported."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from cloud.app import make_app, snapshot
from cloud.keys import BUFFER, INGEST, TRAINER
from cloud.metrics import start_metrics
from harness import thread_parked
from harness.waits import until
from shared.chunk import StepRecord, build_batch, checksum, encode_chunk
from shared.config import LearnerConfig
from shared.protocol import Chunk
from shared.schema import EpisodeSpec, FieldSpec

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "examples" / "grafana-fleetrl.json"
SPEC = EpisodeSpec(observation={"pos": FieldSpec((3,)), "goal": FieldSpec((3,))}, action_dim=4,
                   action_low=(-1.0,) * 4, action_high=(1.0,) * 4)
EPISODE = 10  # rows per chunk; each chunk is one whole episode
CHUNKS = 8  # 80 rows: training starts at 40, one update per row (utd 1)
SUCCEEDED = {2, 5, 8}  # which episodes (by seq) end in success: 3 of 8
EVERY = 10  # learner.tensorboard_every


def _chunk(robot: str, seq: int) -> Chunk:
    rng = np.random.default_rng(seq)
    steps = []
    for i in range(EPISODE):
        obs = {k: rng.normal(size=f.shape).astype(np.float32) for k, f in SPEC.observation.items()}
        nxt = {k: rng.normal(size=f.shape).astype(np.float32) for k, f in SPEC.observation.items()}
        last = i == EPISODE - 1
        steps.append(StepRecord(obs, rng.uniform(-1, 1, 4).astype(np.float32), -1.0, nxt, False, last,
                                success=last and seq in SUCCEEDED, step=i))
    eid = f"{robot}-{seq}"
    batch = build_batch(SPEC, robot, eid, steps)
    body = encode_chunk(batch)
    return Chunk(seq, eid, EPISODE, batch.nbytes, checksum(body), body)


def _config(root: Path, tensorboard: bool) -> LearnerConfig:
    return LearnerConfig(
        data_dir=root / "run", server={"port": 0}, metrics={"port": 0},
        learner={"learning_starts": 40, "publish_every": 20, "batch_size": 8, "hidden": [8, 8], "utd_ratio": 1.0,
                 "checkpoint_every": 10**6, "memory_capacity": 10_000, "threads": 1, "device": "cpu",
                 "tensorboard": tensorboard, "tensorboard_every": EVERY},
    )


async def _train(root: Path, tensorboard: bool) -> tuple[str, dict]:
    """Run the learner app over CHUNKS chunks (a few a second, as a robot sends them), until the trainer has
    used them all; the /metrics text and the status snapshot then. The app is stopped (trainer joined)."""
    cfg = _config(root, tensorboard)
    app = make_app(cfg)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()  # buffer, ingest writer, trainer thread, admin listener: as `serve` starts them
    metrics = None
    try:
        metrics = await start_metrics(lambda: snapshot(app), cfg.metrics)
        assert metrics is not None
        app[BUFFER].check_spec(SPEC)  # what a robot's hello does
        trainer = app[TRAINER]

        async def caught_up(updates: int) -> None:
            await until(lambda: trainer.error is not None or (trainer.updates >= updates and thread_parked(trainer)),
                        f"the trainer to reach {updates} updates and wait", 60)
            assert trainer.error is None, trainer.error

        for seq in range(1, CHUNKS + 1):
            await (await app[INGEST].accept("arm-1", _chunk("arm-1", seq)))  # durable
            if seq * EPISODE == 40:  # learning_starts: training has begun before the rest arrives
                await caught_up(40)
            await asyncio.sleep(0.05)
        await caught_up(CHUNKS * EPISODE)
        async with aiohttp.ClientSession() as http, http.get(metrics[1]) as r:
            assert r.status == 200
            text = await r.text()
        return text, dict(snapshot(app))
    finally:
        if metrics is not None:
            await metrics[0].cleanup()
        await runner.cleanup()  # the trainer stops (and the TensorBoard writer flushes)


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)], parsed as Prometheus parses the exposition."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_tensorboard_scalars_read_back_with_tensorboards_reader(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, status = asyncio.run(_train(tmp_path, tensorboard=True))
    tb = tmp_path / "run" / "tb"
    assert list(tb.glob("events.out.tfevents.*")), list(tb.iterdir())
    acc = EventAccumulator(str(tb))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    print(sorted(tags))
    losses = {f"loss/{k}" for k in status["losses"]}
    assert {"loss/critic_loss", "loss/actor_loss", "loss/alpha"} <= losses  # every loss the trainer reports
    assert losses | {"learner/updates_per_s", "learner/policy_version", "buffer/rows", "buffer/episodes",
                     "episodes/success_rate", "episodes/mean_return", "ingest/rows_per_s"} == tags
    for tag in tags:
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        assert steps == sorted(set(steps)) and len(steps) >= 2, (tag, steps)  # strictly increasing
        assert all(s % EVERY == 0 for s in steps) and steps[-1] == CHUNKS * EPISODE, (tag, steps)
        assert all(math.isfinite(e.value) for e in events), (tag, events)
    last = {tag: acc.Scalars(tag)[-1].value for tag in tags}
    assert last["buffer/rows"] == CHUNKS * EPISODE and last["buffer/episodes"] == CHUNKS
    assert last["episodes/success_rate"] == pytest.approx(len(SUCCEEDED) / CHUNKS)
    assert last["episodes/mean_return"] == pytest.approx(-1.0 * EPISODE)  # reward -1 on every row
    assert last["learner/policy_version"] == CHUNKS * EPISODE // 20  # publish_every 20: v4 at update 80
    assert all(e.value > 0 for e in acc.Scalars("learner/updates_per_s"))
    assert any(e.value > 0 for e in acc.Scalars("ingest/rows_per_s"))  # rows arrived while it trained


def test_prometheus_learning_metrics_and_no_tensorboard_folder_when_off(tmp_path: Path) -> None:
    text, status = asyncio.run(_train(tmp_path, tensorboard=False))
    assert not (tmp_path / "run" / "tb").exists()  # off by default: nothing written, nothing imported
    m = _samples(text)
    losses = {labels["name"]: v for labels, v in m["fleetrl_learner_loss"]}
    assert set(losses) == set(status["losses"]) and {"critic_loss", "actor_loss"} <= set(losses)
    assert all(math.isfinite(v) for v in losses.values())
    assert m["fleetrl_learner_success_rate"] == [({}, pytest.approx(len(SUCCEEDED) / CHUNKS))]
    assert m["fleetrl_learner_mean_return"] == [({}, pytest.approx(-1.0 * EPISODE))]
    assert m["fleetrl_learner_robot_rows"] == [({"robot_id": "arm-1"}, CHUNKS * EPISODE)]
    assert m["fleetrl_learner_device_info"] == [({"device": "cpu"}, 1.0)]
    assert m["fleetrl_learner_updates_total"] == [({}, CHUNKS * EPISODE)]
    assert m["fleetrl_learner_episodes_total"] == [({}, CHUNKS)]


def test_success_rate_is_absent_not_zero_before_any_episode_ends() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from cloud.metrics import _LearnerCollector

    s = {"buffer_rows": 0, "episodes": 0, "policy_version": 0, "updates": 0, "updates_per_s": 0.0,
         "ingest": {"chunks": 0, "rows": 0, "duplicates": 0}, "robots": {}, "rejections": {}, "success_rate": None,
         "losses": {}, "rows_by_robot": {}, "learner_device": None, "storage": {}}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_LearnerCollector(lambda: s))  # type: ignore[arg-type]
    m = _samples(generate_latest(registry).decode())
    assert "fleetrl_learner_success_rate" not in m and "fleetrl_learner_device_info" not in m
    assert "fleetrl_learner_loss" not in m  # declared (HELP/TYPE) but no sample before training


def _exported_metric_names() -> set[str]:
    """Every sample name the learner's collector exports, with every optional family present."""
    from prometheus_client import CollectorRegistry, generate_latest

    from cloud.metrics import _LearnerCollector

    s = {"buffer_rows": 1, "episodes": 1, "policy_version": 1, "updates": 1, "updates_per_s": 1.0,
         "ingest": {"chunks": 1, "rows": 1, "duplicates": 0}, "robots": {"r": {}}, "rejections": {"auth_failed": 1},
         "success_rate": 0.5, "losses": {"critic_loss": 1.0}, "rows_by_robot": {"r": 1}, "learner_device": "cpu",
         "storage": {"holding": False, "write_failures": 0}, "trainer_error": None, "publish_failures": 0,
         "mean_return": 1.0, "groups": {"arm": _group(), "pm": _group()}}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_LearnerCollector(lambda: s))  # type: ignore[arg-type]
    return set(_samples(generate_latest(registry).decode()))


def _group(success: float | None = 0.5, ret: float | None = 2.0) -> dict:
    return {"spec": None, "driver": "d", "data_dir": "/x", "robot_patterns": [], "robots": ["r"], "buffer_rows": 10,
            "episodes": 2, "success_rate": success, "mean_return": ret, "policy_version": 3, "updates": 7,
            "updates_per_s": 1.5, "losses": {"critic_loss": 1.0}, "trainer_error": None}


def test_each_group_reports_its_own_success_and_return_and_none_before_an_episode_ends() -> None:
    from cloud.metrics import _group_families

    families = {f.name: f for f in _group_families({"arm": _group(0.25, -3.5), "pm": _group(None, None)})}
    got = {(f.name, tuple(sorted(s.labels.items())), s.value) for f in families.values() for s in f.samples}
    assert ("fleetrl_learner_group_success_rate", (("group", "arm"),), 0.25) in got
    assert ("fleetrl_learner_group_mean_return", (("group", "arm"),), -3.5) in got
    # a group whose robots have not finished an episode has no rate to report, not a made-up zero
    assert not [s for f in families.values() for s in f.samples
                if s.labels.get("group") == "pm" and f.name in ("fleetrl_learner_group_success_rate",
                                                                 "fleetrl_learner_group_mean_return")]


def test_dashboard_history_keeps_each_groups_curve_only_for_a_mixed_fleet() -> None:
    from cloud.dashboard import point

    base = {"time": 100.0, "ingest": {"rows": 50}, "success_rate": 0.5, "mean_return": 1.0, "buffer_rows": 50,
            "updates": 3, "updates_per_s": 1.0, "policy_version": 2, "robots": {}, "episodes": 2, "losses": {}}
    one = point({**base, "groups": {"arm": _group()}}, None)  # type: ignore[arg-type]
    assert one["groups"] == {} and one["success_rate"] == 0.5  # one group: the learner's own curve, as before
    two = point({**base, "groups": {"arm": _group(0.25, -1.0), "pm": _group(None, None)}}, None)  # type: ignore[arg-type]
    assert two["groups"]["arm"] == {"success_rate": 0.25, "mean_return": -1.0, "updates_per_s": 1.5, "buffer_rows": 10,
                                    "policy_version": 3, "episodes": 2}
    assert two["groups"]["pm"]["success_rate"] is None  # drawn as a gap, not as 0


def _panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out += p.get("panels", [])  # collapsed rows hold their panels
    return out


def test_grafana_dashboard_names_only_metrics_the_learner_exports() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 36 and dash["title"]
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"] and dash["__inputs"][0]["pluginId"] == "prometheus"
    exported = _exported_metric_names()
    names_in = re.compile(r"\bfleetrl_[a-z0-9_]+")
    exprs = []  # the template variables' queries too
    for v in dash["templating"]["list"]:
        if v.get("type") == "query":
            q = v["query"]
            exprs += [q["query"] if isinstance(q, dict) else q, v.get("definition", "")]
    covered: set[str] = set()
    for p in _panels(dash):
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            used = names_in.findall(t["expr"])
            assert used, (p["title"], t["expr"])
            exprs.append(t["expr"])
            covered.update(used)
    for expr in exprs:
        unknown = set(names_in.findall(expr)) - exported
        assert not unknown, f"{expr!r} names {sorted(unknown)}, which the learner's /metrics does not export"
    for wanted in ("fleetrl_learner_success_rate", "fleetrl_learner_loss", "fleetrl_learner_updates_per_second",
                   "fleetrl_learner_buffer_rows", "fleetrl_learner_ingest_rows_per_second", "fleetrl_learner_robot_rows",
                   "fleetrl_learner_robots_linked", "fleetrl_learner_rejections_total",
                   "fleetrl_learner_group_success_rate", "fleetrl_learner_group_mean_return",
                   "fleetrl_learner_group_loss", "fleetrl_learner_group_buffer_rows"):
        assert wanted in covered, f"the dashboard has no panel on {wanted}"
    titles = [p["title"] for p in _panels(dash)]
    assert len(titles) == len(set(titles))
    ids = [p["id"] for p in _panels(dash)]
    assert len(ids) == len(set(ids))


def test_missing_tensorboard_package_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """``cloud-learner serve`` with learner.tensorboard = true where the package is missing (hidden here by a
    stand-in that fails to import, as a missing one does)."""
    hide = tmp_path / "hide"
    (hide / "tensorboard").mkdir(parents=True)
    (hide / "tensorboard" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'tensorboard'\")\n")
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "run"}"\n[server]\nport = 0\n[metrics]\nport = 0\n'
                   "[learner]\ntensorboard = true\n")
    r = subprocess.run([sys.executable, "-m", "cloud", "serve", "--config", str(cfg)], capture_output=True, text=True,
                       timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": f"{hide}:{REPO}"})
    print(r.stderr)
    assert r.returncode == 2 and "READY" not in r.stdout
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last == ("cloud-learner: learner.tensorboard = true needs the tensorboard package: "
                    "pip install 'fleetrl[tensorboard]'")


def test_tensorboard_is_not_imported_by_the_learner_unless_enabled() -> None:
    code = ("import sys, cloud.serve, cloud.app, cloud.learner.trainer, cloud.cluster.runtime, cloud.cluster.learner; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorboard' or 'utils.tensorboard' in m))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
