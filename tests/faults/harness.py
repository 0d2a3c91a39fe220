"""The fault suite's harness now lives in the top-level ``harness`` package
(shared with bench/); this module re-exports it for tests that import it here."""

from harness import (FAST_LINK, LIVE, Agent, Learner, Proxy, admin_status, assert_exactly_once, assert_logs_quiet,
                     free_port, stored_rows, wait_for)
from harness.logs import PROGRESS_EVENTS

__all__ = ["FAST_LINK", "LIVE", "PROGRESS_EVENTS", "Agent", "Learner", "Proxy", "admin_status", "assert_exactly_once",
           "assert_logs_quiet", "free_port", "stored_rows", "wait_for"]
