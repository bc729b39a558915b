"""The bridge's uplink verifies the cloud broker's certificate (Debian's Mosquitto with TLS).

A Mosquitto TLS listener with a throwaway (trustme) certificate plays the cloud. The
uplink connects when it trusts that certificate's CA and the name matches; it refuses
(never reaches "connected", publishes nothing) a cloud whose certificate comes from
a CA it does not trust, or names another host.
"""

from __future__ import annotations

import asyncio
import getpass
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from bridge.link import Uplink
from broker.config import BridgeConfig, CloudConfig, TlsConfig
from tests.integration.conftest import free_port, require_mosquitto

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

WAIT = 30.0


class _EmptyStore:
    """Nothing to forward: the test is about the connection."""

    async def read(self, after_seq: int, limit: int) -> list[Any]:
        return []

    def ack(self, seqs: list[int]) -> None:
        pass

    async def wait_for_data(self, after_seq: int, timeout: float) -> bool:
        await asyncio.sleep(min(timeout, 0.5))
        return False


async def _inject(topic: str, payload: bytes, qos: int, retain: bool) -> None:
    pass


@pytest.fixture
def tls_cloud(tmp_path: Path) -> Iterator[Callable[[trustme.CA, str], int]]:
    """Start Mosquitto with a TLS listener whose certificate ``ca`` issued for ``name``."""
    exe = require_mosquitto()
    procs: list[subprocess.Popen[bytes]] = []

    def start(ca: trustme.CA, name: str) -> int:
        port = free_port()
        cert = ca.issue_cert(name)
        certfile, keyfile, cafile = tmp_path / f"{port}.pem", tmp_path / f"{port}.key", tmp_path / f"{port}-ca.pem"
        cert.cert_chain_pems[0].write_to_path(str(certfile))
        cert.private_key_pem.write_to_path(str(keyfile))
        ca.cert_pem.write_to_path(str(cafile))
        conf = tmp_path / f"mosquitto-{port}.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\ncafile {cafile}\ncertfile {certfile}\nkeyfile {keyfile}\n"
            "allow_anonymous true\npersistence false\nlog_dest stderr\n"
            # Started as root, mosquitto drops to user 'mosquitto', who cannot read pytest's
            # private tmp dir; 'user' is ignored when not started as root.
            f"user {getpass.getuser()}\n"
        )
        log = open(tmp_path / f"mosquitto-{port}.log", "ab")  # noqa: SIM115
        procs.append(subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT))
        log.close()
        end = time.monotonic() + WAIT
        trusting = ssl.create_default_context()
        trusting.check_hostname = False
        trusting.verify_mode = ssl.CERT_NONE
        while time.monotonic() < end:
            if procs[-1].poll() is not None:
                raise AssertionError("mosquitto exited: " + (tmp_path / f"mosquitto-{port}.log").read_text()[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, trusting.wrap_socket(raw):
                    return port
            except OSError:
                time.sleep(0.1)
        raise AssertionError("mosquitto TLS listener did not come up")

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _run_uplink(port: int, ca_file: Path, until: Callable[[Uplink], bool]) -> Uplink:
    cloud = CloudConfig(embedded=False, host="127.0.0.1", port=port, tls=TlsConfig(ca_file=ca_file))
    bridge = BridgeConfig(reconnect_min_s=0.2, reconnect_max_s=1.0)
    uplink = Uplink(cloud=cloud, bridge=bridge, site="plant-1", broker_id="a1", store=_EmptyStore(), inject=_inject)

    async def main() -> None:
        task = asyncio.create_task(uplink.run(), name="uplink")
        end = time.monotonic() + WAIT
        while not until(uplink) and time.monotonic() < end:
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    return uplink


def _ca_file(ca: trustme.CA, path: Path) -> Path:
    ca.cert_pem.write_to_path(str(path))
    return path


def test_uplink_connects_to_a_cloud_it_can_verify(tls_cloud: Callable[[trustme.CA, str], int], tmp_path: Path) -> None:
    ca = trustme.CA()
    port = tls_cloud(ca, "127.0.0.1")
    uplink = _run_uplink(port, _ca_file(ca, tmp_path / "trusted.pem"), lambda u: u.connects >= 1)
    assert uplink.connects >= 1


def test_uplink_refuses_a_cloud_from_an_untrusted_ca(
    tls_cloud: Callable[[trustme.CA, str], int], tmp_path: Path
) -> None:
    port = tls_cloud(trustme.CA(), "127.0.0.1")
    other = _ca_file(trustme.CA(), tmp_path / "other-ca.pem")
    uplink = _run_uplink(port, other, lambda u: u.connects > 0 or bool(u.last_error))
    assert uplink.connects == 0 and uplink.forwarded == 0
    assert uplink.last_error is not None and "CERTIFICATE_VERIFY_FAILED" in uplink.last_error


def test_uplink_refuses_a_certificate_for_another_host(
    tls_cloud: Callable[[trustme.CA, str], int], tmp_path: Path
) -> None:
    ca = trustme.CA()
    port = tls_cloud(ca, "cloud.example.net")  # trusted CA, but not the name we dial
    uplink = _run_uplink(port, _ca_file(ca, tmp_path / "ca.pem"), lambda u: u.connects > 0 or bool(u.last_error))
    assert uplink.connects == 0
    assert uplink.last_error is not None and "CERTIFICATE_VERIFY_FAILED" in uplink.last_error
