"""The buffer's limits on a real edge node: overflow (drop_oldest, reject_new), expiry,
a full disk, and a corrupt file at start-up. Tiny limits come from the cluster file's
[buffer] section; the uplink runs through a proxy the test cuts, so the backlog only
the SQLite file holds is what the limits act on.

Each test checks what is dropped and why (the counters by reason), what reaches the
cloud, and that accepted = forwarded + dropped + still buffered.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import typer
from typer.testing import CliRunner

from bridge.inspection import peek, read_snapshot
from edgemq.buffer_cmd import buffer_app
from edgemq.node import buffer_path
from tests.integration.conftest import Harness, free_port, wait_for
from tests.integration.netproxy import TcpProxy
from tests.integration.test_store_and_forward import setup_proxied

pytestmark = [pytest.mark.timeout(180)]

REF = "plant-1/a1"
TOPIC = "telemetry/plant-1/dev-1/t"
ONLY_TELEMETRY = {"uplink": [{"pattern": "telemetry/#"}]}


class Publisher:
    """One device (paho, persistent session, auto-reconnect) publishing QoS 1 in order."""

    def __init__(self, host: str, port: int) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"dev-{uuid.uuid4().hex[:8]}", clean_session=False
        )
        self.client.reconnect_delay_set(0.2, 1.0)
        self.connects = 0
        self._up = threading.Event()

        def on_connect(*_: Any) -> None:
            self.connects += 1
            self._up.set()

        self.client.on_connect = on_connect
        self.client.on_disconnect = lambda *_: self._up.clear()
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        assert self._up.wait(15), "publisher could not connect"

    def publish(self, payload: bytes, topic: str = TOPIC) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=1)

    def send(self, payload: bytes, topic: str = TOPIC, timeout: float = 15) -> None:
        info = self.publish(payload, topic)
        wait_for(info.is_published, timeout, f"PUBACK for {payload[:20]!r}", interval=0.005)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def publishers() -> Iterator[Callable[[str, int], Publisher]]:
    made: list[Publisher] = []

    def factory(host: str, port: int) -> Publisher:
        p = Publisher(host, port)
        made.append(p)
        return p

    yield factory
    for p in made:
        p.close()


def buf_stats(h: Harness) -> dict[str, Any]:
    return dict(h.edge_stats(REF).get("buffer") or {})


def balanced(b: dict[str, Any]) -> bool:
    return bool(b["accepted"] == b["forwarded"] + sum(b["dropped"].values()) + b["depth_messages"])


def link_down(h: Harness) -> bool:
    return (h.edge_stats(REF).get("uplink") or {}).get("state") not in (None, "connected")


def first_arrivals(msgs: list[Any]) -> list[bytes]:
    seen: set[bytes] = set()
    out = []
    for m in msgs:
        if m.topic.startswith("telemetry/") and m.payload not in seen:
            seen.add(m.payload)
            out.append(m.payload)
    return out


def edge(h: Harness) -> tuple[str, int]:
    b = h.cfg.sites[0].brokers[0]
    return b.host, b.port


def cli_stats(h: Harness) -> dict[str, Any]:
    app = typer.Typer()
    app.add_typer(buffer_app, name="buffer")
    res = CliRunner().invoke(app, ["buffer", "stats", "--config", str(h.config_path), "--json", "--interval", "0.2"])
    assert res.exit_code == 0, res.output
    return dict(json.loads(res.output)["brokers"][0])


def test_drop_oldest_keeps_the_newest_and_counts_overflow(harness: Any, collectors: Any, publishers: Any) -> None:
    h, proxy, real_port = setup_proxied(harness, brokers=1, buffer={"max_messages": 50}, bridge=ONLY_TELEMETRY)
    try:
        cloud = collectors(h.cfg.cloud.host, real_port, ["telemetry/#"])
        proxy.cut()
        wait_for(lambda: link_down(h), 20, "uplink down")
        dev = publishers(*edge(h))
        for i in range(200):
            dev.send(b"%d" % i)  # drop_oldest never refuses: every one is acknowledged
        wait_for(lambda: buf_stats(h).get("accepted") == 200, 10, "stats caught up")
        b = buf_stats(h)
        assert (b["depth_messages"], b["dropped"]["overflow"], b["forwarded"]) == (50, 150, 0), b
        assert balanced(b) and b["peak_depth_messages"] == 50
        # The operator's view, read-only while the node runs.
        row = cli_stats(h)
        assert (row["depth_messages"], row["dropped"]["overflow"], row["state"]) == (50, 150, b_state(h))
        assert [m.payload for m in peek(buffer_path(h.cfg, "plant-1", "a1"), 3)] == [b"150", b"151", b"152"]

        proxy.restore()
        wait_for(lambda: len(first_arrivals(cloud.snapshot())) >= 50, 60, "the newest 50 at the cloud")
        wait_for(lambda: buf_stats(h).get("depth_messages") == 0, 20, "backlog drained")
        assert first_arrivals(cloud.snapshot()) == [b"%d" % i for i in range(150, 200)]
        b = buf_stats(h)
        assert (b["accepted"], b["forwarded"], b["dropped"]["overflow"]) == (200, 50, 150) and balanced(b), b
        print(f"drop_oldest: 200 accepted, 150 dropped overflow, newest 50 forwarded in order; stats {b}")
    finally:
        proxy.close()


def b_state(h: Harness) -> str:
    return str((h.edge_stats(REF).get("uplink") or {}).get("state"))


def test_reject_new_pushes_back_without_corrupting(harness: Any, collectors: Any, publishers: Any) -> None:
    rules = {"uplink": [{"pattern": "telemetry/#", "overflow": "reject_new"}, {"pattern": "status/#"}]}
    h, proxy, real_port = setup_proxied(harness, brokers=1, buffer={"max_messages": 20}, bridge=rules)
    try:
        cloud = collectors(h.cfg.cloud.host, real_port, ["telemetry/#"])
        proxy.cut()
        wait_for(lambda: link_down(h), 20, "uplink down")
        dev = publishers(*edge(h))
        for i in range(20):
            dev.send(b"%d" % i)
        blocked = dev.publish(b"20")
        # Full: the 21st is refused again on every reconnect and never acknowledged.
        wait_for(lambda: buf_stats(h).get("dropped", {}).get("rejected", 0) >= 3, 30, "repeated refusals")
        assert not blocked.is_published()
        b = buf_stats(h)
        assert b["depth_messages"] == 20 and b["dropped"]["overflow"] == 0 and balanced(b), b
        assert h.procs["plant-1.a1"].popen.poll() is None
        path = buffer_path(h.cfg, "plant-1", "a1")
        assert [m.payload for m in peek(path, 100)] == [b"%d" % i for i in range(20)]  # nothing corrupt
        ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        assert ro.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        ro.close()

        proxy.restore()  # the backlog drains, the device's retry is accepted and acknowledged
        wait_for(blocked.is_published, 60, "the refused message acknowledged after the uplink returned")
        for i in range(21, 26):
            dev.send(b"%d" % i)
        wait_for(lambda: len(first_arrivals(cloud.snapshot())) >= 26, 60, "all 26 at the cloud")
        assert first_arrivals(cloud.snapshot()) == [b"%d" % i for i in range(26)]
        wait_for(lambda: buf_stats(h).get("forwarded") == 26, 20, "all forwarded")
        b = buf_stats(h)
        assert balanced(b) and b["dropped"]["overflow"] == b["dropped"]["expired"] == 0, b
        print(f"reject_new: {b['dropped']['rejected']} refusals of one message, {dev.connects} device connects, {b}")
    finally:
        proxy.close()


def test_ttl_expires_while_idle_and_counts_expired(harness: Any, collectors: Any, publishers: Any) -> None:
    h, proxy, real_port = setup_proxied(harness, brokers=1, buffer={"ttl_s": 2.0}, bridge=ONLY_TELEMETRY)
    try:
        cloud = collectors(h.cfg.cloud.host, real_port, ["telemetry/#"])
        proxy.cut()
        wait_for(lambda: link_down(h), 20, "uplink down")
        dev = publishers(*edge(h))
        for i in range(10):
            dev.send(b"old-%d" % i)
        # No reads (link down) and no appends: only the store's idle ticker expires them.
        wait_for(lambda: buf_stats(h).get("dropped", {}).get("expired") == 10, 15, "10 expired while idle")
        b = buf_stats(h)
        assert b["depth_messages"] == 0 and b["oldest_age_s"] is None and balanced(b), b
        proxy.restore()  # link back first: fresh messages go straight through, within the ttl
        wait_for(lambda: b_state(h) == "connected", 30, "uplink back")
        for i in range(5):
            dev.send(b"new-%d" % i)
        wait_for(lambda: len(first_arrivals(cloud.snapshot())) >= 5, 30, "the fresh 5 at the cloud")
        wait_for(lambda: buf_stats(h).get("forwarded") == 5, 10, "forwarded")
        assert first_arrivals(cloud.snapshot()) == [b"new-%d" % i for i in range(5)]
        b = buf_stats(h)
        assert (b["accepted"], b["dropped"]["expired"]) == (15, 10) and balanced(b), b
    finally:
        proxy.close()


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Callable[[Path, str], Path]]:
    """Mount a small tmpfs (root only); lazily unmounted at the end even if files are open."""
    mounted: list[Path] = []

    def mount(where: Path, size: str = "2m") -> Path:
        where.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_disk_full_degrades_like_overflow_and_recovers(
    harness: Any, collectors: Any, publishers: Any, tiny_fs: Any
) -> None:
    proxy_port, real_port = free_port(), free_port()
    h = harness(brokers=1, cloud_embedded=False, cloud_port=proxy_port, buffer={"ttl_s": 3600.0}, bridge=ONLY_TELEMETRY)
    # The buffer's own filesystem: 16 MiB, of which the buffer keeps 4 MiB back (min_free_bytes).
    tiny_fs(buffer_path(h.cfg, "plant-1", "a1").parent, "16m")
    h.start_cloud_at(real_port)
    proxy = TcpProxy(proxy_port, real_port)
    try:
        h.start_site()
        cloud = collectors(h.cfg.cloud.host, real_port, ["telemetry/#"])
        proxy.cut()
        wait_for(lambda: link_down(h), 20, "uplink down")
        dev = publishers(*edge(h))
        blob = b"x" * 8000
        acked = 0
        blocked = None
        for i in range(3000):  # ~24 MB offered to a 16 MiB filesystem
            info = dev.publish(b"%06d" % i + blob)
            try:
                wait_for(info.is_published, 5, "ack", interval=0.005)
            except AssertionError:
                blocked = info
                break
            acked += 1
        assert blocked is not None, "the disk never filled"
        wait_for(lambda: buf_stats(h).get("dropped", {}).get("error", 0) >= 1, 15, "dropped 'error' counted")
        b = buf_stats(h)
        assert balanced(b) and b["depth_messages"] == acked, (acked, b)
        # The broker keeps serving: local pub/sub works, the process is alive.
        assert h.procs["plant-1.a1"].popen.poll() is None
        local = collectors(*edge(h), ["local/#"])
        other = publishers(*edge(h))
        other.send(b"still serving", topic="local/ping")
        wait_for(lambda: local.count("local/") == 1, 10, "local delivery while the disk is full")
        log = h.procs["plant-1.a1"].log.read_text()
        assert "disk full" in log

        proxy.restore()  # draining frees the space; the refused message then gets in
        wait_for(lambda: len(first_arrivals(cloud.snapshot())) >= acked, 60, "every acknowledged message arrives")
        wait_for(blocked.is_published, 60, "the refused message acknowledged once space is free")
        wait_for(lambda: len(first_arrivals(cloud.snapshot())) >= acked + 1, 30, "and forwarded")
        got = first_arrivals(cloud.snapshot())
        assert [p[:6] for p in got] == [b"%06d" % i for i in range(acked + 1)]
        b = buf_stats(h)
        assert balanced(b), b
        print(f"disk full: {acked} acknowledged before the 16 MiB filesystem filled, refusals {b['dropped']}")
    finally:
        proxy.close()


def test_corrupt_buffer_is_moved_aside_and_a_fresh_one_started(harness: Any, collectors: Any) -> None:
    h = harness(brokers=1)
    path = buffer_path(h.cfg, "plant-1", "a1")
    path.parent.mkdir(parents=True, exist_ok=True)
    garbage = b"this is not an SQLite database\n" * 100
    path.write_bytes(garbage)
    h.start_cloud()
    h.start_site()
    cloud = collectors(h.cfg.cloud.host, h.cfg.cloud.port, ["telemetry/#"])
    moved = path.with_name(path.name + ".corrupt-1")
    assert moved.read_bytes() == garbage  # kept, never deleted
    log = h.procs["plant-1.a1"].log.read_text()
    assert "moved aside" in log and str(moved) in log
    from tests.integration.conftest import publish_once

    publish_once(*edge(h), TOPIC, b"after-recovery")
    wait_for(lambda: cloud.count("telemetry/") == 1, 30, "the fresh buffer forwards")
    snap = read_snapshot(path, 0.0)
    assert (snap.accepted, snap.forwarded) == (1, 1) and snap.balanced
