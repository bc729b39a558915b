"""What every simulation shares: free ports, a cluster file, the processes, a cloud counter.

Simulations run real processes (``python -m edgemq broker ...``) on loopback ports
picked free, in a temporary run directory, and stop everything they start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devices.fleet import Ack

OUT = Path(__file__).resolve().parent / "out"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_toml(run_dir: Path, cloud_port: int, ports: list[int], extra: list[str] | None = None) -> str:
    """One site ``plant-1`` with brokers a1, a2, ... on ``ports``; ``extra`` lines go before the site."""
    lines = [
        f'run_dir = "{run_dir}"',
        "[cloud]",
        'host = "127.0.0.1"',
        f"port = {cloud_port}",
        # The simulation's cloud subscriber stands for the cloud's consumer: with the default
        # per-client queue (1,000 messages, 16 MiB) a subscriber slower than a drain would lose
        # the oldest (counted by the cloud as dropped_out), and the loss count would not be ours.
        "[limits]",
        "max_queued_messages = 5000000",
        "max_queued_bytes = 0",
        "[bridge]",
        "reconnect_min_s = 0.2",
        "reconnect_max_s = 2.0",
        *(extra or []),
        "[[sites]]",
        'id = "plant-1"',
    ]
    for i, port in enumerate(ports):
        lines += ["[[sites.brokers]]", f'id = "a{i + 1}"', 'host = "127.0.0.1"', f"port = {port}"]
    return "\n".join(lines) + "\n"


@dataclass
class Procs:
    """The cluster's processes; killed and stopped by name. Logs go to ``tmp/<name>.log``."""

    tmp: Path
    config: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, args: list[str]) -> None:
        logf = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        self.running[name] = subprocess.Popen(
            [sys.executable, "-m", "edgemq", "broker", *args, "--config", str(self.config)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=self.tmp,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        logf.close()

    def kill(self, name: str) -> None:
        proc = self.running.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.running.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.running.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.running.clear()


class CloudCounter:
    """A paho subscriber at the cloud: which (topic, payload) arrived, how often."""

    def __init__(self, port: int, topic: str = "telemetry/#") -> None:
        self.got: Counter[tuple[str, bytes]] = Counter()
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-cloud-{os.getpid()}")
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not ready.wait(15):
            raise RuntimeError("cloud subscriber could not subscribe")

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.got[(msg.topic, bytes(msg.payload))] += 1

    def missing(self, acks: list[Ack]) -> int:
        """Acknowledged messages that have not arrived (each counted as often as it was acknowledged)."""
        with self._lock:
            return sum(((Counter((a.topic, a.payload) for a in acks)) - self.got).values())

    def total(self) -> int:
        with self._lock:
            return sum(self.got.values())

    def distinct(self) -> int:
        with self._lock:
            return len(self.got)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
