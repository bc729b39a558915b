"""Scenario "kill": how many messages acknowledged to QoS 1 publishers survive a kill -9 of the edge.

Publishers (paho, QoS 1, in their own threads, at a fixed total rate) publish to the edge
broker; each message carries a unique id. After ``load_s`` the edge broker process is
killed with SIGKILL; only the messages whose PUBACK the publishers received before the
kill count as *acknowledged*. The edge is restarted (and, in the ``outage`` case, the
cloud, which was down during the load so that everything acknowledged was still queued
at the edge, is started), and a cloud subscriber counts how many acknowledged ids arrive
(until all have, or nothing new arrived for 15 s).

Kinds: ``edgemq`` (SQLite buffer, ack after commit), ``mosquitto`` (bridge, ``persistence
false``: the bridge queue lives in memory) and ``mosquitto-persist`` (``persistence true``
with Mosquitto's default ``autosave_interval`` of 1800 s).
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from harness import HOST, Sub, cpu_seconds, make_topology


class Publishers:
    """``n`` paho QoS 1 publishers at ``rate`` msg/s in total; records which ids were PUBACKed.

    No lock is held around ``client.publish``: paho calls ``on_publish`` from its own thread
    while holding its internal lock, so a shared lock there deadlocks. PUBACKed packet ids are
    collected per publisher and mapped to message ids at :meth:`stop`.
    """

    def __init__(self, port: int, n: int, rate: float) -> None:
        self.sent = 0
        self._stop = threading.Event()
        self._mids: list[dict[int, int]] = [{} for _ in range(n)]  # per publisher: packet id -> message id
        self._acked: list[list[int]] = [[] for _ in range(n)]  # per publisher: PUBACKed packet ids
        self._threads = [threading.Thread(target=self._run, args=(port, i, rate / n), daemon=True) for i in range(n)]
        for t in self._threads:
            t.start()

    def _run(self, port: int, idx: int, rate: float) -> None:
        mids, acked = self._mids[idx], self._acked[idx]
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"kill-pub-{idx}-{uuid.uuid4().hex[:6]}")
        client.max_inflight_messages_set(100)
        client.on_publish = lambda c, u, mid, rc, props: acked.append(mid)  # list.append is atomic
        client.connect(HOST, port, keepalive=30)
        client.loop_start()
        i = 0
        t0 = time.monotonic()
        pad = b"x" * 60
        while not self._stop.is_set():
            due = t0 + i / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            gid = idx * 10_000_000 + i
            info = client.publish(f"telemetry/plant-1/kill-{idx}/t", f"{gid} {time.time_ns()} ".encode() + pad, qos=1)
            if info.mid in mids:
                break  # packet ids wrapped: the run is longer than this bookkeeping allows
            mids[info.mid] = gid
            self.sent += 1
            i += 1
        client.loop_stop()
        client.disconnect()

    def stop(self) -> set[int]:
        """Stop now; the ids acknowledged so far (later PUBACKs are ignored)."""
        self._stop.set()
        snapshot = [list(a) for a in self._acked]
        for t in self._threads:
            t.join(timeout=10)
        return {self._mids[i][mid] for i, acked in enumerate(snapshot) for mid in acked if mid in self._mids[i]}


def run_kill(
    kind: str, work: Path, *, rate: float = 1000.0, load_s: float = 6.0, outage: bool = False, publishers: int = 4
) -> dict[str, Any]:
    topo = make_topology(kind, work).start(cloud=not outage)
    try:
        sub = Sub(work, "cloud", topo.cloud_port, 1, retry=outage, ready=not outage)
        pubs = Publishers(topo.edge_port, publishers, rate)
        time.sleep(load_s)
        assert topo.edge is not None
        topo.edge.kill()  # SIGKILL mid-stream
        topo.edge.wait(timeout=10)
        acked = pubs.stop()
        sent = pubs.sent
        time.sleep(0.5)
        topo.start_edge()
        if outage:
            topo.start_cloud()
            # The "ready" probe queues behind the edge's backlog at the cloud: allow for a slow cloud.
            sub.wait_ready(timeout=180)
        cpu0 = cpu_seconds(topo.edge_procs())
        last, last_change = -1, time.monotonic()
        while True:
            got = {a[1] for a in sub.arrivals()}
            n = len(acked & got)
            now = time.monotonic()
            if n != last:
                last, last_change = n, now
            if n >= len(acked) or now - last_change > 15:
                break
            time.sleep(0.5)
        cpu = cpu_seconds(topo.edge_procs()) - cpu0
        sub.close()
    finally:
        topo.stop()
    arrivals = sub.arrivals()
    got = {a[1] for a in arrivals}
    arrived = len(acked & got)
    return {
        "sent": sent,
        "acked_before_kill": len(acked),
        "acked_arrived": arrived,
        "acked_lost": len(acked) - arrived,
        "lost_pct": 100.0 * (len(acked) - arrived) / max(1, len(acked)),
        "received": len(arrivals),
        "duplicates": len(arrivals) - len(got),
        "outage": outage,
        "edge_cpu_s_after_restart": cpu,
    }
