"""amqtt authentication plugin: credentials file, client certificates, anonymous policy.

``EdgeAuthPlugin`` decides every CONNECT and binds the session to a ``Principal``
(``principal_of(session)``), which the access-control plugin (``broker.acl``) reads:

1. A verified client certificate (mutual TLS, only when ``cert_login``): the CN is
   the client's id. A username, if also sent, must equal the CN; a password is not
   needed. Role and site come from the credentials entry of that id if there is one,
   else ``cert_role``.
2. A username: must exist in the credentials file with a password that verifies
   (Argon2id, in a worker thread so the event loop never blocks on hashing). A
   successful check is remembered as a keyed BLAKE2b digest of the password (key
   random per process, forgotten when the user's hash changes), so a reconnecting
   device does not pay Argon2 again; failures are never remembered.
3. Neither: accepted only if ``allow_anonymous``, with ``anonymous_role``.

A TLS connection without a verified certificate is refused when
``require_client_cert``. With ``peer_role`` (set when ``security.generate`` gives the peer
links their own users), a ``peer-`` client id is refused to any other role: such ids get
peer treatment (``broker.membership``). A principal bound to another site is refused. A client id
last used by another principal is refused (it would take over that principal's
connection, subscriptions and queued messages); the binding lasts for the
process's lifetime.

Secrets: the password is read from the session and passed to the hasher, never
logged or stored; log lines name the user, the client id and the reason only.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

from broker.access import AccessPolicy, Principal
from broker.config import RoleConfig
from broker.credentials import CredentialStore, User, verify_hash
from broker.errors import ConfigError
from broker.membership import PEER_PREFIX
from broker.ratelog import RateLimitedLog
from broker.tls import current_connection

__all__ = ["EdgeAuthPlugin", "bind_principal", "principal_of"]

log = logging.getLogger(__name__)

# amqtt's Session is unhashable (it defines __eq__), so the principal rides on the session
# object itself and lives exactly as long as it: in ``Session.attributes``, amqtt's dict for
# plugin-owned values. (A new attribute on the session would turn its compact per-class
# attribute storage into a dict of its own: 1.6 KB per session, docs/amqtt-notes.md entry 72.)
_ATTR = "edgemq.principal"
# Concurrent Argon2 verifications (each takes ~64 MiB and tens of ms of CPU): a storm
# of reconnecting devices queues here instead of exhausting a gateway's memory.
_VERIFY_SLOTS = 4


def principal_of(session: Session | None) -> Principal | None:
    """The principal the auth plugin bound to ``session`` (None: not authenticated by us)."""
    if session is None:
        return None
    attributes = getattr(session, "attributes", None)
    principal = attributes.get(_ATTR) if isinstance(attributes, dict) else None
    return principal if isinstance(principal, Principal) else None


def bind_principal(session: Session, principal: Principal) -> None:
    """Bind ``principal`` to ``session`` (done by the auth plugin; tests use it directly)."""
    session.attributes[_ATTR] = principal


class EdgeAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no type info
    """Authenticates CONNECTs; see the module docstring for the rules."""

    @dataclass
    class Config:
        """Plugin settings (built by ``broker.security.security_plugins``)."""

        credentials_file: str | None = None
        allow_anonymous: bool = False
        anonymous_role: str = "demo"
        cert_login: bool = False
        cert_role: str = "device"
        require_client_cert: bool = False
        site: str | None = None
        roles: dict[str, Any] = field(default_factory=dict)
        peer_role: str | None = None
        """If set, a ``peer-`` client id (the site's peer links) is accepted only from this role."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        cfg: EdgeAuthPlugin.Config = self.config
        self.cfg = cfg
        roles = {name: RoleConfig.model_validate(r) for name, r in cfg.roles.items()}
        self.policy = AccessPolicy(roles, cfg.site)
        self.store = CredentialStore(Path(cfg.credentials_file)) if cfg.credentials_file else None
        self._users: dict[str, User] = {}
        self._mtime: float | None = None
        self._owners: dict[str, str] = {}  # client id -> principal name of its session
        self._slots = asyncio.Semaphore(_VERIFY_SLOTS)
        self._cache_key = secrets.token_bytes(32)
        self._verified: dict[str, tuple[str, bytes]] = {}  # user -> (its hash, keyed digest of the password)
        self._ratelog = RateLimitedLog(log)
        self._reload()

    def _reload(self) -> None:
        """Re-read the credentials file if it changed (cheap stat per CONNECT)."""
        if self.store is None:
            return
        mtime = self.store.mtime()
        if mtime == self._mtime:
            return
        try:
            self._users = self.store.load()
        except ConfigError as exc:
            # Keep the last good set: a half-edited file must not lock everyone out or in.
            self._ratelog.warning("credentials", "credentials file not reloaded: %s", exc)
            return
        self._mtime = mtime
        log.info("%d user(s) loaded from %s", len(self._users), self.store.path)

    async def authenticate(self, *, session: Session) -> bool:
        principal, reason = await self._decide(session)
        who = session.username or "-"
        if principal is None:
            self._ratelog.log(
                logging.INFO, f"refused:{who}", "refused client %s (user %s): %s", session.client_id, who, reason
            )
            return False
        if (
            self.cfg.peer_role is not None
            and (session.client_id or "").startswith(PEER_PREFIX)
            and principal.role != self.cfg.peer_role
        ):
            # A peer link's messages get peer treatment (local delivery only, membership
            # hellos): the id is reserved for principals of the peer role.
            self._ratelog.log(
                logging.INFO,
                f"refused:{who}",
                "refused client %s (user %s, role %s): %s* client ids are for the site's peer links (role %s)",
                session.client_id,
                who,
                principal.role,
                PEER_PREFIX,
                self.cfg.peer_role,
            )
            return False
        owner = self._owners.get(session.client_id)
        if owner is not None and owner != principal.name:
            self._ratelog.log(
                logging.INFO,
                f"refused:{who}",
                "refused client %s (user %s): its persistent session belongs to %s",
                session.client_id,
                who,
                owner,
            )
            return False
        self._owners[session.client_id] = principal.name
        bind_principal(session, principal)
        log.debug(
            "client %s authenticated as %s (%s, role %s)",
            session.client_id,
            principal.name,
            principal.via,
            principal.role,
        )
        return True

    async def _decide(self, session: Session) -> tuple[Principal | None, str]:
        self._reload()
        conn = current_connection()
        cn = conn.cert_cn if conn is not None else None
        if self.cfg.require_client_cert and (conn is None or (conn.tls and cn is None)):
            return None, "no verified client certificate"
        if self.cfg.cert_login and cn is not None:
            return self._by_certificate(cn, session.username)
        if session.username:
            return await self._by_password(session.username, session.password)
        if self.cfg.allow_anonymous:
            return Principal(session.client_id or "anonymous", self.cfg.anonymous_role, None, "anonymous"), ""
        return None, "anonymous access is off"

    def _by_certificate(self, cn: str, username: str | None) -> tuple[Principal | None, str]:
        from broker.credentials import valid_name

        if not valid_name(cn):
            return None, f"certificate CN {cn!r} is not a valid id"
        if username and username != cn:
            return None, f"username does not match certificate CN {cn!r}"
        user = self._users.get(cn)
        principal = (
            Principal(cn, user.role, user.site, "certificate")
            if user
            else Principal(cn, self.cfg.cert_role, None, "certificate")
        )
        if not self.policy.admits(principal):
            return None, f"role {principal.role!r} / site {principal.site!r} not admitted here"
        return principal, ""

    async def _by_password(self, username: str, password: str | None) -> tuple[Principal | None, str]:
        user = self._users.get(username)
        secret = (password or "").encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(secret, key=self._cache_key).digest()
        cached = self._verified.get(username)
        if user is not None and cached is not None and cached[0] == user.password_hash:
            ok = hmac.compare_digest(cached[1], digest)
        else:
            async with self._slots:
                ok = await asyncio.to_thread(verify_hash, user.password_hash if user else None, password or "")
            if ok and user is not None and user.password_hash is not None:
                self._verified[username] = (user.password_hash, digest)
        if user is None or not ok:
            return None, "bad credentials"
        principal = Principal(user.name, user.role, user.site, "password")
        if not self.policy.admits(principal):
            return None, f"role {principal.role!r} / site {principal.site!r} not admitted here"
        return principal, ""
