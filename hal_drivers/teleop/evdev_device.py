"""Gamepads and SpaceMice as Linux input devices (``device = "gamepad" | "spacemouse"``), via python-evdev.

Install with ``pip install 'fleetrl[teleop]'``; the agent's user needs read
access to ``/dev/input/eventN`` (the ``input`` group, or a udev rule).
Sources and buttons are evdev code names: ``ABS_X``, ``ABS_RZ``, ``REL_X``,
``BTN_SOUTH``, ``BTN_TR``, ``BTN_0``; a button (``BTN_*``/``KEY_*``) can also
be an axis source (1 while down). Absolute axes are normalised by the axis'
own min/max (to [-1, 1], or [0, 1] for the ``unipolar`` ones such as
triggers); relative axes (a SpaceMouse on most kernels) by ``rel_range``, and
fade to 0 after ``rel_hold_s`` without events, so a lost final zero report
cannot keep the arm moving. Unlike a terminal, input devices send releases:
``hold`` mode takes over exactly while the take-over button is down.

A SpaceMouse that the kernel does not expose as an input device can be read
with ``pyspacemouse`` (hidapi) instead; that path is not implemented here.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from typing import Any, ClassVar, Mapping

import numpy as np
from pydantic import Field

from hal_drivers.base import UnitDescription, UnitKind
from hal_drivers.registry import register
from shared.errors import ConfigError

from .base import AxisMap, Teleop, TeleopCommand, TeleopOptions, check_axes
from .reader import FdReader
from .state import FOREVER, InputState

log = logging.getLogger("fleetrl.teleop")
BUTTON_OPTIONS = ("takeover_button", "success_button", "failure_button", "reset_button", "reward_button")
INSTALL = "pip install 'fleetrl[teleop]' (python-evdev)"


class EvdevOptions(TeleopOptions):
    """``[teleop.options]`` for ``gamepad`` and ``spacemouse``; unset options take the device's defaults."""

    path: str | None = Field(None, description="input device, e.g. /dev/input/by-id/usb-...-event-joystick")
    name: str | None = Field(None, description="or: a substring of the device name (case-insensitive); "
                             "neither: the first device that looks like a gamepad / SpaceMouse")
    rel_range: float = Field(350.0, gt=0, description="relative-axis value read as full scale (SpaceMouse ~350)")
    rel_hold_s: float = Field(0.25, ge=0, description="a relative axis fades to 0 this long after its last event (0: never)")
    unipolar: list[str] | None = Field(None, description="absolute axes normalised to [0, 1] (triggers); default: "
                                       "the device's (gamepad: ABS_Z, ABS_RZ, ABS_GAS, ABS_BRAKE)")
    grab: bool = Field(False, description="exclusive access: the desktop stops seeing the device while the agent runs")


def _axis(source: str, action: int, scale: float = 1.0, deadzone: float = 0.0) -> AxisMap:
    return AxisMap(source=source, action=action, scale=scale, deadzone=deadzone)


def _evdev(key: str) -> Any:
    try:
        import evdev
    except ImportError:
        raise ConfigError(f"{key}: reading gamepads and SpaceMice needs python-evdev: {INSTALL}") from None
    return evdev


