"""Prometheus metrics of one edgemq process, read from the stats snapshot it already builds.

How it works
------------
Every node builds one snapshot dict per second (``edgemq.node``): it is written to
``<run>/stats/<name>.json``, published retained on ``edgemq/{site}/{broker}/stats``
and, here, turned into Prometheus metrics. ``SnapshotCollector`` is a custom
collector (prometheus-client's "custom collector" pattern): at scrape time it reads
the latest snapshot through a callable and yields metric families; it keeps no
counters of its own, so the three views can never disagree. The official
``ProcessCollector`` adds ``process_cpu_seconds_total``,
``process_resident_memory_bytes`` and friends.

``serve`` starts prometheus-client's HTTP server (its own daemon thread) on
127.0.0.1. The port comes from ``metrics_port``: ``EDGEMQ_METRICS_PORT`` if set
(a number, ``0`` for any free port, ``off`` to disable), else the MQTT port plus
``METRICS_PORT_OFFSET``. If that port is taken the server falls back to a free
port and says so: metrics never stop a broker from running. The address in use is
reported in the snapshot (``metrics``) so ``cluster status`` can show it.

What it does not do
-------------------
No counting, no clocks, no MQTT: a key missing from the snapshot gives no metric
(nothing is invented). Every metric is documented in docs/metrics.md; a test
fails when one is not.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "LINK_STATES",
    "METRICS_PORT_OFFSET",
    "MetricsServer",
    "SnapshotCollector",
    "metrics_port",
    "registry_for",
    "serve",
]

log = logging.getLogger(__name__)

METRICS_PORT_OFFSET = 1000
ENV_PORT = "EDGEMQ_METRICS_PORT"
# Every state bridge.link.Uplink goes through; one series each (1 for the current one).
LINK_STATES = ("starting", "connecting", "connected", "backoff", "closed")

Snapshot = Mapping[str, Any]


def metrics_port(mqtt_port: int, env: Mapping[str, str] | None = None, configured: int | None = None) -> int | None:
    """The metrics port of a process whose MQTT port is ``mqtt_port``; None if disabled.

    ``$EDGEMQ_METRICS_PORT`` wins (an operator's override at start-up), then the cluster
    file's ``metrics_port`` (``configured``: 0 any free port, -1 off), then MQTT port + 1000.
    """
    raw = (os.environ if env is None else env).get(ENV_PORT, "").strip().lower()
    if raw in ("off", "none", "disabled"):
        return None
    if raw:
        return int(raw)
    if configured is not None:
        return None if configured < 0 else configured
    port = mqtt_port + METRICS_PORT_OFFSET
    return port if port <= 65535 else 0


def _labels(snap: Snapshot) -> tuple[list[str], list[str]]:
    """site/broker of an edge node; the cloud broker is broker="cloud" with an empty site."""
    site = str(snap.get("site") or "")
    broker = str(snap.get("broker") or snap.get("component") or "")
    return ["site", "broker"], [site, broker]


class SnapshotCollector(Collector):
    """Yields edgemq_* metric families from the latest snapshot (None: nothing yet)."""

    def __init__(self, snapshot: Callable[[], Snapshot | None]) -> None:
        self._snapshot = snapshot

    def describe(self) -> list[Metric]:
        # Families depend on the snapshot; an empty describe() makes the registry call
        # collect() lazily at scrape time only (and not at registration).
        return []

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        if not snap:
            return
        names, values = _labels(snap)

        def gauge(name: str, doc: str, value: Any, extra: Mapping[str, str] | None = None) -> Metric | None:
            if value is None:
                return None
            extra = extra or {}
            g = GaugeMetricFamily(name, doc, labels=[*names, *extra])
            g.add_metric([*values, *extra.values()], float(value))
            return g

        def counter(name: str, doc: str, value: Any) -> Metric | None:
            if value is None:
                return None
            c = CounterMetricFamily(name, doc, labels=names)
            c.add_metric(values, float(value))
            return c

        found: list[Metric | None] = []
        info = GaugeMetricFamily(
            "edgemq_component_info",
            "Always 1; labels name the component and its MQTT address.",
            labels=[*names, "component", "address"],
        )
        info.add_metric([*values, str(snap.get("component", "")), str(snap.get("address", ""))], 1.0)
        found.append(info)
        found.append(gauge("edgemq_start_time_seconds", "When the process started (Unix time).", snap.get("started")))
        found.append(
            gauge("edgemq_snapshot_timestamp_seconds", "When this snapshot was taken (Unix time).", snap.get("ts"))
        )
        found.append(
            gauge("edgemq_clients_connected", "MQTT clients connected to this broker right now.", snap.get("clients"))
        )
        own = snap.get("ownership")
        if isinstance(own, Mapping):
            fam = GaugeMetricFamily(
                "edgemq_devices_connected",
                "Connected device clients by ownership: owned (this broker owns the device on the ring), "
                "foreign (another broker owns it), unknown (not a device client id of this site).",
                labels=[*names, "ownership"],
            )
            for kind in ("owned", "foreign", "unknown"):
                if kind in own:
                    fam.add_metric([*values, kind], float(own[kind]))
            found.append(fam)
        msgs = CounterMetricFamily(
            "edgemq_messages",
            "PUBLISH packets: received from clients (in), delivered to subscribers (out).",
            labels=[*names, "direction"],
        )
        byts = CounterMetricFamily(
            "edgemq_message_bytes", "Payload bytes of those PUBLISH packets.", labels=[*names, "direction"]
        )
        for direction in ("in", "out"):
            if snap.get(f"messages_{direction}") is not None:
                msgs.add_metric([*values, direction], float(snap[f"messages_{direction}"]))
            if snap.get(f"bytes_{direction}") is not None:
                byts.add_metric([*values, direction], float(snap[f"bytes_{direction}"]))
        found += [msgs if msgs.samples else None, byts if byts.samples else None]
        qos_fam = CounterMetricFamily(
            "edgemq_messages_by_qos",
            "PUBLISH packets received from clients (in) and sent to subscribers (out), by QoS.",
            labels=[*names, "direction", "qos"],
        )
        for direction in ("in", "out"):
            by_qos = snap.get(f"messages_{direction}_by_qos")
            if isinstance(by_qos, Mapping):
                for qos, n in sorted(by_qos.items()):
                    qos_fam.add_metric([*values, direction, str(qos)], float(n))
        found.append(qos_fam if qos_fam.samples else None)
        found.append(
            counter(
                "edgemq_messages_dropped_out",
                "Messages a slow subscriber did not get: QoS 1/2 beyond "
                "its queue (max_queued_messages, max_queued_bytes), QoS 0 over its write buffer "
                "(max_write_buffer).",
                snap.get("dropped_out"),
            )
        )
        found.append(
            counter(
                "edgemq_messages_dropped_in",
                "QoS 2 PUBLISHes dropped (PUBREC sent): the client had max_awaiting_rel messages awaiting PUBREL.",
                snap.get("dropped_in"),
            )
        )
        found.append(
            counter(
                "edgemq_uplink_refused_messages",
                "Uplink messages refused by the buffer (not acknowledged to the device).",
                snap.get("uplink_refused"),
            )
        )
        found.append(
            counter(
                "edgemq_buffer_append_failures",
                "Buffer appends that failed (store errors).",
                snap.get("append_failures"),
            )
        )
        link = snap.get("uplink")
        if isinstance(link, Mapping):
            found += list(_link_metrics(link, names, values, counter, gauge))
        buf = snap.get("buffer")
        if isinstance(buf, Mapping):
            found += list(_buffer_metrics(buf, names, values, counter, gauge))
        peers = snap.get("site_peers")
        if isinstance(peers, Mapping):
            found += list(_peer_metrics(peers, names, values, counter))
        cmds = snap.get("commands")
        if isinstance(cmds, Mapping):
            found += list(_command_metrics(cmds, names, values, counter, gauge))
        dash = snap.get("dashboard")
        if isinstance(dash, Mapping):
            found.append(
                counter("edgemq_dashboard_messages", "MQTT messages the dashboard received.", dash.get("messages"))
            )
            found.append(
                gauge(
                    "edgemq_dashboard_devices_seen",
                    "Distinct devices seen on the telemetry filter.",
                    dash.get("devices"),
                )
            )
            found.append(
                gauge("edgemq_dashboard_clients", "Browsers connected to the event stream.", dash.get("clients"))
            )
        yield from (m for m in found if m is not None)


def _link_metrics(link: Snapshot, names: list[str], values: list[str], counter: Any, gauge: Any) -> Iterator[Any]:
    state = str(link.get("state", ""))
    fam = GaugeMetricFamily(
        "edgemq_uplink_state", "1 for the uplink's current state, 0 for the others.", labels=[*names, "state"]
    )
    for s in (*LINK_STATES, *(() if state in LINK_STATES else (state,))):
        fam.add_metric([*values, s], 1.0 if s == state else 0.0)
    yield fam
    yield gauge("edgemq_uplink_up", "1 if the uplink to the cloud is connected.", 1 if state == "connected" else 0)
    yield counter(
        "edgemq_uplink_connects", "Successful uplink connections (the first one included).", link.get("connects")
    )
    yield counter(
        "edgemq_uplink_disconnects", "Uplink connections lost after being established.", link.get("disconnects")
    )
    yield counter(
        "edgemq_uplink_forwarded_messages", "Messages acknowledged by the cloud (PUBACK).", link.get("forwarded")
    )
    yield counter(
        "edgemq_uplink_resent_messages", "Messages sent again after a reconnect (at-least-once).", link.get("resent")
    )
    yield gauge(
        "edgemq_uplink_inflight_messages", "Uplink messages sent and not yet acknowledged.", link.get("inflight")
    )
    yield counter("edgemq_downlink_commands", "Downlink messages injected into this broker.", link.get("commands_down"))


def _peer_metrics(peers: Snapshot, names: list[str], values: list[str], counter: Any) -> Iterator[Any]:
    """Site peering (docs/site.md): traffic to and from each peer broker, link state, stale wills."""
    per = peers.get("peers")
    if isinstance(per, Mapping):
        fams: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "up": GaugeMetricFamily(
                "edgemq_peer_link_up", "1 if the link to this peer broker is up.", labels=[*names, "peer"]
            ),
            "msgs": CounterMetricFamily(
                "edgemq_peer_messages",
                "Messages forwarded to (out) and received from (in) each peer broker of the site.",
                labels=[*names, "peer", "direction"],
            ),
            "bytes": CounterMetricFamily(
                "edgemq_peer_message_bytes", "Payload bytes of those messages.", labels=[*names, "peer", "direction"]
            ),
            "dropped": CounterMetricFamily(
                "edgemq_peer_dropped_messages",
                "Messages not forwarded to a peer because its link was down or full.",
                labels=[*names, "peer"],
            ),
        }
        for peer, st in sorted(per.items()):
            if not isinstance(st, Mapping):
                continue
            fams["up"].add_metric([*values, peer], 1.0 if st.get("state") == "up" else 0.0)
            for direction, m, b in (("out", "forwarded", "forwarded_bytes"), ("in", "received", "received_bytes")):
                fams["msgs"].add_metric([*values, peer, direction], float(st.get(m) or 0))
                fams["bytes"].add_metric([*values, peer, direction], float(st.get(b) or 0))
            fams["dropped"].add_metric([*values, peer], float(st.get("dropped") or 0))
        yield from fams.values()
    yield counter(
        "edgemq_wills_suppressed",
        "Wills not fired because the device is online at another broker since.",
        peers.get("wills_suppressed"),
    )


def _command_metrics(cmds: Snapshot, names: list[str], values: list[str], counter: Any, gauge: Any) -> Iterator[Any]:
    """The downlink router and its queue of commands for offline devices (docs/ownership.md)."""
    routed = cmds.get("routed")
    if isinstance(routed, Mapping):
        fam = CounterMetricFamily(
            "edgemq_commands_routed",
            "Commands from the cloud by what this broker did: "
            "delivered, queued, not_mine, qos0_offline, passed, delivered_from_queue.",
            labels=[*names, "outcome"],
        )
        for outcome, n in sorted(routed.items()):
            fam.add_metric([*values, str(outcome)], float(n))
        yield fam
    yield gauge("edgemq_commands_queued", "Commands waiting for offline devices at this broker.", cmds.get("depth"))
    yield gauge(
        "edgemq_commands_oldest_age_seconds",
        "Age of the oldest waiting command (0 when none).",
        cmds.get("oldest_age_s") or 0.0,
    )
    yield counter(
        "edgemq_commands_expired", "Waiting commands that expired undelivered (command_ttl_s).", cmds.get("expired")
    )
    yield counter(
        "edgemq_commands_overflow", "Waiting commands dropped because the queue was full.", cmds.get("overflow")
    )


def _buffer_metrics(buf: Snapshot, names: list[str], values: list[str], counter: Any, gauge: Any) -> Iterator[Any]:
    yield gauge("edgemq_buffer_depth_messages", "Messages in the store-and-forward buffer.", buf.get("depth_messages"))
    yield gauge("edgemq_buffer_depth_bytes", "Bytes (topic + payload) in the buffer.", buf.get("depth_bytes"))
    # An empty buffer has no oldest message: its age is 0, not absent (alerts stay simple).
    yield gauge(
        "edgemq_buffer_oldest_age_seconds",
        "Age of the oldest buffered message (0 when empty).",
        buf.get("oldest_age_s") or 0.0,
    )
    yield gauge(
        "edgemq_buffer_peak_depth_messages",
        "Highest depth in messages since the buffer was opened.",
        buf.get("peak_depth_messages"),
    )
    yield gauge(
        "edgemq_buffer_peak_depth_bytes",
        "Highest depth in bytes since the buffer was opened.",
        buf.get("peak_depth_bytes"),
    )
    yield gauge("edgemq_buffer_capacity_messages", "Configured capacity in messages.", buf.get("max_messages"))
    yield gauge("edgemq_buffer_capacity_bytes", "Configured capacity in bytes.", buf.get("max_bytes"))
    yield counter(
        "edgemq_buffer_accepted_messages", "Messages appended to the buffer (survives restarts).", buf.get("accepted")
    )
    yield counter(
        "edgemq_buffer_forwarded_messages",
        "Messages removed after the cloud acknowledged them: rate() of this is the drain rate.",
        buf.get("forwarded"),
    )
    dropped = buf.get("dropped")
    if isinstance(dropped, Mapping):
        fam = CounterMetricFamily(
            "edgemq_buffer_dropped_messages", "Messages dropped by the buffer, by reason.", labels=[*names, "reason"]
        )
        for reason, n in sorted(dropped.items()):
            fam.add_metric([*values, str(reason)], float(n))
        yield fam
    yield counter(
        "edgemq_buffer_commits", "Buffer transactions committed since the buffer was opened.", buf.get("commits")
    )


def registry_for(snapshot: Callable[[], Snapshot | None], *, process: bool = True) -> CollectorRegistry:
    """A registry with the snapshot collector and (unless ``process`` is false) process CPU/memory."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    if process:
        ProcessCollector(registry=registry)
    return registry


@dataclass
class MetricsServer:
    """A running metrics endpoint; ``close()`` stops it."""

    host: str
    port: int
    _server: Any

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve(snapshot: Callable[[], Snapshot | None], port: int, host: str = "127.0.0.1") -> MetricsServer | None:
    """Serve /metrics on ``host:port`` (a free port if that one is taken); None if it cannot listen at all."""
    registry = registry_for(snapshot)
    for attempt in (port, 0) if port else (0,):
        try:
            server, _thread = start_http_server(attempt, addr=host, registry=registry)
        except OSError as exc:
            log.warning(
                "metrics port %s:%s unavailable (%s); %s",
                host,
                attempt,
                exc,
                "trying a free port" if attempt else "metrics disabled",
            )
            continue
        bound = int(server.server_address[1])
        log.info("metrics on http://%s:%s/metrics", host, bound)
        return MetricsServer(host, bound, server)
    return None
