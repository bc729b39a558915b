"""amqtt topic plugin: per-principal access control on publish, subscribe and receive.

amqtt asks every topic plugin and allows an action only if all of them return True
(``Broker._topic_filtering``; a ``None`` counts as a refusal there), with:

* ``Action.PUBLISH`` from ``Broker._handle_message_delivery`` (and from
  ``EdgeBroker.may_publish`` before the uplink hand-off): a refused PUBLISH is not
  distributed, not retained and not forwarded. MQTT 3.1.1 has no way to refuse a
  PUBLISH to the client: QoS 1 is still acknowledged, the message is dropped and
  counted here (``AclPlugin.denied``);
* ``Action.SUBSCRIBE`` from ``Broker.add_subscription``: refused -> return code 0x80;
* ``Action.RECEIVE`` from ``Broker._run_broadcast`` for each live delivery, and from
  ``EdgeBroker._publish_retained_messages_for_subscription`` for retained ones (stock
  amqtt's version of that method does not ask the plugins; see docs/security.md).

The rules themselves are in ``broker.access`` (pure). Messages the broker injects
itself (the bridge's downlink, ``session=None``) are allowed: they were checked at
the cloud.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from amqtt.contexts import Action
from amqtt.plugins.base import BaseTopicPlugin
from amqtt.session import Session

from broker.access import AccessPolicy, Grants, Principal
from broker.auth import principal_of
from broker.config import RoleConfig
from broker.ratelog import RateLimitedLog

__all__ = ["AclPlugin"]

log = logging.getLogger(__name__)


class AclPlugin(BaseTopicPlugin):  # type: ignore[misc]  # amqtt ships no type info
    """Allows an action only if the session's principal's role grants it."""

    @dataclass
    class Config:
        """Plugin settings (built by ``broker.security.security_plugins``)."""

        site: str | None = None
        roles: dict[str, Any] = field(default_factory=dict)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        cfg: AclPlugin.Config = self.config
        self.policy = AccessPolicy({n: RoleConfig.model_validate(r) for n, r in cfg.roles.items()}, cfg.site)
        self.denied: Counter[str] = Counter()  # by action: publish / subscribe / receive
        self._grants: dict[Principal, Grants] = {}
        self._ratelog = RateLimitedLog(log)

    def grants(self, principal: Principal) -> Grants:
        """The principal's filters (cached: principals are few and immutable)."""
        g = self._grants.get(principal)
        if g is None:
            g = self._grants[principal] = self.policy.grants(principal)
        return g

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        return self.allows(session, topic, action)

    def allows(self, session: Session | None, topic: str | None, action: Action | None) -> bool:
        """``topic_filtering`` without the coroutine: the broker's fast path asks this directly."""
        if session is None:
            return True  # injected by the broker itself
        if not topic:
            return False
        principal = principal_of(session)
        allowed = False
        if principal is not None:
            g = self.grants(principal)
            if action == Action.PUBLISH:
                allowed = g.may_publish(topic)
            elif action == Action.SUBSCRIBE:
                allowed = g.may_subscribe(topic)
            elif action == Action.RECEIVE:
                allowed = g.may_receive(topic)
        if not allowed:
            kind = str(action) if action is not None else "unknown"
            self.denied[kind] += 1
            name = principal.name if principal is not None else "(unauthenticated)"
            self._ratelog.log(
                logging.INFO,
                f"{kind}:{name}",
                "denied %s on %s to %s (client %s)",
                kind,
                topic,
                name,
                session.client_id,
            )
        return allowed