class EvdevTeleop(Teleop):
    """One Linux input device read on a daemon thread; subclasses give the defaults."""

    config_class = EvdevOptions
    device_name: ClassVar[str] = "evdev"
    default_axes: ClassVar[list[AxisMap]] = []
    default_buttons: ClassVar[dict[str, str]] = {}
    default_unipolar: ClassVar[tuple[str, ...]] = ()
    name_hints: ClassVar[tuple[str, ...]] = ()  # lower-case substrings of device names, for auto-detection

    def __init__(self, config: EvdevOptions, name: str = "teleop"):
        if config.path is not None and config.name is not None:
            raise ConfigError("teleop.options.path: set path or name, not both")
        self.config = config
        self.name = name
        self.axes = list(config.axes) or list(self.default_axes)
        self.buttons = {opt: getattr(config, opt) or self.default_buttons.get(opt) for opt in BUTTON_OPTIONS}
        self.unipolar = set(self.default_unipolar if config.unipolar is None else config.unipolar)
        self._state = InputState()
        self._action_dim = 0
        self._dev: Any = None
        self._reader: FdReader | None = None
        self._decoder: EventDecoder | None = None

    def describe(self) -> UnitDescription:
        c = self.config
        ident = f"path:{c.path}" if c.path else f"name:{c.name}" if c.name else f"auto:{self.device_name}"
        extra: dict[str, Any] = {}
        if self._dev is not None:
            ident = self._dev.uniq or self._dev.phys or self._dev.path
            extra = {"device": self._dev.name, "path": self._dev.path}
        return UnitDescription(name=self.name, kind=UnitKind.TELEOP, driver=self.device_name, identity=ident, extra=extra)

    # -- opening -------------------------------------------------------------

    def _codes(self, evdev: Any) -> tuple[dict[str, int], dict[int, str]]:
        """Axis sources -> event codes, button codes -> their option; unknown names are ConfigErrors."""
        names = evdev.ecodes.ecodes
        axes: dict[str, int] = {}
        for i, ax in enumerate(self.axes):
            if not ax.source.startswith(("ABS_", "REL_", "BTN_", "KEY_")) or ax.source not in names:
                raise ConfigError(f"teleop.options.axes[{i}].source: {ax.source!r} is not an evdev axis or button "
                                  f"code (ABS_X, REL_X, BTN_TR...; see `python -m evdev.evtest`)")
            axes[ax.source] = names[ax.source]
        buttons: dict[int, str] = {}
        for opt, code_name in self.buttons.items():
            if code_name is None:
                continue
            if not code_name.startswith(("BTN_", "KEY_")) or code_name not in names:
                raise ConfigError(f"teleop.options.{opt}: {code_name!r} is not an evdev button code (BTN_SOUTH, BTN_0...)")
            code = names[code_name]
            if code in buttons:
                raise ConfigError(f"teleop.options.{opt}: {code_name} is already the {buttons[code]}")
            buttons[code] = opt
        for u in sorted(self.unipolar):
            if not u.startswith("ABS_") or u not in names:
                raise ConfigError(f"teleop.options.unipolar: {u!r} is not an evdev absolute axis (ABS_Z, ABS_RZ...)")
        return axes, buttons

    def _open(self, evdev: Any) -> Any:
        c = self.config
        if c.path is not None:
            if not os.path.exists(c.path):
                raise ConfigError(f"teleop.options.path: {c.path} does not exist; plug the {self.device_name} in "
                                  f"(ls /dev/input/by-id/) or set teleop.options.name instead")
            try:
                return evdev.InputDevice(c.path)
            except PermissionError:
                raise ConfigError(f"teleop.options.path: no permission to read {c.path}; add the agent's user to the "
                                  f"'input' group (or a udev rule) and log in again") from None
            except OSError as e:
                raise ConfigError(f"teleop.options.path: {c.path} is not an input device ({e.strerror})") from None
        found: list[Any] = []
        for p in evdev.list_devices():  # only devices this user can read
            try:
                dev = evdev.InputDevice(p)
            except OSError:
                continue
            if self._matches(evdev, dev):
                for other in found:
                    other.close()
                return dev
            found.append(dev)
        seen = ", ".join(f"{d.path} {d.name!r}" for d in found) or "none readable"
        for d in found:
            d.close()
        key = "teleop.options.name" if c.name else "teleop.device"
        want = f"whose name contains {c.name!r}" if c.name else f"that looks like a {self.device_name}"
        raise ConfigError(f"{key}: no input device {want} (seen: {seen}); plug it in, and check the agent's user "
                          f"can read /dev/input/event* (the 'input' group)")

    def _matches(self, evdev: Any, dev: Any) -> bool:
        if self.config.name is not None:
            return self.config.name.lower() in dev.name.lower()
        return any(h in dev.name.lower() for h in self.name_hints)

    def start(self, action_dim: int, takeover_mode: str = "hold") -> None:
        check_axes(self.axes, action_dim)
        evdev = _evdev("teleop.device")
        axes, buttons = self._codes(evdev)
        self._action_dim = action_dim
        self._state = InputState(takeover_mode)
        self._dev = self._open(evdev)
        try:
            if self.config.grab:
                self._dev.grab()
            self._decoder = EventDecoder(evdev, self._dev, axes, buttons, self.unipolar, self.config, self._state)
            self._decoder.resync()  # sticks off-centre, a trigger half-pulled, a button already down
            self._reader = FdReader(self._dev.fd, self._on_readable, name=f"teleop-{self.name}",
                                    on_lost=self._state.lost)
            self._reader.start()
        except BaseException:
            self.close()
            raise
        log.info("event=teleop_started device=%s path=%s name=%r mode=%s", self.device_name, self._dev.path,
                 self._dev.name, takeover_mode)

    def _on_readable(self) -> bool:
        assert self._decoder is not None
        try:
            events = list(self._dev.read())
        except BlockingIOError:
            return True
        except OSError as e:
            if e.errno != errno.ENODEV:
                raise
            log.warning("event=teleop_device_lost device=%s path=%s", self.device_name, self._dev.path)
            self._state.lost()
            return False
        self._decoder.handle(events, time.monotonic())
        return True

    def read(self, obs: Mapping[str, np.ndarray]) -> TeleopCommand:
        return self._state.command(self.axes, self._action_dim)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        if self._dev is not None:
            try:
                self._dev.close()  # also releases a grab
            except OSError:
                pass
            self._dev = None
        self._state.lost()


