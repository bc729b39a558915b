"""Store-and-forward under fire: the uplink cut, the cloud killed and restarted, an edge
node SIGKILLed mid-stream, the link flapping. Real processes; the uplink runs through
a TCP proxy the test can cut.

Each test counts: every message acknowledged to a device arrives at the cloud,
per-device order holds (first arrivals), and each edge's buffer accounting balances:
accepted = forwarded + dropped (by reason) + still buffered.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from devices.fleet import Ack, FleetConfig, FleetResult, run_fleet
from tests.integration.conftest import Collector, Harness, free_port, wait_for
from tests.integration.netproxy import TcpProxy

pytestmark = [pytest.mark.timeout(300)]


class FleetThread:
    """Runs a bounded fleet in its own thread and event loop; collects every PUBACK."""

    def __init__(self, cfg: FleetConfig) -> None:
        self.acks: list[Ack] = []
        self._lock = threading.Lock()
        self.result: FleetResult | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(cfg,), daemon=True)
        self._thread.start()

    def _on_ack(self, ack: Ack) -> None:
        with self._lock:
            self.acks.append(ack)

    def _run(self, cfg: FleetConfig) -> None:
        try:
            self.result = asyncio.run(run_fleet(cfg, on_ack=self._on_ack))
        except BaseException as exc:  # surfaced by join()
            self.error = exc

    def acked(self) -> int:
        with self._lock:
            return len(self.acks)

    def join(self, timeout: float) -> FleetResult:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "fleet did not finish in time"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def setup_proxied(harness: Callable[..., Harness], brokers: int = 3, **kw: Any) -> tuple[Harness, TcpProxy, int]:
    """Edges reach the cloud through a proxy: cfg.cloud.port is the proxy, the cloud listens elsewhere."""
    proxy_port = free_port()
    h = harness(brokers=brokers, cloud_embedded=False, cloud_port=proxy_port, **kw)
    real_port = free_port()
    h.start_cloud_at(real_port)
    proxy = TcpProxy(proxy_port, real_port)
    h.start_site()
    return h, proxy, real_port


def all_arrived(acks: list[Ack], arrived: Callable[[], list[Any]]) -> Callable[[], bool]:
    """A wait condition: every acknowledged message is among those arrived (duplicates don't count)."""

    def check() -> bool:
        got = {(m.topic, m.payload) for m in arrived()}
        return all((a.topic, a.payload) in got for a in acks)

    return check


def check_delivery(acks: list[Ack], arrived: list[Any]) -> dict[str, int]:
    """Every acknowledged message arrived; order per device holds; return duplicate count."""
    expected = Counter((a.topic, a.payload) for a in acks)
    got = Counter((m.topic, m.payload) for m in arrived if m.topic.startswith("telemetry/"))
    missing = expected - got
    assert not missing, f"{sum(missing.values())} acknowledged messages lost, e.g. {next(iter(missing))}"
    unexpected = set(got) - set(expected)
    assert not unexpected, f"{len(unexpected)} messages at the cloud were never acknowledged to a device"
    first_seen: dict[str, list[int]] = {}
    seen: set[tuple[str, bytes]] = set()
    for m in arrived:
        if not m.topic.startswith("telemetry/") or (m.topic, m.payload) in seen:
            continue
        seen.add((m.topic, m.payload))
        body = json.loads(m.payload)
        first_seen.setdefault(body["device"], []).append(body["seq"])
    for device, seqs in first_seen.items():
        assert seqs == sorted(seqs), f"order broken for {device}: {seqs[:20]}..."
    return {"duplicates": sum(got.values()) - sum(expected.values())}


def check_accounting(h: Harness, settle_s: float = 30) -> dict[str, dict[str, Any]]:
    """Each edge's buffer balances and is empty once drained."""
    out: dict[str, dict[str, Any]] = {}
    for b in h.cfg.sites[0].brokers:
        ref = f"{h.cfg.sites[0].id}/{b.id}"
        wait_for(
            lambda ref=ref: (h.edge_stats(ref).get("buffer") or {}).get("depth_messages") == 0,
            settle_s,
            f"{ref} backlog drained",
        )
        buf = h.edge_stats(ref)["buffer"]
        assert buf["accepted"] == buf["forwarded"] + sum(buf["dropped"].values()) + buf["depth_messages"], buf
        assert sum(buf["dropped"].values()) == 0, buf
        out[ref] = {
            "accepted": buf["accepted"],
            "forwarded": buf["forwarded"],
            "resent": h.edge_stats(ref)["uplink"]["resent"],
        }
    return out


def fleet_cfg(h: Harness, devices: int, messages: int, rate: float) -> FleetConfig:
    return FleetConfig(
        site=h.cfg.sites[0],
        devices=devices,
        rate=rate,
        messages=messages,
        duration_s=200,
        seed=11,
        reconnect_min_s=0.2,
        reconnect_max_s=2.0,
    )


def test_uplink_cut_and_cloud_restart_lose_nothing(harness: Any, collectors: Any) -> None:
    h, proxy, real_port = setup_proxied(harness)
    try:
        host = h.cfg.cloud.host
        cloud = collectors(host, real_port, ["telemetry/#"])
        fleet = FleetThread(fleet_cfg(h, devices=30, messages=60, rate=10))
        wait_for(lambda: fleet.acked() > 300, 60, "fleet under way")

        proxy.cut()  # the uplink drops
        acked_at_cut = fleet.acked()
        wait_for(lambda: fleet.acked() > acked_at_cut + 400, 60, "devices keep being acknowledged while cut")
        # The backlog is on disk, not at the cloud.
        wait_for(
            lambda: (
                sum(
                    (h.edge_stats(f"plant-1/{b.id}").get("buffer") or {}).get("depth_messages", 0)
                    for b in h.cfg.sites[0].brokers
                )
                > 100
            ),
            20,
            "backlog visible in stats",
        )
        # The cloud dies (kill -9) and comes back empty; our subscriber reconnects first.
        arrived_before = cloud.snapshot()
        h.kill("cloud")
        cloud.close()
        h.start_cloud_at(real_port, name="cloud")
        cloud2: Collector = collectors(host, real_port, ["telemetry/#"])
        proxy.restore()

        result = fleet.join(240)
        assert result.stats.acked == 30 * 60, result.stats
        wait_for(
            all_arrived(fleet.acks, lambda: arrived_before + cloud2.snapshot()),
            120,
            "everything acknowledged reaches the cloud",
        )
        dup = check_delivery(fleet.acks, arrived_before + cloud2.snapshot())
        acct = check_accounting(h)
        print(f"outage: {len(fleet.acks)} acked, duplicates {dup['duplicates']}, per-broker {acct}")
    finally:
        proxy.close()


def test_edge_sigkill_mid_stream_loses_nothing_acknowledged(harness: Any, collectors: Any) -> None:
    h, proxy, real_port = setup_proxied(harness, brokers=1)
    try:
        cloud = collectors(h.cfg.cloud.host, real_port, ["telemetry/#"])
        fleet = FleetThread(fleet_cfg(h, devices=20, messages=80, rate=20))
        wait_for(lambda: fleet.acked() > 200, 60, "fleet under way")
        proxy.cut()  # build a backlog that only the SQLite file holds
        n = fleet.acked()
        wait_for(lambda: fleet.acked() > n + 300, 60, "backlog growing")
        h.kill("plant-1.a1")  # SIGKILL mid-stream, with a backlog on disk
        killed_at = fleet.acked()
        h.start_edge("plant-1/a1")
        proxy.restore()
        result = fleet.join(240)
        assert result.stats.acked == 20 * 80
        assert killed_at < 20 * 80
        wait_for(all_arrived(fleet.acks, cloud.snapshot), 120, "all acknowledged messages at the cloud")
        dup = check_delivery(fleet.acks, cloud.snapshot())
        acct = check_accounting(h)
        print(f"sigkill: {len(fleet.acks)} acked ({killed_at} before the kill), duplicates {dup}, {acct}")
    finally:
        proxy.close()


def test_flapping_link_no_loss_no_stuck_backlog(harness: Any, collectors: Any) -> None:
    h, proxy, real_port = setup_proxied(harness, brokers=2)
    try:
        cloud = collectors(h.cfg.cloud.host, real_port, ["telemetry/#"])
        fleet = FleetThread(fleet_cfg(h, devices=20, messages=100, rate=10))
        end = time.monotonic() + 20  # flap every ~2 s for 20 s
        flaps = 0
        while time.monotonic() < end:
            time.sleep(1.0)
            proxy.cut()
            flaps += 1
            time.sleep(1.0)
            proxy.restore()
        result = fleet.join(240)
        assert result.stats.acked == 20 * 100
        # The backlog drains with no new traffic arriving (the fleet is done).
        wait_for(all_arrived(fleet.acks, cloud.snapshot), 120, "backlog drained after flapping")
        dup = check_delivery(fleet.acks, cloud.snapshot())
        acct = check_accounting(h)
        window = h.cfg.bridge.inflight
        # Duplicates are bounded: at most one in-flight window per broker per flap.
        assert dup["duplicates"] <= flaps * window * len(h.cfg.sites[0].brokers)
        print(f"flapping: {flaps} flaps, {len(fleet.acks)} acked, duplicates {dup['duplicates']}, {acct}")
    finally:
        proxy.close()


@pytest.mark.interop
def test_outage_with_mosquitto_cloud_mqtt5_ids(harness: Any, collectors: Any, mosquitto: Any) -> None:
    """The outage test with Debian's Mosquitto as the cloud: every acknowledged message arrives,
    and every copy carries its stable id ({site}/{broker}/{seq}); a duplicate carries the same id."""
    host, real_port = mosquitto()
    proxy_port = free_port()
    proxy = TcpProxy(proxy_port, real_port)
    try:
        h: Harness = harness(brokers=2, cloud_embedded=False, cloud_port=proxy_port, cloud={"protocol": "5"})
        h.start_site()
        cloud = collectors(host, real_port, ["telemetry/#"], v5=True)
        fleet = FleetThread(fleet_cfg(h, devices=20, messages=60, rate=10))
        wait_for(lambda: fleet.acked() > 200, 60, "fleet under way")
        proxy.cut()
        n = fleet.acked()
        wait_for(lambda: fleet.acked() > n + 300, 60, "devices acknowledged while the uplink is down")
        # Restore only once every link has noticed the cut (so the drain really is a reconnect).
        wait_for(
            lambda: all(
                (h.edge_stats(f"plant-1/{b.id}").get("uplink") or {}).get("state") != "connected"
                for b in h.cfg.sites[0].brokers
            ),
            60,
            "links down",
        )
        proxy.restore()
        result = fleet.join(240)
        assert result.stats.acked == 20 * 60
        wait_for(all_arrived(fleet.acks, cloud.snapshot), 120, "everything acknowledged at mosquitto")
        arrived = cloud.snapshot()
        dup = check_delivery(fleet.acks, arrived)
        ids: dict[tuple[str, bytes], set[str]] = {}
        content_of: dict[str, tuple[str, bytes]] = {}
        for m in arrived:
            mid = m.properties.get("edgemq-id")
            assert mid, f"no stable id on {m.topic}"
            site, broker, seq = mid.split("/")
            assert site == "plant-1" and broker in {"a1", "a2"} and int(seq) > 0
            ids.setdefault((m.topic, m.payload), set()).add(mid)
            # An id names one message: every copy carrying it is byte-identical.
            assert content_of.setdefault(mid, (m.topic, m.payload)) == (m.topic, m.payload), mid
        # Copies the bridge re-sent share their id, so id-based dedup removes every one of them;
        # distinct ids for the same bytes are the device re-sending after a lost PUBACK.
        bridge_dups = len(arrived) - len(content_of)
        check_accounting(h)
        print(
            f"mosquitto outage: {len(fleet.acks)} acked, duplicates {dup['duplicates']} "
            f"({bridge_dups} bridge re-sends with the same id)"
        )
    finally:
        proxy.close()
