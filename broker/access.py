"""Access-control rules: who may publish, subscribe and receive which topics.

How it works: a ``Principal`` (an authenticated client: its id, role and site) and the
role's topic-filter templates from the cluster file (``[security.roles.NAME]``) give
the client's concrete filters, with ``{site}`` and ``{id}`` filled in (``{site}`` is
the principal's site, else the broker's, else ``+``). Then:

* publish: the topic must match one of the role's ``publish`` filters;
* subscribe: the requested filter must be *covered* by one of the role's
  ``subscribe`` filters, i.e. every topic the request can match is matched by the
  allowed filter too (so ``commands/s/+/#`` is refused to a device allowed only
  ``commands/s/dev-1/#``: a wildcard never reaches other devices);
* receive (live and retained deliveries): the topic must match one of the role's
  ``subscribe`` filters.

What it does not do: no I/O, no amqtt, no logging; it does not authenticate anyone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from broker.config import RoleConfig
from broker.topics import matches

__all__ = ["AccessPolicy", "Grants", "Principal", "covers"]


@dataclass(frozen=True)
class Principal:
    """An authenticated client: ``name`` is the user (or device) id, ``via`` how it proved it."""

    name: str
    role: str
    site: str | None = None
    via: str = "password"  # "password" | "certificate" | "anonymous"


@dataclass(frozen=True)
class Grants:
    """A principal's concrete filters."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def may_publish(self, topic: str) -> bool:
        """True if ``topic`` (a topic name) matches a publish filter."""
        return any(matches(f, topic) for f in self.publish)

    def may_subscribe(self, topic_filter: str) -> bool:
        """True if ``topic_filter`` is covered by a subscribe filter."""
        return any(covers(f, topic_filter) for f in self.subscribe)

    def may_receive(self, topic: str) -> bool:
        """True if ``topic`` (a topic name) matches a subscribe filter."""
        return any(matches(f, topic) for f in self.subscribe)


def covers(allowed: str, requested: str) -> bool:
    """True when every topic matching ``requested`` also matches ``allowed`` (both valid filters)."""
    a_levels = allowed.split("/")
    r_levels = requested.split("/")
    # Wildcards at the first level never match '$' topics; a literal '$...' request
    # under a leading wildcard is not covered (matches() would refuse those topics).
    if requested.startswith("$") and a_levels[0] in ("+", "#"):
        return False
    for i, a in enumerate(a_levels):
        if a == "#":
            return True  # covers this level and everything below, including the parent itself
        if i >= len(r_levels):
            return False
        r = r_levels[i]
        if r == "#":
            return False  # the request reaches deeper or wider than this allowed level
        if a == "+":
            continue  # '+' covers a literal level and '+'
        if r != a:
            return False
    return len(r_levels) == len(a_levels)


def _fill(template: str, site: str, ident: str) -> str:
    return template.replace("{site}", site).replace("{id}", ident)


class AccessPolicy:
    """The roles of one broker; ``grants(principal)`` gives a principal's filters."""

    def __init__(self, roles: Mapping[str, RoleConfig], broker_site: str | None = None) -> None:
        self.roles = dict(roles)
        self.broker_site = broker_site

    def grants(self, principal: Principal) -> Grants:
        """The principal's filters; nothing at all for an unknown role."""
        role = self.roles.get(principal.role)
        if role is None:
            return Grants((), ())
        site = principal.site or self.broker_site or "+"
        return Grants(
            tuple(_fill(t, site, principal.name) for t in role.publish),
            tuple(_fill(t, site, principal.name) for t in role.subscribe),
        )

    def admits(self, principal: Principal) -> bool:
        """A principal bound to one site may not use another site's broker; its role must exist."""
        if principal.role not in self.roles:
            return False
        return principal.site is None or self.broker_site is None or principal.site == self.broker_site

    def role_names(self) -> Sequence[str]:
        """Names of the roles, in file order."""
        return list(self.roles)
