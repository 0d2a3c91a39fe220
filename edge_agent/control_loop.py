"""The fixed-rate control loop: observe, act, clamp, step, record.

It runs on its own thread and touches nothing that can block on the network
or the disk: the policy is read by reference, chunks leave through the
recorder's sink, and the only wait is the one that keeps the rate.

A teleop device (optional) is read once per tick and never waited on: while
the human takes over, the loop executes the human's action and records the
policy's proposal beside it (see :mod:`edge_agent.human`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from hal_drivers.base import Robot
from hal_drivers.teleop.base import Teleop
from shared.actions import ActionScale
from shared.chunk import StepRecord
from shared.config import ControlConfig
from shared.faults import hang_point

from .chunk_source import ChunkSource
from .human import HumanInput, TeleopLost, TickInput
from .operator import OperatorControls
from .policy_holder import LoadedPolicy, PolicyHolder
from .realtime import make_realtime
from .recorder import Recorder
from .status import Jitter

log = logging.getLogger("fleetrl.control")


@dataclass(frozen=True)
class EpisodeEnd:
    """What the loop tells ``on_episode`` (on its own thread) when an episode ends."""

    index: int  # 1-based count of episodes this loop finished
    steps: int
    success: bool
    terminated: bool
    interventions: int  # steps of it the human drove


class ControlLoop(threading.Thread):
    def __init__(
        self, robot: Robot, policy: PolicyHolder, recorder: Recorder, cfg: ControlConfig,
        may_start: threading.Event | None = None, operator: OperatorControls | None = None,
        teleop: Teleop | None = None, demo: bool = False, chunks: ChunkSource | None = None,
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
        # demo: recording demonstrations; the human drives every step and rows are tagged demo.
        self.demo = demo
        d = robot.describe()
        self._scale = ActionScale(d.action_low, d.action_high)
        self.human = HumanInput(teleop, len(d.action_low), force_takeover=demo)
        self.on_episode: Callable[[EpisodeEnd], None] = lambda _end: None  # called on the loop's thread
        self._period_errors: deque[float] = deque(maxlen=2000)
        self._pinned: LoadedPolicy | None = None  # synchronous mode: the episode's policy
        # Action chunks (policy.where = "cloud", or a chunked policy on the robot): the executor picks each tick's action
        self.chunks = chunks
        self._chunk_index = -1  # the current step's position in its chunk (-1: not from a chunk)

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
            if self.cfg.rate_hz > 0:
                make_realtime(self.cfg.realtime_priority)
            self._run()
        except TeleopLost as e:  # a clear reason, not a crash: said in one line
            self.error = e
            log.error("event=control_loop_stopped reason=teleop_failed error=%s", e)
        except BaseException as e:  # surfaced by the daemon, which exits non-zero
            self.error = e
            log.exception("event=control_loop_crashed")
        finally:
            self.human.driving = False  # nobody drives a stopped loop
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
            # synchronous mode acts a whole episode with the policy it started with (None: no policy yet)
            self._pinned = self.policy.current if self.cfg.sync else None
            if self.chunks is not None:
                self.chunks.reset()  # the last episode's plan does not carry over
            self.recorder.start_episode()
            step = episode_interventions = 0
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
                tick = self.human.read(obs)
                action, proposal, version = self._choose(obs, rng, tick)
                hang_point("control_tick")
                res = self.robot.step(action)
                self.running.set()
                self.heartbeat()
                cut, operator_reward, labels = self.operator.take()
                events = tick.events + labels
                terminated, success = res.terminated, res.success
                human_reward = operator_reward + tick.reward
                if "success" in events:
                    terminated, success, human_reward = True, True, human_reward + 1.0
                elif "failure" in events:
                    terminated, success = True, False
                if not terminated and self.policy.success(res.observation, self._pinned):  # the learner's success classifier
                    terminated, success = True, True
                cut = cut or "reset" in events
                truncated = res.truncated or (cut and not terminated)
                self.recorder.add(
                    StepRecord(
                        obs=obs, action=action, reward=float(res.reward), next_obs=res.observation,
                        terminated=terminated, truncated=truncated, success=success,
                        intervention=tick.takeover or self.operator.intervention, policy_version=version, step=step,
                        policy_action=proposal, human_reward=human_reward, demo=self.demo and tick.takeover,
                        chunk_index=self._chunk_index,
                    )
                )
                obs, step = res.observation, step + 1
                self.steps += 1
                self.episode_step = step
                if tick.takeover:
                    episode_interventions += 1
                if terminated or truncated:
                    self.episodes += 1
                    self.successes += int(success)
                    self.on_episode(EpisodeEnd(self.episodes, step, success, terminated, episode_interventions))
                    if self.cfg.sync and version > 0 and not self.finished:  # nothing to wait for after the last
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

    def _choose(
        self, obs: dict[str, np.ndarray], rng: np.random.Generator, tick: TickInput
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """(action to execute, the policy's proposal, policy version), both in robot units, clamped.

        The policy proposes every tick, even while the human drives, so a row
        holds both; with no proposal (no policy yet, past random_steps) while
        the human drives, the proposal is the human's action."""
        version = self._pinned.version if self._pinned is not None else self.policy.version
        proposal = None
        self._chunk_index = -1
        policy = self._pinned or self.policy.current
        if self.steps < self.cfg.random_steps:
            proposal = self.robot.clamp(self._scale.sample(rng))
        elif self.chunks is not None and self.chunks.active(policy):
            step = self.chunks.step(obs, self.steps, time.monotonic(), policy, lambda: self._hold_action(obs))
            proposal = self.robot.clamp(self._scale.to_robot(step.action))
            version, self._chunk_index = step.version, step.chunk_index
        else:
            choice = self.policy.act(obs, self.cfg.deterministic, self._pinned)
            if choice is not None:
                a, version = choice
                proposal = self.robot.clamp(self._scale.to_robot(a))
        if tick.takeover:
            assert tick.action is not None
            action = self.robot.clamp(self._scale.to_robot(tick.action))
            return action, action if proposal is None else proposal, version
        if proposal is None:  # no policy yet: explore at random, as before any policy arrives
            proposal = self.robot.clamp(self._scale.sample(rng))
        return proposal, proposal, version

    def _hold_action(self, obs: dict[str, np.ndarray]) -> np.ndarray | None:
        """The driver's hold action for this observation, clamped, in policy units (None: it has none).
        Asked by the chunk executor only on a late tick that holds."""
        a = self.robot.hold_action(obs)
        return None if a is None else self._scale.normalise(self.robot.clamp(a)).astype(np.float32)

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
