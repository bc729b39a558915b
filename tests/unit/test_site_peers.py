"""SitePeers' bookkeeping without sockets: presence records, stale wills, control messages,
peer traffic counts (links are built but never started; the clock is a variable)."""

from __future__ import annotations

import asyncio
import json

from bridge.site_peers import SitePeers
from broker.config import SiteConfig
from broker.interest import encode as encode_interest
from broker.presence import Presence
from broker.presence import encode as encode_presence

SITE = SiteConfig.model_validate(
    {
        "id": "p",
        "brokers": [{"id": f"a{i}", "host": "127.0.0.1", "port": 1 + i} for i in (1, 2, 3)],
    }
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def drained(peers: SitePeers, injected: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    task = asyncio.create_task(peers._injector())
    for _ in range(50):
        await asyncio.sleep(0)
    task.cancel()
    return injected


def make(clock: Clock, injected: list[tuple[str, bytes]]) -> SitePeers:
    async def inject(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        injected.append((topic, payload))

    return SitePeers(SITE, "a1", inject, local_filters=dict, state=dict, clock=clock)


def test_presence_records_and_a_stale_will() -> None:
    async def run() -> None:
        clock, injected = Clock(), []
        peers = make(clock, injected)
        peers.connected("dev-p-d1")
        peers.connected("probe-x")  # not a device: no record
        assert peers.present_at("d1") == "a1"
        clock.now = 105.0
        # a2 says d1 is online there since 110: d1's connection here (since 100) is stale.
        peers._on_control("a2", "edgemq/p/a2/presence/d1", encode_presence(Presence("online", "a2", 110.0)))
        assert peers.present_at("d1") == "a2"
        assert peers.suppress_will("dev-p-d1")
        assert not peers.suppress_will("dev-p-d9")  # never connected here
        peers.disconnected("dev-p-d1")
        await drained(peers, injected)
        topics = [t for t, _ in injected]
        assert topics == ["edgemq/p/a1/presence/d1", "edgemq/p/a2/presence/d1", "edgemq/p/a1/presence/d1"]
        assert [json.loads(p)["state"] for _, p in injected] == ["online", "online", "offline"]

    asyncio.run(run())


def test_a_will_is_current_when_the_device_reconnected_here_after_it_was_elsewhere() -> None:
    async def run() -> None:
        clock, injected = Clock(), []
        peers = make(clock, injected)
        peers._on_control("a2", "edgemq/p/a2/presence/d1", encode_presence(Presence("online", "a2", 90.0)))
        peers.connected("dev-p-d1")  # since 100, after a2's record
        assert not peers.suppress_will("dev-p-d1")

    asyncio.run(run())


def test_a_peer_going_down_takes_its_devices_with_it_and_coming_back_clears_its_records() -> None:
    async def run() -> None:
        clock, injected = Clock(), []
        peers = make(clock, injected)
        peers._on_control("a2", "edgemq/p/a2/presence/d1", encode_presence(Presence("online", "a2", 90.0)))
        peers._on_link("a2", False)
        assert peers.present_at("d1") is None
        assert peers.statistics()["peers"]["a2"]["member"] == "offline"
        peers._on_link("a2", True)
        await drained(peers, injected)
        assert injected[-1] == ("edgemq/p/a2/presence/d1", b"")  # our retained copy cleared
        assert peers.table.devices_recorded_by("a2") == []

    asyncio.run(run())


def test_interest_and_traffic_counts() -> None:
    async def run() -> None:
        peers = make(Clock(), [])
        peers._on_control("a2", "edgemq/p/a2/interest", encode_interest("a2", ("telemetry/p/#",), 1))
        assert peers.links["a2"].interest.filters == ("telemetry/p/#",)
        assert not peers.wants("telemetry/p/d/t")  # the link is not up: nothing is offered
        peers.links["a2"]._up = True
        assert peers.wants("telemetry/p/d/t") and not peers.wants("status/p/d")
        assert peers.origin("peer-p-a3") == "a3" and peers.origin("dev-p-d") is None
        peers.received("a3", "telemetry/p/d/t", b"12345", False)
        peers.received("a3", "edgemq/p/a3/state", b"{}", True)  # a hello: not traffic
        stats = peers.statistics()
        assert stats["peers"]["a3"]["received"] == 1 and stats["received_bytes"] == 5
        peers._on_control("a2", "edgemq/p/a3/interest", b"{}")  # another broker's topic: ignored
        assert peers.links["a3"].interest.filters == ()

    asyncio.run(run())
