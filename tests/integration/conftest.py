"""Integration fixtures: real broker processes on free 127.0.0.1 ports, stopped afterwards.

``Harness`` writes a cluster file (built from the pydantic models) into the test's
tmp dir, starts components as real OS processes (``python -m edgemq broker ...``),
kills them on request, and stops every one at the end. Their logs are printed when
a test fails. ``Collector`` is a paho subscriber that records what arrives.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from broker.config import ClusterConfig
from broker.probe import wait_until_answers
from tests.ports import free_port as free_port  # re-exported: tests import it from here

ROOT = Path(__file__).resolve().parents[2]

# Every process a test starts serves its metrics on a port the OS picks (the URL is in its
# stats file): the default, MQTT port + 1000, can land on a port another fixture just
# picked as free ("address in use" one run in many). A test of the configured ports
# passes EDGEMQ_METRICS_PORT="" to the processes it starts.
os.environ.setdefault("EDGEMQ_METRICS_PORT", "0")
# Collectors are paho QoS 1 subscribers in a busy test process: a burst (an uplink drain,
# a blast) can put one more than window + queue (20 + 1,000) behind, where our brokers,
# like Mosquitto, drop the oldest queued message (docs/amqtt-notes.md, entry 60). As the
# Mosquitto fixture below does (max_queued_messages 100000), the brokers tests start queue
# deeper; tests of the limits themselves set EDGEMQ_BROKER_LIMITS.
os.environ.setdefault("EDGEMQ_BROKER_LIMITS", '{"max_queued_messages": 100000}')


def wait_for(predicate: Callable[[], bool], timeout: float, what: str = "condition", interval: float = 0.05) -> None:
    """Poll ``predicate`` until true; fail the test with ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def mosquitto_binary() -> str | None:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def require_mosquitto() -> str:
    exe = mosquitto_binary()
    if exe is None:
        if os.environ.get("EDGEMQ_REQUIRE_MOSQUITTO"):
            pytest.fail("mosquitto is required here (EDGEMQ_REQUIRE_MOSQUITTO is set) but not installed")
        pytest.skip("Debian's mosquitto is not installed (apt-get install mosquitto)")
    return exe


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class Harness:
    """Starts and stops a cluster's processes for one test."""

    tmp: Path
    cfg: ClusterConfig
    procs: dict[str, Proc] = field(default_factory=dict)
    extra_logs: list[Path] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.tmp / "cluster.toml"

    def write_config(self) -> None:
        self.config_path.write_text(to_toml(self.cfg))

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.tmp / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log, "ab")  # noqa: SIM115 - owned by the process
        popen = subprocess.Popen(
            [sys.executable, "-m", "edgemq", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=str(self.tmp),
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        fh.close()
        proc = Proc(name, popen, log)
        self.procs[name] = proc
        return proc

    def start_cloud(self, env: dict[str, str] | None = None) -> Proc:
        proc = self._spawn("cloud", ["broker", "cloud", "--config", str(self.config_path)], env)
        assert wait_until_answers(self.cfg.cloud.host, self.cfg.cloud.port, 30), self.logs()
        return proc

    def start_cloud_at(self, port: int, name: str = "cloud") -> Proc:
        """An embedded cloud on ``port`` (the edges may reach it through a proxy on cfg.cloud.port)."""
        cloud = self.cfg.cloud.model_copy(update={"embedded": True, "port": port})
        path = self.tmp / f"{name}.toml"
        path.write_text(to_toml(self.cfg.model_copy(update={"cloud": cloud})))
        proc = self._spawn(name, ["broker", "cloud", "--config", str(path)])
        assert wait_until_answers(self.cfg.cloud.host, port, 30), self.logs()
        return proc

    def edge_stats(self, ref: str) -> dict[str, Any]:
        """The last stats snapshot an edge node wrote ({} if none yet)."""
        site, b = self.cfg.locate(ref)
        path = self.cfg.run_dir / "stats" / f"{site.id}.{b.id}.json"
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return {}

    def start_edge(self, ref: str, *, wait: bool = True, env: dict[str, str] | None = None) -> Proc:
        site, b = self.cfg.locate(ref)
        proc = self._spawn(
            f"{site.id}.{b.id}", ["broker", "edge", "--config", str(self.config_path), "--broker", ref], env
        )
        if wait:
            assert wait_until_answers(b.host, b.port, 30), self.logs()
        return proc

    def start_site(self, site_index: int = 0) -> None:
        site = self.cfg.sites[site_index]
        for b in site.brokers:
            self.start_edge(f"{site.id}/{b.id}", wait=False)
        for b in site.brokers:
            assert wait_until_answers(b.host, b.port, 30), self.logs()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        proc.popen.send_signal(sig)
        proc.popen.wait(timeout=30)

    def stop(self, name: str) -> int:
        proc = self.procs.pop(name)
        if proc.popen.poll() is None:
            proc.popen.terminate()
            try:
                proc.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        self.procs[name + f"#stopped{len(self.procs)}"] = proc
        return int(proc.popen.returncode)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.popen.poll() is None:
                proc.popen.terminate()
        for proc in self.procs.values():
            try:
                proc.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()

    def logs(self, lines: int = 60) -> str:
        parts = []
        for proc in list(self.procs.values()):
            text = proc.log.read_text(errors="replace") if proc.log.exists() else ""
            head = f"----- {proc.name} (exit {proc.popen.poll()}) -----\n"
            parts.append(head + "\n".join(text.splitlines()[-lines:]))
        for path in self.extra_logs:
            if path.exists():
                text = path.read_text(errors="replace")
                parts.append(f"----- {path.name} -----\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)


def to_toml(cfg: ClusterConfig) -> str:
    """Serialise a ClusterConfig back to the cluster file format (tests build configs as models)."""
    data = cfg.model_dump(mode="json", exclude_none=True)

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    def inline(v: Any) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {inline(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(inline(x) for x in v) + "]"
        return scalar(v)

    lines = [f"run_dir = {scalar(data['run_dir'])}"]
    for section in [k for k, v in data.items() if isinstance(v, dict)]:
        body = data[section]
        lines.append(f"[{section}]")
        for k, v in body.items():
            lines.append(f"{k} = {inline(v)}")
    for site in data["sites"]:
        lines.append("[[sites]]")
        for k, v in site.items():
            if k != "brokers":
                lines.append(f"{k} = {inline(v)}")
        for b in site["brokers"]:
            lines.append("[[sites.brokers]]")
            for k, v in b.items():
                lines.append(f"{k} = {scalar(v)}")
    return "\n".join(lines) + "\n"


def make_config(
    tmp: Path, *, brokers: int = 3, cloud_embedded: bool = True, cloud_port: int | None = None, **overrides: Any
) -> ClusterConfig:
    """A one-site cluster on free ports, run directory inside ``tmp``."""
    data: dict[str, Any] = {
        "run_dir": str(tmp / "run"),
        "cloud": {"embedded": cloud_embedded, "host": "127.0.0.1", "port": cloud_port or free_port()},
        "sites": [
            {
                "id": "plant-1",
                "brokers": [{"id": f"a{i + 1}", "host": "127.0.0.1", "port": free_port()} for i in range(brokers)],
            }
        ],
        "bridge": {"reconnect_min_s": 0.2, "reconnect_max_s": 2.0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return ClusterConfig.model_validate(data)


@pytest.fixture
def harness(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def factory(**kwargs: Any) -> Harness:
        h = Harness(tmp_path, make_config(tmp_path, **kwargs))
        h.write_config()
        made.append(h)
        return h

    yield factory
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for h in made:
        h.stop_all()
        if failed:
            print(h.logs())


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: dict[str, str]


class Collector:
    """A paho subscriber (own thread) recording every message it receives."""

    def __init__(
        self,
        host: str,
        port: int,
        topics: list[str],
        *,
        v5: bool = False,
        qos: int = 1,
        client_id: str | None = None,
        clean_session: bool = True,
    ) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"collector-{uuid.uuid4().hex[:8]}",
            protocol=proto,
            clean_session=None if v5 else clean_session,
        )
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe([(t, qos) for t in topics])
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(15):
            self.close()
            raise AssertionError(f"collector could not subscribe at {host}:{port}")

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props: dict[str, str] = {}
        user = getattr(getattr(msg, "properties", None), "UserProperty", None)
        if user:
            props = dict(user)
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), props))

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def count(self, prefix: str = "") -> int:
        with self._lock:
            return sum(1 for m in self.messages if m.topic.startswith(prefix))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def collectors() -> Iterator[Callable[..., Collector]]:
    made: list[Collector] = []

    def factory(host: str, port: int, topics: list[str], **kw: Any) -> Collector:
        c = Collector(host, port, topics, **kw)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.close()


def publish_once(host: str, port: int, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
    """Publish one message with a fresh paho client and wait for its acknowledgement."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=15)
        assert info.is_published(), f"publish to {host}:{port} {topic} not acknowledged"
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Callable[..., tuple[str, int]]]:
    """Start Debian's mosquitto on a free port; returns (host, port)."""
    exe = require_mosquitto()
    procs: list[subprocess.Popen[bytes]] = []

    def start(port: int | None = None) -> tuple[str, int]:
        port = port or free_port()
        conf = tmp_path / f"mosquitto-{port}.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 100000\nlog_dest stderr\n"
        )
        log = open(tmp_path / f"mosquitto-{port}.log", "ab")  # noqa: SIM115
        procs.append(subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT))
        log.close()
        assert wait_until_answers("127.0.0.1", port, 15), "mosquitto did not start"
        return "127.0.0.1", port

    yield start
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
