"""edgemq's own clients against a secure broker: TLS-only probes, the fleet's probe with credentials.

A real broker (``EdgeBroker`` with the security plugins, in a thread) on free ports; throwaway
certificates from trustme.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from broker.client_auth import probe_target, site_login
from broker.config import ClusterConfig, SecurityConfig
from broker.credentials import CredentialStore
from broker.probe import mqtt_answers
from devices.fleet import probe_broker
from tests.integration.test_security import SECRET, SITE, Pki, Running, _start, pki, users  # noqa: F401

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def tls_only(users: CredentialStore, pki: Pki) -> Iterator[Running]:  # noqa: F811
    tls = {"cert_file": pki.server_cert, "key_file": pki.server_key, "plaintext": False}
    running = _start(SecurityConfig.model_validate({"profile": "secure", "credentials_file": users.path, "tls": tls}))
    yield running
    running.stop()


def _cluster(running: Running, ca_file: Path, users_path: Path) -> ClusterConfig:
    return ClusterConfig.model_validate(
        {
            "cloud": {"embedded": False},
            "sites": [{"id": SITE, "brokers": [{"id": "a1", "port": running.port, "tls_port": running.tls_port}]}],
            "security": {
                "profile": "secure",
                "credentials_file": str(users_path),
                "tls": {"cert_file": "unused.pem", "key_file": "unused.key", "plaintext": False},
                "client": {"tls": {"ca_file": str(ca_file)}},
            },
        }
    )


def test_probe_of_a_tls_only_broker_uses_its_tls_port_and_verifies_it(
    tls_only: Running,
    pki: Pki,  # noqa: F811
    users: CredentialStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    cfg = _cluster(tls_only, pki.ca_file, users.path)
    host, port, ctx = probe_target(cfg, cfg.sites[0].brokers[0])
    assert port == tls_only.tls_port and ctx is not None
    assert mqtt_answers(host, port, 5.0, ctx)
    # Plaintext to the TLS port gets no CONNACK; a CA that did not sign the broker fails the handshake.
    assert not mqtt_answers(host, port, 5.0)
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    _, _, wrong = probe_target(_cluster(tls_only, other, users.path), cfg.sites[0].brokers[0])
    assert not mqtt_answers(host, port, 5.0, wrong)
    # The same login is what a peer link would use: TLS towards the broker's TLS port.
    assert site_login(cfg, "peer", SITE).endpoint(host, tls_only.port, tls_only.tls_port) == (host, port)


def test_the_fleets_probe_logs_in(tls_only: Running, pki: Pki, users: CredentialStore) -> None:  # noqa: F811
    ctx = site_login(_cluster(tls_only, pki.ca_file, Path("u.json")), "peer").ssl_context()
    assert tls_only.tls_port is not None and ctx is not None

    def probe(user: str | None, password: str | None) -> bool:
        return asyncio.run(
            probe_broker(
                "127.0.0.1",
                tls_only.tls_port or 0,
                f"probe-{user}",
                10.0,
                username=user,
                password=password,
                ssl_context=ctx,
            )
        )

    assert probe("dev-1", SECRET + "dev-1")
    assert not probe("dev-1", "wrong")
    assert not probe(None, None)  # anonymous is off
    # A long password takes the CONNECT past 127 bytes (two-byte remaining length).
    users.add("dev-9", "device", password="x" * 300, site=SITE)
    assert probe("dev-9", "x" * 300)
    assert not probe("dev-9", "x" * 299)
