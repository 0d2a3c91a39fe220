"""Ros2Robot: a fleetrl Robot made of ROS 2 topics.

The driver paces the episode: ``step(action)`` publishes the action, waits
for the next control tick and returns the observation aligned to that tick:
per field, the newest message, if it is no older than the field's age bound.
When one is older (or missing, or unusable), ``on_stale`` decides: ``flag``
returns the last good value and names the stale fields in ``info``;
``pause`` holds the step until data is fresh again (at most
``pause_timeout_s``) and then truncates the episode, so no recorded
transition spans the gap. ``reset()`` waits for fresh data on every topic.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from hal_drivers.base import Robot, StepResult, UnitDescription, UnitKind
from hal_drivers.registry import register
from shared.errors import FleetError

from . import mapping, types
from .hold import hold_sources, hold_values
from .backend import Backend, Publisher, open_backend
from .config import QosConfig, Ros2Config
from .latest import LatestStore, Sample

log = logging.getLogger("fleetrl.ros2")
DRIVER_NAME = "ros2"


class Ros2Unavailable(FleetError):
    """The robot's topics stayed silent past a configured timeout."""

    code = "ros2_unavailable"


@register(DRIVER_NAME)
class Ros2Robot(Robot):
    config_class = Ros2Config

    def __init__(self, config: Ros2Config, name: str = "arm", backend: Backend | None = None):
        self.config, self.name = config, name
        self._store = LatestStore()
        self._closed = threading.Event()
        self._decoded: dict[str, tuple[int, np.ndarray | mapping.MappingError]] = {}
        self._last_good: dict[str, np.ndarray] = {}
        self._specs = {k: mapping.field_spec(c) for k, c in config.observations.items()}
        self._slices: list[tuple[Any, slice]] = []
        start = 0
        for a in config.actions:
            self._slices.append((a, slice(start, start + a.dim)))
            start += a.dim
        self._description = self._describe(start)
        self._hold = hold_sources(config.actions, config.observations)
        self._period = 1.0 / config.rate_hz
        self._next_tick: float | None = None
        self._step = 0
        self._signal_seen = {"reward": 0, "success": 0}
        self.state, self.problems = "waiting", {}  # type: str, dict[str, str]
        self.counters = {"flagged_steps": 0, "pauses": 0, "pause_timeouts": 0, "episodes": 0}
        self._backend = backend or open_backend(
            config.backend, config.domain_id, f"fleetrl_{name}", config.localhost_only, key="robot.options.backend"
        )
        try:
            self._pubs: list[Publisher] = [self._backend.publisher(a.topic, a.type, a.qos) for a in config.actions]
            self._trigger = None
            if config.reset.trigger_topic:
                self._trigger = self._backend.publisher(config.reset.trigger_topic, "std_msgs/msg/Empty",
                                                        QosConfig(reliability="reliable", depth=1))
            for field, c in config.observations.items():
                self._backend.subscribe(c.topic, c.type, c.qos, self._putter("obs:" + field))
            for sig, ros_type in (("reward", "std_msgs/msg/Float64"), ("success", "std_msgs/msg/Bool")):
                sc = getattr(config, sig)
                if sc is not None:
                    self._backend.subscribe(sc.topic, ros_type, sc.qos, self._putter(sig))
        except BaseException:
            self.close()
            raise

    def _putter(self, key: str) -> Any:
        store = self._store
        return lambda cdr, recv_ns: store.put(key, cdr, recv_ns)

    def _describe(self, action_dim: int) -> UnitDescription:
        lows: list[float] = []
        highs: list[float] = []
        for a, _ in self._slices:
            lo, hi = a.bounds()
            lows += lo
            highs += hi
        return UnitDescription(
            name=self.name, kind=UnitKind.ROBOT, driver=DRIVER_NAME, identity=self.config.identity,
            control_hz=float(self.config.rate_hz), observation=dict(self._specs), action_shape=(action_dim,),
            action_low=tuple(lows), action_high=tuple(highs),
            extra={
                "backend": self.config.backend,
                "observations": {k: f"{c.topic} [{c.type}]" for k, c in self.config.observations.items()},
                "actions": [f"{a.topic} [{a.type}]" for a in self.config.actions],
            },
        )

    # -- Robot -------------------------------------------------------------

    def describe(self) -> UnitDescription:
        return self._description

    @property
    def backend_name(self) -> str:
        return self._backend.name

    def reset(self) -> dict[str, np.ndarray]:
        cfg = self.config
        self._check_open()
        if cfg.reset.home is not None:
            self._publish(np.asarray(cfg.reset.home, np.float32))
        if self._trigger is not None:
            self._trigger.publish(types.encode(types.new("std_msgs/msg/Empty"), "std_msgs/msg/Empty"))
        if cfg.reset.settle_s and self._closed.wait(cfg.reset.settle_s):
            self._check_open()
        if not self._store.wait_until(lambda _l, now: not self._observe(now)[1], cfg.reset_timeout_s):
            self._check_open()
            _, problems = self._observe(time.monotonic_ns())
            self._set_state("waiting", problems)
            raise Ros2Unavailable(
                f"robot.options.observations: no fresh data within reset_timeout_s={cfg.reset_timeout_s}: "
                + "; ".join(f"{k}: {v}" for k, v in problems.items())
            )
        self._step = 0
        self.counters["episodes"] += 1
        self._next_tick = time.monotonic()
        for sig in self._signal_seen:  # signals from before the episode do not count in it
            s = self._store.get(sig)
            self._signal_seen[sig] = s.count if s else 0
        obs, problems = self._observe(time.monotonic_ns())
        self._set_state("running", problems)
        return obs

    def step(self, action: np.ndarray) -> StepResult:
        self._check_open()
        if self._next_tick is None:
            raise Ros2Unavailable("ros2: step() before reset()")
        self._publish(self.clamp(action))
        self._wait_tick()
        obs, problems = self._observe(time.monotonic_ns())
        info: dict[str, Any] = {}
        truncated = False
        if problems and self.config.on_stale == "flag":
            self.counters["flagged_steps"] += 1
            info["stale"] = problems
            self._set_state("stale", problems)
        elif problems:
            obs, problems, info = self._pause(problems)
            truncated = True  # the robot moved on while paused: never record across the gap
        else:
            self._set_state("running", {})
        self._step += 1
        reward, success = self._signals()
        truncated = truncated or self._step >= self.config.episode_steps
        info["ros2_status"] = self.status_line()
        return StepResult(obs, reward, terminated=success, truncated=truncated and not success, success=success, info=info)

    def hold_action(self, obs: dict[str, np.ndarray]) -> np.ndarray | None:
        """Position targets at the measured joint positions, velocities zero (:mod:`.hold`); None when
        an action topic has no safe hold (a Float64MultiArray, positions nobody measures)."""
        return None if self._hold is None else hold_values(self._hold, obs)

    def close(self) -> None:
        self._closed.set()
        self._store.close()
        backend: Backend | None = getattr(self, "_backend", None)
        self._backend = None  # type: ignore[assignment]  # closed: nothing may use it again
        if backend is not None:
            backend.close()
        self.state = "closed"

    # -- status ------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What the driver is doing and why; for logs, the agent's status and docs/ros2.md."""
        now = time.monotonic_ns()
        topics = {}
        for k, c in self.config.observations.items():
            s = self._store.get("obs:" + k)
            topics[k] = {"topic": c.topic, "messages": s.count if s else 0,
                         "age_s": round(s.age_s(now), 3) if s else None}
        return {"state": self.state, "problems": dict(self.problems), "step": self._step, **self.counters, "topics": topics}

    def status_line(self) -> str:
        if not self.problems:
            return self.state
        return f"{self.state}: " + "; ".join(f"{k}: {v}" for k, v in self.problems.items())

    def _set_state(self, state: str, problems: dict[str, str]) -> None:
        changed = state != self.state or set(problems) != set(self.problems)
        self.state, self.problems = state, dict(problems)
        if changed:
            level = logging.INFO if state == "running" else logging.WARNING
            log.log(level, "event=ros2_state state=%s detail=%r", state, self.status_line())

    # -- internals ---------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise Ros2Unavailable("ros2: the driver is closed")

    def _publish(self, action: np.ndarray) -> None:
        for (cfg, sl), pub in zip(self._slices, self._pubs):
            pub.publish(mapping.encode_action(cfg, action[sl]))

    def _wait_tick(self) -> None:
        assert self._next_tick is not None
        self._next_tick += self._period
        delay = self._next_tick - time.monotonic()
        if delay > 0 and self._closed.wait(delay):
            self._check_open()
        if -delay > self._period:  # far behind (a slow policy): re-phase instead of bursting
            self._next_tick = time.monotonic()

    def _decode(self, field: str, s: Sample) -> np.ndarray | mapping.MappingError:
        cached = self._decoded.get(field)
        if cached is not None and cached[0] == s.count:
            return cached[1]
        try:
            value: np.ndarray | mapping.MappingError = mapping.decode_observation(self.config.observations[field], s.cdr)
        except mapping.MappingError as e:
            value = e
        self._decoded[field] = (s.count, value)
        return value

    def _observe(self, now_ns: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Observation at ``now_ns``, and per stale or unusable field the reason."""
        obs: dict[str, np.ndarray] = {}
        problems: dict[str, str] = {}
        for field, c in self.config.observations.items():
            s = self._store.get("obs:" + field)
            value = None if s is None else self._decode(field, s)
            if s is None:
                problems[field] = f"no message yet on {c.topic}"
            elif isinstance(value, mapping.MappingError):
                problems[field] = f"{c.topic}: {value}"
            else:
                self._last_good[field] = value  # type: ignore[assignment]
                limit = self.config.age_limit(field)
                if s.age_s(now_ns) > limit:
                    problems[field] = f"{c.topic}: newest message is {s.age_s(now_ns):.2f} s old (max_age_s {limit})"
            spec = self._specs[field]
            obs[field] = self._last_good.get(field, np.zeros(spec.shape, np.uint8 if spec.is_image else np.float32))
        return obs, problems

    def _pause(self, problems: dict[str, str]) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, Any]]:
        self.counters["pauses"] += 1
        self._set_state("paused", problems)
        self._stop_motion()
        t0 = time.monotonic()
        fresh = self._store.wait_until(lambda _l, now: not self._observe(now)[1], self.config.pause_timeout_s)
        self._check_open()
        obs, left = self._observe(time.monotonic_ns())
        info: dict[str, Any] = {"paused_s": round(time.monotonic() - t0, 3), "paused_for": problems}
        if fresh:
            self._set_state("running", {})
        else:
            self.counters["pause_timeouts"] += 1
            info["stale"] = left
            self._set_state("paused", left)
        return obs, left, info

    def _stop_motion(self) -> None:
        """While paused, velocity outputs get zero; position outputs hold their last target."""
        for (cfg, _), pub in zip(self._slices, self._pubs):
            if cfg.type == "geometry_msgs/msg/Twist":
                pub.publish(mapping.encode_action(cfg, np.zeros(cfg.dim)))

    def _signals(self) -> tuple[float, bool]:
        reward, success = 0.0, False
        for sig, ros_type in (("reward", "std_msgs/msg/Float64"), ("success", "std_msgs/msg/Bool")):
            s = self._store.get(sig)
            if s is None or s.count == self._signal_seen[sig]:
                continue  # nothing new since the last step
            self._signal_seen[sig] = s.count
            try:
                value = types.decode(s.cdr, ros_type).data
            except Exception as e:  # noqa: BLE001 - a bad signal message is logged, not fatal
                log.warning("event=ros2_bad_signal signal=%s error=%r", sig, e)
                continue
            if sig == "reward":
                reward = float(value)
            else:
                success = bool(value)
        return reward, success
