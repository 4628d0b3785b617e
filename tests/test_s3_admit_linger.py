"""The webhook's group commit gathers the senders its last batch answered (hub.intake.group_commit
``linger_s``, issue 21): N senders with one item each in flight share one batch instead of
splitting into two groups that take turns, a lone sender waits for nothing, and a sender that
stops coming back holds the others up for at most the linger. No servers: ``run`` is a stand-in
for the MongoDB round trips."""

from __future__ import annotations

import asyncio

from hub.intake.group_commit import GroupCommit


class Writes:
    """The batches ``run`` was given, in order; each "write" yields to the loop like a round trip."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    async def run(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return [i * 10 for i in items]


async def _senders(group: GroupCommit[int, int], senders: int, rounds: int) -> list[list[int]]:
    async def one(s: int) -> list[int]:
        got = []
        for r in range(rounds):
            item = s * 1000 + r
            got += await group.submit([item])
            for _ in range(2 + 3 * s):  # the answer's way to the sender, its next POST's way back
                await asyncio.sleep(0)
        return got

    return list(await asyncio.gather(*(one(s) for s in range(senders))))


async def test_senders_in_flight_share_one_batch_once_the_flow_is_steady() -> None:
    writes = Writes()
    # a linger far longer than the test: every batch after the first must form by the senders
    # coming back, never by the timer
    group: GroupCommit[int, int] = GroupCommit(writes.run, linger_s=30.0)
    results = await asyncio.wait_for(_senders(group, 8, 20), 20)
    # every sender got its own results, in order
    assert results == [[(s * 1000 + r) * 10 for r in range(20)] for s in range(8)]
    assert sorted(i for b in writes.batches for i in b) == sorted(s * 1000 + r for s in range(8) for r in range(20))
    # one batch per round: all eight senders in each
    assert [len(b) for b in writes.batches] == [8] * 20, [len(b) for b in writes.batches]
    assert group.callers == 160


async def test_without_the_linger_the_senders_take_turns() -> None:
    """What the linger is for: the same senders, no linger, split into batches of fewer."""
    writes = Writes()
    group: GroupCommit[int, int] = GroupCommit(writes.run)
    await asyncio.wait_for(_senders(group, 8, 20), 20)
    assert len(writes.batches) > 20


async def test_a_lone_sender_never_lingers() -> None:
    writes = Writes()
    group: GroupCommit[int, int] = GroupCommit(writes.run, linger_s=30.0)
    # were it to linger, one round would take 30 s and this would time out
    assert await asyncio.wait_for(_senders(group, 1, 10), 10) == [[r * 10 for r in range(10)]]
    assert [len(b) for b in writes.batches] == [1] * 10


async def test_a_sender_that_stops_coming_back_costs_the_others_one_linger() -> None:
    """Four senders, one of which stops after its first item: the next batch waits for it until
    the linger runs out, then goes with the three; after that it expects three and waits no more."""
    writes = Writes()
    group: GroupCommit[int, int] = GroupCommit(writes.run, linger_s=0.2)

    async def one(s: int, rounds: int) -> None:
        for r in range(rounds):
            await group.submit([s * 1000 + r])

    await asyncio.wait_for(asyncio.gather(one(0, 1), *(one(s, 6) for s in range(1, 4))), 20)
    sizes = [len(b) for b in writes.batches]
    assert sizes[0] == 4 and sizes[1:] == [3] * 5, sizes


async def test_a_failed_batch_fails_its_callers_and_the_next_one_does_not_linger() -> None:
    calls: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("MongoDB went away")
        return items

    group: GroupCommit[int, int] = GroupCommit(run, linger_s=30.0)
    got = await asyncio.gather(*(group.submit([i]) for i in range(3)), return_exceptions=True)
    assert all(isinstance(g, RuntimeError) for g in got)
    # the senders' retries, one at a time: no linger for the two that do not come
    assert await asyncio.wait_for(group.submit([7]), 10) == [7]


async def test_a_backlog_larger_than_a_batch_never_lingers() -> None:
    """30 callers at once and batches of at most 10: after a batch, the callers still waiting are
    fewer than it "expects" (the batch's and theirs), but a full batch is already there: it goes
    at once (before, each waited out the linger: with 30 s this timed out)."""
    writes = Writes()
    group: GroupCommit[int, int] = GroupCommit(writes.run, max_items=10, linger_s=30.0)
    got = await asyncio.wait_for(asyncio.gather(*(group.submit([i]) for i in range(30))), 10)
    assert got == [[i * 10] for i in range(30)]
    assert [len(b) for b in writes.batches] == [10, 10, 10]
