"""What the dashboard shows, folded from MQTT messages on the server (pure: no I/O, no clocks).

How it works
------------
The feed (``edgemq.dashboard.feed``) hands every message it receives to one
``Aggregator``, with the time of arrival:

- ``on_state``: the retained ``edgemq/{site}/{broker}/state`` (online, or the
  will's offline) from the cloud: membership and health.
- ``on_stats``: a broker's stats snapshot (``edgemq/{site}/{broker}/stats``), from
  the cloud or from the edge broker itself; the newest by its ``ts`` wins.
- ``on_telemetry``: a message on the telemetry filter. Per message it only counts,
  remembers the device (bounded), and offers it to the live tail: O(1), so 10,000
  devices cost the browser nothing.
- ``on_source``: a connection of the feed went up or down (an edge broker that
  cannot be reached is not "uplink down", it is offline).

``tick(now)`` runs once a second: it turns counters into rates, appends one point
per series to fixed-length histories, and returns the *frame* the browser gets.
The browser never sees individual telemetry messages except the sampled tail
(at most ``tail_per_tick`` per tick, the rest only counted).

Health of a broker: ``online`` (its retained state says online), ``isolated``
(the state says offline or is unknown, but the broker itself answers and its own
stats are fresh: the uplink is down and it is buffering), ``offline`` (neither).

What it does not do
-------------------
No MQTT, no HTTP, no clocks, no logging; it does not decide where to subscribe.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.topics import matches

__all__ = ["Aggregator", "BrokerView"]

STALE_AFTER_S = 5.0
MAX_DEVICES = 200_000


@dataclass
class BrokerView:
    """Everything known about one edge broker."""

    site: str
    broker: str
    configured: bool = False
    state: str | None = None
    state_since: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    stats_at: float | None = None  # arrival time of the newest snapshot
    edge_reachable: bool = False  # the feed's own connection to this broker
    prev: tuple[float, int, int] | None = None  # (ts, messages_in, forwarded) of the previous tick
    rate_in: float = 0.0
    drain_rate: float = 0.0
    ring_devices: int = 0

    @property
    def key(self) -> str:
        return f"{self.site}/{self.broker}"

    def health(self, now: float) -> str:
        if self.state == "online":
            return "online"
        fresh = self.stats_at is not None and now - self.stats_at < STALE_AFTER_S and not self.stats.get("stopped")
        if self.edge_reachable and fresh:
            return "isolated"
        return "offline"


class Aggregator:
    """Folds state, stats and telemetry into 1 Hz frames with bounded history."""

    def __init__(
        self,
        brokers: Iterable[tuple[str, str]] = (),
        *,
        owner: Callable[[str, str], str | None] | None = None,
        history: int = 300,
        tail_filter: str = "telemetry/#",
        tail_per_tick: int = 10,
        tail_keep: int = 50,
    ) -> None:
        self.brokers: dict[str, BrokerView] = {}
        self.owner = owner  # (site, device) -> owning broker id on the site's ring
        self.history_len = history
        self.times: deque[float] = deque(maxlen=history)
        self.series: dict[str, dict[str, deque[float | None]]] = {"rate": {}, "depth": {}, "age": {}}
        self.telemetry_rate: deque[float | None] = deque(maxlen=history)
        self.telemetry_total = 0
        self._telemetry_tick = 0
        self.messages_total = 0
        self.devices: dict[str, set[str]] = {}  # site -> device ids seen
        self._device_count = 0
        self._ring_counts: dict[str, int] = {}  # site/broker -> devices seen that the ring gives it
        self.tail_filter = tail_filter
        self.tail_per_tick = tail_per_tick
        self.tail: deque[dict[str, Any]] = deque(maxlen=tail_keep)
        self._tail_new: list[dict[str, Any]] = []
        self._tail_skipped = 0
        self.sources: dict[str, bool] = {}
        self._last_tick: float | None = None
        for site, broker in brokers:
            self._broker(site, broker).configured = True

    # ---- input --------------------------------------------------------------------------
    def _broker(self, site: str, broker: str) -> BrokerView:
        key = f"{site}/{broker}"
        view = self.brokers.get(key)
        if view is None:
            view = self.brokers[key] = BrokerView(site, broker)
            for kind in self.series.values():
                kind[key] = deque([None] * len(self.times), maxlen=self.history_len)
        return view

    def on_state(self, site: str, broker: str, payload: bytes, now: float) -> None:
        """A retained state message (online / offline) from the cloud."""
        self.messages_total += 1
        data = _json(payload)
        state = str(data.get("state")) if data.get("state") else ("offline" if not payload else None)
        view = self._broker(site, broker)
        if state != view.state:
            view.state_since = now
        view.state = state

    def on_stats(self, site: str, broker: str, payload: bytes, now: float) -> None:
        """A stats snapshot; an older one (by its own ts) than what we have is ignored."""
        self.messages_total += 1
        data = _json(payload)
        if not data:
            return
        view = self._broker(site, broker)
        if view.stats and float(data.get("ts") or 0) < float(view.stats.get("ts") or 0):
            return
        view.stats = data
        view.stats_at = now

    def on_source(self, name: str, up: bool, brokers: Iterable[str] = ()) -> None:
        """A feed connection went up or down; ``brokers`` are the ``site/broker`` keys it reaches."""
        self.sources[name] = up
        for key in brokers:
            site, _, broker = key.partition("/")
            self._broker(site, broker).edge_reachable = up

    def on_telemetry(self, topic: str, payload: bytes, now: float) -> None:
        """One message on the telemetry filter: count it, remember its device, offer it to the tail."""
        self.messages_total += 1
        self.telemetry_total += 1
        self._telemetry_tick += 1
        parts = topic.split("/", 3)
        if len(parts) >= 3 and self._device_count < MAX_DEVICES:
            seen = self.devices.setdefault(parts[1], set())
            if parts[2] not in seen:
                seen.add(parts[2])
                self._device_count += 1
                owner = self.owner(parts[1], parts[2]) if self.owner is not None else None
                if owner is not None:
                    key = f"{parts[1]}/{owner}"
                    self._ring_counts[key] = self._ring_counts.get(key, 0) + 1
        if matches(self.tail_filter, topic):
            if len(self._tail_new) < self.tail_per_tick:
                text = payload[:200].decode("utf-8", "replace")
                self._tail_new.append({"ts": now, "topic": topic, "payload": text, "bytes": len(payload)})
            else:
                self._tail_skipped += 1

    @property
    def device_count(self) -> int:
        """Distinct devices seen on the telemetry filter."""
        return self._device_count

    def set_tail_filter(self, topic_filter: str) -> None:
        self.tail_filter = topic_filter
        self.tail.clear()
        self._tail_new.clear()

    # ---- output -------------------------------------------------------------------------
    def tick(self, now: float) -> dict[str, Any]:
        """Advance one tick: rates, one history point per series; returns the frame for the browser."""
        dt = max(1e-3, now - self._last_tick) if self._last_tick is not None else 1.0
        self._last_tick = now
        self.times.append(now)
        self.telemetry_rate.append(self._telemetry_tick / dt)
        self._telemetry_tick = 0
        for key, view in self.brokers.items():
            view.ring_devices = self._ring_counts.get(key, 0)
            stats, buf = view.stats, view.stats.get("buffer") or {}
            alive = view.health(now) != "offline"
            if stats:
                cur = (
                    float(stats.get("ts") or now),
                    int(stats.get("messages_in") or 0),
                    int((stats.get("uplink") or {}).get("forwarded") or 0),
                )
                if view.prev is not None and cur[0] > view.prev[0]:
                    span = cur[0] - view.prev[0]
                    view.rate_in = max(0.0, (cur[1] - view.prev[1]) / span)
                    view.drain_rate = max(0.0, (cur[2] - view.prev[2]) / span)
                view.prev = cur
            if not alive:
                view.rate_in = view.drain_rate = 0.0
            # A broker that is offline has no current values: gaps, not its last snapshot.
            known = bool(stats) and alive
            self.series["rate"][key].append(round(view.rate_in, 2) if alive else None)
            self.series["depth"][key].append(buf.get("depth_messages") if known else None)
            self.series["age"][key].append(round(float(buf.get("oldest_age_s") or 0.0), 2) if known else None)
        tail, self._tail_new = self._tail_new, []
        self.tail.extend(tail)
        skipped, self._tail_skipped = self._tail_skipped, 0
        return {
            "ts": now,
            "brokers": [self._row(v, now) for v in self._ordered()],
            "point": {
                "t": now,
                "telemetry_rate": self.telemetry_rate[-1],
                **{kind: {k: s[-1] for k, s in per.items()} for kind, per in self.series.items()},
            },
            "totals": {
                "telemetry": self.telemetry_total,
                "telemetry_rate": round(self.telemetry_rate[-1] or 0.0, 2),
                "devices": self._device_count,
                "sources": dict(self.sources),
            },
            "tail": {"filter": self.tail_filter, "new": tail, "skipped": skipped},
        }

    def history(self) -> dict[str, Any]:
        """Every series as arrays (what a newly connected browser draws first)."""
        return {
            "t": list(self.times),
            "telemetry_rate": list(self.telemetry_rate),
            **{kind: {k: list(s) for k, s in per.items()} for kind, per in self.series.items()},
            "tail": {"filter": self.tail_filter, "recent": list(self.tail)},
        }

    def summary(self, now: float) -> dict[str, Any]:
        """The current table without advancing time (the JSON API)."""
        return {
            "ts": now,
            "brokers": [self._row(v, now) for v in self._ordered()],
            "devices": self._device_count,
            "telemetry": self.telemetry_total,
        }

    def _ordered(self) -> list[BrokerView]:
        return [self.brokers[k] for k in sorted(self.brokers)]

    def _row(self, v: BrokerView, now: float) -> dict[str, Any]:
        health = v.health(now)
        # Offline: the last snapshot describes a process that is gone; show nothing live from it.
        s: Mapping[str, Any] = v.stats if health != "offline" else {}
        buf: Mapping[str, Any] = s.get("buffer") or {}
        link: Mapping[str, Any] = s.get("uplink") or {}
        own: Mapping[str, Any] = s.get("ownership") or {}
        dropped = buf.get("dropped") or {}
        return {
            "key": v.key,
            "site": v.site,
            "broker": v.broker,
            "configured": v.configured,
            "health": health,
            "state": v.state,
            "state_since": v.state_since,
            "stats_age_s": None if v.stats_at is None else round(now - v.stats_at, 1),
            "address": s.get("address"),
            "uplink": link.get("state"),
            "reconnects": max(0, int(link.get("connects") or 0) - 1) if link else None,
            "clients": s.get("clients"),
            "rate_in": round(v.rate_in, 2),
            "drain_rate": round(v.drain_rate, 2),
            "depth": buf.get("depth_messages"),
            "depth_bytes": buf.get("depth_bytes"),
            "oldest_age_s": buf.get("oldest_age_s"),
            "dropped": sum(int(n) for n in dropped.values()) if isinstance(dropped, Mapping) else None,
            "owned": own.get("owned"),
            "foreign": own.get("foreign"),
            "ring_devices": v.ring_devices,
            "metrics": s.get("metrics"),
        }


def _json(payload: bytes) -> dict[str, Any]:
    try:
        data = json.loads(payload) if payload else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
