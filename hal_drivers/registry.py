"""Drivers registered by name, in-tree or by third parties via entry points.

A third party adds a robot without forking: declare an entry point in the
``fleetrl.hal_drivers`` group pointing at a :class:`HardwareUnit` subclass.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Callable, TypeVar

from pydantic import ValidationError

from shared.errors import ConfigError

from .base import HardwareUnit, UnitDescription

ENTRY_POINT_GROUP = "fleetrl.hal_drivers"
_BUILTIN = {
    "mujoco_fetch": "hal_drivers.mujoco_fetch", "point_mass": "hal_drivers.point_mass", "ros2": "hal_drivers.ros2",
    # teleop devices (UnitKind.TELEOP)
    "keyboard": "hal_drivers.teleop.keyboard", "gamepad": "hal_drivers.teleop.evdev_device",
    "spacemouse": "hal_drivers.teleop.evdev_device", "ros2_joy": "hal_drivers.teleop.ros2_joy",
    "scripted_fetch": "hal_drivers.teleop.scripted",
}
_registry: dict[str, type[HardwareUnit]] = {}

T = TypeVar("T", bound=type[HardwareUnit])


def register(name: str) -> Callable[[T], T]:
    def deco(cls: T) -> T:
        _registry[name] = cls
        return cls

    return deco


def available() -> list[str]:
    names = set(_registry) | set(_BUILTIN)
    names |= {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(names)


def get(name: str, key: str = "robot.driver") -> type[HardwareUnit]:
    try:
        if name not in _registry and name in _BUILTIN:
            import_module(_BUILTIN[name])
        if name not in _registry:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                if ep.name == name:
                    _registry[name] = ep.load()
    except ImportError as e:
        raise ConfigError(f"{key}: driver {name!r} cannot be loaded: {e} (is its extra installed?)") from None
    if name not in _registry:
        raise ConfigError(f"{key}: unknown driver {name!r}; available: {', '.join(available())}")
    return _registry[name]


def validate(name: str, options: dict[str, Any] | None = None, /, section: str = "robot") -> tuple[type[HardwareUnit], Any]:
    """The unit's class and its options checked by its config class, without building it (no hardware touched).

    ``section`` is the config table it came from (``robot``, ``teleop``), for error messages."""
    cls = get(name, f"{section}.{'driver' if section == 'robot' else 'device'}")
    try:
        return cls, cls.config_class.model_validate(options or {})
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(f"{section}.options{'.' + key if key else ''}: {msg}") from None


def create(name: str, options: dict[str, Any] | None = None, /, section: str = "robot", **kwargs: Any) -> HardwareUnit:
    """Build a unit from its name and its options table (validated by its config class)."""
    cls, cfg = validate(name, options, section)
    return cls(cfg, **kwargs)  # type: ignore[call-arg]


def describe(name: str, options: dict[str, Any] | None = None, /, **kwargs: Any) -> UnitDescription:
    """Build the unit, ask it to describe itself, release it (for checks before the daemon runs)."""
    unit = create(name, options, **kwargs)
    try:
        return unit.describe()
    finally:
        unit.close()
