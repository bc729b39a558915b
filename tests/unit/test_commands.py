"""The downlink command queue (real SQLite files) and the router's decisions."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from bridge.commands import CommandQueue
from bridge.downlink import DownlinkRouter, command_device
from broker.errors import StoreError
from broker.ownership import Route
from broker.topics import matches


def test_commands_wait_in_order_and_survive_reopen(tmp_path: Path) -> None:
    q = CommandQueue.open(tmp_path / "c.sqlite3")
    a = q.put("d1", "commands/p/d1/a", b"1", 1, False, now=100.0, ttl_s=60)
    q.put("d2", "commands/p/d2/a", b"x", 1, False, now=100.0, ttl_s=60)
    b = q.put("d1", "commands/p/d1/b", b"2", 1, False, now=101.0, ttl_s=60)
    q.close()
    q = CommandQueue.open(tmp_path / "c.sqlite3")
    got = q.pending("d1", now=102.0)
    assert [(c.seq, c.payload) for c in got] == [(a, b"1"), (b, b"2")]
    assert q.delivered([a, b]) == 2
    assert q.pending("d1", now=102.0) == []
    s = q.statistics(now=102.0)
    assert (s.depth, s.queued, s.delivered, s.expired, s.overflow) == (1, 3, 2, 0, 0)
    assert s.queued == s.delivered + s.expired + s.overflow + s.depth


def test_expired_commands_are_never_handed_over_and_are_counted(tmp_path: Path) -> None:
    q = CommandQueue.open(tmp_path / "c.sqlite3")
    q.put("d1", "commands/p/d1/a", b"old", 1, False, now=100.0, ttl_s=10)
    q.put("d1", "commands/p/d1/b", b"new", 1, False, now=105.0, ttl_s=10)
    assert [c.payload for c in q.pending("d1", now=111.0)] == [b"new"]  # skipped before expire() runs
    assert q.expire(now=111.0) == 1
    s = q.statistics(now=111.0)
    assert (s.depth, s.expired) == (1, 1)
    assert s.queued == s.delivered + s.expired + s.overflow + s.depth


def test_a_full_queue_drops_the_oldest_and_counts_it(tmp_path: Path) -> None:
    q = CommandQueue.open(tmp_path / "c.sqlite3", max_commands=2)
    for i in range(5):
        q.put("d1", f"commands/p/d1/{i}", str(i).encode(), 1, False, now=100.0 + i, ttl_s=60)
    assert [c.payload for c in q.pending("d1", now=110.0)] == [b"3", b"4"]
    s = q.statistics(now=110.0)
    assert (s.depth, s.overflow, s.queued) == (2, 3, 5)


def test_seqs_are_never_reused(tmp_path: Path) -> None:
    q = CommandQueue.open(tmp_path / "c.sqlite3")
    a = q.put("d1", "commands/p/d1/a", b"1", 1, False, now=1.0, ttl_s=60)
    q.delivered([a])
    b = q.put("d1", "commands/p/d1/a", b"2", 1, False, now=2.0, ttl_s=60)
    assert b > a
    assert q.delivered([a]) == 0  # a stale seq deletes nothing
    assert [c.payload for c in q.pending("d1", now=3.0)] == [b"2"]


def test_someone_elses_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE foo (x)")
    with pytest.raises(StoreError, match="not an edgemq command queue"):
        CommandQueue.open(path)


def test_command_device() -> None:
    assert command_device("p", "commands/p/d1/reboot") == "d1"
    assert command_device("p", "commands/p/d1/a/b") == "d1"
    assert command_device("p", "commands/p/d1") is None
    assert command_device("p", "commands/q/d1/x") is None
    assert command_device("p", "telemetry/p/d1/x") is None


class Broker:
    """What the router sees of a broker: connected subscribers, and what was sent to whom."""

    def __init__(self) -> None:
        self.subs: list[tuple[str, str]] = []  # (client id, filter), connected
        self.got: list[tuple[str, bytes, frozenset[str]]] = []
        self.injected: list[tuple[str, bytes]] = []

    def listeners(self, topic: str) -> list[tuple[str, str]]:
        return [(cid, f) for cid, f in self.subs if matches(f, topic)]

    async def send(self, topic: str, payload: bytes, qos: int, to: set[str]) -> int:
        self.got.append((topic, payload, frozenset(to)))
        return len(to)

    async def inject(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.injected.append((topic, payload))

    def payloads_to(self, cid: str) -> list[bytes]:
        return [p for _, p, to in self.got if cid in to]


def router(path: Path, broker: Broker, route: Route, clock: list[float]) -> DownlinkRouter:
    return DownlinkRouter(
        site="p",
        queue=CommandQueue.open(path),
        inject=broker.inject,
        send=broker.send,
        listeners=broker.listeners,
        route=lambda device: route,
        ttl_s=30,
        clock=lambda: clock[0],
    )


def test_router_queues_for_the_keeper_and_flushes_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        b, clock = Broker(), [1000.0]
        r = router(tmp_path / "c.sqlite3", b, Route.QUEUE, clock)
        b.subs.append(("console", "commands/p/#"))  # an observer sees every command on arrival
        await r.offer("commands/p/d1/a", b"1", 1, False)  # the device is offline: waits
        await r.offer("commands/p/d1/b", b"2", 1, False)
        await r.offer("commands/p/d1/c", b"q0", 0, False)  # QoS 0 to an offline device: not kept
        assert b.payloads_to("console") == [b"1", b"2", b"q0"]
        b.subs.append(("any-client-id", "commands/p/d1/#"))  # a plain device names itself in its filter
        await r.offer("commands/p/d1/d", b"3", 1, False)  # here now, but older ones wait: goes after them
        assert b.payloads_to("any-client-id") == [b"1", b"2", b"3"]
        await r.offer("commands/p/d1/e", b"4", 1, False)  # nothing waiting: straight through, to both
        assert b.payloads_to("any-client-id")[-1] == b"4" and b.payloads_to("console")[-1] == b"4"
        assert b.payloads_to("console").count(b"1") == 1  # observers are not sent the queued copy again
        assert r.statistics()["depth"] == 0 and r.counts["qos0_offline"] == 1

    asyncio.run(main())


def test_router_leaves_other_brokers_devices_alone(tmp_path: Path) -> None:
    async def main() -> None:
        b, clock = Broker(), [1000.0]
        r = router(tmp_path / "c.sqlite3", b, Route.DROP, clock)
        b.subs.append(("dev-p-d2", "commands/p/+/x"))  # d2's own session: not d1's, an observer of d1
        await r.offer("commands/p/d1/x", b"1", 1, False)
        assert b.payloads_to("dev-p-d2") == [b"1"]
        assert r.counts["not_mine"] == 1 and r.statistics()["depth"] == 0
        b.subs.append(("dev-p-d1", "commands/p/+/x"))  # the device itself, by client id: delivered here
        await r.offer("commands/p/d1/x", b"2", 1, False)
        assert b.payloads_to("dev-p-d1") == [b"2"] and r.counts["delivered"] == 1
        await r.offer("commands/p", b"site-wide", 1, False)  # names no device: to the broker as before
        await r.offer("commands/p/d1/cfg", b"r", 1, True)  # retained: to the broker as before
        assert b.injected == [("commands/p", b"site-wide"), ("commands/p/d1/cfg", b"r")]

    asyncio.run(main())


def test_router_never_fires_an_expired_command(tmp_path: Path) -> None:
    async def main() -> None:
        b, clock = Broker(), [1000.0]
        r = router(tmp_path / "c.sqlite3", b, Route.QUEUE, clock)
        await r.offer("commands/p/d1/a", b"stale", 1, False)
        clock[0] += 31  # past the 30 s time-to-live
        await r.offer("commands/p/d1/b", b"fresh", 1, False)
        b.subs.append(("dev-p-d1", "commands/p/d1/#"))
        r.subscribed("dev-p-d1")
        task = asyncio.create_task(r.run(0.01))
        await asyncio.sleep(0.1)
        task.cancel()
        assert b.payloads_to("dev-p-d1") == [b"fresh"]
        assert r.statistics()["expired"] == 1 and r.statistics()["depth"] == 0

    asyncio.run(main())


def test_router_decides_only_once_the_site_view_is_settled(tmp_path: Path) -> None:
    """Just restarted, the broker would take itself for the keeper of a device connected to a
    peer (presence not in yet): the cloud's replayed command must wait for the settled view."""

    async def main() -> None:
        b = Broker()
        route = [Route.QUEUE]  # before presence is in: "keep it"
        settled = [False]
        r = DownlinkRouter(
            site="p",
            queue=CommandQueue.open(tmp_path / "c.sqlite3"),
            inject=b.inject,
            send=b.send,
            listeners=b.listeners,
            route=lambda device: route[0],
            ttl_s=30,
            settled=lambda: settled[0],
            settle_max_s=60,
        )
        offer = asyncio.create_task(r.offer("commands/p/d1/a", b"1", 1, False))
        await asyncio.sleep(0.3)
        assert not offer.done()  # held: not decided yet
        route[0], settled[0] = Route.DROP, True  # presence says: the device is at a peer
        await asyncio.wait_for(offer, 5)
        assert r.counts["not_mine"] == 1 and r.counts["queued"] == 0 and r.held_at_start == 1
        assert r.queue.pending("d1", now=time.time()) == []
        await r.offer("commands/p/d2/a", b"2", 1, False)  # settled for good: no more waiting
        assert r.held_at_start == 1

        never = DownlinkRouter(
            site="p",
            queue=CommandQueue.open(tmp_path / "d.sqlite3"),
            inject=b.inject,
            send=b.send,
            listeners=b.listeners,
            route=lambda device: Route.QUEUE,
            ttl_s=30,
            settled=lambda: False,
            settle_max_s=0.2,
        )
        await asyncio.wait_for(never.offer("commands/p/d3/a", b"3", 1, False), 5)  # the wait runs out
        assert never.counts["queued"] == 1
        r.close()
        never.close()

    asyncio.run(main())
