"""What flows on a broker: messages/s per site and per device, last value, last seen.

How it works: ``FlowTable.observe(topic, payload, now)`` files each message under
its source: the ownership key ``{site}/{device}`` of a device topic
(``telemetry/``, ``commands/``, ``status/``), or the topic itself for anything
else (site ``-``). Each source keeps the arrival times inside the sliding
window; a rate is the count inside the window divided by the window, or by the
time since the first message while the table is younger than the window (at
least one second, so one early message does not read as a burst). The last
value is our JSON payload summarised (readings and seq) when it decodes, else
the raw text, truncated.

What it does not do: no clock (every call takes ``now``, in seconds from any
monotonic origin), no I/O, no rendering. Memory is bounded by the number of
sources (``max_sources``, least recently seen evicted) and by the messages
inside one window.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from broker.topics import device_key
from devices.payload import PayloadError, Telemetry

__all__ = ["FlowSnapshot", "FlowTable", "SiteFlow", "SourceFlow", "describe_payload"]

NON_DEVICE_SITE = "-"


def describe_payload(payload: bytes, limit: int = 60) -> str:
    """Short text for a payload: readings and seq of our JSON telemetry, else raw text."""
    try:
        t = Telemetry.decode(payload)
    except PayloadError:
        text = payload.decode("utf-8", errors="replace").replace("\n", " ").replace("\r", " ")
    else:
        values = " ".join(f"{k}={v:.6g}" for k, v in t.readings.items())
        text = f"{values} #{t.seq}" if values else f"#{t.seq}"
    if len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    return text


@dataclass(frozen=True, slots=True)
class SourceFlow:
    """One source (a device, or a non-device topic) at a moment."""

    key: str
    site: str
    device: str
    rate: float
    count: int
    last_topic: str
    last_value: str
    last_seen: float


@dataclass(frozen=True, slots=True)
class SiteFlow:
    """One site's totals at a moment."""

    site: str
    rate: float
    count: int
    sources: int
    last_seen: float


@dataclass(frozen=True, slots=True)
class FlowSnapshot:
    """Everything at a moment; sources and sites sorted by most recently seen first."""

    now: float
    total_rate: float
    total_count: int
    sources: tuple[SourceFlow, ...]
    sites: tuple[SiteFlow, ...]


@dataclass(slots=True)
class _Source:
    site: str
    device: str
    times: deque[float] = field(default_factory=deque)
    count: int = 0
    last_topic: str = ""
    last_value: str = ""
    last_seen: float = 0.0


class FlowTable:
    """Sliding-window rates, last value and last seen, per source and per site."""

    def __init__(self, *, window_s: float = 10.0, value_chars: int = 60, max_sources: int = 100_000) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        self.value_chars = value_chars
        self.max_sources = max_sources
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._first: float | None = None
        self._total = 0

    def observe(self, topic: str, payload: bytes, now: float) -> SourceFlow:
        """Record one message that arrived at ``now``; returns its source's state."""
        key = device_key(topic)
        if key is None:
            key, site, device = topic, NON_DEVICE_SITE, topic
        else:
            site, _, device = key.partition("/")
        src = self._sources.get(key)
        if src is None:
            src = _Source(site=site, device=device)
            self._sources[key] = src
            if len(self._sources) > self.max_sources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(key)
        if self._first is None:
            self._first = now
        self._total += 1
        src.times.append(now)
        src.count += 1
        src.last_topic = topic
        src.last_value = describe_payload(payload, self.value_chars)
        src.last_seen = now
        self._trim(src, now)
        return self._view(key, src, now)

    def _trim(self, src: _Source, now: float) -> None:
        horizon = now - self.window_s
        times = src.times
        while times and times[0] <= horizon:
            times.popleft()

    def _span(self, now: float) -> float:
        if self._first is None:
            return self.window_s
        return min(self.window_s, max(1.0, now - self._first))

    def _view(self, key: str, src: _Source, now: float) -> SourceFlow:
        return SourceFlow(
            key=key,
            site=src.site,
            device=src.device,
            rate=len(src.times) / self._span(now),
            count=src.count,
            last_topic=src.last_topic,
            last_value=src.last_value,
            last_seen=src.last_seen,
        )

    def snapshot(self, now: float) -> FlowSnapshot:
        """Rates as of ``now`` (messages older than the window no longer count)."""
        sources: list[SourceFlow] = []
        sites: dict[str, list[SourceFlow]] = {}
        for key, src in self._sources.items():
            self._trim(src, now)
            view = self._view(key, src, now)
            sources.append(view)
            sites.setdefault(src.site, []).append(view)
        sources.sort(key=lambda s: (-s.last_seen, s.key))
        site_flows = [
            SiteFlow(
                site=site,
                rate=sum(v.rate for v in views),
                count=sum(v.count for v in views),
                sources=len(views),
                last_seen=max(v.last_seen for v in views),
            )
            for site, views in sites.items()
        ]
        site_flows.sort(key=lambda s: (-s.last_seen, s.site))
        return FlowSnapshot(
            now=now,
            total_rate=sum(s.rate for s in sources),
            total_count=self._total,
            sources=tuple(sources),
            sites=tuple(site_flows),
        )
