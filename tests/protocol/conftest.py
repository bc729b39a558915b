"""Protocol fixtures: real broker processes on free 127.0.0.1 ports, spoken to in raw MQTT.

Every behaviour test takes ``server``, parametrized over three brokers:

* ``edgemq``: ours (``python -m edgemq broker cloud`` with a minimal cluster file);
* ``mosquitto``: Debian's Mosquitto, the reference: where it passes, the test is right;
* ``amqtt``: stock amqtt 0.12.1 (``tests.protocol.stock_amqtt``), expected to FAIL:
  the test is marked ``xfail(strict=True)`` so that a test stock amqtt passes is
  flagged. ``@pytest.mark.stock_may_pass`` makes it non-strict where stock amqtt
  fails only sometimes (timing-dependent defects).

One process of each kind is shared by the session (tests use unique client ids and
topics); ``spawn`` starts a private one with special settings (limits).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from broker.limits import LIMITS_ENV
from broker.probe import wait_until_answers
from tests.ports import free_port as free_port  # re-exported: tests import it from here

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("edgemq", "mosquitto", "amqtt")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stock_may_pass: stock amqtt fails this only sometimes (xfail not strict)")
    config.addinivalue_line("markers", "brokers(*kinds): run only against these broker kinds")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def uid(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class BrokerProc:
    kind: str
    port: int
    popen: subprocess.Popen[bytes]
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"----- {self.kind} log (exit {self.popen.poll()}) -----\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _mosquitto() -> str:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if cand and os.access(cand, os.X_OK):
            return cand
    if os.environ.get("EDGEMQ_REQUIRE_MOSQUITTO"):
        pytest.fail("mosquitto is required (EDGEMQ_REQUIRE_MOSQUITTO is set) but not installed")
    pytest.skip("Debian's mosquitto is not installed")


def start_broker(kind: str, tmp: Path, *, limits: dict[str, Any] | None = None) -> BrokerProc:
    """Start one broker process of ``kind`` on a free port; ``limits`` as BrokerLimits fields."""
    limits = dict(limits or {})
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / f"{kind}-{port}.log"
    # metrics on a port the OS picks: port + 1000 could be another fixture's free port
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EDGEMQ_METRICS_PORT": "0"}
    if kind == "edgemq":
        cfg = tmp / f"cluster-{port}.toml"
        cfg.write_text(
            f'run_dir = "{tmp / "run"}"\n'
            f'[cloud]\nembedded = true\nhost = "127.0.0.1"\nport = {port}\n'
            f'[[sites]]\nid = "plant-1"\n[[sites.brokers]]\nid = "a1"\nhost = "127.0.0.1"\nport = {free_port()}\n'
        )
        env[LIMITS_ENV] = json.dumps(limits)
        args = [sys.executable, "-m", "edgemq", "broker", "cloud", "--config", str(cfg)]
    elif kind == "mosquitto":
        conf = tmp / f"mosquitto-{port}.conf"
        lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false"]
        lines.append(f"max_packet_size {limits.get('max_packet_size', 1024 * 1024)}")
        # Ours and Mosquitto's limits of the same name (ours: max_awaiting_rel is Mosquitto's
        # incoming use of max_inflight_messages; set both the same in tests that use either).
        for name in ("max_connections", "max_queued_messages", "max_queued_bytes", "max_inflight_messages"):
            if name in limits:
                lines.append(f"{name} {limits[name]}")
        conf.write_text("\n".join(lines) + "\n")
        args = [_mosquitto(), "-c", str(conf)]
    elif kind == "amqtt":
        args = [sys.executable, "-m", "tests.protocol.stock_amqtt", str(port), str(limits.get("max_connections", -1))]
    else:
        raise ValueError(kind)
    with open(log, "ab") as fh:
        popen = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, cwd=str(ROOT), env=env)
    proc = BrokerProc(kind, port, popen, log)
    if not wait_until_answers("127.0.0.1", port, 30):
        proc.stop()
        raise AssertionError(f"{kind} did not start\n{proc.log_tail()}")
    return proc


@pytest.fixture(scope="session")
def _shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, BrokerProc]]:
    procs: dict[str, BrokerProc] = {}
    tmp = tmp_path_factory.mktemp("brokers")
    procs["_tmp"] = tmp  # type: ignore[assignment]
    yield procs
    for kind, proc in procs.items():
        if kind != "_tmp":
            proc.stop()


@pytest.fixture(params=KINDS)
def server(request: pytest.FixtureRequest, _shared: dict[str, Any]) -> BrokerProc:
    """A running broker of each kind (shared across tests); stock amqtt is expected to fail."""
    kind: str = request.param
    only = request.node.get_closest_marker("brokers")
    if only is not None and kind not in only.args:
        pytest.skip(f"not meaningful on {kind}")
    if kind == "amqtt":
        may_pass = request.node.get_closest_marker("stock_may_pass") is not None
        request.applymarker(pytest.mark.xfail(strict=not may_pass, reason="defect of stock amqtt 0.12.1 (issue 5)"))
    proc: BrokerProc | None = _shared.get(kind)
    if proc is None or not proc.alive():
        proc = start_broker(kind, _shared["_tmp"])
        _shared[kind] = proc
    return proc


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., BrokerProc]]:
    """Start private broker processes (special limits); stopped after the test."""
    made: list[BrokerProc] = []

    def factory(kind: str, **limits: Any) -> BrokerProc:
        proc = start_broker(kind, tmp_path, limits=limits)
        made.append(proc)
        return proc

    yield factory
    for proc in made:
        proc.stop()
