"""Persistent sessions that survive a restart of the broker (issue 5; amqtt-notes entry 16).

``PersistentSessionsBroker`` sits between ``broker.routing.RoutingBroker`` and
``broker.server.EdgeBroker``: it saves every persistent session's subscriptions and
identity to a ``broker.session_store.SessionStore`` when amqtt adds or removes a
subscription (before the SUBACK/UNSUBACK goes out, so a client holding a SUBACK holds a
subscription that survives a kill -9), and recreates those sessions, disconnected, at
start-up (``restore_sessions``). It also counts subscription changes, which the site
peers use to recompute their interest only when something changed. Without a store
(``session_store`` None, e.g. the cloud broker) it only counts.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from amqtt.session import Session

from broker.access import Principal
from broker.auth import bind_principal, principal_of
from broker.connection import lighten_handler
from broker.ratelog import RateLimitedLog
from broker.routing import RoutingBroker
from broker.session_state import lighten
from broker.session_store import SessionStore

__all__ = ["PersistentSessionsBroker"]


class PersistentSessionsBroker(RoutingBroker):
    """amqtt's Broker whose persistent sessions outlive the process, given a ``session_store``."""

    ratelog: RateLimitedLog

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        # Where persistent sessions' subscriptions are kept across restarts (edge brokers).
        self.session_store: SessionStore | None = None
        self.subscription_changes = 0
        """Bumped on every subscribe/unsubscribe: the site peers recompute their interest only then."""

    # -- persistent sessions across restarts (broker.session_store) -------------------
    # Saved when amqtt adds or removes the subscription, before it sends the SUBACK or
    # UNSUBACK: a client that has its SUBACK has a subscription that survives a kill -9.

    # Both also bump ``subscription_changes``: the site peers recompute their interest then.

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        self.subscription_changes += 1
        code = int(await super().add_subscription(subscription, session))
        if code != 0x80:
            self._persist_subscriptions(session)
        return code

    def _del_subscription(self, a_filter: str, session: Session) -> int:
        self.subscription_changes += 1
        deleted = int(super()._del_subscription(a_filter, session))
        if deleted:
            self._persist_subscriptions(session)
        return deleted

    def _persist_subscriptions(self, session: Session) -> None:
        if self.session_store is None or session.clean_session or not session.client_id:
            return
        subs = [(f, q) for f, entries in self._subscriptions.items() for s, q in entries if s is session]
        principal = principal_of(session)
        try:
            self.session_store.save(session.client_id, subs, None if principal is None else asdict(principal))
        except Exception as exc:  # the subscription stands; only its survival of a restart is at risk
            self.ratelog.warning("sessions", "cannot save the session of %s: %r", session.client_id, exc)

    def restore_sessions(self) -> int:
        """Recreate the stored persistent sessions, disconnected, with their subscriptions; return how many.

        Call once after ``start()`` and before clients connect. Subscriptions are put back as
        they were granted (access control checked them then; a reconnect binds the client's
        identity to the session again).
        """
        if self.session_store is None:
            return 0
        restored = 0
        for client_id, (subs, principal) in self.session_store.load().items():
            if client_id in self._sessions:
                continue
            handler, session = self.create_offline_session(client_id)
            lighten(session)
            lighten_handler(handler)  # waits, unused, until the client is back (entry 70)
            session.clean_session = False
            if principal is not None:  # is_anonymous stays False, as for every session (_check_credentials)
                bind_principal(session, Principal(**principal))
            self._sessions[client_id] = (session, handler)
            for topic_filter, qos in subs:  # through __setitem__: the routing cache sees new filters
                self._subscriptions[topic_filter] = [*self._subscriptions.get(topic_filter, []), (session, qos)]
            restored += 1
        return restored

    async def _del_all_subscriptions(self, session: Session) -> None:
        self.subscription_changes += 1
        await super()._del_all_subscriptions(session)

    def subscribed_filters(self) -> dict[str, list[str]]:
        """Every topic filter subscribed to (connected or persistent sessions), with its client ids."""
        return {f: [session.client_id for session, _ in subs] for f, subs in self._subscriptions.items()}

    async def _delete_session(self, client_id: str) -> None:
        await super()._delete_session(client_id)
        if self.session_store is not None:
            self.session_store.forget(client_id)
