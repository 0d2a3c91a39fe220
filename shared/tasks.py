"""Running a few coroutines until the first ends, with nothing left behind.

Both daemons run small groups of tasks (a link's reader, writer and pumps; a
tunnel's two directions) where the first to end decides the outcome. Python
3.10 has no ``asyncio.TaskGroup``; this is the one place that starts such a
group, cancels the rest and retrieves every exception, so none is ever
reported as "never retrieved". No I/O of its own.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Iterable


async def until_first_done(*aws: Awaitable[Any]) -> list[asyncio.Task[Any]]:
    """Run ``aws`` as tasks until one ends; cancel and reap the others.

    Returns the tasks that ended on their own (not by our cancel), in the
    order given, so the caller can say why the group ended (see
    :func:`raise_first`). If the caller is cancelled, every task is cancelled
    and reaped before the cancellation goes on.
    """
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        ended = [t for t in tasks if t.done()]
    finally:
        await cancel_and_reap(tasks)
    return ended


async def cancel_and_reap(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel ``tasks`` (None entries skipped) and wait until each has ended,
    retrieving every exception: background work a daemon stops on its way out."""
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    await asyncio.gather(*live, return_exceptions=True)


def raise_first(ended: list[asyncio.Task[Any]]) -> None:
    """Re-raise the first exception among ``ended`` (in their given order), if any."""
    for t in ended:
        if not t.cancelled() and t.exception() is not None:
            t.result()
