"""Real-time scheduling for the control loop's thread.

On a busy core the kernel lets a running task finish its slice (a few ms)
before a woken one runs: a tick that is due waits behind the link process, a
spool write or a policy being hashed. A SCHED_FIFO thread runs as soon as it
wakes. It needs CAP_SYS_NICE or an RLIMIT_RTPRIO (systemd: ``RestrictRealtime=no``
and ``LimitRTPRIO=``; shell: ``ulimit -r``); without either the loop runs as
before and says so.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("fleetrl.agent")


def make_realtime(priority: int) -> bool:
    """Put the calling thread in SCHED_FIFO at ``priority`` (1-99); False (logged) if not allowed."""
    if priority <= 0:
        return False
    if not hasattr(os, "sched_setscheduler"):
        log.info("event=realtime_unavailable priority=%d reason=%r", priority, "not Linux")
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))  # 0: this thread
    except OSError as e:
        log.warning("event=realtime_unavailable priority=%d reason=%r action=running_with_normal_priority "
                    "(grant it: a unit drop-in with RestrictRealtime=no and LimitRTPRIO=%d, or `ulimit -r %d`; "
                    "or set control.realtime_priority = 0)", priority, e.strerror or str(e), priority, priority)
        return False
    log.info("event=realtime priority=%d policy=SCHED_FIFO", priority)
    return True
