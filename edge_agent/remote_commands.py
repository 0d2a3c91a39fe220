"""The learner's operator commands, in the control process: checked again, refused or applied.

The link process takes a :class:`shared.protocol.Command` off the link (only from
a learner this robot can verify) and forwards ``[kind, value]`` over its channel;
:class:`edge_agent.link_feed.LinkFeed` hands it here. Applying one sets
:class:`edge_agent.operator.OperatorControls`, exactly as a ROS 2 command does,
so the control loop reads it at its next tick and status.json / the link report
show the result (``paused = operator_pause``). A site that set
``control.remote_commands = false`` does not offer commands in its hello; one
that arrives anyway is logged and dropped, never applied.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from shared.errors import ProtocolError
from shared.protocol import Command, commands

from .operator import OperatorControls

log = logging.getLogger("fleetrl.agent")


class RemoteCommands:
    """``allowed()`` is read per command: the running config's ``control.remote_commands``."""

    def __init__(self, operator: OperatorControls, allowed: Callable[[], bool]):
        self.operator, self.allowed = operator, allowed
        self.applied = 0
        self.refused = 0

    def handle(self, payload: Any) -> bool:
        """Apply one ``[kind, value]`` from the link process; whether it was applied."""
        try:
            kind, value = payload
            value = commands.check(kind, value)  # the link process checked it; a stale or odd process must not matter
        except (TypeError, ValueError, ProtocolError) as e:
            self.refused += 1
            log.error("event=remote_command_invalid payload=%.120r error=%r", payload, getattr(e, "message", str(e)))
            return False
        if not self.allowed():
            self.refused += 1
            log.warning("event=remote_command_refused kind=%s value=%r reason=control.remote_commands_is_false", kind, value)
            return False
        self.operator.apply(Command(kind, value))
        self.applied += 1
        log.info("event=remote_command kind=%s value=%r", kind, value)
        return True
