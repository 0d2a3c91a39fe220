"""Operator commands the learner may send a robot: the kinds, what each value must be, and the
hello feature that says a robot takes them.

Why a feature and not a version check: a robot whose build predates commands
meets message type 13 in :func:`shared.protocol.frames.decode_frame` as
``unknown_type``, a protocol error that ends its link (it redials, and would
again at the next command). The agent's version is no guide either: robots did
not send ``agent_version`` before, and a site may turn commands off. So a robot
lists :data:`FEATURE` in its hello only when its link will apply them (its build
knows them, its ``control.remote_commands`` is on, it trusts the learner), and
:meth:`shared.protocol.CloudConnection.command` refuses to encode one for a
link whose hello did not. A learner that predates features ignores the new hello
key. A kind added later needs a new feature name, so a robot that lists only
``commands`` never sees it.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ProtocolError
from .codes import RejectCode

FEATURE = "commands"  # in Hello.features: this link takes Command messages of the KINDS below
# The episode labels a person gives (= hal_drivers.teleop.base.EVENTS, which shared/ may not import;
# tests/shared/test_shared_commands.py keeps the two equal).
LABELS = ("success", "failure", "reset")
KINDS = ("pause", "start_episode", "stop_episode", "label", "reward")
MAX_VALUE_TEXT = 64


def check(kind: Any, value: Any) -> bool | float | str | None:
    """The command's value, checked for its kind (a reward comes back as a float); else
    :class:`ProtocolError` ``bad_meta`` naming the field.

    - ``pause``: bool, true pauses the control loop between ticks, false resumes it;
    - ``start_episode`` / ``stop_episode``: no value (None): allow new episodes / end the current one and hold;
    - ``label``: one of :data:`LABELS`: end the current episode as a success or failure, or cut it;
    - ``reward``: a finite number, added to the current step's ``human_reward``.
    """
    if not isinstance(kind, str):
        raise ProtocolError(f"command.kind must be str, got {type(kind).__name__}", RejectCode.BAD_META)
    if kind not in KINDS:
        raise ProtocolError(f"command.kind {kind[:MAX_VALUE_TEXT]!r} is not one of {', '.join(KINDS)}", RejectCode.BAD_META)
    if kind == "pause":
        if not isinstance(value, bool):
            raise ProtocolError(f"command.value of pause must be bool (true pauses, false resumes), got "
                                f"{type(value).__name__}", RejectCode.BAD_META)
        return value
    if kind in ("start_episode", "stop_episode"):
        if value is not None:
            raise ProtocolError(f"command.value: {kind} takes no value, got {type(value).__name__}", RejectCode.BAD_META)
        return None
    if kind == "label":
        if not isinstance(value, str) or value not in LABELS:
            shown = repr(value[:MAX_VALUE_TEXT]) if isinstance(value, str) else type(value).__name__
            raise ProtocolError(f"command.value of label must be one of {', '.join(LABELS)}, got {shown}",
                                RejectCode.BAD_META)
        return value
    # reward
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"command.value of reward must be a finite number, got {type(value).__name__}",
                            RejectCode.BAD_META)
    try:
        reward = float(value)
    except OverflowError:  # an int past float range (JSON allows any)
        reward = math.inf
    if not math.isfinite(reward):
        raise ProtocolError(f"command.value of reward must be a finite number, got {reward!r}", RejectCode.BAD_META)
    return reward
