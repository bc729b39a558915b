"""Is a broker up? One raw MQTT 3.1.1 CONNECT/CONNACK exchange, bounded in time.

A device away from its owner probes it with this (``devices.failover`` decides
when); a probe uses a clean session and disconnects at once, so it leaves
nothing behind on the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

__all__ = ["connect_packet", "probe_broker"]


def connect_packet(client_id: str, keepalive_s: int, username: str | None = None, password: str | None = None) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session (a probe leaves nothing behind)."""

    def utf8(value: str) -> bytes:
        raw = value.encode()
        return len(raw).to_bytes(2, "big") + raw

    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if username is not None and password else 0)
    payload = utf8(client_id) + (utf8(username) if username is not None else b"")
    if username is not None and password:
        payload += utf8(password)
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + keepalive_s.to_bytes(2, "big") + payload
    length, size = b"", len(body)
    while True:  # the remaining length is a varint (a password can take a CONNECT past 127 bytes)
        byte, size = size % 128, size // 128
        length += bytes([byte | (0x80 if size else 0)])
        if not size:
            break
    return b"\x10" + length + body


async def probe_broker(
    host: str,
    port: int,
    client_id: str,
    timeout: float,
    *,
    username: str | None = None,
    password: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> bool:
    """True if the broker at host:port answers a CONNECT with CONNACK 0 within ``timeout`` seconds."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=ssl_context)
            writer.write(connect_packet(client_id, 10, username, password))
            await writer.drain()
            data = await reader.readexactly(4)
            writer.write(b"\xe0\x00")  # DISCONNECT
            await writer.drain()
            return data[0] == 0x20 and data[3] == 0
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(timeout):
                    await writer.wait_closed()
