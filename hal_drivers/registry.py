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
_BUILTIN = {"mujoco_fetch": "hal_drivers.mujoco_fetch", "ros2": "hal_drivers.ros2"}
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


def get(name: str) -> type[HardwareUnit]:
    try:
        if name not in _registry and name in _BUILTIN:
            import_module(_BUILTIN[name])
        if name not in _registry:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                if ep.name == name:
                    _registry[name] = ep.load()
    except ImportError as e:
        raise ConfigError(f"robot.driver: driver {name!r} cannot be loaded: {e} (is its extra installed?)") from None
    if name not in _registry:
        raise ConfigError(f"robot.driver: unknown driver {name!r}; available: {', '.join(available())}")
    return _registry[name]


def create(name: str, options: dict[str, Any] | None = None, /, **kwargs: Any) -> HardwareUnit:
    """Build a driver from its name and its options table (validated by its config class)."""
    cls = get(name)
    try:
        cfg = cls.config_class.model_validate(options or {})
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"robot.options.{key}: {err['msg']}") from None
    return cls(cfg, **kwargs)  # type: ignore[call-arg]


def describe(name: str, options: dict[str, Any] | None = None, /, **kwargs: Any) -> UnitDescription:
    """Build the unit, ask it to describe itself, release it (for checks before the daemon runs)."""
    unit = create(name, options, **kwargs)
    try:
        return unit.describe()
    finally:
        unit.close()
