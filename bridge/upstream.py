"""The thin asyncio shell around :mod:`bridge.wire`: one MQTT client connection to the cloud.

How it works
------------
:meth:`Upstream.open` dials (TCP, or TLS with the server's certificate and name
verified), sends CONNECT and waits for the CONNACK. After that the connection is
an ``asyncio.Protocol``: ``data_received`` feeds the parser and dispatches each
packet on the spot, with no task or queue per packet:

* PUBACK of a control publish (state, stats) resolves its future; any other
  PUBACK goes to ``on_puback(packet_id, reason)`` (the uplink's window);
* PUBLISH (a command) goes to ``on_message``; the uplink answers it with
  :meth:`Upstream.puback` once it has injected it locally (at-least-once);
* SUBACK resolves :meth:`subscribe`; PINGRESP and any other packet prove liveness.

The uplink writes whole batches with :meth:`write` (one transport write per
batch) and waits in :meth:`drain` while the transport's buffer is above its high
mark. Keep-alive: a PINGREQ goes out when nothing was written for half the
keep-alive; if nothing at all comes back within the keep-alive after it, the link
is broken. Every way the connection can end sets :attr:`Upstream.closed` to a
:class:`~broker.errors.LinkBroken` (the transport's OSError/SSLError chained):
foreign exceptions are translated here, once.

What it does not do
-------------------
No buffer, no in-flight window, no retries, no reconnect: that is the uplink's
job (``bridge.link``). Packet ids: :meth:`next_packet_id` skips ids still in use
by the caller's window (``in_use``) and by control publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bridge import wire
from broker.errors import LinkBroken

__all__ = ["ConnectSpec", "Upstream"]

log = logging.getLogger(__name__)

CONNACK_CODES_311 = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


@dataclass(frozen=True)
class ConnectSpec:
    """Everything CONNECT says, plus where to dial."""

    host: str
    port: int
    client_id: str
    version: int = wire.MQTT311
    keepalive: int = 30
    username: str | None = None
    password: str | None = None
    will: wire.Will | None = None
    clean: bool = False
    session_expiry: int | None = None
    ssl_context: ssl.SSLContext | None = None
    timeout_s: float = 10.0


class Upstream(asyncio.Protocol):
    """One open MQTT connection to the cloud. Create with :meth:`Upstream.open`."""

    def __init__(self, version: int = wire.MQTT311, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.version = version
        self._clock = clock
        self._parser = wire.Parser(version=version)
        self._transport: asyncio.Transport | None = None
        loop = asyncio.get_event_loop()
        self._connack: asyncio.Future[wire.ConnAck] = loop.create_future()
        #: Resolves (with a LinkBroken, as a result) when the connection ends, for whatever reason.
        self.closed: asyncio.Future[LinkBroken] = loop.create_future()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._control: dict[int, asyncio.Future[int]] = {}  # packet id -> future of its PUBACK reason
        self._subs: dict[int, asyncio.Future[tuple[int, ...]]] = {}
        self._next_id = 0
        #: Called for each PUBACK not owned by a control publish: (packet id, reason code).
        self.on_puback: Callable[[int, int], None] = lambda pid, reason: None
        #: Called for each PUBLISH the server sends (downlink).
        self.on_message: Callable[[wire.Publish], None] = lambda msg: None
        #: Packet ids in use by the caller (its in-flight window); next_packet_id skips them.
        self.in_use: Callable[[int], bool] = lambda pid: False
        self.connack: wire.ConnAck | None = None
        self.last_write = self.last_read = clock()
        self.bytes_out = 0

    # ---- opening ----------------------------------------------------------------------------
    @classmethod
    async def open(cls, spec: ConnectSpec) -> Upstream:
        """Dial, CONNECT, and wait for an accepting CONNACK; LinkBroken otherwise."""
        loop = asyncio.get_running_loop()
        conn: Upstream | None = None
        try:
            async with asyncio.timeout(spec.timeout_s):
                _, conn = await loop.create_connection(
                    lambda: cls(spec.version),
                    spec.host,
                    spec.port,
                    ssl=spec.ssl_context,
                    server_hostname=spec.host if spec.ssl_context else None,
                )
                conn.write(
                    wire.encode_connect(
                        spec.client_id,
                        version=spec.version,
                        clean=spec.clean,
                        keepalive=spec.keepalive,
                        username=spec.username,
                        password=spec.password,
                        will=spec.will,
                        session_expiry=spec.session_expiry,
                    )
                )
                connack = await asyncio.shield(conn._connack)
        except BaseException as exc:
            if conn is not None:
                conn.abort()  # never leave a half-open connection behind (timeout, cancel, refusal)
            if isinstance(exc, TimeoutError):
                raise LinkBroken(
                    f"no CONNACK from {spec.host}:{spec.port} within {spec.timeout_s:g} s", recoverable=True
                ) from exc
            if isinstance(exc, OSError | ssl.SSLError):
                # ssl.SSLCertVerificationError says CERTIFICATE_VERIFY_FAILED in its text: keep it.
                raise LinkBroken(f"cannot connect to {spec.host}:{spec.port}: {exc}", recoverable=True) from exc
            raise
        if connack.code != 0:
            conn.abort()
            why = CONNACK_CODES_311.get(connack.code, "") if spec.version == wire.MQTT311 else ""
            raise LinkBroken(
                f"the cloud refused the connection: CONNACK code {connack.code:#04x} {why}".rstrip(),
                hint="check the cloud's credentials, ACL and protocol version",
                recoverable=True,
            )
        conn.connack = connack
        return conn

    # ---- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream transport, as create_connection gives

    def data_received(self, data: bytes) -> None:
        self.last_read = self._clock()
        try:
            packets = self._parser.feed(data)
        except wire.ProtocolViolation as exc:
            self._fail(exc)
            return
        on_puback = self.on_puback
        for pkt in packets:
            if type(pkt) is wire.PubAck:
                fut = self._control.pop(pkt.packet_id, None)
                if fut is None:
                    on_puback(pkt.packet_id, pkt.reason)
                elif not fut.done():
                    fut.set_result(pkt.reason)
            elif type(pkt) is wire.Publish:
                self.on_message(pkt)
            elif type(pkt) is wire.SubAck:
                sub = self._subs.pop(pkt.packet_id, None)
                if sub is not None and not sub.done():
                    sub.set_result(pkt.codes)
            elif type(pkt) is wire.ConnAck:
                if self._connack.done():
                    self._fail(wire.ProtocolViolation("a second CONNACK"))
                    return
                self._connack.set_result(pkt)
            elif type(pkt) is wire.Disconnect:
                self._fail(LinkBroken(f"the cloud disconnected us: reason {pkt.reason:#04x}", recoverable=True))
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            self._fail(LinkBroken("the cloud closed the connection", recoverable=True))
        else:
            err = LinkBroken(f"connection to the cloud lost: {exc}", recoverable=True)
            err.__cause__ = exc
            self._fail(err)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    # ---- sending ----------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return not self.closed.done() and self._transport is not None and not self._transport.is_closing()

    def write(self, data: bytes) -> None:
        """Send bytes now (one transport write); LinkBroken if the connection is gone."""
        if not self.is_open:
            raise self._broken("connection to the cloud is closed")
        assert self._transport is not None
        self._transport.write(data)
        self.last_write = self._clock()
        self.bytes_out += len(data)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        if self._can_write.is_set():
            return
        waiter: asyncio.Future[Any] = asyncio.ensure_future(self._can_write.wait())
        closed: asyncio.Future[Any] = self.closed
        done, _ = await asyncio.wait({waiter, closed}, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            raise self._broken("connection to the cloud is closed")

    def next_packet_id(self) -> int:
        """A packet id in 1..65535 not in flight (neither in the caller's window nor ours)."""
        for _ in range(0xFFFF):
            self._next_id = self._next_id % 0xFFFF + 1
            pid = self._next_id
            if pid not in self._control and pid not in self._subs and not self.in_use(pid):
                return pid
        raise LinkBroken("no free packet id (65,535 publishes in flight)", recoverable=True)

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, timeout_s: float = 30.0
    ) -> int:
        """A control publish (state, stats): QoS 1 waits for its PUBACK and returns its reason."""
        pid = self.next_packet_id() if qos else 0
        fut: asyncio.Future[int] | None = None
        if qos:
            fut = asyncio.get_running_loop().create_future()
            self._control[pid] = fut
        self.write(wire.encode_publish(topic, payload, qos=qos, retain=retain, packet_id=pid, version=self.version))
        if fut is None:
            return 0
        reason: int = await self._wait(fut, timeout_s, f"no PUBACK for {topic}")
        return reason

    async def subscribe(self, filters: Sequence[tuple[str, int]], timeout_s: float = 30.0) -> tuple[int, ...]:
        """SUBSCRIBE and wait for the SUBACK's codes."""
        pid = self.next_packet_id()
        fut: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()
        self._subs[pid] = fut
        self.write(wire.encode_subscribe(pid, filters, version=self.version))
        codes: tuple[int, ...] = await self._wait(fut, timeout_s, "no SUBACK")
        return codes

    def puback(self, packet_id: int) -> None:
        """Acknowledge a QoS 1 PUBLISH from the server (a no-op once the connection is gone)."""
        if self.is_open:
            self.write(wire.encode_puback(packet_id, version=self.version))

    async def keepalive(self, interval_s: float) -> None:
        """Ping when idle; raise LinkBroken when the server stays silent a whole interval."""
        interval_s = float(interval_s)
        while True:
            await asyncio.sleep(interval_s / 4)
            now = self._clock()
            if now - self.last_write >= interval_s / 2:
                self.write(wire.encode_pingreq())
                ping_at = self.last_write
                while self._clock() - ping_at < interval_s:
                    await asyncio.sleep(min(1.0, interval_s / 4))
                    if self.last_read > ping_at:
                        break
                else:
                    raise LinkBroken(
                        f"no answer from the cloud within the keep-alive ({interval_s:g} s)", recoverable=True
                    )

    async def wait_closed(self) -> LinkBroken:
        """Return (not raise) the error that ended the connection."""
        return await asyncio.shield(self.closed)

    def close(self) -> None:
        """DISCONNECT (so the server discards the will) and close; idempotent."""
        if self.is_open:
            with contextlib.suppress(LinkBroken):
                self.write(wire.encode_disconnect(version=self.version))
        if self._transport is not None:
            self._transport.close()
        self._fail(LinkBroken("closed by us", recoverable=False))

    def abort(self) -> None:
        """Drop the connection without DISCONNECT (the server publishes the will)."""
        if self._transport is not None:
            self._transport.abort()
        self._fail(LinkBroken("aborted", recoverable=True))

    # ---- internals --------------------------------------------------------------------------
    async def _wait(self, fut: asyncio.Future[Any], timeout_s: float, what: str) -> Any:
        done, _ = await asyncio.wait({fut, self.closed}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if fut in done:
            return fut.result()
        fut.cancel()
        if self.closed.done():
            raise self.closed.result()
        raise LinkBroken(f"{what} within {timeout_s:g} s", recoverable=True)

    def _broken(self, msg: str) -> LinkBroken:
        if self.closed.done():
            return self.closed.result()
        return LinkBroken(msg, recoverable=True)

    def _fail(self, err: LinkBroken) -> None:
        if not self.closed.done():
            self.closed.set_result(err)
        if not self._connack.done():
            self._connack.set_exception(err)
            self._connack.exception()  # mark retrieved: open() may already have given up
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()
