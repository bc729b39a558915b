"""edgemq.node._PeerLiveness: the alive set is the peers whose peer link is up (no probes of its own)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from edgemq.node import _PeerLiveness


def links(**states: str) -> Any:
    return SimpleNamespace(links={peer: SimpleNamespace(state=state) for peer, state in states.items()})


def test_unknown_until_the_links_exist_then_exactly_the_links_that_are_up() -> None:
    liveness = _PeerLiveness()
    assert liveness.alive == frozenset()  # before SitePeers exists: every peer counts as down
    peers = links(a2="up", a3="connecting")
    liveness.follow(peers)
    assert liveness.alive == {"a2"}
    peers.links["a2"].state = "down"  # the link dropped: a2 is down at once
    peers.links["a3"].state = "up"
    peers.links["a4"] = SimpleNamespace(state="up")  # a broker that joined: SitePeers linked to it
    assert liveness.alive == {"a3", "a4"}
    peers.links["a4"].state = "closed"
    assert liveness.alive == {"a3"}
