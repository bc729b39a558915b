"""The internet-scale model (simulations/capacity.py): arithmetic and where its inputs come from."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from simulations.capacity import Deployment, Measured, MissingFigure, plan, read_measured, report


def measured(**kw: float) -> Measured:
    base = dict(
        node_e2e_msg_s=2000.0,
        node_cpu_us=500.0,
        node_drain_msg_s=3000.0,
        mosq_e2e_msg_s=6000.0,
        disk_bytes_per_msg=200.0,
        bench_payload=100,
        buffer_ingest_msg_s=50_000.0,
    )
    base.update(kw)
    return Measured(**base, sources={"latest": "x", "buffer": "y"})  # type: ignore[arg-type]


def test_brokers_are_n_plus_one_over_the_usable_capacity() -> None:
    p = plan(measured(), Deployment(devices_per_site=10_000, interval_s=10, headroom=0.5))
    assert p.site_rate == 1000
    assert p.brokers_by_throughput == 1  # 1000 / (2000 * 0.5)
    assert p.brokers_per_site == 2
    p = plan(measured(node_e2e_msg_s=400), Deployment(devices_per_site=10_000, interval_s=10, headroom=0.5))
    assert p.brokers_by_throughput == 5 and p.brokers_per_site == 6


def test_disk_and_drain_follow_the_backlog() -> None:
    d = Deployment(sites=100, devices_per_site=10_000, interval_s=10, outage_h=24, disk_margin=1.0)
    p = plan(measured(), d)
    assert p.backlog_per_site == 1000 * 86_400
    # two brokers, one may be down: the survivor must hold the whole backlog
    assert p.disk_per_broker_gb == pytest.approx(86_400_000 * 200 / 1e9)
    assert p.drain_s == pytest.approx(86_400_000 / (2 * 3000 - 1000))
    assert p.cloud_steady == 100_000 and p.cloud_connections == 200
    # all sites draining at once within 2x the steady ingress: the spare is one site rate, so a
    # 24 h backlog takes 24 h
    assert p.rate_limit == pytest.approx(2 * 1000 / 2)
    assert p.limited_drain_s == pytest.approx(86_400)


def test_a_site_that_cannot_outrun_its_live_rate_never_drains() -> None:
    p = plan(measured(node_drain_msg_s=100.0, node_e2e_msg_s=100_000.0), Deployment())
    assert math.isinf(p.drain_s)
    assert "never" in report(measured(node_drain_msg_s=100.0, node_e2e_msg_s=100_000.0), Deployment(), p)


def test_inputs_are_read_from_the_result_files(tmp_path: Path) -> None:
    latest, buffer = tmp_path / "latest.json", tmp_path / "buffer.json"
    runs = [
        {"scenario": "e2e", "kind": "edgemq", "case": "QoS 1, 1 publisher", "result": {"msg_per_s": 900}},
        {"scenario": "e2e", "kind": "edgemq", "case": "QoS 1, 100 publishers", "result": {"msg_per_s": 700}},
        {"scenario": "e2e", "kind": "edgemq", "case": "QoS 1, 100 publishers", "result": {"msg_per_s": 500}},
        {"scenario": "e2e", "kind": "mosquitto", "case": "QoS 1, 1 publisher", "result": {"msg_per_s": 6000}},
        {"scenario": "cpu", "kind": "edgemq", "case": "1,000 msg/s QoS 1", "result": {"edge_cpu_us_per_msg": 321}},
        {"scenario": "drain", "kind": "edgemq", "case": "100,000", "result": {"drain_msg_per_s": 4321}},
    ]
    latest.write_text(json.dumps({"runs": runs, "started": "s", "machine": {"git": "g"}}))
    buffer.write_text(
        json.dumps(
            {
                "method": {"payload": 100},
                "modes": {"os": {"reopen": {"depth": 1000, "file_mb": 0.25}, "store_ingest": {"msg_per_s": 40_000}}},
            }
        )
    )
    m = read_measured(latest, buffer)
    assert m.node_e2e_msg_s == 600  # the slower case, median of its reps
    assert m.mosq_e2e_msg_s == 6000 and m.node_cpu_us == 321 and m.node_drain_msg_s == 4321
    assert m.disk_bytes_per_msg == 250 and m.buffer_ingest_msg_s == 40_000


def test_a_missing_figure_is_a_clear_error(tmp_path: Path) -> None:
    latest, buffer = tmp_path / "latest.json", tmp_path / "buffer.json"
    latest.write_text(json.dumps({"runs": []}))
    buffer.write_text(json.dumps({"modes": {}}))
    with pytest.raises(MissingFigure, match="edgemq e2e msg/s"):
        read_measured(latest, buffer)
    with pytest.raises(MissingFigure, match="missing"):
        read_measured(tmp_path / "nothing.json", buffer)
