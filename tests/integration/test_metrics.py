"""Prometheus metrics, scraped from real processes: counters move while traffic flows,
buffer metrics rise while the uplink is cut and fall during the drain."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Harness, free_port, wait_for
from tests.integration.test_store_and_forward import FleetThread, fleet_cfg, setup_proxied

pytestmark = [pytest.mark.timeout(300)]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics_url(h: Harness, component: str) -> str | None:
    path = h.cfg.run_dir / "stats" / f"{component}.json"
    try:
        return str(json.loads(path.read_text()).get("metrics") or "") or None
    except (OSError, ValueError):
        return None


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, lab), v in samples.items() if n == name and set(labels.items()) <= set(lab))


def test_every_component_serves_metrics_that_follow_traffic_and_outage(harness: Any) -> None:
    h, proxy, _real_port = setup_proxied(harness, brokers=3)
    try:
        edges = [f"plant-1.{b.id}" for b in h.cfg.sites[0].brokers]
        wait_for(lambda: all(metrics_url(h, c) for c in ["cloud", *edges]), 30, "every component reports its URL")
        urls = {c: str(metrics_url(h, c)) for c in ["cloud", *edges]}
        assert len(set(urls.values())) == 4, urls
        for c, url in urls.items():
            s = scrape(url)
            assert value(s, "process_resident_memory_bytes") > 0, c
            assert ("process_cpu_seconds_total", ()) in s, c
            assert value(s, "edgemq_component_info") == 1, c
        for c in edges:  # snapshots are taken every second: wait for the one after the connect
            wait_for(
                lambda c=c: value(scrape(urls[c]), "edgemq_uplink_state", state="connected") == 1,
                30,
                f"{c} uplink connected in metrics",
            )
            assert value(scrape(urls[c]), "edgemq_buffer_depth_messages", site="plant-1") == 0

        fleet = FleetThread(fleet_cfg(h, devices=30, messages=60, rate=10))
        wait_for(lambda: fleet.acked() > 300, 60, "fleet under way")

        def total(name: str, **labels: str) -> float:
            return sum(value(scrape(urls[c]), name, **labels) for c in edges)

        wait_for(lambda: total("edgemq_messages_total", direction="in") > 300, 30, "edge messages_in moves")
        wait_for(lambda: total("edgemq_uplink_forwarded_messages_total") > 300, 30, "uplink forwarded moves")
        wait_for(
            lambda: value(scrape(urls["cloud"]), "edgemq_messages_total", direction="in") > 300,
            30,
            "cloud messages_in moves",
        )
        assert total("edgemq_message_bytes_total", direction="in") > 0
        assert total("edgemq_buffer_accepted_messages_total") > 300
        assert total("edgemq_devices_connected", ownership="owned") > 0

        proxy.cut()
        wait_for(lambda: total("edgemq_uplink_up") == 0, 30, "uplink down in metrics")
        wait_for(lambda: total("edgemq_buffer_depth_messages") > 100, 60, "buffer depth rises during the outage")
        wait_for(
            lambda: max(value(scrape(urls[c]), "edgemq_buffer_oldest_age_seconds") for c in edges) > 1.0,
            30,
            "oldest age rises",
        )
        assert total("edgemq_buffer_depth_bytes") > 0
        peak = total("edgemq_buffer_depth_messages")
        forwarded_at_cut = total("edgemq_buffer_forwarded_messages_total")

        proxy.restore()
        wait_for(lambda: total("edgemq_uplink_up") == 3, 60, "uplink back in metrics")
        wait_for(
            lambda: total("edgemq_buffer_forwarded_messages_total") > forwarded_at_cut + peak / 2,
            60,
            "drain: the forwarded counter moves",
        )
        fleet.join(240)
        wait_for(lambda: total("edgemq_buffer_depth_messages") == 0, 120, "buffer depth falls to 0 after the drain")
        after = {c: scrape(urls[c]) for c in edges}
        assert sum(value(after[c], "edgemq_uplink_connects_total") for c in edges) >= 6
        assert sum(value(after[c], "edgemq_buffer_dropped_messages_total") for c in edges) == 0
        assert all(value(after[c], "edgemq_buffer_peak_depth_messages") > 0 for c in edges)
    finally:
        proxy.close()


def test_the_metrics_ports_come_from_the_cluster_file(harness: Any) -> None:
    edge_port, cloud_port = free_port(), free_port()
    h = harness(brokers=1)
    site = h.cfg.sites[0]
    brokers = [site.brokers[0].model_copy(update={"metrics_port": edge_port})]
    h.cfg = h.cfg.model_copy(
        update={
            "cloud": h.cfg.cloud.model_copy(update={"metrics_port": cloud_port}),
            "sites": [site.model_copy(update={"brokers": brokers})],
        }
    )
    h.write_config()
    from_file = {"EDGEMQ_METRICS_PORT": ""}  # the harness's override off: the cluster file decides
    h.start_cloud(env=from_file)
    h.start_edge("plant-1/a1", env=from_file)
    wait_for(lambda: metrics_url(h, "plant-1.a1") and metrics_url(h, "cloud"), 30, "both report their URL")
    assert metrics_url(h, "plant-1.a1") == f"http://127.0.0.1:{edge_port}/metrics"
    assert metrics_url(h, "cloud") == f"http://127.0.0.1:{cloud_port}/metrics"
    assert value(scrape(f"http://127.0.0.1:{edge_port}/metrics"), "edgemq_component_info") == 1
