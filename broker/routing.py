"""Message routing for ``EdgeBroker``: access control without tasks, direct delivery to subscribers.

How it works: ``RoutingBroker`` is amqtt's ``Broker`` with

* ``acl_now``: the topic plugins' synchronous ``allows`` (our ``AclPlugin``), so a publish
  or a delivery is checked without amqtt's task-per-plugin ``map_plugin_topic``
  (docs/amqtt-notes.md, entry 22); ``_topic_filtering`` uses it for amqtt's own paths;
* ``offer``: the uplink tap's hand-off as a future (no task when the tap has
  ``offer_nowait``);
* ``route``: a message delivered to the matching subscriptions at once, in call order,
  instead of amqtt's broadcast queue, loop and task per delivery (entry 21); matching
  filters are cached per topic until a filter comes or goes (``_SubscriptionTable``).

What it does not do: sessions, takeover, authentication and the offline-queue bound are
``broker.server.EdgeBroker``'s; writing to a connection is ``broker.fastpath``'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.session import Session

from broker.fastpath import FastPathHandler

if TYPE_CHECKING:
    from broker.hooks import UplinkTap

__all__ = ["Broadcast", "RoutingBroker"]

_FILTER_CACHE_SIZE = 10_000  # topics whose matching filters are remembered


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Done callback: fetch a tap task's exception (counted by the tap) so asyncio does not log it."""
    if not task.cancelled():
        task.exception()


class _SubscriptionTable(dict[str, list[tuple[Session, int]]]):
    """amqtt's ``Broker._subscriptions`` with a version that changes whenever a filter comes or goes.

    ``EdgeBroker._filters_for`` caches which filters match a topic; amqtt adds and removes
    filters only through these methods (its lists of subscribers change in place, which
    does not change which filters match).
    """

    version = 0

    def __setitem__(self, key: str, value: list[tuple[Session, int]]) -> None:
        self.version += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.version += 1
        super().__delitem__(key)

    def pop(self, key: str, *default: Any) -> Any:
        self.version += 1
        return super().pop(key, *default)

    def clear(self) -> None:
        self.version += 1
        super().clear()


class Broadcast(dict[str, Any]):
    """amqtt's broadcast record, answering ``get("qos", subscriber_qos)`` with the lower QoS.

    ``Broker._run_broadcast`` computes each delivery's QoS as
    ``broadcast.get("qos", sub_qos)``: the publisher's QoS when one was forced, else the
    subscriber's. MQTT 3.1.1 (3.8.4) wants the minimum of the two.
    """

    def get(self, key: str, default: Any = None) -> Any:
        if key == "qos" and "publisher_qos" in self and default is not None:
            return min(int(self["publisher_qos"]), int(default))
        return super().get(key, default)


