"""Operator commands from the learner to a robot, real at every hop: a learner process,
two edge-agent processes (MuJoCo Fetch at 50 Hz), the admin listener's
``POST /admin/robots/{id}/command``, the link, the agent's link process and its
control process.

One robot takes commands: pause holds its loop (status.json and the learner's
/status both say ``operator_pause``, no step is taken), ``cloud-learner robots
command ... pause false`` runs it again, a success label ends its episode as a
success (the stored rows say so). The other sets ``control.remote_commands =
false``: the learner answers 409 and the robot runs on untouched. Refusals: 403
without the admin token, 400 for a bad body, kind or value, 404 for a robot that
is not linked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from harness import Agent, Learner, stored_rows, wait_for
from harness.procs import ROOT


def post(learner: Learner, robot: str, body: Any, token: str | None = "") -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON answer) of a command request to the learner's admin listener."""
    admin = json.loads((learner.data_dir / "endpoint.json").read_text())["admin"]
    if token == "":
        token = (learner.data_dir / "admin_token").read_text().strip()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"{admin}/robots/{robot}/command", data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, {"text": text}


def reported(learner: Learner, robot: str) -> dict[str, Any]:
    return learner.status()["robots"].get(robot, {}).get("reported", {})


def steady(agent: Agent, what: str) -> dict[str, Any]:
    """A status.json snapshot written after the previous one (the agent refreshes it every 0.2 s)."""
    t0 = agent.status().get("time", 0.0)
    return wait_for(lambda: (s := agent.status()).get("time", 0.0) > t0 and s, 10, what)


@pytest.fixture
def fleet(tmp_path: Path):
    learner = Learner(tmp_path, learner={"learning_starts": 10**9}).start()  # no training: these robots only need a link
    fast = {"service": {"status_interval_s": 0.2}, "link": {"status_interval_s": 0.25}}
    arm = Agent(tmp_path, "arm-1", [learner.url], episodes=0, rate_hz=50, **fast)
    locked = Agent(tmp_path, "arm-2", [learner.url], episodes=0, rate_hz=50, control={"remote_commands": False}, **fast)
    try:
        arm.start(drain_timeout=10)
        locked.start(drain_timeout=10)
        yield learner, arm, locked
    finally:
        arm.kill()
        locked.kill()
        learner.stop()


def test_the_learner_pauses_resumes_and_labels_a_robot(fleet) -> None:
    learner, arm, locked = fleet
    t0 = time.monotonic()
    wait_for(lambda: {"arm-1", "arm-2"} <= set(learner.status()["robots"]) and reported(learner, "arm-1").get("steps"),
             60, "both robots linked and reporting")
    robots = learner.status()["robots"]
    assert robots["arm-1"]["commands"] is True
    assert robots["arm-2"]["commands"] is False, "a robot with control.remote_commands = false does not offer them"

    # Refusals, each with a reason.
    assert post(learner, "arm-1", {"kind": "pause", "value": True}, token=None)[0] == 403
    assert post(learner, "arm-1", {"kind": "pause", "value": True}, token="x" * 48)[0] == 403
    for body, words in [(b"{not json", "must be JSON"), ([1], "kinds: pause"), ({"value": True}, "kinds: pause"),
                        ({"kind": "pause", "value": True, "extra": 1}, "kinds: pause"),
                        ({"kind": "fly"}, "command.kind 'fly' is not one of"),
                        ({"kind": "pause", "value": "yes"}, "command.value of pause must be bool"),
                        ({"kind": "label", "value": "win"}, "command.value of label must be one of success"),
                        ({"kind": "reward", "value": None}, "command.value of reward must be a finite number"),
                        ({"kind": "start_episode", "value": 1}, "start_episode takes no value")]:
        code, answer = post(learner, "arm-1", body)
        assert code == 400 and words in answer["error"], (body, code, answer)
    code, answer = post(learner, "arm-9", {"kind": "pause", "value": True})
    assert code == 404 and "not linked" in answer["error"]
    code, answer = post(learner, "arm-2", {"kind": "pause", "value": True})
    assert code == 409 and "control.remote_commands = false" in answer["error"]

    # Pause: the loop holds between ticks; both status views say why; no step is taken.
    code, answer = post(learner, "arm-1", {"kind": "pause", "value": True})
    assert code == 200 and answer == {"ok": True, "robot_id": "arm-1", "kind": "pause", "value": True, "queued": True}
    wait_for(lambda: arm.status()["control"]["paused"] == "operator_pause", 10, "status.json: control.paused")
    wait_for(lambda: reported(learner, "arm-1").get("paused") == "operator_pause", 10, "the learner's report: paused")
    steady(arm, "a fresh status")  # the tick in flight when the pause came is counted
    before = steady(arm, "a fresh status")
    time.sleep(1.0)  # 50 ticks at 50 Hz, had it run
    after = steady(arm, "a fresh status")
    assert after["control"]["steps"] == before["control"]["steps"], "no step while paused"
    assert after["control"]["paused"] == "operator_pause"
    wait_for(lambda: reported(learner, "arm-1")["steps"] == after["control"]["steps"], 10, "the learner's report: held")

    # Resume, through the CLI.
    cli = subprocess.run([sys.executable, "-m", "cloud", "robots", "command", "arm-1", "pause", "false",
                          "--config", str(learner.cfg)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["value"] is False
    wait_for(lambda: (s := arm.status()["control"])["paused"] == "" and s["steps"] > after["control"]["steps"] + 10,
             10, "the robot running again")
    wait_for(lambda: reported(learner, "arm-1").get("paused") == "", 10, "the learner's report: running")

    # A success label ends the current episode as a success (+1 human reward on its last step).
    assert post(learner, "arm-1", {"kind": "label", "value": "success"})[0] == 200

    def labelled() -> list[dict[str, Any]]:
        if not (learner.data_dir / "buffer" / "manifest.json").exists():
            return []
        _, rows = stored_rows(learner.data_dir, ["robot_id", "episode_id", "step", "success", "terminated", "human_reward"])
        return [r for r in rows if r["robot_id"] == "arm-1" and r["human_reward"] >= 1.0]

    last = wait_for(labelled, 20, "the labelled step stored by the learner", every=0.3)
    assert len(last) == 1 and last[0]["success"] and last[0]["terminated"], last
    assert arm.ledger()["successes"] >= 1
    log = arm.log.read_text()
    assert "event=remote_command kind=pause value=True" in log and "event=remote_command kind=pause value=False" in log
    assert "event=remote_command kind=label value='success'" in log

    # The robot that refuses commands never got one and ran throughout.
    assert locked.status()["control"]["paused"] == ""
    assert "event=remote_command" not in locked.log.read_text()
    assert all(r["human_reward"] == 0 for r in stored_rows(learner.data_dir, ["robot_id", "human_reward"])[1]
               if r["robot_id"] == "arm-2")
    assert "event=robot_command robot_id=arm-1 kind=label value='success'" in learner.log.read_text()
    print(f"commands round trip checked in {time.monotonic() - t0:.1f} s after start")
