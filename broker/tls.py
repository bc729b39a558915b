"""TLS listeners for the brokers, and the client certificate of the connection being served.

``tls_listener`` / ``broker_listeners`` turn ``[security.tls]`` and a broker's
``tls_port`` into amqtt listener entries. amqtt builds the server context itself
(``Broker._create_ssl_context``: ``ssl.create_default_context(CLIENT_AUTH, cafile=...)``
with ``verify_mode = CERT_OPTIONAL``): a client certificate is optional, but one that
is presented must verify against ``ca_file`` (untrusted or expired ones fail the
handshake). ``require_client_cert`` is enforced by the auth plugin, which refuses a
TLS connection that brought no verified certificate.

amqtt does not give auth plugins the connection, only the session. The broker's
connection callback (``EdgeBroker.stream_connected``) calls ``note_connection(writer)``
first thing; that stores what the TLS handshake established in a context variable
of the connection's task, where the auth plugin reads it (``current_connection()``).
If that hook is missing the state is ``None`` ("unknown") and certificate logins and
``require_client_cert`` fail closed.
"""

from __future__ import annotations

import contextvars
import ssl
from dataclasses import dataclass
from typing import Any

from broker.config import BrokerConfig, ListenerTlsConfig

__all__ = [
    "ConnectionInfo",
    "broker_listeners",
    "common_name",
    "current_connection",
    "listeners",
    "note_connection",
    "tls_listener",
]


@dataclass(frozen=True)
class ConnectionInfo:
    """What the transport established: TLS or not, and the verified client certificate's CN."""

    tls: bool
    cert_cn: str | None


_CONNECTION: contextvars.ContextVar[ConnectionInfo | None] = contextvars.ContextVar("edgemq_connection", default=None)


def common_name(peercert: dict[str, Any] | None) -> str | None:
    """The subject CN of a certificate as returned by ``SSLSocket.getpeercert()``."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def note_connection(writer: Any) -> ConnectionInfo:
    """Record the connection's TLS state for this task (call at the top of ``stream_connected``)."""
    ssl_object = writer.get_extra_info("ssl_object")
    cn = None
    if isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        # getpeercert() returns the parsed dict only for a certificate that verified.
        cn = common_name(ssl_object.getpeercert())
    info = ConnectionInfo(tls=ssl_object is not None, cert_cn=cn)
    _CONNECTION.set(info)
    return info


def current_connection() -> ConnectionInfo | None:
    """The connection being authenticated, or None if the broker did not record it."""
    return _CONNECTION.get()


def tls_listener(tls: ListenerTlsConfig | None, host: str, port: int | None) -> dict[str, Any] | None:
    """amqtt listener entry for a TLS listener on ``host:port``; None without TLS settings."""
    if tls is None or port is None:
        return None
    entry: dict[str, Any] = {
        "type": "tcp",
        "bind": f"{host}:{port}",
        "ssl": True,
        "certfile": str(tls.cert_file),
        "keyfile": str(tls.key_file),
    }
    if tls.ca_file is not None:
        entry["cafile"] = str(tls.ca_file)
    return entry


def broker_listeners(tls: ListenerTlsConfig | None, broker: BrokerConfig) -> dict[str, Any]:
    """The whole ``listeners`` mapping of one edge broker (amqtt needs one named 'default')."""
    return listeners(tls, broker.host, broker.port, broker.tls_port)


def listeners(tls: ListenerTlsConfig | None, host: str, port: int, tls_port: int | None) -> dict[str, Any]:
    """``listeners`` of a broker on ``host``: plaintext on ``port``, TLS on ``tls_port`` (the cloud's too)."""
    plain = {"type": "tcp", "bind": f"{host}:{port}"}
    secure = tls_listener(tls, host, tls_port)
    if secure is None:
        return {"default": plain}
    assert tls is not None
    if tls.plaintext:
        return {"default": plain, "tls": secure}
    return {"default": secure}
