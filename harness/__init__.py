"""Test and benchmark harness: real learner and agent processes, a cutting
proxy, waits on conditions and the exactly-once count. Used by tests/ and
bench/ alike (from the repository root); not part of the installed product.

- procs: Learner, Agent, spawn/stop/kill_all, the LIVE process list
- proxy: Proxy (cuts, stalls, counts connections)
- waits: wait_for (threads), until (event loops), thread_parked (a worker idle on its condition)
- ledger: stored rows read from Parquet, assert_exactly_once, count_exactly_once
- logs: assert_logs_quiet, log_events
- notify: NotifySocket (what systemd sees of a Type=notify daemon)
- policies: small random-weight policy files (flow, cnn_gaussian, cnn_flow) for ``inference.weights``
- pixel_mass: a point mass with a numpy-drawn camera, and PixelAgent running it (camera benchmarks)
"""

from .ledger import RobotState, assert_exactly_once, count_exactly_once, stored_count, stored_rows
from .logs import assert_logs_quiet, log_events
from .notify import NotifySocket
from .procs import FAST_LINK, LIVE, Agent, Learner, admin_status, free_port, kill_all, read_ready, spawn, stop
from .proxy import Proxy
from .waits import WaitTimeout, thread_parked, until, wait_for, worker_idle

__all__ = [
    "FAST_LINK", "LIVE", "Agent", "Learner", "NotifySocket", "Proxy", "RobotState", "WaitTimeout", "admin_status", "assert_exactly_once",
    "assert_logs_quiet", "count_exactly_once", "free_port", "kill_all", "log_events", "read_ready",
    "spawn", "stop", "stored_count", "stored_rows", "thread_parked", "until", "wait_for", "worker_idle",
]
