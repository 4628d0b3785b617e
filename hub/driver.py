"""Guards around the MongoDB driver: calls that must run to their end, and PyMongo's async
condition waits made safe to cancel on Python 3.11.

Every module that calls PyMongo (the store, the records, the sources, even the connectors) needs
the same two promises: a driver call is never cancelled half-way (:func:`shielded`), and a writer
task is stopped only when it is outside the driver (:func:`finish_or_cancel`). They live here, at
the bottom of the house, so that none of those modules has to import another's domain to get them.

The Python 3.11 patch:

``pymongo.lock._async_cond_wait`` awaits ``asyncio.wait_for(condition.wait(), timeout)``. On
3.11 ``wait_for`` runs ``condition.wait()`` in a task of its own; when its timeout fires (server
selection wakes every 0.5 s while MongoDB is away) it cancels that task and waits for it to
re-acquire the lock. If the *caller* is cancelled during that wait (a TaskGroup sibling failed,
a subscription was stopped), 3.11 returns at once (CPython gh-86296): the caller's ``async with
lock`` releases a lock it does not hold, and the inner task then takes the topology lock and
ends still holding it. Every later operation, the monitors and ``client.close()`` wait for ever:
the hub hung after a mongod restart, logging nothing and ignoring SIGTERM.

The hub never cancels a task inside a driver call on purpose (:func:`shielded`), but the
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
DUPLICATE_KEY = 11000  # MongoDB's error code for a duplicate _id or unique key


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


async def shielded(aw: Awaitable[T]) -> T:
    """Await a driver call that must run to its end even if the caller is cancelled.

    Cancelling a task inside PyMongo's server selection or pool checkout can leave a driver lock
    held with no owner on Python 3.11 (every later operation then waits for ever); a shielded
    call finishes (or fails) on its own and only the caller's wait is cancelled.
    """
    task = asyncio.ensure_future(aw)
    task.add_done_callback(retrieve)
    return await asyncio.shield(task)


async def finish_or_cancel(task: asyncio.Task[Any] | None, timeout: float) -> None:
    """Let a writer task finish what it has for up to ``timeout``, then cancel it; only for
    tasks whose driver calls are all shielded (a cancel then never lands inside the driver)."""
    if task is None:
        return
    await asyncio.wait([task], timeout=timeout)
    if not task.done():  # MongoDB is away: give up on what is left
        task.cancel()
        await asyncio.wait([task])


def retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # the caller may be gone: never "exception was never retrieved"
