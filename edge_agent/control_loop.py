"""The fixed-rate control loop: observe, act, clamp, step, record.

It runs on its own thread and touches nothing that can block on the network
or the disk: the policy is read by reference, chunks leave through the
recorder's sink, and the only wait is the one that keeps the rate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable

import numpy as np

from hal_drivers.base import Robot
from shared.actions import ActionScale
from shared.chunk import StepRecord
from shared.config import ControlConfig
from shared.faults import hang_point

from .operator import OperatorControls
from .policy_holder import PolicyHolder
from .recorder import Recorder
from .status import Jitter

log = logging.getLogger("fleetrl.control")


class ControlLoop(threading.Thread):
    def __init__(
        self, robot: Robot, policy: PolicyHolder, recorder: Recorder, cfg: ControlConfig,
        may_start: threading.Event | None = None, operator: OperatorControls | None = None,
    ):
        super().__init__(name="control-loop", daemon=True)
        self.robot, self.policy, self.recorder, self.cfg = robot, policy, recorder, cfg
        self.stop_event = threading.Event()
        # Cleared while new episodes must not start (spool full); the current one finishes.
        self.may_start = may_start or threading.Event()
        if may_start is None:
            self.may_start.set()
        self.waiting_to_start = False
        self.sync_wait_s = 0.0
        self.operator = operator or OperatorControls()
        self.running = threading.Event()  # set once the first tick has run
        self.error: BaseException | None = None
        # Called on every tick and while holding on purpose (systemd watchdog; see
        # edge_agent.service.Heartbeat); a hung loop stops calling it.
        self.heartbeat: Callable[[], None] = lambda: None
        self.heartbeat_period: float | None = None  # call it at least this often while holding
        self.episodes = 0
        self.successes = 0
        self.steps = 0
        self.episode_step = 0  # steps taken in the current episode (for status)
        self._period_errors: deque[float] = deque(maxlen=2000)
        d = robot.describe()
        self._scale = ActionScale(d.action_low, d.action_high)

    def stop(self) -> None:
        self.stop_event.set()
        self.may_start.set()  # wake a loop waiting to start an episode, so it can see the stop
        self.operator.wake()
        self.policy.interrupt()  # a synchronous loop waiting for a new policy must see the stop too

    @property
    def finished(self) -> bool:
        return self.cfg.max_episodes > 0 and self.episodes >= self.cfg.max_episodes

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # surfaced by the daemon, which exits non-zero
            self.error = e
            log.exception("event=control_loop_crashed")
        finally:
            self.recorder.cut()

    def _run(self) -> None:
        rng = np.random.default_rng(self.cfg.seed)
        period = 1.0 / self.cfg.rate_hz if self.cfg.rate_hz > 0 else 0.0
        next_tick = time.monotonic()
        while not self.stop_event.is_set() and not self.finished:
            for gate in (self.may_start, self.operator.episodes_allowed):
                if not gate.is_set():
                    self.waiting_to_start = True
                    self._hold(gate)
                    self.waiting_to_start = False
                    next_tick = time.monotonic()
            if self.stop_event.is_set():
                return
            obs = self.robot.reset()
            self.recorder.start_episode()
            step = 0
            while not self.stop_event.is_set():
                if not self.operator.running.is_set():  # paused by an operator: hold between ticks
                    self._hold(self.operator.running)
                    next_tick = time.monotonic()
                    continue
                if period:
                    next_tick += period
                    delay = next_tick - time.monotonic()
                    if delay > 0 and self.stop_event.wait(delay):
                        return
                    now = time.monotonic()
                    self._period_errors.append(now - next_tick)
                    if now - next_tick > period:  # fell far behind: don't try to catch up in a burst
                        next_tick = now
                action, version = self._choose(obs, rng)
                hang_point("control_tick")
                res = self.robot.step(action)
                self.running.set()
                self.heartbeat()
                cut, human_reward = self.operator.take()
                truncated = res.truncated or (cut and not res.terminated)
                self.recorder.add(
                    StepRecord(
                        obs=obs, action=action, reward=float(res.reward) + human_reward, next_obs=res.observation,
                        terminated=res.terminated, truncated=truncated, success=res.success,
                        intervention=self.operator.intervention, policy_version=version, step=step,
                    )
                )
                obs, step = res.observation, step + 1
                self.steps += 1
                self.episode_step = step
                if res.terminated or truncated:
                    self.episodes += 1
                    self.successes += int(res.success)
                    if self.cfg.sync and version > 0:
                        self._wait_for_update(version)
                    next_tick = time.monotonic()
                    break

    def _hold(self, event: threading.Event) -> None:
        """Wait on a gate; a deliberate wait is not a hang, so keep the heartbeat going."""
        self.heartbeat()
        while not event.wait(self.heartbeat_period):
            self.heartbeat()

    def _wait_for_update(self, version: int) -> None:
        """The synchronous baseline: the robot idles until the learner has trained on its episode."""
        t0 = time.monotonic()
        deadline = t0 + self.cfg.sync_timeout_s
        while True:  # in slices, so the heartbeat goes on during a long wait
            left = deadline - time.monotonic()
            newer = self.policy.wait_newer(version, max(0.0, min(left, self.heartbeat_period or left)))
            if newer or time.monotonic() >= deadline:
                break
            self.heartbeat()
        if not newer:
            log.warning("event=sync_wait_timeout version=%d waited_s=%.1f", version, self.cfg.sync_timeout_s)
        self.sync_wait_s += time.monotonic() - t0

    def _choose(self, obs: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, int]:
        choice = None if self.steps < self.cfg.random_steps else self.policy.act(obs, self.cfg.deterministic)
        if choice is None:
            return self.robot.clamp(self._scale.sample(rng)), self.policy.version
        a, version = choice
        return self.robot.clamp(self._scale.to_robot(a)), version

    def jitter(self) -> Jitter:
        """Lateness of ticks against their schedule, in milliseconds."""
        errs = np.asarray(self._period_errors)
        if errs.size == 0:
            return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        return {
            "p50_ms": float(np.percentile(errs, 50) * 1e3),
            "p99_ms": float(np.percentile(errs, 99) * 1e3),
            "max_ms": float(errs.max() * 1e3),
        }
