"""What a human (or ROS tooling) asks of the control loop, read once per tick.

Set from any thread (the ROS 2 bridge, a future dashboard); the loop only
reads it, so the control thread never waits on whoever sets it.
"""

from __future__ import annotations

import threading


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

    def take(self) -> tuple[bool, float]:
        """(end the current episode now?, human reward to add to this step) — consumed."""
        with self._lock:
            stop, reward = self._stop_episode, self._reward
            self._stop_episode, self._reward = False, 0.0
        return stop, reward

    def wake(self) -> None:
        self.running.set()
        self.episodes_allowed.set()
