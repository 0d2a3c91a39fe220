"""The project's own error types: every decoder raises one of these, nothing else."""

from __future__ import annotations

import enum


class FleetError(Exception):
    """Base of every fleetrl error; ``code`` is a stable reason code.

    ``code`` may be given as a plain string or a member of a ``str`` enum
    (``shared.protocol.codes.RejectCode``); it is kept as the plain string, so
    ``e.code == "hold"`` and the wire both see the value."""

    code = "error"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = str(code.value) if isinstance(code, enum.Enum) else code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(FleetError):
    code = "bad_config"


class ProtocolError(FleetError):
    """The peer broke the protocol: its link is refused with ``code``."""

    code = "protocol_error"


class InvalidState(FleetError):
    """Local misuse of a sans-I/O connection (e.g. sending a chunk on a closed link).

    Kept apart from :class:`ProtocolError` (as python-websockets keeps ``InvalidState``):
    it says nothing about the peer, and an I/O layer that meets it after a close reads it
    as "the link is gone", never as a fault to report or refuse with."""

    code = "invalid_state"


class SchemaError(FleetError):
    code = "bad_schema"


class CompressionError(FleetError):
    code = "bad_compression"


class WeightsError(FleetError):
    code = "bad_weights"


class StorageError(FleetError):
    """Data on this machine's disk is damaged or not what this build reads (a spool
    record, a buffer manifest or segment); the message names the file."""

    code = "storage_corrupt"
