"""Makes PyMongo's async condition waits safe to cancel on Python 3.11.

``pymongo.lock._async_cond_wait`` awaits ``asyncio.wait_for(condition.wait(), timeout)``. On
3.11 ``wait_for`` runs ``condition.wait()`` in a task of its own; when its timeout fires (server
selection wakes every 0.5 s while MongoDB is away) it cancels that task and waits for it to
re-acquire the lock. If the *caller* is cancelled during that wait (a TaskGroup sibling failed,
a subscription was stopped), 3.11 returns at once (CPython gh-86296): the caller's ``async with
lock`` releases a lock it does not hold, and the inner task then takes the topology lock and
ends still holding it. Every later operation, the monitors and ``client.close()`` wait for ever:
the hub hung after a mongod restart, logging nothing and ignoring SIGTERM.

The hub never cancels a task inside a driver call on purpose (``hub.records.shielded``), but the
driver can still be cancelled from paths the hub does not own. So, on Python < 3.12 only, the
driver's ``wait_for`` is replaced by 3.12's semantics: the awaitable runs in the caller's own
task under ``asyncio.timeout``, so ``Condition.wait()`` always re-acquires the lock before any
exception leaves it. Python 3.12 rebuilt ``wait_for`` the same way; there this does nothing.
``pymongo.lock`` imports ``wait_for`` by name and uses it only in ``_async_cond_wait``; the test
``tests/test_driver.py`` fails if a PyMongo upgrade changes that.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """``asyncio.wait_for`` as Python 3.12 has it: no inner task, nothing left behind."""
    if timeout is None:
        return await aw
    async with asyncio.timeout(timeout):
        return await aw


def apply() -> bool:
    """Patch ``pymongo.lock`` (Python < 3.12); True if it did."""
    if sys.version_info >= (3, 12):
        return False
    import pymongo.lock

    current: Any = getattr(pymongo.lock, "wait_for", None)
    if current is wait_for:
        return True
    if current is not asyncio.wait_for:
        raise RuntimeError("pymongo.lock no longer uses asyncio.wait_for: re-check hub/driver.py")
    pymongo.lock.wait_for = wait_for  # type: ignore[assignment]
    return True
