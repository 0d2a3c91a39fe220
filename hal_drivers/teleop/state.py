"""What a device's reader thread has seen, handed to the control loop without waiting.

Every device (keyboard, evdev, ROS 2) turns its input into the same few
facts: axis values (each valid until a deadline, so a key without key-up
events or a silent ROS topic fades to zero), the take-over state, and the
episode events and reward presses since the last read. The reader thread
writes them under a lock; :meth:`InputState.command` reads and consumes them
in O(axes), so :meth:`Teleop.read` never blocks on the device.
"""

from __future__ import annotations

import math
import threading
import time

from .base import AxisMap, TeleopCommand, apply_axes

FOREVER = math.inf


class InputState:
    """Thread-safe latest input. ``mode``: hold (take-over while held) or toggle (each press switches)."""

    def __init__(self, mode: str = "hold"):
        self.mode = mode
        self._lock = threading.Lock()
        self._values: dict[str, tuple[float, float]] = {}  # source -> (value, valid until, monotonic s)
        self._held_until = 0.0  # hold mode: take-over until this time (FOREVER while a button is down)
        self._toggled = False
        self._alive_until = FOREVER  # past it the input is stale: no take-over, zero action
        self._events: list[str] = []
        self._reward = 0.0

    def set_value(self, source: str, value: float, until: float = FOREVER) -> None:
        with self._lock:
            self._values[source] = (value, until)

    def press_takeover(self, until: float = FOREVER) -> None:
        """A take-over press: hold mode holds until ``until`` (FOREVER: until released); toggle switches."""
        with self._lock:
            if self.mode == "toggle":
                self._toggled = not self._toggled
            else:
                self._held_until = until

    def release_takeover(self) -> None:
        """The take-over button went up (hold mode; toggle ignores releases)."""
        with self._lock:
            if self.mode == "hold":
                self._held_until = 0.0

    def extend_hold(self, until: float) -> None:
        """Hold mode: keep (or start) the take-over until at least ``until``."""
        with self._lock:
            if self.mode == "hold":
                self._held_until = max(self._held_until, until)

    def event(self, name: str) -> None:
        with self._lock:
            self._events.append(name)

    def add_reward(self, value: float) -> None:
        with self._lock:
            self._reward += value

    def alive_until(self, until: float) -> None:
        """The input counts as live until ``until`` (streams that can go silent: ROS 2 topics)."""
        with self._lock:
            self._alive_until = until

    def lost(self) -> None:
        """The device went away: drop every value and the take-over."""
        with self._lock:
            self._values.clear()
            self._held_until = 0.0
            self._toggled = False

    def command(self, axes: list[AxisMap], action_dim: int, now: float | None = None) -> TeleopCommand:
        """The current command; consumes the events and reward gathered since the last call."""
        now = time.monotonic() if now is None else now
        with self._lock:
            events, self._events = tuple(self._events), []
            reward, self._reward = self._reward, 0.0
            if now > self._alive_until:  # stale stream: nothing is held, a toggle starts over
                self._toggled = False
                self._held_until = 0.0
                return TeleopCommand(action=apply_axes([], {}, action_dim), events=events, reward=reward)
            values = {k: v for k, (v, until) in self._values.items() if now <= until}
            takeover = self._toggled if self.mode == "toggle" else now <= self._held_until
        return TeleopCommand(action=apply_axes(axes, values, action_dim), takeover=takeover, events=events, reward=reward)
