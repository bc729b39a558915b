"""The standalone bridge (``edgemq bridge``) between two Mosquittos: an edge Mosquitto the
devices publish to, and a cloud Mosquitto reached through a proxy the test cuts.

Under an uplink cut, a kill -9 of the bridge and its restart, everything the bridge
acknowledged to the local broker (and everything the local broker still held for the
bridge's persistent session) reaches the cloud, in order.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bridge.inspection import read_snapshot
from edgemq.node import buffer_path
from tests.integration.conftest import ROOT, Harness, Proc, free_port, wait_for
from tests.integration.netproxy import TcpProxy
from tests.integration.test_buffer_limits import Publisher, first_arrivals

pytestmark = [pytest.mark.timeout(180), pytest.mark.interop]

REF = "plant-1/a1"
TOPIC = "telemetry/plant-1/dev-1/t"


def start_bridge(h: Harness, local_port: int, name: str) -> Proc:
    log = h.tmp / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgemq.bridge_cmd",
                "--config",
                str(h.config_path),
                "--broker",
                REF,
                "--local-port",
                str(local_port),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
        )
    proc = Proc(name, popen, log)
    h.procs[name] = proc
    return proc


def stats(h: Harness) -> dict[str, Any]:
    path = h.cfg.run_dir / "stats" / "plant-1.a1.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def bridge_up(h: Harness, pid: int) -> bool:
    s = stats(h)
    return s.get("pid") == pid and bool((s.get("local") or {}).get("connected"))


def test_standalone_bridge_survives_cut_and_kill(harness: Any, collectors: Any, mosquitto: Any) -> None:
    edge_host, edge_port = mosquitto()
    cloud_host, cloud_port = mosquitto()
    proxy_port = free_port()
    h: Harness = harness(brokers=1, cloud_embedded=False, cloud_port=proxy_port)
    h.extra_logs += [Path(h.tmp / f"mosquitto-{edge_port}.log"), Path(h.tmp / f"mosquitto-{cloud_port}.log")]
    proxy = TcpProxy(proxy_port, cloud_port)
    dev: Publisher | None = None
    try:
        cloud = collectors(cloud_host, cloud_port, ["telemetry/#"])
        first = start_bridge(h, edge_port, "bridge")
        wait_for(lambda: bridge_up(h, first.popen.pid), 30, "bridge subscribed at the edge Mosquitto")
        wait_for(lambda: (stats(h).get("uplink") or {}).get("state") == "connected", 30, "uplink connected")
        dev = Publisher(edge_host, edge_port)

        for i in range(100):  # live: straight through
            dev.send(b"%d" % i)
        wait_for(lambda: len(first_arrivals(cloud.snapshot())) >= 100, 30, "live traffic at the cloud")

        proxy.cut()
        for i in range(100, 200):  # buffered by the bridge, acknowledged to Mosquitto after commit
            dev.send(b"%d" % i)
        wait_for(lambda: (stats(h).get("local") or {}).get("committed", 0) >= 200, 30, "bridge committed the backlog")
        h.kill("bridge", signal.SIGKILL)
        on_disk = read_snapshot(buffer_path(h.cfg, "plant-1", "a1"), 0.0)
        assert on_disk.depth_messages >= 100, on_disk
        for i in range(200, 300):  # the bridge is dead: Mosquitto queues them for its session
            dev.send(b"%d" % i)

        second = start_bridge(h, edge_port, "bridge-restarted")
        wait_for(lambda: bridge_up(h, second.popen.pid), 30, "bridge back")
        proxy.restore()
        wait_for(lambda: len(first_arrivals(cloud.snapshot())) >= 300, 90, "all 300 at the cloud")
        got = first_arrivals(cloud.snapshot())
        assert got == [b"%d" % i for i in range(300)], got[:20]
        duplicates = sum(1 for m in cloud.snapshot() if m.topic == TOPIC) - 300
        wait_for(lambda: (stats(h).get("buffer") or {}).get("depth_messages") == 0, 30, "buffer drained")
        buf = stats(h)["buffer"]
        assert buf["accepted"] == buf["forwarded"] + sum(buf["dropped"].values()) + buf["depth_messages"], buf
        assert sum(buf["dropped"].values()) == 0, buf
        print(
            f"standalone bridge: 300 published, {on_disk.depth_messages} on disk at the kill, "
            f"duplicates {duplicates}, buffer {buf['accepted']} accepted / {buf['forwarded']} forwarded"
        )
    finally:
        if dev is not None:
            dev.close()
        proxy.close()
