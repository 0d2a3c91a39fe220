"""Keyboard teleop on a terminal (``device = "keyboard"``): works over ``ssh -t`` with no display.

The terminal is put in cbreak mode (no echo, no line buffering; Ctrl-C still
interrupts) and restored on close, at exit, and when start fails. A terminal
sends key presses but no key releases, so a movement key drives its axis for
``hold_s`` after its last press (the terminal's key repeat keeps it alive
while held; the first repeat comes ~0.25-0.6 s after the press, so a longer
``hold_s`` bridges that gap smoothly). In ``hold`` mode the take-over key, and
by default any movement key, holds take-over for ``hold_s`` after the last
press; in ``toggle`` mode the take-over key switches it on and off.

Default keys: w/s action 0 +/-, a/d action 1 +/-, r/f action 2 +/-, q/e
action 3 +/- (gripper); space take-over, enter success, backspace failure,
x reset, + reward. Keys are single characters or the names in ``NAMED``.
"""

from __future__ import annotations

import atexit
import logging
import os
import termios
import time
from typing import Any, Mapping

import numpy as np
from pydantic import Field, field_validator

from hal_drivers.base import UnitDescription, UnitKind
from hal_drivers.registry import register
from shared.errors import ConfigError

from .base import AxisMap, Teleop, TeleopCommand, TeleopOptions, check_axes
from .reader import FdReader
from .state import InputState

log = logging.getLogger("fleetrl.teleop")

DEVICE_NAME = "keyboard"
NAMED = {  # key name -> the bytes a terminal sends for it
    "space": (b" ",), "enter": (b"\r", b"\n"), "backspace": (b"\x7f", b"\x08"), "tab": (b"\t",), "esc": (b"\x1b",),
    "up": (b"\x1b[A", b"\x1bOA"), "down": (b"\x1b[B", b"\x1bOB"), "right": (b"\x1b[C", b"\x1bOC"),
    "left": (b"\x1b[D", b"\x1bOD"),
}
_BY_BYTES = {seq: name for name, seqs in NAMED.items() for seq in seqs}
_ESCAPES = sorted((s for s in _BY_BYTES if len(s) > 1), key=len, reverse=True)
DEFAULT_AXES = [
    AxisMap(source=k, action=a, scale=s)
    for a, (plus, minus) in enumerate((("w", "s"), ("a", "d"), ("r", "f"), ("q", "e")))
    for k, s in ((plus, 1.0), (minus, -1.0))
]
DEFAULT_BUTTONS = {"takeover_button": "space", "success_button": "enter", "failure_button": "backspace",
                   "reset_button": "x", "reward_button": "+"}


def _check_key(v: str | None) -> str | None:
    if v is None or v in NAMED:
        return v
    if len(v) == 1 and (v.isprintable() or v.encode("latin-1", "replace") in _BY_BYTES):
        return _BY_BYTES.get(v.encode("latin-1", "replace"), v)  # " " is "space", "\r" is "enter"
    raise ValueError(f"{v!r} is not a key: use one printable character or one of {', '.join(NAMED)}")


def split_keys(data: bytes) -> list[str]:
    """Terminal input -> key names: characters, or the ``NAMED`` keys (escape sequences included)."""
    keys: list[str] = []
    i = 0
    while i < len(data):
        for seq in _ESCAPES:
            if data.startswith(seq, i):
                keys.append(_BY_BYTES[seq])
                i += len(seq)
                break
        else:
            b = data[i:i + 1]
            keys.append(_BY_BYTES.get(b) or b.decode("latin-1"))
            i += 1
    return keys


class KeyboardOptions(TeleopOptions):
    """``[teleop.options]`` with ``device = "keyboard"``; ``axes[].source`` and buttons are keys."""

    tty: str = Field("/dev/tty", description="terminal to read (default: the agent's own, also over ssh -t)")
    hold_s: float = Field(0.3, gt=0, le=5, description="a key press counts as held this long (terminals send no key-up)")
    move_takes_over: bool = Field(True, description="hold mode: movement keys also hold take-over (besides the take-over key)")

    @field_validator("takeover_button", "success_button", "failure_button", "reset_button", "reward_button")
    @classmethod
    def _button_key(cls, v: str | None) -> str | None:
        return _check_key(v)



