"""Hardware units: robots, cameras, teleop devices, accelerators."""

from .base import FieldSpec, HardwareUnit, Robot, StepResult, UnitDescription, UnitKind
from .registry import available, create, get, register

__all__ = [
    "FieldSpec", "HardwareUnit", "Robot", "StepResult", "UnitDescription", "UnitKind",
    "available", "create", "get", "register",
]
