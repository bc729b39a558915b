"""How edgemq's own clients log in: username, password and TLS, for the cloud or a site broker.

One place for every client edgemq runs (the bridge's uplink, peer links between the
brokers of a site, liveness probes, the dashboard, the simulated fleet):

- ``cloud_login(cfg, who, site)``: towards the cloud broker. With
  ``[security] generate`` the generated user (``bridge-{site}`` for the uplink,
  ``dashboard``...) and the generated CA; otherwise ``cloud.username``, the password
  from the environment variable ``cloud.password_env`` and ``[cloud.tls]``.
- ``site_login(cfg, who, site)``: towards an edge broker of ``site`` (peer links: ``who``
  = "peer"). With ``generate`` the generated ``{who}-{site}`` (or ``{who}``) user and
  CA; otherwise ``[security.client]``.
- ``ClientLogin.endpoint(host, port, tls_port)`` picks the TLS port when the login has
  TLS settings and the server has a TLS port; ``ssl_context()`` verifies the server's
  certificate and host name (``insecure`` skips the host name only).
- ``ClientLogin.aiomqtt_kwargs()`` / ``paho_apply(client)`` hand it to a client library.

The password is held in a field excluded from ``repr`` and is never logged; pass the
``ClientLogin`` itself around, not its fields.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from typing import Any

from broker.config import BrokerConfig, ClusterConfig, TlsConfig

__all__ = ["ClientLogin", "cloud_login", "probe_target", "site_login", "uplink_cloud"]

UPLINK_PASSWORD_ENV = "EDGEMQ_GENERATED_UPLINK_PASSWORD"


@dataclass(frozen=True)
class ClientLogin:
    """Credentials and TLS settings of one client (password never in ``repr``)."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsConfig | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context that verifies the server (the CA of ``tls.ca_file``, else the system's)."""
        if self.tls is None:
            return None
        t = self.tls
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(t.ca_file) if t.ca_file else None)
        if t.cert_file is not None:
            ctx.load_cert_chain(str(t.cert_file), str(t.key_file) if t.key_file else None)
        if t.insecure:
            ctx.check_hostname = False  # tests only: the chain is still verified
        return ctx

    def endpoint(self, host: str, port: int, tls_port: int | None) -> tuple[str, int]:
        """Where to connect: the TLS port when this login speaks TLS and the server has one."""
        return (host, tls_port) if self.tls is not None and tls_port is not None else (host, port)

    def aiomqtt_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``aiomqtt.Client`` (username, password, tls_context)."""
        return {"username": self.username, "password": self.password, "tls_context": self.ssl_context()}

    def paho_apply(self, client: Any) -> None:
        """Set the credentials and TLS on a ``paho.mqtt.client.Client`` before connecting."""
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        ctx = self.ssl_context()
        if ctx is not None:
            client.tls_set_context(ctx)


def _generated(cfg: ClusterConfig, user: str) -> ClientLogin:
    from broker.provision import Layout, password

    return ClientLogin(user, password(cfg, user), TlsConfig(ca_file=Layout(cfg.run_dir).ca_cert))


def cloud_login(cfg: ClusterConfig, who: str = "bridge", site: str | None = None) -> ClientLogin:
    """Login towards the cloud broker for ``who`` ("bridge" with its ``site``, "dashboard", "operator")."""
    c = cfg.cloud
    if cfg.security.generate and c.embedded:
        return _generated(cfg, f"{who}-{site}" if who == "bridge" and site else who)
    password = os.environ.get(c.password_env) if c.password_env else None
    return ClientLogin(c.username, password, c.tls)


def site_login(cfg: ClusterConfig, who: str = "peer", site: str | None = None) -> ClientLogin:
    """Login towards the edge brokers of ``site`` for ``who`` ("peer", "dashboard", "operator"...)."""
    if cfg.security.generate:
        return _generated(cfg, f"{who}-{site}" if who in ("peer", "bridge") and site else who)
    client = cfg.security.client
    if client is None:
        return ClientLogin()
    password = os.environ.get(client.password_env) if client.password_env else None
    return ClientLogin(client.username, password, client.tls)


def probe_target(cfg: ClusterConfig, broker: BrokerConfig) -> tuple[str, int, ssl.SSLContext | None]:
    """Where a liveness probe reaches ``broker``: its plaintext port, else (TLS only) its TLS port."""
    tls = cfg.security.tls
    if tls is None or tls.plaintext or broker.tls_port is None:
        return broker.host, broker.port, None
    ctx = site_login(cfg, "peer").ssl_context()
    if ctx is None:  # no CA configured for our own clients: still see whether it answers
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return broker.host, broker.tls_port, ctx


def uplink_cloud(cfg: ClusterConfig, site: str) -> Any:
    """The ``CloudConfig`` the uplink (``bridge.link.Uplink``) should use for ``site``.

    ``Uplink`` reads ``username``, ``password_env``, ``tls`` and ``port`` from a
    ``CloudConfig``; with ``generate`` this puts the generated bridge user in them (its
    password in this process's environment under ``EDGEMQ_GENERATED_UPLINK_PASSWORD``,
    never on a command line or in a file other than ``passwords.json``) and the TLS port.
    """
    c = cfg.cloud
    login = cloud_login(cfg, "bridge", site)
    update: dict[str, Any] = {}
    if cfg.security.generate and c.embedded:
        if login.password is not None:
            os.environ[UPLINK_PASSWORD_ENV] = login.password
        update = {"username": login.username, "password_env": UPLINK_PASSWORD_ENV, "tls": login.tls}
    _, port = login.endpoint(c.host, c.port, c.tls_port)
    update["port"] = port
    return c.model_copy(update=update)
