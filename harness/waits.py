"""Waiting on a condition, from outside: the one way tests and benchmarks
synchronise with processes and servers they do not control.

Product code waits on events; a test watches a log, a status file or a counter
from outside, so it polls. A timeout names what it was waiting for.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Callable, Protocol, TypeVar, cast

T = TypeVar("T")


class WaitTimeout(AssertionError, TimeoutError):
    """A condition that did not come true in time: a test failure (AssertionError)
    and, for benchmarks that catch timeouts, a TimeoutError."""


def wait_for(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)
    return value


async def until(predicate: Callable[[], T], what: str, timeout: float = 10.0, every: float = 0.02) -> T:
    """``wait_for`` inside an event loop: polls without blocking the loop
    (an in-process server under test runs on the same loop)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(every)
    return value


def thread_parked(t: threading.Thread) -> bool:
    """Whether ``t`` is blocked in ``threading.Condition.wait``: a worker thread that
    has looked at its condition and found nothing to do. The positive signal a test
    needs before it asserts that the thread did nothing (it had its chance)."""
    frame = sys._current_frames().get(t.ident) if t.ident is not None else None
    return frame is not None and frame.f_code.co_name == "wait" and frame.f_code.co_filename == threading.__file__


class _Worker(Protocol):
    updates: int
    error: BaseException | None


def worker_idle(t: threading.Thread, updates: int, timeout: float = 60.0) -> None:
    """Wait until a learner-style worker thread (``updates``, ``error``) has done ``updates``
    updates and parked on its condition (nothing left to do); its error, if any, fails the wait."""
    w = cast(_Worker, t)
    wait_for(lambda: w.error is not None or (w.updates >= updates and thread_parked(t)), timeout,
             f"the worker to reach {updates} updates and wait")
    assert w.error is None, w.error
