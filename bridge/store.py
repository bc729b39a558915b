"""The async shell around :mod:`bridge.buffer`: one writer thread owns SQLite.

How it works
------------
As in Datasette, a single thread owns the one SQLite connection and takes work
from a queue, so the asyncio event loop never blocks on SQLite. Appends are
gathered for ``commit_interval_s`` after the first one arrives (or until
``max_batch`` records, or see ``hurry`` below) and committed as one transaction (group commit); each
``await store.append(rec)`` resolves only after the transaction holding its
record has committed. Acks are queued and applied in order, before the appends
gathered with them. Reads go through the same queue, so a read sees every ack
queued before it.

Hand-offs are batched per event-loop turn: ``append`` and ``ack`` only add to
lists on the loop, and one ``call_soon`` callback per turn hands everything
gathered to the writer thread as a single queue item (a ``read`` or ``aclose``
flushes first, so order is kept). The writer settles all futures of a group
commit and wakes ``wait_for_data`` waiters with one ``call_soon_threadsafe``.
Each append keeps its own future: awaiting a shared batch future would let one
cancelled caller cancel the others' (asyncio cancels the awaited future).

A group ends early when the broker calls ``hurry``: a publisher has a full in-flight
window of appends waiting for their PUBACKs, and waiting out the window would only
cap its rate. (Ending a group whenever the queue is momentarily empty was tried: it
halved QoS 0 ingest, whose groups then got small.) It also stops waiting for bursts
when the last ``QUIET_BURSTS`` bursts were each followed by a silent window — a
closed-loop publisher that sends only once it has its PUBACKs — re-checking every
``REPROBE_EVERY`` groups. While the window runs the writer
sleeps instead of waiting on the queue, so an append handed over meanwhile does not
wake it (one futex call per message at low rates, measured).

Acks ride with the next appends' transaction; alone they are committed after
``ack_delay_s`` (50 ms). Reads of rows committed recently are answered on the loop from
the live tail (``bridge.live_tail``): the writer hands each commit's rows over with
its statistics, so a link that keeps up never asks SQLite for what it just wrote.
At 1,000 msg/s this took the edge node from ~450 to ~240 µs of CPU per message (one
transaction per ~0.6 messages instead of ~1, no read trips; BENCHMARKS.md).

Expiry: the core checks the oldest row on every read and append (one indexed
lookup; it scans only when that row has expired); while idle (no appends, the
link down so no reads) the writer thread also runs ``expire`` every
``expire_interval_s`` (a ticker on its queue wait), so depth and oldest age stay
right in ``statistics()`` without traffic.

The clock is read here (``time.time`` by default) and passed to the core.
sqlite3 and OS exceptions are translated into ``broker.errors`` here, once:
SQLITE_FULL → ``StoreFull``, corrupt/not-a-database → ``StoreCorrupt``, other
SQLite failures → ``StoreError``; a record refused by ``reject_new`` →
``StoreFull`` (back-pressure: do not acknowledge it to the device). A batch that
fails is counted by the core (dropped ``error``) before any waiter sees the error.

What it does not do
-------------------
No MQTT, no forwarding policy (in-flight window, rate limit): that is the link's
job. Cancelling an ``append`` does not withdraw its record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from bridge.buffer import DEFAULT_MIN_FREE_BYTES, Buffer, BufferStats, Durability, Record, Stored
from bridge.live_tail import LiveTail
from bridge.store_errors import store_error
from broker.errors import StoreError, StoreFull
from broker.ratelog import RateLimitedLog

__all__ = ["Store", "store_error"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Batch:
    """What one event-loop turn handed over: acks (applied first), then appends in order."""

    records: list[Record]
    futures: list[asyncio.Future[int]]
    acks: list[int]
    uplink: tuple[int, int] | None = None  # the link's (sent_high, resent), to persist
    urgent: bool = False  # a publisher waits on a full in-flight window: commit without waiting


@dataclass(slots=True)
class _Read:
    after_seq: int
    limit: int
    future: asyncio.Future[list[Stored]]


@dataclass(slots=True)
class _Close:
    future: asyncio.Future[None]


_Op = _Batch | _Read | _Close

QUIET_BURSTS = 3
"""Bursts in a row, each followed by a window in which nothing arrived, after which the writer
stops waiting out its window for bursts (a closed-loop publisher: it waits for its PUBACKs)."""
CLOSED_LOOP_BURST = 4
"""Records a group must start with to count as a burst. Smaller groups keep waiting out the
window: at low rates (a few records per window) the wait is what gathers them."""
REPROBE_EVERY = 8
"""While it does not wait, every this many groups it waits one window out again to re-check."""
_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]  # future, result, exception


class Store:
    """The durable buffer as an async object. Use ``async with Store.open(...) as store``."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_messages: int,
        max_bytes: int,
        ttl_s: float | None = None,
        durability: Durability = "os",
        commit_interval_s: float = 0.002,
        max_batch: int = 1000,
        clock: Callable[[], float] = time.time,
        expire_interval_s: float = 2.0,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        ack_delay_s: float = 0.05,
    ) -> None:
        if commit_interval_s < 0 or max_batch < 1:
            raise ValueError("commit_interval_s must be >= 0 and max_batch >= 1")
        if ack_delay_s < 0:
            raise ValueError("ack_delay_s must be >= 0")
        if expire_interval_s <= 0:
            raise ValueError("expire_interval_s must be > 0")
        self.path = str(path)
        self._open_args: dict[str, Any] = {
            "max_messages": max_messages,
            "max_bytes": max_bytes,
            "ttl_s": ttl_s,
            "durability": durability,
            "min_free_bytes": min_free_bytes,
        }
        self.commit_interval_s = commit_interval_s
        self.max_batch = max_batch
        self.ack_delay_s = ack_delay_s
        self._tail: LiveTail | None = None  # created with the first statistics, on the loop
        self._ack_timer: asyncio.TimerHandle | None = None
        self.expire_interval_s = expire_interval_s
        self._clock = clock
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats: BufferStats | None = None
        self._waiters: list[asyncio.Future[None]] = []  # wait_for_data, woken after each commit
        self._closing = False
        self._warn = RateLimitedLog(log, interval_s=10.0)
        # Gathered on the event loop during one turn, handed over by _flush.
        self._records: list[Record] = []
        self._futures: list[asyncio.Future[int]] = []
        self._acks: list[int] = []
        self._uplink: tuple[int, int] | None = None
        self._flush_scheduled = False
        self._urgent = False
        self._wake = threading.Event()  # cuts the writer's window short (``hurry``)
        self._quiet = 0  # bursts in a row followed by a silent window (writer thread only)
        self._skipped = 0  # windows skipped since the last one waited out to re-check
        #: Where a corrupt file found at open was moved to, if one was.
        self.recovered_from: Path | None = None

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        max_messages: int,
        max_bytes: int,
        ttl_s: float | None = None,
        durability: Durability = "os",
        commit_interval_s: float = 0.002,
        max_batch: int = 1000,
        clock: Callable[[], float] = time.time,
        expire_interval_s: float = 2.0,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        ack_delay_s: float = 0.05,
    ) -> Store:
        """A store to enter with ``async with``; the file is opened on entry."""
        return cls(
            path,
            max_messages=max_messages,
            max_bytes=max_bytes,
            ttl_s=ttl_s,
            durability=durability,
            commit_interval_s=commit_interval_s,
            max_batch=max_batch,
            clock=clock,
            expire_interval_s=expire_interval_s,
            min_free_bytes=min_free_bytes,
            ack_delay_s=ack_delay_s,
        )

    # --------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Store:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the buffer in the writer thread; raises a ``StoreError`` if it cannot."""
        if self._thread is not None:
            raise StoreError("store already started", path=self.path)
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"edgemq-store-writer:{self.path}", daemon=True
        )
        self._thread.start()
        await ready
        if self.recovered_from is not None:
            log.warning("buffer %s was unreadable: moved aside to %s, started fresh", self.path, self.recovered_from)
        log.info("buffer %s open (%s)", self.path, self._open_args["durability"])

    async def aclose(self) -> None:
        """Commit everything queued so far, then close the file. Idempotent."""
        if self._thread is None or self._closing:
            return
        self._flush()
        if self._uplink is not None:  # an uplink note with no ack after it: the close writes it
            self._queue.put(_Batch([], [], [], self._uplink))
            self._uplink = None
        self._closing = True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put(_Close(fut))
        await fut
        _wake_all(self._waiters)  # waiters in wait_for_data return False
        self._waiters = []
        await asyncio.to_thread(self._thread.join)
        log.info("buffer %s closed", self.path)

    # ------------------------------------------------------------- operations

    def _check_usable(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._closing:
            raise StoreError("store is not open", hint="use `async with Store.open(...)`", path=self.path)
        return self._loop

    async def append(self, record: Record) -> int:
        """Append one record; returns its seq once the transaction holding it committed.

        Raises ``StoreFull`` if it was refused (``reject_new``) or the disk is full,
        ``StoreError``/``StoreCorrupt`` for other storage failures.
        """
        return await self.submit(record)

    def submit(self, record: Record) -> asyncio.Future[int]:
        """Queue one append now (in call order); the future resolves as ``append`` returns."""
        loop = self._check_usable()
        fut: asyncio.Future[int] = loop.create_future()
        self._records.append(record)
        self._futures.append(fut)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return fut

    async def read(self, after_seq: int, limit: int) -> list[Stored]:
        """Up to ``limit`` stored messages after ``after_seq``, in order (expired ones dropped).

        Rows committed recently come from memory (``bridge.live_tail``), older ones from SQLite.
        """
        loop = self._check_usable()
        tail = self._tail
        if tail is not None:
            rows = tail.read(after_seq, limit, now=self._clock(), ttl_s=self._open_args["ttl_s"])
            if rows is not None:
                return rows
        fut: asyncio.Future[list[Stored]] = loop.create_future()
        self._flush()  # the read must see the acks (and appends) gathered before it
        self._queue.put(_Read(after_seq, limit, fut))
        return await fut

    async def settled(self) -> None:
        """Wait until everything handed over so far (acks included) is committed and shown in
        ``statistics()``: a barrier for tools and tests (the uplink never needs it)."""
        fut: asyncio.Future[list[Stored]] = self._check_usable().create_future()
        self._flush()
        self._queue.put(_Read(0, 0, fut))
        await fut

    def ack(self, seqs: Iterable[int]) -> None:
        """Queue removal of forwarded messages; applied in order, before later reads.

        Acks ride with the next appends' transaction; alone, they are committed after
        ``ack_delay_s`` (or at once past ``max_batch`` of them). A crash in between re-sends
        those messages (at-least-once), it loses nothing.
        """
        loop = self._check_usable()
        seqs = list(seqs)
        self._acks.extend(seqs)
        if self._tail is not None:
            self._tail.acked(seqs)
        if self._flush_scheduled:
            return
        if len(self._acks) >= self.max_batch or self.ack_delay_s == 0:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        elif self._ack_timer is None:
            self._ack_timer = loop.call_later(self.ack_delay_s, self._flush)

    def _flush(self) -> None:
        """Hand this turn's appends and acks to the writer thread as one queue item."""
        self._flush_scheduled = False
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if not (self._records or self._acks or self._urgent):
            return  # an uplink note waits for the next batch: it never needs a commit of its own
        batch = _Batch(self._records, self._futures, self._acks, self._uplink, self._urgent)
        self._records, self._futures, self._acks, self._uplink = [], [], [], None
        self._queue.put(batch)
        if self._urgent:
            self._urgent = False
            self._wake.set()

    def hurry(self) -> None:
        """A publisher has a full in-flight window of appends waiting: commit them now.

        Without it a client that sends its window (e.g. 20) and then waits for PUBACKs would
        wait out ``commit_interval_s`` each time, however short its burst.
        """
        loop = self._check_usable()
        self._urgent = True
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def note_uplink(self, sent_high: int, resent: int) -> None:
        """The uplink's highest seq sent and re-send count; persisted with the next ack or append."""
        self._uplink = (sent_high, resent)

    def uplink_counters(self) -> tuple[int, int]:
        """``(sent_high, resent)`` as last persisted (what a restarted uplink resumes from)."""
        stats = self.statistics()
        return stats.uplink_sent_high, stats.uplink_resent

    async def wait_for_data(self, after_seq: int, timeout: float | None = None) -> bool:
        """Wait until a message newer than ``after_seq`` is buffered; False on timeout."""
        self._check_usable()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._has_after(after_seq):
            if self._closing:
                return False
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            # A bare future and a timer: ``asyncio.wait_for(event.wait())`` made a task and two
            # more loop turns per wait (10.5 vs 4.2 us per wait, once per commit when caught up).
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            timer = None if remaining is None else loop.call_later(remaining, _wake_all, [fut])
            try:
                await fut
            finally:
                if timer is not None:
                    timer.cancel()
                with contextlib.suppress(ValueError):  # not woken by a commit: drop it
                    self._waiters.remove(fut)
        return True

    def _has_after(self, after_seq: int) -> bool:
        stats = self._stats
        return stats is not None and stats.tail_seq is not None and stats.tail_seq > after_seq

    def statistics(self) -> BufferStats:
        """The latest snapshot (taken after the last commit), oldest age measured now."""
        stats = self._stats
        if stats is None:
            raise StoreError("store is not open", path=self.path)
        if stats.oldest_enqueued_at is None:
            return stats
        return dataclasses.replace(stats, oldest_age_s=max(0.0, self._clock() - stats.oldest_enqueued_at))

    # ---------------------------------------------------------- writer thread

    def _call(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn`` on the event loop from the writer thread (no-op once the loop is gone)."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)

    def _resolve(self, fut: asyncio.Future[Any], result: Any = None, exc: BaseException | None = None) -> None:
        self._resolve_all([(fut, result, exc)])

    def _resolve_all(self, outcomes: list[_Outcome]) -> None:
        """Settle many futures with one wake-up of the event loop (one per group commit)."""
        self._call(_settle, outcomes)

    def _publish(self, buf: Buffer, outcomes: list[_Outcome] | None = None, rows: list[Stored] | None = None) -> None:
        """Take a statistics snapshot, then (one loop wake-up) hand it over with the rows just
        committed, settle ``outcomes`` and wake waiters."""
        try:
            stats = buf.statistics(self._clock())
        except sqlite3.Error as exc:
            self._warn.warning("stats", "buffer %s: cannot read statistics: %s", self.path, exc)
            if outcomes:
                self._resolve_all(outcomes)
            return
        self._call(self._settle_and_wake, outcomes, stats, rows)

    def _settle_and_wake(self, outcomes: list[_Outcome] | None, stats: BufferStats, rows: list[Stored] | None) -> None:
        # The snapshot and the rows arrive together, so what wait_for_data sees in the
        # statistics is always readable from the tail (or from SQLite) by then.
        self._stats = stats
        if self._tail is None:
            self._tail = LiveTail(stats)
        else:
            self._tail.committed(stats, rows or ())
        if outcomes:
            _settle(outcomes)
        waiters, self._waiters = self._waiters, []
        # Wake the readers (the uplink) one turn later: the settled appenders' callbacks run
        # first, so their PUBACKs leave before the uplink forwards the rows, however few
        # hops ``wait_for_data`` takes to resume (a publisher waiting on a full in-flight
        # window refills it while we forward). Pinned by tests/unit/test_store.py.
        if waiters:
            asyncio.get_running_loop().call_soon(_wake_all, waiters)

    def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            buf = Buffer.open(self.path, **self._open_args)
        except BaseException as exc:
            self._resolve(ready, exc=store_error(exc, self.path))
            return
        self.recovered_from = buf.recovered_from
        self._publish(buf)
        self._resolve(ready)
        try:
            self._serve(buf)
        finally:
            buf.close()
            self._fail_leftovers()

    def _serve(self, buf: Buffer) -> None:
        pending: _Op | None = None
        next_expire = time.monotonic() + self.expire_interval_s
        while True:
            if pending is not None:
                op: _Op = pending
                pending = None
            else:
                if time.monotonic() >= next_expire:
                    self._tick_expire(buf)
                    next_expire = time.monotonic() + self.expire_interval_s
                try:
                    op = self._queue.get(timeout=max(0.0, next_expire - time.monotonic()))
                except queue.Empty:
                    continue
            # Statistics are published before any waiter is woken, so a caller that
            # awaited an operation sees its effect in ``statistics()``.
            if isinstance(op, _Read):
                try:
                    outcome: _Outcome = (op.future, buf.read(op.after_seq, op.limit, self._clock()), None)
                except Exception as exc:
                    outcome = (op.future, None, store_error(exc, self.path))
                self._publish(buf, [outcome])
            elif isinstance(op, _Close):
                try:
                    buf.close()
                    self._resolve(op.future)
                except Exception as exc:
                    self._resolve(op.future, exc=store_error(exc, self.path))
                return
            else:
                records: list[Record] = []
                futures: list[asyncio.Future[int]] = []
                acks: list[int] = []
                pending = self._gather(buf, op, records, futures, acks)
                outcomes, rows = self._commit(buf, records, futures, acks)
                self._publish(buf, outcomes, rows)

    def _tick_expire(self, buf: Buffer) -> None:
        """The idle ticker: expire by ttl even when nothing reads or appends."""
        if buf.ttl_s is None:
            return
        try:
            expired = buf.expire(self._clock())
        except Exception as exc:
            self._warn.warning("expire", "buffer %s: expiry failed: %s", self.path, store_error(exc, self.path))
            return
        if expired:
            self._publish(buf)

    def _gather(
        self, buf: Buffer, first: _Batch, records: list[Record], futures: list[asyncio.Future[int]], acks: list[int]
    ) -> _Op | None:
        """Collect appends and acks for one group commit; return an op that ends the group."""
        deadline = time.monotonic() + self.commit_interval_s
        op: _Op = first
        urgent = False
        while True:
            if isinstance(op, _Batch):
                records.extend(op.records)
                futures.extend(op.futures)
                acks.extend(op.acks)
                urgent = urgent or op.urgent
                if op.uplink is not None:
                    buf.note_uplink(*op.uplink)
            else:
                return op
            if len(records) >= self.max_batch:
                return None
            try:
                op = self._queue.get_nowait()
                continue
            except queue.Empty:
                pass
            if urgent:
                # A publisher with a full in-flight window waits for these PUBACKs: it sends
                # nothing more until the commit, so waiting out the window would only cap it.
                # ``_wake`` stays set, so the next group does not wait out its window either:
                # mosquitto_pub keeps its window as a burst and one more (19, 1, 19, 1), and the
                # one after the burst would otherwise cost a window per burst (pinned by
                # tests/unit/test_live_tail.py::test_the_group_after_a_hurried_one_does_not_wait_out_the_interval).
                return None
            burst = len(records)
            if burst >= CLOSED_LOOP_BURST and self._quiet >= QUIET_BURSTS:
                # Closed loop: bursts, each followed by a silent window, i.e. publishers that
                # send only once they have their PUBACKs. Commit at once; every few groups
                # wait again to see whether that still holds.
                if self._skipped < REPROBE_EVERY:
                    self._skipped += 1
                    return None
                self._skipped = 0
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            # Sleep out the window rather than wait on the queue: what the loop hands over
            # meanwhile is then a plain put, not a wake-up of this thread (a futex call each,
            # one per message at low rates). Only ``hurry`` wakes it early.
            self._wake.wait(remaining)
            self._wake.clear()
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                # Nothing came while we waited. After a burst that is a closed loop's mark;
                # after a lone record, just a low rate (waiting still gathers the next one).
                self._quiet = self._quiet + 1 if burst >= CLOSED_LOOP_BURST else 0
                return None
            self._quiet = 0

    def _commit(
        self, buf: Buffer, records: list[Record], futures: list[asyncio.Future[int]], acks: list[int]
    ) -> tuple[list[_Outcome], list[Stored]]:
        """Apply the acks, then append in transactions of at most ``max_batch`` records.

        Returns the appenders' outcomes and the rows committed (for the live tail)."""
        if acks and not records:
            self._ack(buf, acks)
        outcomes: list[_Outcome] = []
        rows: list[Stored] = []
        for i in range(0, len(records), self.max_batch):
            chunk, futs = records[i : i + self.max_batch], futures[i : i + self.max_batch]
            try:
                # The acks ride with the first transaction of appends.
                result = buf.append_many(chunk, self._clock(), acks if i == 0 else ())
            except Exception as exc:
                err = store_error(exc, self.path)
                outcomes.extend((f, None, err) for f in futs)
                continue
            enq = result.enqueued_at
            rows.extend(
                Stored(seq, r.topic, r.payload, r.qos, r.retain, r.device, enq)
                for r, seq in zip(chunk, result.seqs, strict=True)
                if seq is not None
            )
            if result.error is not None and i == 0 and acks:
                # The appends' transaction failed (e.g. the disk is full): the acks, which free
                # space, still go through on their own.
                self._ack(buf, acks)
            failure = store_error(result.error, self.path) if result.error is not None else None
            if failure is not None:
                self._warn.warning("append", "buffer %s: %d records dropped: %s", self.path, len(chunk), failure)
            outcomes.extend(
                (f, seq, None) if seq is not None else (f, None, failure or self._refused())
                for f, seq in zip(futs, result.seqs, strict=True)
            )
        return outcomes, rows

    def _ack(self, buf: Buffer, acks: list[int]) -> None:
        try:
            buf.ack(acks)
        except Exception as exc:
            # The rows stay and are forwarded again later: at-least-once, not loss.
            self._warn.warning("ack", "buffer %s: ack failed: %s", self.path, store_error(exc, self.path))

    def _refused(self) -> StoreFull:
        return StoreFull(
            "buffer full: record refused (reject_new)",
            hint="the uplink is behind; raise max_messages/max_bytes or let the backlog drain",
            path=self.path,
            reason="rejected",
        )

    def _fail_leftovers(self) -> None:
        closed = StoreError("store is closed", path=self.path)
        while True:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(op, _Batch):
                self._resolve_all([(f, None, closed) for f in op.futures])
            else:
                self._resolve(op.future, exc=closed)


def _wake_all(waiters: list[asyncio.Future[None]]) -> None:
    """On the event loop: resume every ``wait_for_data`` still waiting on these."""
    for fut in waiters:
        if not fut.done():
            fut.set_result(None)


def _settle(outcomes: list[_Outcome]) -> None:
    """On the event loop: set each future's result or exception (skip those cancelled)."""
    for fut, result, exc in outcomes:
        if fut.done():
            continue  # cancelled by its awaiter
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