class RoutingBroker(Broker):  # type: ignore[misc]  # amqtt ships no type info
    """amqtt's Broker with synchronous access control and direct routing (base of ``EdgeBroker``)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self._acl_checkers: list[Callable[[Session | None, str, Action], bool]] | bool | None = None
        self._filters_cache: dict[str, list[str]] = {}
        self._filters_version = -1
        self._subscriptions: _SubscriptionTable = _SubscriptionTable(self._subscriptions)

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        """amqtt's, but a SUBSCRIBE to a filter the client already has replaces its QoS [MQTT-3.8.4-3].

        ``Broker.add_subscription`` keeps the existing entry (and its old QoS) while the
        SUBACK grants the new one (docs/amqtt-notes.md, entry 62).
        """
        granted = int(await super().add_subscription(subscription, session))
        if granted != 0x80:
            entries = self._subscriptions.get(subscription[0], [])
            for i, (target, qos) in enumerate(entries):
                if target.client_id == session.client_id and (qos != granted or target is not session):
                    entries[i] = (session, granted)
        return granted

    def track(self, task: asyncio.Task[Any]) -> None:
        """Hand a delivery task to amqtt's broadcast loop, which reaps it and logs failures."""
        self._tasks_queue.append(task)

    def acl_now(self, session: Session | None, topic: str, action: Action) -> bool | None:
        """Access control answered synchronously, or None if a plugin can only answer awaited.

        amqtt asks every topic plugin through ``PluginManager.map_plugin_topic``: a task per
        plugin and a ``gather`` per question, twice per message (entry 22). Our ACL plugin
        answers synchronously (``AclPlugin.allows``); other topic plugins keep amqtt's way.
        """
        checkers = self._acl_checkers
        if checkers is None:
            checkers = self._acl_checkers = self._find_acl_checkers()
        if isinstance(checkers, bool):
            return None
        return all(allows(session, topic, action) for allows in checkers)

    def _find_acl_checkers(self) -> list[Callable[[Session | None, str, Action], bool]] | bool:
        """The synchronous ``allows`` of every topic plugin, or False if one has none."""
        manager = self.plugins_manager
        if not manager.is_topic_filtering_enabled():
            return []
        plugins = [p for p in manager.plugins if hasattr(p, "topic_filtering")]
        if not all(callable(getattr(p, "allows", None)) for p in plugins):
            return False
        return [p.allows for p in plugins]

    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        allowed = self.acl_now(session, topic, action)
        if allowed is not None:
            return allowed
        return bool(await super()._topic_filtering(session, topic, action))

    def offer(
        self, tap: UplinkTap, topic: str, payload: bytes, qos: int, retain: bool, client_id: str
    ) -> asyncio.Future[Any] | None:
        """Hand a message to the tap now, in call order; returns what its PUBACK must wait for."""
        offer_nowait = getattr(tap, "offer_nowait", None)
        if offer_nowait is not None:
            waiting: asyncio.Future[Any] | None = offer_nowait(topic, payload, qos, retain, client_id)
            return waiting
        # A tap with only ``offer``: a task (started in call order) per message.
        task = asyncio.ensure_future(tap.offer(topic, payload, qos, retain, client_id))
        task.add_done_callback(_retrieve)
        return task

    async def route(self, source: Session | None, topic: str, data: bytes, qos: int) -> None:
        """Deliver a message to the local subscriptions matching ``topic``, in call order.

        What amqtt's ``_broadcast_message`` → ``_broadcast_loop`` → ``_run_broadcast`` →
        ``mqtt_publish`` task chain does (entry 21), without the queue hop and the tasks:
        delivery QoS is the lower of publisher and subscriber [MQTT-3.8.4]; receive access
        is checked per subscriber; persistent sessions that are offline queue QoS ≥ 1
        (bounded, ``_retain_broadcast_message``); connected fast-path clients are written
        to at once (``FastPathHandler.deliver``), others through amqtt's ``mqtt_publish``.
        """
        topic_bytes = topic.encode()
        for topic_filter in self._filters_for(topic):
            subscriptions = self._subscriptions.get(topic_filter, ())
            for target, sub_qos in list(subscriptions):
                deliver_qos = min(qos, sub_qos)
                allowed = self.acl_now(target, topic, Action.RECEIVE)
                if allowed is None:
                    allowed = bool(await super()._topic_filtering(target, topic, Action.RECEIVE))
                if not allowed:
                    continue
                if target.transitions.state != "connected":
                    if not target.clean_session and deliver_qos > 0 and not target.is_anonymous:
                        broadcast = Broadcast(session=source, topic=topic, data=data)
                        await self._retain_broadcast_message(broadcast, deliver_qos, target)
                    continue
                handler = self._get_handler(target)
                if handler is None:
                    continue
                if isinstance(handler, FastPathHandler) and handler.deliver(topic, topic_bytes, data, deliver_qos):
                    continue
                self.track(asyncio.ensure_future(handler.mqtt_publish(topic, data, deliver_qos, retain=False)))

    def _filters_for(self, topic: str) -> list[str]:
        """The subscription filters matching ``topic`` (cached until the set of filters changes)."""
        subs = self._subscriptions
        if subs.version != self._filters_version:
            self._filters_cache.clear()
            self._filters_version = subs.version
        found = self._filters_cache.get(topic)
        if found is None:
            if len(self._filters_cache) >= _FILTER_CACHE_SIZE:
                self._filters_cache.clear()
            found = self._filters_cache[topic] = [f for f in subs if self._matches(topic, f)]
        return found
