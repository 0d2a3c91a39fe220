"""What a human (or ROS tooling) asks of the control loop, read once per tick.

Set from any thread (the ROS 2 bridge, the label API of :mod:`edge_agent.labels`, the learner's
commands through :mod:`edge_agent.remote_commands`); the loop only
reads it, so the control thread never waits on whoever sets it.
"""

from __future__ import annotations

import threading
from typing import Any

from hal_drivers.teleop.base import EVENTS


class OperatorControls:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = threading.Event()  # cleared by pause: the loop holds between ticks
        self.running.set()
        self.episodes_allowed = threading.Event()  # cleared by "stop episode" until "start episode"
        self.episodes_allowed.set()
        self.intervention = False
        self._stop_episode = False
        self._reward = 0.0
        self._events: list[str] = []  # episode labels (success, failure, reset) from outside the teleop device

    def pause(self, on: bool) -> None:
        (self.running.clear if on else self.running.set)()

    def stop_episode(self) -> None:
        with self._lock:
            self._stop_episode = True
        self.episodes_allowed.clear()

    def start_episode(self) -> None:
        self.episodes_allowed.set()

    def add_reward(self, value: float) -> None:
        with self._lock:
            self._reward += value

    def label(self, event: str) -> None:
        """End the current episode as a success or failure, or cut it ("reset"), at the next tick."""
        if event not in EVENTS:
            raise ValueError(f"episode label {event!r} is not one of {', '.join(EVENTS)}")
        with self._lock:
            self._events.append(event)

    def take(self) -> tuple[bool, float, tuple[str, ...]]:
        """(end the current episode now?, human reward label for this step, episode labels) — consumed.

        The label goes to the row's ``human_reward``, apart from the driver's ``reward``."""
        with self._lock:
            stop, reward, events = self._stop_episode, self._reward, tuple(self._events)
            self._stop_episode, self._reward, self._events = False, 0.0, []
        return stop, reward, events

    def apply(self, cmd: Any) -> None:
        """One command (``kind``, ``value``): from ROS 2 (:class:`edge_agent.ros2_bridge.Command`) or the
        learner (:class:`shared.protocol.Command`, checked by :mod:`edge_agent.remote_commands`)."""
        if cmd.kind == "pause":
            self.pause(bool(cmd.value))
        elif cmd.kind == "stop_episode":
            self.stop_episode()
        elif cmd.kind == "start_episode":
            self.start_episode()
        elif cmd.kind == "intervention":
            self.intervention = bool(cmd.value)
        elif cmd.kind == "reward":  # a human reward label: the next step's human_reward
            self.add_reward(float(cmd.value or 0.0))
        elif cmd.kind == "label":  # success / failure / reset: ends (or cuts) the current episode
            self.label(str(cmd.value))

    def wake(self) -> None:
        self.running.set()
        self.episodes_allowed.set()
