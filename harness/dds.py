"""Cyclone DDS kept on loopback for tests (never another address), in a domain of its own.

``CYCLONEDDS_URI`` is read when cyclonedds is first imported: call
:func:`loopback_domain` before a test module imports it.
"""

from __future__ import annotations

import os
import random

LOOPBACK = (
    '<CycloneDDS><Domain Id="any"><General><Interfaces><NetworkInterface address="127.0.0.1"/></Interfaces>'
    "<AllowMulticast>false</AllowMulticast></General><Discovery><ParticipantIndex>auto</ParticipantIndex>"
    '<MaxAutoParticipantIndex>64</MaxAutoParticipantIndex><Peers><Peer address="127.0.0.1"/></Peers></Discovery>'
    "</Domain></CycloneDDS>"
)


def loopback_domain() -> int:
    """Point this process's DDS at loopback and pick a random domain id (tests of one run do not meet)."""
    os.environ["CYCLONEDDS_URI"] = LOOPBACK
    return random.SystemRandom().randint(1, 230)
