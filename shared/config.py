"""Config models for both daemons: one TOML file each, strict.

Unknown keys and bad values are errors that name the key, so a typo in a
config on a robot in a far-away lab fails loudly at start, not silently later.
The models live in ``config_agent`` and ``config_learner``; this module loads
and validates files and is where callers import them from.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .config_agent import (
    AGENT_RELOADABLE, AgentConfig, AgentServiceConfig, ControlConfig, LinkConfig, RobotConfig, Ros2BridgeConfig,
    SpoolConfig, TeleopConfig,
)
from .config_base import device_setting, is_loopback
from .config_learner import (
    AdminConfig, LearnerAlgoConfig, LearnerConfig, LimitsConfig, MetricsConfig, ServerConfig,
)
from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (Ubuntu 22.04, ROS 2 Humble robot computers)
    import tomli as tomllib

__all__ = [
    "AGENT_RELOADABLE", "AdminConfig", "AgentConfig", "AgentServiceConfig", "ControlConfig", "LearnerAlgoConfig",
    "LearnerConfig", "LimitsConfig", "LinkConfig", "MetricsConfig", "RobotConfig", "Ros2BridgeConfig",
    "ServerConfig", "SpoolConfig", "TeleopConfig", "device_setting", "is_loopback", "load", "read_toml", "validate",
]

M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: dict[str, Any], source: str = "config") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ConfigError(f"{source}: {key}: {msg}{more}") from None


def read_toml(text: str) -> dict[str, Any]:
    """TOML text as a dict (tomllib, or tomli on Python 3.10)."""
    data: dict[str, Any] = tomllib.loads(text)
    return data


def load(model: type[M], path: str | Path) -> M:
    """Read a TOML file into ``model``; relative paths inside resolve against the file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    cfg = validate(model, data, str(p))
    return _resolve_paths(cfg, p.parent.resolve())


def _resolve_paths(cfg: M, base: Path) -> M:
    updates: dict[str, Any] = {}
    for name, value in cfg:
        if isinstance(value, Path) and not value.is_absolute():
            updates[name] = base / value
        elif isinstance(value, list) and any(isinstance(v, Path) for v in value):
            updates[name] = [base / v if isinstance(v, Path) and not v.is_absolute() else v for v in value]
        elif isinstance(value, BaseModel):
            updates[name] = _resolve_paths(value, base)
    return cfg.model_copy(update=updates) if updates else cfg
