"""The learner as a ``Type=notify`` service, for real: ``cloud-learner serve`` in a
subprocess whose NOTIFY_SOCKET is a datagram socket this test reads, a real
trainer training on a buffer left on disk, real signals, and a real hang
(FLEETRL_HANG_AT=trainer_tick:n blocks the trainer thread mid-training)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest

from cloud.buffer import ReplayBuffer
from harness import Learner, NotifySocket
from shared.chunk import StepRecord, build_batch
from shared.schema import EpisodeSpec, FieldSpec

WATCHDOG_S = 4.0  # WatchdogSec: pings every 2 s, and a trainer silent for 4 s counts as hung
PERIOD_S = WATCHDOG_S / 2  # (generous: on a loaded 2-core CI machine a live trainer can be starved for 2 s)
SPEC = EpisodeSpec(observation={"pos": FieldSpec((3,)), "goal": FieldSpec((3,))}, action_dim=4,
                   action_low=(-1.0,) * 4, action_high=(1.0,) * 4)
ROWS = 300  # on disk before the learner starts: it trains on them at once (learning_starts 200, utd 1), then waits


@pytest.fixture
def notify():
    ns = NotifySocket()
    yield ns
    ns.close()


def _learner(root: Path, ns: NotifySocket, hang_at: str | None = None) -> Learner:
    """A learner whose data_dir already holds ROWS rows of a robot's episodes (a restarted run)."""
    env = {"NOTIFY_SOCKET": ns.env, "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6))}
    if hang_at:
        env["FLEETRL_HANG_AT"] = hang_at
    learner = Learner(root, env=env, learner={"learning_starts": 200, "checkpoint_every": 10**6, "threads": 1})
    buf = ReplayBuffer(learner.data_dir / "buffer", memory_capacity=10_000)
    buf.check_spec(SPEC)
    rng = np.random.default_rng(0)
    for seq in range(1, ROWS // 10 + 1):
        steps = [StepRecord({k: rng.normal(size=f.shape).astype(np.float32) for k, f in SPEC.observation.items()},
                            rng.uniform(-1, 1, 4).astype(np.float32), -1.0,
                            {k: rng.normal(size=f.shape).astype(np.float32) for k, f in SPEC.observation.items()},
                            False, i == 9, success=seq % 3 == 0, step=i) for i in range(10)]
        buf.write([("arm-1", seq, build_batch(SPEC, "arm-1", f"ep-{seq}", steps))])
    return learner


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def test_ready_when_serving_pings_while_training_and_while_waiting_stopping_on_sigterm(tmp_path, notify) -> None:
    learner = _learner(tmp_path, notify).start()  # returns once it printed READY <url>
    assert notify.read_until(lambda m: "READY" in m, 30), notify.msgs
    ready = notify.msgs[-1][1]
    assert ready["STATUS"].startswith("serving robots at ws://127.0.0.1:") and ready["MAINPID"] == str(learner.proc.pid)
    # before READY: torch's lazily loaded parts (not left for the trainer's first, heartbeat-less build), the buffer
    assert notify.values("STATUS")[:2] == ["starting: loading torch", "starting: recovering the replay buffer"]
    ready_at = notify.times("READY")[0]
    deadline = time.monotonic() + 300  # a hang guard (~10 s idle): the pings are judged below, not the pace
    while time.monotonic() < deadline and learner.status()["updates"] < ROWS:  # training: the pings go on
        notify.read_until(lambda m: False, 0.5)
    assert learner.status()["updates"] == ROWS, learner.log.read_text()[-2000:]
    trained_at = time.monotonic()
    notify.read_until(lambda m: False, 4 * PERIOD_S + 1)  # the trainer waits for robots' data now: still alive, pinging
    pings = [t for t in notify.times("WATCHDOG") if t > ready_at]
    print(f"{len(pings)} pings, gaps {min(_gaps(pings)):.2f}..{max(_gaps(pings)):.2f} s")
    assert max(_gaps(pings)) < WATCHDOG_S  # never late enough for systemd to fire
    assert min(_gaps(pings)) > 0.3 * PERIOD_S  # one per period, not a flood
    assert sum(1 for t in pings if t > trained_at) >= 4  # idle is not hung
    statuses = notify.values("STATUS")
    print(statuses[-1])
    assert any(s.startswith("serving: ") and "updates/s" in s and f"{ROWS} rows" in s for s in statuses), statuses
    assert "TRAINER HUNG" not in " ".join(statuses) and "event=trainer_stalled" not in learner.log.read_text()
    learner.proc.send_signal(signal.SIGTERM)
    assert notify.read_until(lambda m: "STOPPING" in m, 10), notify.msgs[-3:]
    assert learner.proc.wait(30) == 0, learner.log.read_text()[-2000:]


def test_hung_trainer_stops_the_pings_while_the_learner_serves(tmp_path, notify) -> None:
    learner = _learner(tmp_path, notify, hang_at="trainer_tick:150").start()  # stuck mid-training, at update ~150
    assert notify.read_until(lambda m: "READY" in m, 30), notify.msgs
    deadline = time.monotonic() + 300  # a hang guard (~10 s idle)
    while time.monotonic() < deadline and "event=trainer_stalled" not in learner.log.read_text():
        notify.read_until(lambda m: False, 0.5)
    log = learner.log.read_text()
    assert "event=trainer_stalled" in log and "action=watchdog_pings_stopped" in log, log[-2000:]
    assert "event=trainer_progressing_again" not in learner.log.read_text(), "a live trainer was taken for hung"
    stalled_at = time.monotonic()
    assert notify.times("WATCHDOG"), "pinged before the hang"
    # The learner itself is fine (its event loop sends STATUS, the admin listener answers): only the pings stop.
    assert notify.read_until(lambda m: m.get("STATUS", "").startswith("TRAINER HUNG"), 15), notify.values("STATUS")[-3:]
    notify.read_until(lambda m: False, max(0.0, stalled_at + WATCHDOG_S + 0.5 - time.monotonic()))
    assert notify.count_after("WATCHDOG", stalled_at) == 0
    silent = time.monotonic() - notify.times("WATCHDOG")[-1]
    print(f"no ping for {silent:.1f} s (systemd restarts it after WatchdogSec = {WATCHDOG_S:g} s)")
    assert silent > WATCHDOG_S and learner.proc.poll() is None
    status = learner.status()
    assert 0 < status["updates"] < ROWS and status["trainer_error"] is None
    assert status["updates_per_s"] == 0.0  # not its last rate, frozen: the thread has been silent for > 4 s
    learner.proc.send_signal(signal.SIGTERM)
    assert notify.read_until(lambda m: "STOPPING" in m, 10)
    assert learner.proc.wait(40) == 0  # the hung thread is left behind (a daemon thread), after 10 s of waiting
    assert "event=trainer_not_stopped" in learner.log.read_text()


class _Trainer:
    """What the watchdog reads of a trainer thread."""

    def __init__(self, age: float, alive: bool = True):
        self.alive_at, self.alive = time.monotonic() - age, alive

    def is_alive(self) -> bool:
        return self.alive


def _status(**over) -> dict:
    s = {"updates_per_s": 12.34, "buffer_rows": 5000, "episodes": 100, "policy_version": 7, "robots": {"a": {}},
         "success_rate": 0.25, "trainer_error": None, "storage": {"holding": False}}
    return {**s, **over}


def test_watchdog_pings_unless_a_live_trainer_is_silent_longer_than_watchdogsec(notify) -> None:
    from cloud.service import LearnerWatchdog
    from shared.sdnotify import Notifier

    n = Notifier({"NOTIFY_SOCKET": notify.env})
    trainer: _Trainer | None = _Trainer(age=0.1)
    dog = LearnerWatchdog(n, 1.0, lambda: _status(), lambda: trainer)  # type: ignore[arg-type, return-value]
    assert dog.stall_s == 2.0 and dog.ping()  # a fresh heartbeat (an update, or a wait for data)
    trainer = _Trainer(age=5.0)
    assert not dog.ping() and dog.trainer_stall() == pytest.approx(5.0, abs=0.5)  # hung: no ping
    dog.status()
    trainer = _Trainer(age=5.0, alive=False)  # ended (an error, reported in /status): not hung
    assert dog.ping()
    trainer = None  # no trainer (a cluster shard's gateway): the event loop alone
    assert dog.ping()
    notify.read_until(lambda m: False, 0.5)
    assert len(notify.times("WATCHDOG")) == 3
    assert notify.values("STATUS") == ["TRAINER HUNG (no progress for 5 s): serving: 12.3 updates/s, 5000 rows, "
                                       "100 episodes, policy v7, 1 robots linked, success 25%"]


def test_status_line_says_what_is_wrong_first() -> None:
    from cloud.service import status_line

    assert status_line(_status(success_rate=None)) == ("serving: 12.3 updates/s, 5000 rows, 100 episodes, policy v7, "
                                                       "1 robots linked")
    assert status_line(_status(trainer_error="ConfigError('bad')")).startswith("TRAINER STOPPED (ConfigError('bad')), "
                                                                               "storing data: 12.3 updates/s")
    assert status_line(_status(storage={"holding": True})).startswith("HOLDING robots' data (buffer writes fail): ")
