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


def domain_ids(count: int = 1, lo: int = 1, hi: int = 230) -> list[int]:
    """``count`` distinct random DDS domain ids in [lo, hi] that no other pytest-xdist worker of this run
    can draw (worker k of n draws ids = k mod n): test files running side by side never share a domain.
    Random within that, so two runs on one machine rarely meet."""
    n = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    k = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    return random.SystemRandom().sample([d for d in range(lo, hi + 1) if d % n == k % n], count)


def loopback_domain() -> int:
    """Point this process's DDS at loopback and pick a domain id of its own (:func:`domain_ids`)."""
    os.environ["CYCLONEDDS_URI"] = LOOPBACK
    return domain_ids()[0]
