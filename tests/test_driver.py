"""PyMongo's topology lock must survive a cancel that lands while a timed condition wait is
giving the lock back (the hang after a mongod restart; see hub/driver.py). No server needed:
this drives pymongo's own lock helpers through the exact interleaving."""

from __future__ import annotations

import asyncio
import sys

import pymongo.lock as plock
import pytest

from hub import driver


async def _interleave(order: str) -> bool:
    """A waits on the condition with a timeout while H holds the lock past A's timeout and
    cancels A once. Returns whether a fresh task can take the lock afterwards."""
    lock = plock._async_create_lock()
    cond = plock._async_create_condition(lock)

    async def a_task() -> None:
        async with lock:
            while True:
                await plock._async_cond_wait(cond, 0.05)

    async def h_task(a: asyncio.Task[None]) -> None:
        await asyncio.sleep(0.02)
        async with lock:  # A sits in cond.wait(); its timeout fires while we hold the lock
            await asyncio.sleep(0.1)
            if order == "cancel-while-holding":
                a.cancel()
        if order == "cancel-after-release":
            a.cancel()

    a = asyncio.create_task(a_task())
    h = asyncio.create_task(h_task(a))
    await asyncio.gather(a, h, return_exceptions=True)
    await asyncio.sleep(0.02)
    try:
        async with asyncio.timeout(1.0):
            async with lock:
                return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("order", ["cancel-while-holding", "cancel-after-release"])
async def test_cancelled_condition_wait_never_orphans_the_lock(order: str) -> None:
    assert plock.wait_for is driver.wait_for or sys.version_info >= (3, 12)
    assert await _interleave(order), "the lock is held by a task that no longer exists"


async def test_the_race_is_real_without_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards the test above: with plain 3.11 wait_for the same interleaving orphans the lock."""
    if sys.version_info >= (3, 12):
        pytest.skip("Python 3.12+ has no such race")  # the fix is a no-op there too
    monkeypatch.setattr(plock, "wait_for", asyncio.wait_for)
    results = [await _interleave(o) for o in ("cancel-while-holding", "cancel-after-release")]
    assert not all(results), "plain wait_for did not lose the lock: the scenario no longer reproduces"