class EventDecoder:
    """evdev events -> :class:`InputState` (normalised axis values, button presses and releases)."""

    def __init__(self, evdev: Any, dev: Any, axes: dict[str, int], buttons: dict[int, str], unipolar: set[str],
                 config: EvdevOptions, state: InputState):
        ec = evdev.ecodes
        self._ec, self._dev, self._cfg, self._state = ec, dev, config, state
        self._abs: dict[int, tuple[str, float, float, bool]] = {}  # code -> (source, min, max, unipolar)
        self._rel: dict[int, str] = {}
        self._keys: dict[int, str] = {}  # button codes used as axis sources
        caps = dev.capabilities(absinfo=True)
        absinfo = {code: info for code, info in caps.get(ec.EV_ABS, [])}
        for source, code in axes.items():
            if source.startswith("ABS_"):
                if code not in absinfo:
                    log.info("event=teleop_axis_absent device=%r axis=%s", dev.name, source)
                    continue
                info = absinfo[code]
                self._abs[code] = (source, float(info.min), float(info.max), source in unipolar)
            elif source.startswith("REL_"):
                self._rel[code] = source
            else:
                self._keys[code] = source
        self._buttons = buttons
        self._dropped = False

    def _norm_abs(self, code: int, value: int) -> float:
        _, lo, hi, uni = self._abs[code]
        if hi <= lo:
            return 0.0
        t = (value - lo) / (hi - lo)
        return min(max(t if uni else 2.0 * t - 1.0, -1.0), 1.0)

    def resync(self) -> None:
        """Read the device's current state (at start, and after the kernel dropped events)."""
        for code, (source, *_rest) in self._abs.items():
            self._state.set_value(source, self._norm_abs(code, self._dev.absinfo(code).value))
        for source in self._rel.values():
            self._state.set_value(source, 0.0)
        down = set(self._dev.active_keys())
        for code, source in self._keys.items():
            self._state.set_value(source, 1.0 if code in down else 0.0)
        opt = next((c for c, o in self._buttons.items() if o == "takeover_button"), None)
        if opt is not None and self._state.mode == "hold":
            if opt in down:
                self._state.press_takeover()
            else:
                self._state.release_takeover()

    def handle(self, events: list[Any], now: float) -> None:
        ec = self._ec
        for e in events:
            if e.type == ec.EV_SYN:
                if e.code == ec.SYN_DROPPED:
                    self._dropped = True  # discard until the next report, then re-read the state
                elif e.code == ec.SYN_REPORT and self._dropped:
                    self._dropped = False
                    self.resync()
            elif self._dropped:
                continue
            elif e.type == ec.EV_ABS and e.code in self._abs:
                self._state.set_value(self._abs[e.code][0], self._norm_abs(e.code, e.value))
            elif e.type == ec.EV_REL and e.code in self._rel:
                v = min(max(e.value / self._cfg.rel_range, -1.0), 1.0)
                hold = self._cfg.rel_hold_s
                self._state.set_value(self._rel[e.code], v, now + hold if hold > 0 else FOREVER)
            elif e.type == ec.EV_KEY:
                self._key(e.code, e.value)

    def _key(self, code: int, value: int) -> None:
        """value: 1 press, 0 release, 2 autorepeat (ignored)."""
        if value == 2:
            return
        if code in self._keys:
            self._state.set_value(self._keys[code], float(value))
        opt = self._buttons.get(code)
        if opt == "takeover_button":
            if value:
                self._state.press_takeover()
            else:
                self._state.release_takeover()
        elif opt == "reward_button" and value:
            self._state.add_reward(self._cfg.reward_value)
        elif opt is not None and value:
            self._state.event(opt.removesuffix("_button"))


