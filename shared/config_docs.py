"""docs/configuration.md, generated from the config models so the two cannot drift.

Regenerate with ``python -m shared.config_docs > docs/configuration.md``; a
test fails when the file and the models disagree, or when a key has no
description.
"""

from __future__ import annotations

import json
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .config import AGENT_RELOADABLE, AgentConfig, LearnerConfig

HEADER = """\
# Configuration

One TOML file per daemon: `edge-agent run --config agent.toml` on each robot,
`cloud-learner serve --config run.toml` on the learner. Every key is optional
unless marked *required*; unknown keys and bad values are refused at start with
one line naming the key (`edge-agent check-config`, `cloud-learner check-config`).
Relative paths are resolved against the directory of the config file.

A running agent re-reads its file on SIGHUP (`systemctl reload edge-agent`) and
applies only the keys marked *reloadable*; any other change is logged
(`event=reload_refused key=...`) and waits for a restart.

This page is generated from `shared/config.py` by `python -m shared.config_docs`;
do not edit it by hand.
"""


def _submodel(annotation: Any) -> type[BaseModel] | None:
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) else ()
    for t in (annotation, *args):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


_NAMES = {"Path": "path", "str": "string", "int": "integer", "float": "number", "bool": "boolean"}


def _type(a: Any) -> str:
    origin, args = typing.get_origin(a), typing.get_args(a)
    if origin is typing.Literal:
        return " / ".join(f"`{json.dumps(v)}`" for v in args)
    if isinstance(a, types.UnionType) or origin is typing.Union:
        return " or ".join(_type(x) for x in args if x is not type(None))
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return "table"
    if isinstance(a, type):
        return _NAMES.get(a.__name__, a.__name__)
    return str(a).replace("|", "or")


def _default(f: FieldInfo) -> str:
    if f.is_required():
        return "*required*"
    value = f.default_factory() if f.default_factory is not None else f.default  # type: ignore[call-arg]
    if value is PydanticUndefined or value is None:
        return "not set"
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, Path):
        value = str(value)
    return f"`{json.dumps(value)}`"


def _section(model: type[BaseModel], prefix: str, reloadable: frozenset[str], out: list[str]) -> None:
    rows, subs = [], []
    for name, f in model.model_fields.items():
        sub = _submodel(f.annotation)
        if sub is not None:
            subs.append((name, sub, f))
            continue
        desc = (f.description or "").replace("|", "\\|")
        key = f"{prefix}{name}"
        if key in reloadable:
            desc += " *(reloadable)*"
        rows.append(f"| `{name}` | {_type(f.annotation)} | {_default(f)} | {desc} |")
    if rows:
        out += ["| key | type | default | meaning |", "|---|---|---|---|", *rows, ""]
    for name, sub, f in subs:
        many = typing.get_origin(f.annotation) is list  # an array of tables: [[name]] entries
        out.append(f"### `[[{prefix}{name}]]`\n" if many else f"### `[{prefix}{name}]`\n")
        if f.description:
            out.append(f.description[0].upper() + f.description[1:] + ".\n")
        _section(sub, f"{prefix}{name}.", reloadable, out)


def undocumented() -> list[str]:
    """Keys without a description: a test keeps this empty."""
    missing: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            sub = _submodel(f.annotation)
            if sub is not None:
                walk(sub, f"{prefix}{name}.")
            elif not f.description:
                missing.append(prefix + name)

    walk(AgentConfig, "agent: ")
    walk(LearnerConfig, "learner: ")
    return missing


def render() -> str:
    out = [HEADER, "## Edge agent (`agent.toml`)\n"]
    _section(AgentConfig, "", AGENT_RELOADABLE, out)
    out.append("## Cloud learner (`run.toml`)\n")
    _section(LearnerConfig, "", frozenset(), out)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
