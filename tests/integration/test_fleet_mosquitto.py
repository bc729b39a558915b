"""The device fleet and `edgemq watch` against Debian's Mosquitto on a free loopback port.

"Every acknowledged message arrived": the fleet reports each PUBACKed message
through ``on_ack`` (device, seq, topic and the exact bytes); a subscriber that was
subscribed before the fleet started records what the broker delivered; every
acknowledged (device, seq) must be there, byte for byte, and (with no faults)
exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker.config import BrokerConfig, SiteConfig
from broker.probe import wait_until_answers
from devices.fleet import Ack, FleetConfig, FleetResult, FleetStats, run_fleet
from devices.payload import Telemetry
from devices.placement import choose_broker
from tests.integration.conftest import (
    ROOT,
    Collector,
    Received,
    free_port,
    publish_once,
    require_mosquitto,
    wait_for,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

Collectors = Callable[..., Collector]


def unique_site() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def site_at(site_id: str, port: int, brokers: int = 3) -> SiteConfig:
    # Every broker of the site is the same mosquitto: placement still spreads devices over ids.
    return SiteConfig(id=site_id, brokers=[BrokerConfig(id=f"a{i + 1}", port=port) for i in range(brokers)])


def fleet(site: SiteConfig, **kw: object) -> FleetConfig:
    defaults: dict[str, object] = {"progress_interval_s": 0.1, "reconnect_min_s": 0.1, "reconnect_max_s": 1.0}
    defaults.update(kw)
    return FleetConfig.model_validate({"site": site, **defaults})


def by_key(received: list[Received]) -> dict[tuple[str, int], list[bytes]]:
    out: dict[tuple[str, int], list[bytes]] = defaultdict(list)
    for m in received:
        t = Telemetry.decode(m.payload)
        out[(t.device, t.seq)].append(m.payload)
    return out


def test_every_acknowledged_message_arrives_exactly_as_sent(
    mosquitto: Callable[..., tuple[str, int]], collectors: Collectors
) -> None:
    host, port = mosquitto()
    site = site_at(unique_site(), port)
    sub = collectors(host, port, [f"telemetry/{site.id}/#"])
    status = collectors(host, port, [f"status/{site.id}/#"])
    acks: list[Ack] = []
    progress: list[FleetStats] = []

    result = asyncio.run(
        run_fleet(
            fleet(site, devices=20, rate=20.0, messages=10, duration_s=45, connect_batch=7),
            progress.append,
            on_ack=acks.append,
        )
    )

    assert result.stats.acked == 200 and not result.stopped
    assert result.stats.errors == 0
    assert result.stats.connected_peak == 20 and result.stats.connected == 0
    # Paced start-up: a progress report after each batch of 7 (7, 14, 20 started).
    assert [s.started for s in progress[:3]] == [7, 14, 20]
    per_device: dict[str, list[int]] = defaultdict(list)
    for a in acks:
        per_device[a.device].append(a.seq)
    for rep in result.devices:
        assert per_device[rep.device] == list(rep.acked_seqs) == list(range(1, 11))
        assert rep.broker == choose_broker(site, rep.device).id
        assert rep.client_id == f"dev-{site.id}-{rep.device}"
    assert {r.broker for r in result.devices} == {"a1", "a2", "a3"}

    wait_for(lambda: sub.count() >= len(acks), 15, "every acknowledged message at the subscriber")
    received = sub.snapshot()
    got = by_key(received)
    for a in acks:
        assert got[(a.device, a.seq)] == [a.payload], f"{a.device}#{a.seq}"
    assert len(received) == len(acks), "no duplicates and nothing unacknowledged without faults"
    assert {m.topic for m in received} == {f"telemetry/{site.id}/{d.device}/reading" for d in result.devices}

    # Presence: online after subscribing, offline on a clean finish.
    wait_for(lambda: status.count() >= 40, 10, "online and offline of every device")
    last = {m.topic: m.payload for m in status.snapshot()}
    assert set(last.values()) == {b"offline"} and len(last) == 20


def test_a_command_reaches_its_device_which_logs_and_counts_it(
    mosquitto: Callable[..., tuple[str, int]], collectors: Collectors, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = mosquitto()
    site = site_at(unique_site(), port)
    status = collectors(host, port, [f"status/{site.id}/#"])
    caplog.set_level(logging.INFO, logger="devices.fleet")
    latest: list[FleetStats] = []

    async def scenario() -> FleetResult:
        stop = asyncio.Event()
        task = asyncio.create_task(run_fleet(fleet(site, devices=5, rate=2.0, duration_s=40), latest.append, stop=stop))
        online = f"status/{site.id}/dev-0003"
        await _until(lambda: any(m.topic == online and m.payload == b"online" for m in status.snapshot()), 15)
        await asyncio.to_thread(publish_once, host, port, f"commands/{site.id}/dev-0003/reboot", b'{"delay_s": 1}', 1)
        await _until(lambda: bool(latest) and latest[-1].commands >= 1, 15)
        stop.set()
        return await task

    result = asyncio.run(scenario())
    assert result.stopped
    counts = {d.device: d.commands for d in result.devices}
    assert counts == {"dev-0001": 0, "dev-0002": 0, "dev-0003": 1, "dev-0004": 0, "dev-0005": 0}
    assert result.stats.commands == 1
    logged = [r.getMessage() for r in caplog.records if "command" in r.getMessage() and r.levelno == logging.INFO]
    assert any(f"dev-0003: command commands/{site.id}/dev-0003/reboot received" in m for m in logged), logged


def test_commands_sent_while_a_device_is_offline_wait_in_its_persistent_session(
    mosquitto: Callable[..., tuple[str, int]],
) -> None:
    host, port = mosquitto()
    site = site_at(unique_site(), port, brokers=1)
    first = asyncio.run(run_fleet(fleet(site, devices=1, rate=50.0, messages=1, duration_s=20)))
    assert first.stats.acked == 1  # connected once: the broker now holds its session and subscription
    publish_once(host, port, f"commands/{site.id}/dev-0001/set", b"42", 1)

    async def again() -> FleetResult:
        stop = asyncio.Event()
        latest: list[FleetStats] = []
        task = asyncio.create_task(run_fleet(fleet(site, devices=1, rate=1.0, duration_s=20), latest.append, stop=stop))
        await _until(lambda: bool(latest) and latest[-1].commands >= 1, 15)
        stop.set()
        return await task

    assert asyncio.run(again()).devices[0].commands == 1


class _RestartableMosquitto:
    """A mosquitto this test can stop and start again on the same port."""

    def __init__(self, tmp: Path) -> None:
        self.exe = require_mosquitto()
        self.port = free_port()
        self.conf = tmp / "restartable.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.log = tmp / "restartable.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        assert wait_until_answers("127.0.0.1", self.port, 15), self.log.read_text()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[_RestartableMosquitto]:
    m = _RestartableMosquitto(tmp_path)
    m.start()
    yield m
    m.stop()


def test_devices_reconnect_after_the_broker_restarts_and_resend_in_order(
    restartable: _RestartableMosquitto, collectors: Collectors
) -> None:
    site = site_at(unique_site(), restartable.port)
    acks: list[Ack] = []
    latest: list[FleetStats] = []
    after: list[Collector] = []

    async def scenario() -> FleetResult:
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_fleet(fleet(site, devices=10, rate=10.0, duration_s=45), latest.append, on_ack=acks.append, stop=stop)
        )
        await _until(lambda: bool(latest) and latest[-1].acked >= 50, 15)
        await asyncio.to_thread(restartable.stop)
        await _until(lambda: latest[-1].connected == 0, 15)
        await asyncio.to_thread(restartable.start)
        await _until(lambda: latest[-1].connected == 10, 20)
        sub = await asyncio.to_thread(collectors, "127.0.0.1", restartable.port, [f"telemetry/{site.id}/#"])
        after.append(sub)
        mark = len(acks)
        # Every device gets messages acknowledged while the new subscriber listens.
        await _until(lambda: {a.device for a in acks[mark:]} == {f"dev-{i:04d}" for i in range(1, 11)}, 15)
        stop.set()
        return await task

    result = asyncio.run(scenario())
    assert result.stats.reconnects >= 10 and result.stats.errors >= 10
    seqs: dict[str, list[int]] = defaultdict(list)
    for a in acks:
        seqs[a.device].append(a.seq)
    for rep in result.devices:
        assert seqs[rep.device] == list(rep.acked_seqs), "acknowledged in order, no gaps, no repeats"
    sub = after[0]
    last = {a.device: a for a in acks}
    wait_for(lambda: sub.count() >= 10, 10, "messages after the restart")
    got = by_key(sub.snapshot())
    for a in last.values():
        assert got.get((a.device, a.seq), [a.payload])[0] == a.payload
    assert all((a.device, a.seq) in got for a in last.values())


async def _until(predicate: Callable[[], bool], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)


WATCH_SCRIPT = textwrap.dedent(
    """
    import sys
    import typer
    from typer.testing import CliRunner
    from edgemq.watch_cmd import watch

    app = typer.Typer()
    app.command("watch")(watch)

    @app.callback()
    def root() -> None:
        pass

    result = CliRunner().invoke(app, sys.argv[1:])
    sys.stdout.write(result.output)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback
        traceback.print_exception(result.exception)
    sys.exit(result.exit_code)
    """
)


def test_watch_prints_one_line_per_message_when_not_on_a_terminal(
    mosquitto: Callable[..., tuple[str, int]], tmp_path: Path
) -> None:
    host, port = mosquitto()
    site = unique_site()
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(
        f'run_dir = "run"\n[cloud]\nembedded = false\nhost = "{host}"\nport = {port}\n'
        f'[[sites]]\nid = "{site}"\n[[sites.brokers]]\nid = "a1"\nport = {port}\n'
    )
    # Retained, so they reach the watcher whenever it subscribes (no race with its start-up).
    ours = Telemetry(device="dev-0001", site=site, seq=1, ts=0.0, readings={"temp": 21.5}).encode()
    publish_once(host, port, f"telemetry/{site}/dev-0001/reading", ours, 1, True)
    publish_once(host, port, f"telemetry/{site}/pump-7/temp", b"21.5", 1, True)
    publish_once(host, port, f"telemetry/other-{site}/x/y", b"not watched", 1, True)

    for broker in ("cloud", f"{site}/a1"):
        args = ["watch", f"telemetry/{site}/#", "--broker", broker, "--config", str(cluster), "--duration", "1.5"]
        proc = subprocess.run(
            [sys.executable, "-c", WATCH_SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lines = proc.stdout.splitlines()
        assert any(line.endswith(f" telemetry/{site}/dev-0001/reading temp=21.5 #1 (retained)") for line in lines), (
            proc.stdout
        )
        assert any(line.endswith(f" telemetry/{site}/pump-7/temp 21.5 (retained)") for line in lines), proc.stdout
        assert "not watched" not in proc.stdout
        assert "2 messages from 2 sources" in proc.stdout