@register(DEVICE_NAME)
class Keyboard(Teleop):
    """Reads key presses from a terminal on a daemon thread."""

    config_class = KeyboardOptions

    def __init__(self, config: KeyboardOptions, name: str = "teleop"):
        self.config = config
        self.name = name
        self.axes = list(config.axes) or list(DEFAULT_AXES)
        for i, ax in enumerate(self.axes):
            try:
                self.axes[i] = ax.model_copy(update={"source": _check_key(ax.source)})
            except ValueError as e:
                raise ConfigError(f"teleop.options.axes[{i}].source: {e}") from None
        self.buttons: dict[str, str] = {}  # key -> event (takeover, success, failure, reset, reward)
        for opt, default in DEFAULT_BUTTONS.items():
            key = getattr(config, opt) or default
            if key in self.buttons:
                raise ConfigError(f"teleop.options.{opt}: key {key!r} is already the {self.buttons[key]} key")
            self.buttons[key] = opt.removesuffix("_button")
        for i, ax in enumerate(self.axes):
            if ax.source in self.buttons:
                raise ConfigError(f"teleop.options.axes[{i}].source: key {ax.source!r} is already the "
                                  f"{self.buttons[ax.source]} key")
        self._sources = {ax.source for ax in self.axes}
        # a press cancels the other keys on its action dimension(s): switching w -> s reverses at once
        self._rivals = {k: {ax.source for ax in self.axes if ax.source != k and ax.action in
                            {a.action for a in self.axes if a.source == k}} for k in self._sources}
        self._state = InputState()
        self._action_dim = 0
        self._fd = -1
        self._saved: list[Any] | None = None
        self._reader: FdReader | None = None

    def describe(self) -> UnitDescription:
        return UnitDescription(name=self.name, kind=UnitKind.TELEOP, driver=DEVICE_NAME, identity=f"tty:{self.config.tty}",
                               extra={"hold_s": self.config.hold_s, "keys": {k: v for k, v in self.buttons.items()}})

    def start(self, action_dim: int, takeover_mode: str = "hold") -> None:
        check_axes(self.axes, action_dim)
        self._action_dim = action_dim
        self._state = InputState(takeover_mode)
        try:
            self._fd = os.open(self.config.tty, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as e:
            raise ConfigError(f"teleop.options.tty: cannot open {self.config.tty!r} ({e.strerror}); run the agent in a "
                              f"terminal (ssh -t for a remote one), or point tty at one") from None
        try:
            if not os.isatty(self._fd):
                raise ConfigError(f"teleop.options.tty: {self.config.tty!r} is not a terminal")
            self._saved = termios.tcgetattr(self._fd)
            mode = termios.tcgetattr(self._fd)
            mode[3] &= ~(termios.ICANON | termios.ECHO)  # lflags: key by key, silent; ISIG kept so Ctrl-C works
            mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0
            termios.tcsetattr(self._fd, termios.TCSAFLUSH, mode)
            atexit.register(self._restore)
            self._reader = FdReader(self._fd, self._on_readable, name=f"teleop-{self.name}",
                                    on_lost=self._state.lost)
            self._reader.start()
        except BaseException:
            self.close()
            raise
        log.info("event=teleop_started device=keyboard tty=%s mode=%s", self.config.tty, takeover_mode)

    def _on_readable(self) -> bool:
        try:
            data = os.read(self._fd, 256)
        except OSError as e:  # EIO: the terminal hung up (ssh session gone)
            log.warning("event=teleop_tty_lost tty=%s error=%s", self.config.tty, e.strerror)
            data = b""
        if not data:
            self._state.lost()
            return False
        now = time.monotonic()
        for key in split_keys(data):
            self.on_key(key, now)
        return True

    def on_key(self, key: str, now: float) -> None:
        """One key press (called by the reader thread)."""
        if key not in self.buttons and key not in self._sources and len(key) == 1:
            key = key.lower()  # caps lock / shift still drive the lowercase map
        until = now + self.config.hold_s
        event = self.buttons.get(key)
        if event == "takeover":
            if self._state.mode == "toggle":
                self._state.press_takeover()
            else:
                self._state.extend_hold(until)
        elif event == "reward":
            self._state.add_reward(self.config.reward_value)
        elif event is not None:
            self._state.event(event)
        elif key in self._sources:
            for rival in self._rivals[key]:
                self._state.set_value(rival, 0.0, now)
            self._state.set_value(key, 1.0, until)
            if self.config.move_takes_over:
                self._state.extend_hold(until)

    def read(self, obs: Mapping[str, np.ndarray]) -> TeleopCommand:
        return self._state.command(self.axes, self._action_dim)

    def _restore(self) -> None:
        if self._saved is not None and self._fd >= 0:
            try:
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            except termios.error as e:  # the terminal hung up: nothing left to restore
                log.warning("event=teleop_tty_restore_failed tty=%s error=%s", self.config.tty, e)
            self._saved = None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        self._restore()
        atexit.unregister(self._restore)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._state.lost()
