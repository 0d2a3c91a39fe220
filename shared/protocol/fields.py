"""Checks of a message's meta fields: a missing or mistyped field is a :class:`ProtocolError` with code
``bad_meta`` naming the message and the field (JSON's ``true`` is not an int)."""

from __future__ import annotations

from typing import Any, TypeVar

from ..errors import ProtocolError
from .codes import RejectCode

T = TypeVar("T")


def field_of(meta: dict[str, Any], key: str, typ: type[T], msg: str) -> T:
    if key not in meta:
        raise ProtocolError(f"{msg} lacks field {key!r}", RejectCode.BAD_META)
    v = meta[key]
    ok = isinstance(v, typ) and not (typ is int and isinstance(v, bool))
    if not ok:
        raise ProtocolError(f"{msg}.{key} must be {typ.__name__}, got {type(v).__name__}", RejectCode.BAD_META)
    checked: T = v
    return checked


def uint_of(meta: dict[str, Any], key: str, msg: str, hi: int = 2**63 - 1) -> int:
    v = field_of(meta, key, int, msg)
    if not 0 <= v <= hi:
        raise ProtocolError(f"{msg}.{key} out of range: {v}", RejectCode.BAD_META)
    return v
