"""`edgemq cluster up` with the secure profile (`[security] generate = true`), end to end.

One cluster run proves both the one-command secure start and that secrets stay secret:
anonymous clients are refused, the generated users work over TLS with the generated CA,
telemetry flows edge -> cloud (the fleet's and ours), the uplink reconnects after the cloud
is killed; then every log, the status output (human and JSON), the stats payloads captured
at the cloud, the stats files and every metrics endpoint are searched for the passwords.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from broker import provision
from broker.config import load
from tests.integration.conftest import free_port, wait_for

pytestmark = [pytest.mark.timeout(300)]

SITE = "plant-1"


DASHBOARD_PORT = free_port()


def edgemq(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGEMQ_DASHBOARD_PORT": str(DASHBOARD_PORT)}
    return subprocess.run(
        [sys.executable, "-m", "edgemq", *args],
        capture_output=True,
        text=True,
        cwd=str(cwd),
        timeout=150,
        check=False,
        env=env,
    )


def secure_toml(brokers: int = 2) -> str:
    lines = [
        'run_dir = "run"',
        "[cloud]",
        'host = "127.0.0.1"',
        f"port = {free_port()}",
        f"tls_port = {free_port()}",
        "[bridge]",
        "reconnect_min_s = 0.2",
        "reconnect_max_s = 1.0",
        "[security]",
        'profile = "secure"',
        "generate = true",
        "[[sites]]",
        f'id = "{SITE}"',
    ]
    for i in range(brokers):
        lines += ["[[sites.brokers]]", f'id = "a{i + 1}"', f"port = {free_port()}", f"tls_port = {free_port()}"]
    return "\n".join(lines) + "\n"


class Client:
    """A paho client (own thread) that logs in, optionally over TLS, and records what it receives."""

    def __init__(
        self,
        port: int,
        *,
        user: str | None = None,
        password: str | None = None,
        ca: Path | str | None = None,
        topics: Iterable[str] = (),
    ) -> None:
        self.rc: int | None = None
        self.connected = threading.Event()
        self.answered = threading.Event()
        self.subscribed = threading.Event()
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.topics = list(topics)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
        if user is not None:
            self.client.username_pw_set(user, password)
        if ca is not None:  # "system": the system's CAs
            self.client.tls_set_context(ssl.create_default_context(cafile=None if ca == "system" else str(ca)))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.rc = rc.value if hasattr(rc, "value") else int(rc)
        self.answered.set()
        if self.rc == 0:
            self.connected.set()
            if self.topics:
                client.subscribe([(t, 1) for t in self.topics])
        else:
            client.disconnect()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def received(self, topic_prefix: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.messages if t.startswith(topic_prefix)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def refused(port: int, **login: Any) -> int | None:
    """The CONNACK code a client gets (0: accepted; paho reports 3.1.1's 4 and 5 as 134 and 135)."""
    c = Client(port, **login)
    try:
        assert c.answered.wait(15), "no CONNACK"
        return c.rc
    finally:
        c.close()


def find_secrets(secrets: dict[str, str], places: dict[str, bytes]) -> list[str]:
    """'<secret name> in <place>' for every secret found in any place."""
    return [
        f"{name} in {where}"
        for where, data in places.items()
        for name, value in secrets.items()
        if value.encode() in data
    ]


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_secure_cluster_up_refuses_anonymous_flows_over_tls_and_leaks_no_secret(tmp_path: Path) -> None:
    cfg_path = tmp_path / "cluster.toml"
    cfg_path.write_text(secure_toml())
    clients: list[Client] = []
    try:
        up = edgemq("cluster", "up", "--config", str(cfg_path), "--devices", "3", "--device-rate", "5", cwd=tmp_path)
        assert up.returncode == 0, up.stdout + up.stderr
        cfg = load(cfg_path)
        lay = provision.Layout(cfg.run_dir)
        # How to connect: the CA and the users, not the passwords.
        assert f"--cafile {lay.ca_cert}" in up.stdout and "-u dashboard" in up.stdout
        cloud, (a1, a2) = cfg.cloud, cfg.sites[0].brokers
        assert cloud.tls_port and a1.tls_port
        secrets = {
            name: provision.password(cfg, name) or ""
            for name in ("bridge-plant-1", "dashboard", "operator", "peer-plant-1", "dev-0001", "dev-0002", "dev-0003")
        }
        assert all(secrets.values()), "generated passwords missing"
        wrong = f"wrong-{uuid.uuid4().hex}"
        secrets["wrong password"] = wrong

        # Anonymous is refused everywhere: plaintext and TLS, cloud and edge. A wrong password too.
        ca = lay.ca_cert
        for port, via in ((cloud.port, None), (a1.port, None), (cloud.tls_port, ca), (a1.tls_port, ca)):
            assert refused(port, ca=via) in (134, 135), port  # bad credentials / not authorized
        assert refused(a1.tls_port, user="dev-0001", password=wrong, ca=lay.ca_cert) in (134, 135)
        # A generated user over TLS, verified against the generated CA; plaintext to the TLS port fails.
        assert refused(a2.tls_port, user="dev-0002", password=secrets["dev-0002"], ca=lay.ca_cert) == 0
        with pytest.raises(ssl.SSLCertVerificationError):
            refused(cloud.tls_port, user="dashboard", password=secrets["dashboard"], ca="system")

        # The cloud, as the dashboard user over TLS: telemetry and the brokers' stats.
        watcher = Client(
            cloud.tls_port,
            user="dashboard",
            password=secrets["dashboard"],
            ca=lay.ca_cert,
            topics=["telemetry/+/#", "edgemq/+/+/stats"],
        )
        clients.append(watcher)
        assert watcher.subscribed.wait(15)
        device = Client(a1.tls_port, user="dev-0001", password=secrets["dev-0001"], ca=lay.ca_cert)
        clients.append(device)
        assert device.connected.wait(15)
        device.client.publish(f"telemetry/{SITE}/dev-0001/manual", b"m1", qos=1)
        wait_for(lambda: b"m1" in watcher.received(f"telemetry/{SITE}/dev-0001/manual"), 30, "edge -> cloud over TLS")
        # The fleet logged in with its generated users and its telemetry reaches the cloud.
        wait_for(lambda: len(watcher.received(f"telemetry/{SITE}/dev-0003/")) > 0, 60, "fleet telemetry at the cloud")
        wait_for(lambda: len(watcher.received(f"edgemq/{SITE}/")) >= 2, 30, "stats at the cloud")

        # The site's peer links logged in too (their generated user, over TLS): a1 and a2 see each other.
        def peer_state(b: str, peer: str) -> str:
            snap = json.loads((cfg.run_dir / "stats" / f"{SITE}.{b}.json").read_text())
            return str(snap["site_peers"]["peers"][peer]["state"])

        wait_for(lambda: peer_state("a1", "a2") == "up" and peer_state("a2", "a1") == "up", 30, "peer links up")
        # The uplinks went to the cloud's TLS port (anonymous and plaintext logins are refused anyway).
        edge_log = (cfg.run_dir / "logs" / f"{SITE}.a1.log").read_text()
        assert f"connected to {cloud.host}:{cloud.tls_port}" in edge_log

        # Kill the cloud: supervisord restarts it, the uplinks reconnect with their credentials.
        rows = status_rows(cfg_path)
        os.kill(rows["cloud"]["pid"], signal.SIGKILL)
        wait_for(
            lambda: all(
                (status_rows(cfg_path)[f"{SITE}.{b}"].get("reconnects") or 0) >= 1
                and status_rows(cfg_path)[f"{SITE}.{b}"].get("uplink") == "connected"
                for b in ("a1", "a2")
            ),
            90,
            "uplinks reconnected",
            interval=0.5,
        )
        wait_for(watcher.connected.is_set, 30, "watcher back")
        before = len(watcher.received(f"telemetry/{SITE}/dev-0001/manual"))
        device.client.publish(f"telemetry/{SITE}/dev-0001/manual", b"m2", qos=1)
        wait_for(
            lambda: len(watcher.received(f"telemetry/{SITE}/dev-0001/manual")) > before,
            60,
            "telemetry after the cloud restart",
        )
        dash = status_rows(cfg_path)["dashboard"]
        assert dash["answers"], dash
        # The dashboard logged in at the cloud (its generated user, over TLS) and sees telemetry.
        dash_stats = cfg.run_dir / "stats" / "dashboard.json"
        wait_for(lambda: json.loads(dash_stats.read_text())["dashboard"]["messages"] > 0, 30, "dashboard fed")
        # `edgemq watch` logs in as the generated operator (over TLS) and sees the fleet.
        watch = edgemq(
            "watch",
            f"telemetry/{SITE}/#",
            "--broker",
            "cloud",
            "--duration",
            "5",
            "--config",
            str(cfg_path),
            cwd=tmp_path,
        )
        assert watch.returncode == 0 and f"telemetry/{SITE}/dev-000" in watch.stdout, watch.stdout + watch.stderr

        # Secrets: logs, status (human and JSON), stats payloads and files, every metrics endpoint.
        places = files_under(cfg.run_dir / "logs") | files_under(cfg.run_dir / "stats")
        places["status"] = edgemq("cluster", "status", "--config", str(cfg_path), cwd=tmp_path).stdout.encode()
        status_json = edgemq("cluster", "status", "--config", str(cfg_path), "--json", cwd=tmp_path)
        places["status --json"] = status_json.stdout.encode()
        places["cluster up output"] = (up.stdout + up.stderr).encode()
        stats = watcher.received("edgemq/")
        places["stats payloads at the cloud"] = b"\n".join(stats)
        urls = [r["metrics"] for r in json.loads(status_json.stdout) if r.get("metrics")]
        assert len(urls) >= 4, urls  # cloud, two edges, dashboard
        for url in urls:
            with urllib.request.urlopen(url, timeout=10) as resp:
                places[url] = resp.read()
        assert len(places) > 8 and all(len(v) > 0 for k, v in places.items() if "status" in k)
        assert b"refused" in b"".join(v for k, v in places.items() if k.endswith(".log")), "no failed login logged"
        leaks = find_secrets(secrets, places)
        assert not leaks, leaks
        # The search can fail: a secret planted in a file of our own is found.
        planted = cfg.run_dir / "logs" / "planted.log"
        planted.write_text(f"connect user dev-0001 password {secrets['dev-0001']}\n")
        assert find_secrets(secrets, files_under(cfg.run_dir / "logs")) == [f"dev-0001 in {planted}"]
        planted.unlink()
    finally:
        for c in clients:
            c.close()
        down = edgemq("cluster", "down", "--config", str(cfg_path), cwd=tmp_path)
    assert down.returncode == 0, down.stderr


def status_rows(cfg_path: Path) -> dict[str, dict[str, Any]]:
    proc = edgemq("cluster", "status", "--config", str(cfg_path), "--json", cwd=cfg_path.parent)
    assert proc.returncode == 0, proc.stderr
    return {row["component"]: row for row in json.loads(proc.stdout)}
