"""A running broker takes a joining broker into its ring: edgemq.node._SiteRing and SitePeers'
discovery callback (no sockets: the link to the new broker is cancelled before it runs)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bridge.site_peers import SitePeers
from broker.config import SiteConfig
from broker.ownership import ring_document
from edgemq.node import _SiteRing

SITE = SiteConfig.model_validate(
    {
        "id": "p",
        "brokers": [{"id": f"a{i}", "host": "127.0.0.1", "port": 1000 + i} for i in (1, 2, 3)],
    }
)
A4 = SITE.brokers[0].model_copy(update={"id": "a4", "port": 1004})
NEW = SITE.model_copy(update={"brokers": [*SITE.brokers, A4]})


def test_a_joining_broker_enters_the_ring_once_and_the_document_matches_the_new_file() -> None:
    ring = _SiteRing(SITE)
    old = ring.ring
    added = ring.join("a4", {"address": "127.0.0.1:1004", "weight": 1.0})
    assert added is not None and added.port == 1004
    assert "a4" in ring.ring and ring.ring != old
    assert ring_document(ring.site)["digest"] == ring_document(NEW)["digest"]
    assert ring.join("a4", {"address": "127.0.0.1:1004"}) is None  # known: nothing changes
    assert ring.join("a1", {"address": "127.0.0.1:1001"}) is None
    for bad in (
        {},
        {"address": "nohost"},
        {"address": "h:x"},
        {"address": "h:1", "weight": -1},
        {"address": "h:1", "weight": "heavy"},
    ):
        assert _SiteRing(SITE).join("a5", bad) is None, bad
    assert _SiteRing(SITE).join("a5", {"address": "127.0.0.1:1005"}) is not None  # no weight: 1.0


def test_site_peers_tells_the_node_about_a_broker_it_discovers() -> None:
    async def run() -> None:
        seen: list[tuple[str, dict[str, Any]]] = []

        async def inject(topic: str, payload: bytes, qos: int, retain: bool) -> None:
            return None

        peers = SitePeers(
            SITE, "a1", inject, local_filters=dict, state=dict, on_discovered=lambda p, doc: seen.append((p, doc))
        )
        peers._link_tasks = [asyncio.create_task(asyncio.sleep(0))]  # as if started
        hello = json.dumps({"broker": "a4", "state": "online", "address": "127.0.0.1:1004", "weight": 2.0}).encode()
        peers.received("a4", "edgemq/p/a4/state", hello, True)
        peers.received("a2", "edgemq/p/a2/state", hello, True)  # a2 is in our file: not a discovery
        for task in peers._link_tasks:
            task.cancel()
        await asyncio.gather(*peers._link_tasks, return_exceptions=True)
        assert [p for p, _ in seen] == ["a4"] and seen[0][1]["weight"] == 2.0
        assert peers.discovered == ["a4"]

    asyncio.run(run())
