"""``broker.lazy_queue.LazyQueue`` against ``asyncio.Queue``; ``broker.connection.Flag`` against ``asyncio.Event``."""

from __future__ import annotations

import asyncio
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.connection import Flag
from broker.lazy_queue import LazyQueue


def test_empty_queue_holds_no_storage_and_lets_it_go_again() -> None:
    q: LazyQueue[int] = LazyQueue()
    small = sys.getsizeof(q)
    assert q._items is None and q.empty() and q.qsize() == 0 and not q.full()
    q.put_nowait(1)
    assert q._items is not None and q.qsize() == 1
    assert q.get_nowait() == 1
    assert q._items is None  # the deque went with the last item
    assert sys.getsizeof(q) == small
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()


@given(st.lists(st.one_of(st.integers(0, 1000), st.none()), max_size=60))
def test_same_order_and_sizes_as_asyncio_queue(ops: list[int | None]) -> None:
    """A random sequence of puts (int) and gets (None) gives what asyncio.Queue gives."""

    async def run() -> None:
        ours: LazyQueue[int] = LazyQueue()
        ref: asyncio.Queue[int] = asyncio.Queue()
        for op in ops:
            if op is None:
                if ref.empty():
                    with pytest.raises(asyncio.QueueEmpty):
                        ours.get_nowait()
                else:
                    assert ours.get_nowait() == ref.get_nowait()
            else:
                await ours.put(op)
                ref.put_nowait(op)
            assert (ours.qsize(), ours.empty()) == (ref.qsize(), ref.empty())

    asyncio.run(run())


def test_waiting_getters_are_served_in_order_and_notify_runs_on_put() -> None:
    async def run() -> None:
        q: LazyQueue[str] = LazyQueue()
        poked: list[int] = []
        q.notify = lambda: poked.append(q.qsize())
        got: list[tuple[int, str]] = []

        async def getter(i: int) -> None:
            got.append((i, await q.get()))

        tasks = [asyncio.create_task(getter(i)) for i in range(3)]
        await asyncio.sleep(0)
        for item in "abc":
            q.put_nowait(item)
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert got == [(0, "a"), (1, "b"), (2, "c")]
        assert poked == [1, 1, 1] or poked == [1, 2, 3]
        assert q._getters is None and q._items is None

    asyncio.run(run())


def test_a_cancelled_getter_passes_its_item_on() -> None:
    async def run() -> None:
        q: LazyQueue[int] = LazyQueue()
        first = asyncio.create_task(q.get())
        second = asyncio.create_task(q.get())
        await asyncio.sleep(0)
        q.put_nowait(7)  # wakes ``first`` ...
        first.cancel()  # ... which is cancelled before it runs
        assert await asyncio.wait_for(second, 5) == 7
        with pytest.raises(asyncio.CancelledError):
            await first
        assert q.empty() and q._getters is None

    asyncio.run(run())


def test_items_given_at_creation_keep_their_order() -> None:
    q = LazyQueue([1, 2, 3])
    assert [q.get_nowait() for _ in range(3)] == [1, 2, 3]


def test_flag_behaves_like_an_event_for_set_is_set_and_wait() -> None:
    async def run() -> None:
        flag = Flag()
        assert not flag.is_set()
        waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
        await asyncio.sleep(0)
        waiters[0].cancel()  # one waiter cancelled: the others still wake
        await asyncio.sleep(0)
        flag.set()
        assert await asyncio.wait_for(asyncio.gather(*waiters[1:]), 5) == [True, True]
        assert flag.is_set() and await flag.wait()
        flag.clear()
        assert not flag.is_set()
        later = asyncio.create_task(flag.wait())
        await asyncio.sleep(0)
        assert not later.done()
        flag.set()
        assert await asyncio.wait_for(later, 5)

    asyncio.run(run())
