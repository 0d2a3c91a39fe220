"""What both daemons' config models share: strict models, loopback and device checks."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def device_setting(v: str) -> str:
    """A torch device a setting may name (whether this machine has it is checked where it is used)."""
    if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
        return v
    raise ValueError(f'{v!r}: use "auto", "cpu", "cuda" or "cuda:N"')

