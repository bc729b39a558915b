"""Making amqtt's persistent-session lookup safe: what runs before authentication sees no session.

``EdgeBroker`` (broker/server.py) marks amqtt's ``_initialize_client_session`` with the
``RESOLVING`` flag; meanwhile ``SessionTable`` (amqtt's ``Broker._sessions``) hides existing
sessions, so amqtt builds the newcomer a session of its own, which the broker merges into
the persistent one only once the client is authenticated (``CONNECT_FIELDS`` are what the
new connection brings). amqtt-notes entry 14 and following.
"""

from __future__ import annotations

import contextvars

from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

__all__ = ["AUTHENTICATED", "CONNECT_FIELDS", "RESOLVING", "Resolving", "SessionTable", "resolving"]


class Resolving:
    """Marks amqtt's ``_initialize_client_session`` running in this task (and tasks it starts).

    A flag object rather than a bare bool: tasks amqtt starts meanwhile (plugin events)
    inherit the context, and must stop seeing the flag once the call returns.
    """

    active = True


RESOLVING: contextvars.ContextVar[Resolving | None] = contextvars.ContextVar("resolving", default=None)
# The authentication result our ``_handle_client_session`` already has, for amqtt's own
# ``_authenticate`` call in ``Broker._handle_client_session`` (read once).
AUTHENTICATED: contextvars.ContextVar[bool | None] = contextvars.ContextVar("authenticated", default=None)

# What a new connection brings to the persistent session it resumes: its will, keep-alive,
# credentials and transport [MQTT-3.1.2-4 ff.]; everything else (subscriptions, queued and
# in-flight messages) is the session's.
CONNECT_FIELDS = (
    "will_flag",
    "will_retain",
    "will_qos",
    "will_topic",
    "will_message",
    "keep_alive",
    "username",
    "password",
    "remote_address",
    "remote_port",
    "ssl_object",
)


def resolving() -> bool:
    flag = RESOLVING.get()
    return flag is not None and flag.active


class SessionTable(dict[str, tuple[Session, BrokerProtocolHandler]]):
    """amqtt's ``Broker._sessions``, empty to amqtt's persistent-session lookup before authentication.

    ``Broker._initialize_client_session`` asks ``client_id in self._sessions`` and, if so,
    overwrites that session's will, keep-alive and credentials with the newcomer's, all
    before authentication. While it runs, ``in`` answers False: amqtt builds the newcomer a
    session of its own, which ``EdgeBroker._resolve_session`` merges once authenticated.
    """

    def __contains__(self, key: object) -> bool:
        return not resolving() and super().__contains__(key)
