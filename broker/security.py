"""The security wiring of one broker: amqtt plugin entries and listeners from the cluster file.

``security_plugins(security, site=...)`` gives the amqtt ``plugins`` entries (auth +
access control) for a broker of ``site`` (None for the cloud broker);
``broker_listeners(security.tls, broker)`` its ``listeners``. See docs/security.md.
"""

from __future__ import annotations

from typing import Any

from broker.config import SecurityConfig
from broker.tls import broker_listeners, tls_listener

__all__ = ["ACL_PLUGIN", "AUTH_PLUGIN", "broker_listeners", "security_plugins", "tls_listener"]

AUTH_PLUGIN = "broker.auth.EdgeAuthPlugin"
ACL_PLUGIN = "broker.acl.AclPlugin"


def security_plugins(security: SecurityConfig, *, site: str | None) -> dict[str, Any]:
    """amqtt ``plugins`` entries replacing ``AnonymousAuthPlugin`` (keep any others you need)."""
    roles = {name: role.model_dump() for name, role in security.roles.items()}
    tls = security.tls
    return {
        AUTH_PLUGIN: {
            "credentials_file": str(security.credentials_file) if security.credentials_file else None,
            "allow_anonymous": security.anonymous,
            "anonymous_role": security.anonymous_role,
            # Only with our own CA: amqtt would otherwise trust the system CAs for client certificates.
            "cert_login": tls is not None and tls.ca_file is not None,
            "cert_role": security.cert_role,
            "require_client_cert": tls is not None and tls.require_client_cert,
            "site": site,
            "roles": roles,
            # Generated peer links log in as peer-{site} (role peer): then nobody else may
            # claim a peer- client id. Otherwise their role is unknown here (docs/security.md).
            "peer_role": "peer" if security.generate else None,
        },
        ACL_PLUGIN: {"site": site, "roles": roles},
    }
