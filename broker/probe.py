"""Is an MQTT broker answering? A CONNECT/CONNACK round trip over a plain socket.

Used by ``cluster up`` (return once every component answers, not after a sleep)
and by status. Blocking and short; no MQTT library needed for four bytes back.
"""

from __future__ import annotations

import os
import socket
import ssl
import time

__all__ = ["mqtt_answers", "wait_until_answers"]


def _connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x0a"  # protocol name, level 4, clean session, keep-alive 10 s
    payload = len(cid).to_bytes(2, "big") + cid
    body = variable + payload
    return b"\x10" + bytes([len(body)]) + body


def mqtt_answers(host: str, port: int, timeout: float = 1.0, ssl_context: ssl.SSLContext | None = None) -> bool:
    """True if the broker at host:port answers an MQTT 3.1.1 CONNECT with a CONNACK.

    Any return code counts: a broker that refuses an anonymous probe (secure profile) is
    still up and speaking MQTT, so probes carry no credentials. ``ssl_context``: probe a
    TLS listener (``broker.client_auth.probe_target`` gives the port and context).
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            sock = ssl_context.wrap_socket(raw, server_hostname=host) if ssl_context is not None else raw
            sock.settimeout(timeout)
            sock.sendall(_connect_packet(f"edgemq-probe-{os.getpid()}-{time.monotonic_ns() % 10**9}"))
            data = b""
            while len(data) < 4:
                chunk = sock.recv(4 - len(data))
                if not chunk:
                    return False
                data += chunk
            sock.sendall(b"\xe0\x00")  # DISCONNECT
            return data[0] == 0x20
    except OSError:
        return False


def wait_until_answers(host: str, port: int, deadline_s: float, ssl_context: ssl.SSLContext | None = None) -> bool:
    """Poll until the broker answers or the deadline (seconds from now) passes."""
    end = time.monotonic() + deadline_s
    delay = 0.05
    while time.monotonic() < end:
        if mqtt_answers(host, port, ssl_context=ssl_context):
            return True
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    return False