@register("gamepad")
class Gamepad(EvdevTeleop):
    """Left stick x/y -> actions 0/1, right stick y -> 2, triggers -> 3 (right opens, left closes);
    hold BTN_TR (right bumper) to take over; A/south success, B/east failure, X/west reset, Y/north reward."""

    device_name = "gamepad"
    default_axes = [_axis("ABS_X", 0, 1.0, 0.1), _axis("ABS_Y", 1, -1.0, 0.1), _axis("ABS_RY", 2, -1.0, 0.1),
                    _axis("ABS_RZ", 3, 1.0, 0.05), _axis("ABS_Z", 3, -1.0, 0.05)]
    default_buttons = {"takeover_button": "BTN_TR", "success_button": "BTN_SOUTH", "failure_button": "BTN_EAST",
                       "reset_button": "BTN_WEST", "reward_button": "BTN_NORTH"}
    default_unipolar = ("ABS_Z", "ABS_RZ", "ABS_GAS", "ABS_BRAKE")

    def _matches(self, evdev: Any, dev: Any) -> bool:
        """Without a name: the first device with gamepad buttons and a stick (what the kernel calls a gamepad)."""
        if self.config.name is not None:
            return super()._matches(evdev, dev)
        caps = dev.capabilities(absinfo=False)
        ec = evdev.ecodes
        return ec.BTN_GAMEPAD in caps.get(ec.EV_KEY, []) and ec.ABS_X in caps.get(ec.EV_ABS, [])


@register("spacemouse")
class SpaceMouse(EvdevTeleop):
    """Translation x/y/z -> actions 0/1/2 (REL_* on most kernels, ABS_* on some); hold BTN_0 (left button)
    to take over, BTN_1 (right button) success."""

    device_name = "spacemouse"
    default_axes = [_axis(f"{kind}_{a}", i, s, 0.05) for kind in ("REL", "ABS")
                    for i, (a, s) in enumerate((("X", 1.0), ("Y", -1.0), ("Z", -1.0)))]
    default_buttons = {"takeover_button": "BTN_0", "success_button": "BTN_1"}
    name_hints = ("3dconnexion", "spacemouse", "spacenavigator", "space navigator", "spacepilot", "spaceexplorer")
