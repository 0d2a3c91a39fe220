"""The project's own error types: every decoder raises one of these, nothing else."""

from __future__ import annotations


class FleetError(Exception):
    """Base of every fleetrl error; ``code`` is a stable reason code."""

    code = "error"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(FleetError):
    code = "bad_config"


class ProtocolError(FleetError):
    code = "protocol_error"


class SchemaError(FleetError):
    code = "bad_schema"


class CompressionError(FleetError):
    code = "bad_compression"


class WeightsError(FleetError):
    code = "bad_weights"
