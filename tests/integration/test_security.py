"""Authentication, access control and TLS on a real broker, over real sockets.

Each test starts ``EdgeBroker`` in-process (its own event-loop thread) on free
127.0.0.1 ports, with ``amqtt_config`` plus ``security_plugins`` and
``broker_listeners``, and talks to it with paho clients. Certificates are throwaway
(trustme). For every rule, the allowed case works and the denied case is refused.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import trustme
from argon2 import PasswordHasher

from broker import credentials
from broker.config import BrokerConfig, SecurityConfig
from broker.credentials import CredentialStore
from broker.security import broker_listeners, security_plugins
from broker.server import EdgeBroker, amqtt_config
from tests.integration.conftest import free_port, wait_for

pytestmark = pytest.mark.timeout(120)

SITE = "plant-1"
SECRET = "correct-horse-battery-staple-7f3a"
NOT_AUTHORIZED = 135  # paho 2 reports MQTT 3.1.1's CONNACK code 5 as reason code 135
WAIT = 20.0  # generous: the machine is shared with other test runs


@dataclass
class Running:
    port: int
    tls_port: int | None
    broker: EdgeBroker
    stop: Callable[[], None]


def _start(security: SecurityConfig) -> Running:
    b = BrokerConfig(id="a1", port=free_port(), tls_port=free_port() if security.tls else None)
    config = amqtt_config(b.host, b.port)
    config["listeners"] = broker_listeners(security.tls, b)
    config["plugins"] = security_plugins(security, site=SITE)
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        holder["loop"] = loop

        async def main() -> None:
            stop = asyncio.Event()
            holder["stop"] = stop
            broker = EdgeBroker(config)
            holder["broker"] = broker
            await broker.start()
            ready.set()
            await stop.wait()
            await broker.shutdown()

        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # reported by the waiting test
            holder["error"] = exc
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="secure-broker", daemon=True)
    thread.start()
    assert ready.wait(WAIT), "broker did not start"
    if "error" in holder:
        raise holder["error"]

    def stop() -> None:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(WAIT)

    return Running(b.port, b.tls_port, holder["broker"], stop)


@dataclass
class Client:
    """A paho client whose CONNACK, SUBACKs and messages the test can wait for."""

    client: mqtt.Client
    connack: int | None = None
    closed: threading.Event = field(default_factory=threading.Event)
    acked: threading.Event = field(default_factory=threading.Event)
    granted: dict[int, list[int]] = field(default_factory=dict)
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def connected(self) -> bool:
        return self.connack == 0

    def subscribe(self, topic_filter: str, qos: int = 1) -> bool:
        """Subscribe; True if granted, False on the failure return code (0x80)."""
        _, mid = self.client.subscribe(topic_filter, qos)
        assert mid is not None, "paho refused to send the SUBSCRIBE"
        wait_for(lambda: mid in self.granted, WAIT, f"SUBACK for {topic_filter}")
        return all(code < 0x80 for code in self.granted[mid])

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=WAIT)
        assert info.is_published(), f"no PUBACK for {topic}"

    def topics(self) -> list[str]:
        with self.lock:
            return [t for t, _, _ in self.messages]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def connect() -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def factory(
        port: int,
        *,
        user: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        tls: ssl.SSLContext | None = None,
        clean: bool = True,
    ) -> Client:
        paho = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{uuid.uuid4().hex[:8]}", clean_session=clean
        )
        paho.reconnect_delay_set(60, 120)  # a refused client must not come back during the test
        c = Client(paho)
        made.append(c)

        def on_connect(cl: Any, ud: Any, flags: Any, rc: Any, props: Any = None) -> None:
            c.connack = int(rc.value) if hasattr(rc, "value") else int(rc)
            c.acked.set()

        def on_subscribe(cl: Any, ud: Any, mid: int, codes: Any, props: Any = None) -> None:
            c.granted[mid] = [int(x.value) if hasattr(x, "value") else int(x) for x in codes]

        def on_message(cl: Any, ud: Any, msg: mqtt.MQTTMessage) -> None:
            with c.lock:
                c.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

        paho.on_connect = on_connect
        paho.on_subscribe = on_subscribe
        paho.on_message = on_message
        paho.on_disconnect = lambda *a: c.closed.set()
        if user is not None:
            paho.username_pw_set(user, password)
        if tls is not None:
            paho.tls_set_context(tls)
        try:
            paho.connect("127.0.0.1", port, keepalive=30)
        except (ssl.SSLError, OSError):
            c.closed.set()  # refused during the TLS handshake
            return c
        paho.loop_start()
        wait_for(lambda: c.acked.is_set() or c.closed.is_set(), WAIT, "CONNACK or close")
        return c

    yield factory
    for c in made:
        c.close()


@pytest.fixture
def users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CredentialStore:
    # Tiny Argon2 parameters keep the tests fast; the code path and format are the real ones.
    cheap = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
    monkeypatch.setattr(credentials, "_HASHER", cheap)
    monkeypatch.setattr(credentials, "_DUMMY_HASH", cheap.hash("dummy"))
    store = CredentialStore(tmp_path / "users.json")
    for name in ("dev-1", "dev-2"):
        store.add(name, "device", password=SECRET + name, site=SITE)
    store.add("wall", "dashboard", password=SECRET + "wall")
    store.add("ops", "operator", password=SECRET + "ops")
    return store


@pytest.fixture
def secure(users: CredentialStore) -> Iterator[Running]:
    running = _start(SecurityConfig(profile="secure", credentials_file=users.path))
    yield running
    running.stop()


def _login(connect: Callable[..., Client], port: int, name: str, **kw: Any) -> Client:
    c = connect(port, user=name, password=SECRET + name, client_id=f"dev-{SITE}-{name}", **kw)
    assert c.connected, f"{name} could not log in (CONNACK {c.connack})"
    return c


def test_passwords_and_anonymous(secure: Running, connect: Callable[..., Client]) -> None:
    assert _login(connect, secure.port, "dev-1").connected
    wrong = connect(secure.port, user="dev-1", password="not-the-password")
    assert wrong.connack == NOT_AUTHORIZED and wrong.closed.wait(WAIT)
    assert connect(secure.port, user="nobody", password=SECRET).connack == NOT_AUTHORIZED
    assert connect(secure.port).connack == NOT_AUTHORIZED  # anonymous is off in the secure profile


def test_device_publishes_only_its_own_topics(secure: Running, connect: Callable[..., Client]) -> None:
    wall = _login(connect, secure.port, "wall")
    assert wall.subscribe(f"telemetry/{SITE}/#") and wall.subscribe(f"status/{SITE}/#")
    dev1 = _login(connect, secure.port, "dev-1")
    dev1.publish(f"telemetry/{SITE}/dev-2/temp", b"forged")  # another device's topic
    dev1.publish(f"status/{SITE}/dev-2", b"forged")
    dev1.publish(f"telemetry/{SITE}/dev-1/temp", b"21.5")
    dev1.publish(f"status/{SITE}/dev-1", b"online")
    wait_for(lambda: f"status/{SITE}/dev-1" in wall.topics(), WAIT, "dev-1's own status")
    assert wall.topics() == [f"telemetry/{SITE}/dev-1/temp", f"status/{SITE}/dev-1"]


def test_wildcard_subscribe_cannot_reach_other_devices(secure: Running, connect: Callable[..., Client]) -> None:
    dev1 = _login(connect, secure.port, "dev-1")
    for denied in (f"commands/{SITE}/+/#", f"commands/{SITE}/#", "#", f"telemetry/{SITE}/#"):
        assert not dev1.subscribe(denied), denied
    assert dev1.subscribe(f"commands/{SITE}/dev-1/#")
    wall = _login(connect, secure.port, "wall")
    assert not wall.subscribe(f"commands/{SITE}/#")  # dashboards read telemetry and status only
    ops = _login(connect, secure.port, "ops")
    ops.publish(f"commands/{SITE}/dev-2/reboot", b"x")
    ops.publish(f"commands/{SITE}/dev-1/reboot", b"y")
    wait_for(lambda: dev1.topics() != [], WAIT, "dev-1's command")
    assert dev1.topics() == [f"commands/{SITE}/dev-1/reboot"]
    dev2 = _login(connect, secure.port, "dev-2")
    dev2.publish(f"commands/{SITE}/dev-1/reboot", b"forged")  # devices do not command
    ops.publish(f"commands/{SITE}/dev-1/stop", b"z")
    wait_for(lambda: len(dev1.topics()) == 2, WAIT, "second command")
    assert dev1.topics() == [f"commands/{SITE}/dev-1/reboot", f"commands/{SITE}/dev-1/stop"]


def test_retained_messages_on_denied_topics(secure: Running, connect: Callable[..., Client]) -> None:
    dev1 = _login(connect, secure.port, "dev-1")
    dev1.publish(f"status/{SITE}/dev-2", b"forged-offline", retain=True)  # denied: must not be retained
    dev1.publish(f"status/{SITE}/dev-1", b"online", retain=True)
    ops = _login(connect, secure.port, "ops")
    ops.publish(f"commands/{SITE}/dev-2/config", b"for-dev-2", retain=True)
    ops.publish(f"commands/{SITE}/dev-1/config", b"for-dev-1", retain=True)
    # A persistent dashboard subscription on status/# exists; stock amqtt would replay its
    # retained matches to every client that connects, whatever that client may read.
    wall = _login(connect, secure.port, "wall", clean=False)
    assert wall.subscribe(f"status/{SITE}/#")
    wait_for(lambda: f"status/{SITE}/dev-1" in wall.topics(), WAIT, "retained status of dev-1")
    dev2 = _login(connect, secure.port, "dev-2")
    assert dev2.subscribe(f"commands/{SITE}/dev-2/#")
    wait_for(lambda: dev2.topics() != [], WAIT, "dev-2's retained command")
    dev1b = _login(connect, secure.port, "dev-1")
    assert dev1b.subscribe(f"commands/{SITE}/dev-1/#")
    wait_for(lambda: dev1b.topics() != [], WAIT, "dev-1's retained command")
    # Everything due has arrived; a round trip more makes sure nothing else is on the way.
    ops.publish(f"commands/{SITE}/dev-1/ping", b"p")
    wait_for(lambda: f"commands/{SITE}/dev-1/ping" in dev1b.topics(), WAIT, "ping")
    assert wall.topics() == [f"status/{SITE}/dev-1"]
    assert dev2.topics() == [f"commands/{SITE}/dev-2/config"]
    assert dev1b.topics() == [f"commands/{SITE}/dev-1/config", f"commands/{SITE}/dev-1/ping"]


def test_another_user_cannot_take_over_a_devices_client_id(secure: Running, connect: Callable[..., Client]) -> None:
    assert _login(connect, secure.port, "dev-1", clean=False).connected
    thief = connect(secure.port, user="dev-2", password=SECRET + "dev-2", client_id=f"dev-{SITE}-dev-1", clean=False)
    assert thief.connack == NOT_AUTHORIZED
    # The session (subscriptions, queued messages) stays dev-1's: dev-1 gets back in.
    assert _login(connect, secure.port, "dev-1", clean=False).connected


@pytest.mark.parametrize("clean", [False, True])
def test_a_refused_client_does_not_disconnect_the_device(
    secure: Running, connect: Callable[..., Client], clean: bool
) -> None:
    dev1 = _login(connect, secure.port, "dev-1", clean=False)
    thief = connect(secure.port, user="dev-1", password="wrong", client_id=f"dev-{SITE}-dev-1", clean=clean)
    assert thief.connack == NOT_AUTHORIZED
    assert dev1.subscribe(f"commands/{SITE}/dev-1/#")  # still connected and served
    assert not dev1.closed.is_set()


@pytest.mark.parametrize("clean", [False, True])
def test_a_refused_client_leaves_the_offline_session_alone(
    secure: Running, connect: Callable[..., Client], clean: bool
) -> None:
    cid = f"dev-{SITE}-dev-1"
    dev1 = _login(connect, secure.port, "dev-1", clean=False)
    assert dev1.subscribe(f"commands/{SITE}/dev-1/#")
    dev1.close()
    wait_for(lambda: cid not in secure.broker.client_ids(), WAIT, "dev-1 to be offline")
    ops = _login(connect, secure.port, "ops")
    ops.publish(f"commands/{SITE}/dev-1/reboot", b"queued")  # kept for dev-1's persistent session
    # A wrong password with a will: with clean session amqtt would delete the session (and
    # the queued command) before authenticating; without, give it the thief's will.
    paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=clean)
    paho.username_pw_set("dev-1", "wrong")
    paho.will_set(f"status/{SITE}/dev-1", b"forged-will", qos=1)
    refused: list[int] = []
    paho.on_connect = lambda cl, ud, flags, rc, props=None: refused.append(int(rc.value))
    paho.reconnect_delay_set(60, 120)
    paho.connect("127.0.0.1", secure.port, keepalive=30)
    paho.loop_start()
    try:
        wait_for(lambda: refused != [], WAIT, "the thief's CONNACK")
    finally:
        paho.loop_stop()
    assert refused == [NOT_AUTHORIZED]
    session = secure.broker.sessions[cid][0]
    assert not session.will_flag and session.will_message is None
    back = _login(connect, secure.port, "dev-1", clean=False)
    wait_for(lambda: back.topics() != [], WAIT, "the queued command")
    assert back.topics() == [f"commands/{SITE}/dev-1/reboot"]


def test_secrets_never_in_logs(users: CredentialStore, connect: Callable[..., Client], caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)  # everything, amqtt's own loggers included
    running = _start(SecurityConfig(profile="secure", credentials_file=users.path))
    try:
        bad = connect(running.port, user="dev-1", password=SECRET + "dev-1" + "-wrong")
        assert bad.connack == NOT_AUTHORIZED
        assert _login(connect, running.port, "dev-1").connected
        wait_for(lambda: "authenticated as dev-1" in caplog.text, WAIT, "the login to be logged")
    finally:
        running.stop()
    assert "refused client" in caplog.text  # the failure was logged...
    assert SECRET not in caplog.text  # ...without the password, wrong or right


# -- TLS ---------------------------------------------------------------------------------


@dataclass
class Pki:
    ca: trustme.CA
    server_cert: Path
    server_key: Path
    ca_file: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    server.private_key_and_cert_chain_pem.write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return Pki(ca, cert, key, ca_file)


def _client_ctx(trust: trustme.CA, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    trust.configure_trust(ctx)
    if cert is not None:
        cert.configure_cert(ctx)
    return ctx


@pytest.fixture
def tls_broker(users: CredentialStore, pki: Pki) -> Iterator[Running]:
    tls = {"cert_file": pki.server_cert, "key_file": pki.server_key, "ca_file": pki.ca_file}
    running = _start(SecurityConfig.model_validate({"profile": "secure", "credentials_file": users.path, "tls": tls}))
    yield running
    running.stop()


def test_tls_password_login_and_plaintext_refused(
    tls_broker: Running, pki: Pki, connect: Callable[..., Client]
) -> None:
    assert tls_broker.tls_port is not None
    assert _login(connect, tls_broker.tls_port, "dev-1", tls=_client_ctx(pki.ca)).connected
    plain = connect(tls_broker.tls_port, user="dev-1", password=SECRET + "dev-1")  # plaintext to the TLS port
    assert not plain.connected and plain.closed.wait(WAIT)
    # The client refuses a broker whose certificate it cannot verify.
    other_ca = trustme.CA()
    assert not connect(
        tls_broker.tls_port, user="dev-1", password=SECRET + "dev-1", tls=_client_ctx(other_ca)
    ).connected


def test_client_certificate_cn_is_the_device_id(tls_broker: Running, pki: Pki, connect: Callable[..., Client]) -> None:
    assert tls_broker.tls_port is not None
    dev7 = pki.ca.issue_cert("dev-7", common_name="dev-7")
    c = connect(tls_broker.tls_port, client_id=f"dev-{SITE}-dev-7", tls=_client_ctx(pki.ca, dev7))
    assert c.connected  # no password: the verified certificate is the credential
    assert c.subscribe(f"commands/{SITE}/dev-7/#") and not c.subscribe(f"commands/{SITE}/dev-8/#")
    # A username that is not the certificate's CN is refused.
    liar = connect(tls_broker.tls_port, user="dev-1", password=SECRET + "dev-1", tls=_client_ctx(pki.ca, dev7))
    assert liar.connack == NOT_AUTHORIZED


def test_untrusted_and_expired_client_certificates_are_refused(
    tls_broker: Running, pki: Pki, connect: Callable[..., Client]
) -> None:
    assert tls_broker.tls_port is not None
    rogue = trustme.CA().issue_cert("dev-7", common_name="dev-7")
    assert not connect(tls_broker.tls_port, tls=_client_ctx(pki.ca, rogue)).connected
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    expired = pki.ca.issue_cert(
        "dev-7", common_name="dev-7", not_before=past - datetime.timedelta(days=30), not_after=past
    )
    assert not connect(tls_broker.tls_port, tls=_client_ctx(pki.ca, expired)).connected
    # Control: the same identity with a valid certificate gets in.
    assert connect(
        tls_broker.tls_port, tls=_client_ctx(pki.ca, pki.ca.issue_cert("dev-7", common_name="dev-7"))
    ).connected
