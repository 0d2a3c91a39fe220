"""until_first_done: the first task to end decides; the rest are cancelled and
their exceptions retrieved; a cancelled caller leaves nothing running."""

from __future__ import annotations

import asyncio
import gc

import pytest

from shared.tasks import raise_first, until_first_done


async def test_the_first_to_end_is_returned_and_the_others_are_cancelled():
    started = asyncio.Event()
    never = asyncio.Event()
    cancelled = []

    async def waiter():
        started.set()
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def quick():
        await started.wait()
        return 7

    ended = await until_first_done(waiter(), quick())
    assert [t.result() for t in ended] == [7]
    assert cancelled == [True]


async def test_raise_first_raises_in_the_given_order_and_nothing_is_left_unretrieved(caplog):
    go = asyncio.Event()

    async def fails(msg: str):
        await go.wait()
        raise RuntimeError(msg)

    async def opener():
        go.set()

    ended = await until_first_done(fails("reader"), fails("writer"), opener())
    with pytest.raises(RuntimeError, match="reader"):
        raise_first(ended)
    del ended
    gc.collect()
    await asyncio.sleep(0)  # let the loop report anything unretrieved (it must not)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_cancelled_caller_leaves_no_task_running():
    inner_done = asyncio.Event()

    async def forever():
        try:
            await asyncio.Event().wait()
        finally:
            inner_done.set()

    outer = asyncio.create_task(until_first_done(forever(), forever()))
    await asyncio.sleep(0)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert inner_done.is_set()
