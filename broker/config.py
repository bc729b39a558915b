"""The cluster file: one TOML file, parsed and validated at the edge.

``load(path)`` reads the file with ``tomllib``, validates it with pydantic v2 models
(``extra="forbid"``, a description on every field, cross-field checks) and returns a
``ClusterConfig``. Any problem becomes one ``ConfigError`` naming the field and the
value; nothing starts half-configured. Components take the sub-model they need
(``SiteConfig``, ``BrokerConfig``, ``BridgeConfig``...), never the file.
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from broker.errors import ConfigError

__all__ = [
    "BridgeConfig",
    "BrokerConfig",
    "BufferConfig",
    "ClientLoginConfig",
    "CloudConfig",
    "ClusterConfig",
    "LimitsConfig",
    "ListenerTlsConfig",
    "RoleConfig",
    "SecurityConfig",
    "SiteConfig",
    "TlsConfig",
    "TopicRule",
    "load",
    "loads",
]

Port = Annotated[int, Field(ge=1, le=65535)]
# A metrics endpoint's port: unset = derived (MQTT or HTTP port + 1000), 0 = any free port, -1 = off.
MetricsPort = Annotated[int, Field(ge=-1, le=65535)]
METRICS_PORT_HELP = (
    "HTTP port of this process's Prometheus /metrics; unset: its MQTT port + 1000; 0: any free port; -1: off."
)
Ident = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Model):
    """TLS for a client link (the uplink to an external cloud broker)."""

    ca_file: Path | None = Field(None, description="CA bundle used to verify the server; system CAs if unset.")
    cert_file: Path | None = Field(None, description="Client certificate for mutual TLS.")
    key_file: Path | None = Field(None, description="Private key for the client certificate.")
    insecure: bool = Field(False, description="Skip server hostname verification (tests only).")


class CloudConfig(_Model):
    """The cloud broker: embedded amqtt (started by edgemq) or any external MQTT broker."""

    embedded: bool = Field(True, description="Run edgemq's embedded amqtt cloud broker; false to use an external one.")
    host: str = Field("127.0.0.1", description="Address of the cloud broker (listen address when embedded).")
    port: Port = Field(18830, description="MQTT port of the cloud broker.")
    protocol: Literal["3.1.1", "5"] = Field(
        "3.1.1",
        description="MQTT version the bridges speak upstream; '5' adds the stable message id as a user property.",
    )
    username: str | None = Field(None, description="Username for the uplink (external brokers).")
    password_env: str | None = Field(
        None, description="Name of the environment variable holding the uplink password (never logged)."
    )
    tls: TlsConfig | None = Field(None, description="TLS settings for the uplink; plaintext if unset.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive of the uplink connection.")
    metrics_port: MetricsPort | None = Field(None, description="Embedded cloud broker only. " + METRICS_PORT_HELP)
    tls_port: Port | None = Field(
        None,
        description="MQTT-over-TLS port of the cloud broker (the embedded one listens there with [security.tls]'s "
        "certificate); with [cloud.tls] set, the bridges connect to it.",
    )


class BrokerConfig(_Model):
    """One edge broker of a site."""

    id: Ident = Field(description="Broker id, unique within its site (e.g. 'a1').")
    host: str = Field("127.0.0.1", description="Address the broker listens on and devices connect to.")
    port: Port = Field(description="MQTT port the broker listens on.")
    weight: float = Field(1.0, ge=0.0, description="Share of the site's devices this broker owns; 0 owns none.")
    tls_port: Port | None = Field(
        None, description="MQTT-over-TLS port of this broker (needed when [security.tls] is set)."
    )
    metrics_port: MetricsPort | None = Field(None, description=METRICS_PORT_HELP)

    @field_validator("weight")
    @classmethod
    def _finite(cls, v: float) -> float:
        if v != v or v == float("inf"):
            raise ValueError("weight must be a finite number")
        return v


class SiteConfig(_Model):
    """A site: a group of edge brokers that share ownership of the site's devices."""

    id: Ident = Field(description="Site id, used in topics (telemetry/{site}/...).")
    brokers: list[BrokerConfig] = Field(min_length=1, description="The site's edge brokers.")
    ownership_policy: Literal["warn", "refuse"] = Field(
        "warn",
        description="A device connecting to a broker that does not own it while its owner is alive: "
        "'warn' admits it and logs, 'refuse' answers CONNACK 0x05 so it goes to its owner.",
    )

    @model_validator(mode="after")
    def _unique_brokers(self) -> SiteConfig:
        seen: set[str] = set()
        for b in self.brokers:
            if b.id in seen:
                raise ValueError(f"duplicate broker id {b.id!r} in site {self.id!r}")
            seen.add(b.id)
        return self

    def broker(self, broker_id: str) -> BrokerConfig:
        """The broker with this id; ConfigError if the site has none."""
        for b in self.brokers:
            if b.id == broker_id:
                return b
        raise ConfigError(
            f"site {self.id!r} has no broker {broker_id!r}",
            hint=f"known brokers: {', '.join(b.id for b in self.brokers)}",
            site=self.id,
            broker=broker_id,
        )


class TopicRule(_Model):
    """A bridge topic rule: which local topics go up (or remote topics come down), at which QoS."""

    pattern: str = Field(description="MQTT topic filter; '{site}' is replaced by the site id.")
    qos: Literal[0, 1] = Field(1, description="QoS used on the link for matching messages.")
    remote_prefix: str = Field(
        "", description="Prefix added to the topic upstream (uplink) or removed from it (downlink)."
    )
    overflow: Literal["drop_oldest", "reject_new"] = Field(
        "drop_oldest",
        description="When the buffer is full: drop the oldest message, or refuse the new one (backpressure).",
    )

    @field_validator("pattern")
    @classmethod
    def _valid_filter(cls, v: str) -> str:
        from broker.topics import validate_filter

        validate_filter(v.replace("{site}", "site"))
        return v


class BufferConfig(_Model):
    """The store-and-forward buffer each edge broker keeps on local disk."""

    max_messages: int = Field(5_000_000, ge=1, description="Capacity in messages.")
    max_bytes: int = Field(2 * 1024**3, ge=4096, description="Capacity in payload+topic bytes.")
    ttl_s: float | None = Field(
        7 * 24 * 3600.0, gt=0, description="Messages older than this are dropped (counted 'expired'); none: keep."
    )
    durability: Literal["fsync", "os", "relaxed"] = Field(
        "os",
        description="fsync: survives power loss; os: survives a process crash; relaxed: ack on receipt.",
    )
    commit_interval_s: float = Field(0.002, ge=0, le=1, description="Group-commit window.")
    expire_interval_s: float = Field(
        2.0, gt=0, description="How often expired messages are dropped while no traffic arrives."
    )
    min_free_bytes: int = Field(
        4 * 1024 * 1024,
        ge=0,
        description="Disk space kept free: appends are refused (counted 'error') below it, so acks can still delete.",
    )


class BridgeConfig(_Model):
    """What each edge broker's bridge forwards up and takes down."""

    uplink: list[TopicRule] = Field(
        default_factory=lambda: [TopicRule(pattern="telemetry/#"), TopicRule(pattern="status/#")],
        description="Local topics forwarded to the cloud (store-and-forward).",
    )
    downlink: list[TopicRule] = Field(
        default_factory=lambda: [TopicRule(pattern="commands/{site}/#")],
        description="Cloud topics delivered down to the site's brokers.",
    )
    inflight: int = Field(
        1000,
        ge=1,
        le=65535,
        description="Unacknowledged uplink messages allowed at once (an MQTT 5 cloud's Receive Maximum caps it).",
    )
    rate_limit: float | None = Field(None, gt=0, description="Optional cap on uplink messages per second.")
    reconnect_min_s: float = Field(0.5, gt=0, description="First reconnect delay after the uplink drops.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Cap on the reconnect delay (jittered exponential).")
    command_ttl_s: float = Field(
        3600.0,
        gt=0,
        description="How long a command for an offline device waits at its keeper broker before it expires "
        "(dropped and counted, never fired late).",
    )
    max_queued_commands: int = Field(
        100_000, ge=1, description="Commands each broker keeps for offline devices; beyond it the oldest go."
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> BridgeConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self


def _default_roles() -> dict[str, RoleConfig]:
    site_wide = ["telemetry/{site}/#", "status/{site}/#", "edgemq/{site}/#"]
    return {
        "device": RoleConfig(
            publish=["telemetry/{site}/{id}/#", "status/{site}/{id}"],
            # its commands, and the site's ring document (devices follow a ring change: docs/site.md)
            subscribe=["commands/{site}/{id}/#", "edgemq/{site}/ring"],
        ),
        "dashboard": RoleConfig(subscribe=site_wide),
        "operator": RoleConfig(publish=["commands/{site}/#"], subscribe=[*site_wide, "commands/{site}/#"]),
        "bridge": RoleConfig(
            publish=[*site_wide, "commands/{site}/#"],
            subscribe=["telemetry/{site}/#", "status/{site}/#", "commands/{site}/#"],
        ),
        "peer": RoleConfig(publish=[*site_wide, "commands/{site}/#"], subscribe=[*site_wide, "commands/{site}/#"]),
        "demo": RoleConfig(publish=["#"], subscribe=["#"]),
    }


class RoleConfig(_Model):
    """What one role may do: topic-filter templates ('{site}' and '{id}' are filled in per client)."""

    publish: list[str] = Field(default_factory=list, description="Filters of the topics this role may publish to.")
    subscribe: list[str] = Field(
        default_factory=list,
        description="Filters this role may subscribe within; it receives (retained messages too) only matching topics.",
    )

    @field_validator("publish", "subscribe")
    @classmethod
    def _valid_templates(cls, v: list[str]) -> list[str]:
        from broker.topics import validate_filter

        for template in v:
            validate_filter(template.replace("{site}", "site").replace("{id}", "id"))
            rest = template.replace("{site}", "").replace("{id}", "")
            if "{" in rest or "}" in rest:
                raise ValueError(f"unknown placeholder in {template!r} (only {{site}} and {{id}})")
        return v


class ListenerTlsConfig(_Model):
    """TLS listeners of the edge brokers (each broker's ``tls_port``)."""

    cert_file: Path = Field(description="PEM certificate chain the brokers present.")
    key_file: Path = Field(description="PEM private key of that certificate.")
    ca_file: Path | None = Field(
        None, description="CA bundle for client certificates; set it to accept mutual TLS (certificate CN = device id)."
    )
    require_client_cert: bool = Field(
        False, description="Refuse TLS clients that present no verified client certificate."
    )
    plaintext: bool = Field(True, description="Also keep the plaintext listener on each broker's 'port'.")

    @model_validator(mode="after")
    def _ca_for_client_certs(self) -> ListenerTlsConfig:
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("require_client_cert needs ca_file (the CA that signs client certificates)")
        return self


class ClientLoginConfig(_Model):
    """How edgemq's own clients of the site's brokers log in (peer links, the dashboard, probes)."""

    username: str | None = Field(None, description="Username they present to the edge brokers.")
    password_env: str | None = Field(
        None, description="Name of the environment variable holding that user's password (never logged)."
    )
    tls: TlsConfig | None = Field(
        None, description="TLS towards the edge brokers' tls_port (ca_file: the CA that signed their certificate)."
    )


class SecurityConfig(_Model):
    """Authentication, access control and TLS listeners of the brokers."""

    profile: Literal["demo", "secure"] = Field(
        "demo",
        description="demo: loopback-only, anonymous clients allowed by default; secure: credentials required.",
    )
    credentials_file: Path | None = Field(
        None, description="Users and salted password hashes (edgemq users add); relative to the cluster file."
    )
    allow_anonymous: bool | None = Field(
        None, description="Accept clients without credentials; default true in the demo profile, false in secure."
    )
    anonymous_role: str = Field("demo", description="Role of anonymous clients (when allowed).")
    cert_role: str = Field("device", description="Role of clients known only by a verified client certificate.")
    roles: dict[str, RoleConfig] = Field(
        default_factory=_default_roles, description="Access-control roles by name; replaces the built-in set."
    )
    tls: ListenerTlsConfig | None = Field(None, description="TLS listeners on the brokers; none if unset.")
    generate: bool = Field(
        False,
        description="cluster up creates what is missing in <run_dir>/secrets: a local CA, the brokers' server "
        "certificate and users with random passwords (bridges, dashboard, operator, peers, simulated devices); "
        "unset credentials_file, tls and cloud.tls then point there. For one-machine trials.",
    )
    client: ClientLoginConfig | None = Field(
        None, description="Credentials and TLS of edgemq's own clients of the edge brokers (generated if unset)."
    )

    @property
    def anonymous(self) -> bool:
        """Whether clients without credentials are accepted."""
        return self.allow_anonymous if self.allow_anonymous is not None else self.profile == "demo"

    @model_validator(mode="after")
    def _coherent(self) -> SecurityConfig:
        for name in (self.anonymous_role, self.cert_role):
            if name not in self.roles:
                raise ValueError(f"role {name!r} is not defined in security.roles")
        if (
            self.profile == "secure"
            and not self.generate
            and self.credentials_file is None
            and (self.tls is None or self.tls.ca_file is None)
        ):
            raise ValueError("the secure profile needs credentials_file (or client certificates: tls.ca_file)")
        return self


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LimitsConfig(_Model):
    """What each broker accepts from its clients (protection against broken or hostile input)."""

    max_packet_size: int = Field(1024 * 1024, gt=0, description="Largest MQTT packet accepted, in bytes.")
    connect_timeout_s: float = Field(10.0, gt=0, description="Time a new connection has to send its CONNECT.")
    max_connections: int = Field(10_000, gt=0, description="Open client connections per broker.")
    keepalive_factor: float = Field(
        1.5, gt=0, description="A client silent this many times its keep-alive is disconnected (will published)."
    )
    max_queued_messages: int = Field(
        1000,
        gt=0,
        description="QoS 1/2 messages queued per session (offline, or behind a full in-flight window); "
        "the oldest is dropped beyond.",
    )
    max_queued_bytes: int = Field(
        16 * 1024 * 1024,
        ge=0,
        description="Payload bytes queued per session (the queue of max_queued_messages); the oldest is dropped "
        "beyond; 0: no byte bound (Mosquitto's default).",
    )
    max_inflight_messages: int = Field(
        20, gt=0, description="Outgoing QoS 1/2 messages unacknowledged per client; further ones wait in its queue."
    )
    max_awaiting_rel: int = Field(
        20,
        gt=0,
        le=65535,
        description="Incoming QoS 2 messages per session awaiting the client's PUBREL (Mosquitto: "
        "max_inflight_messages, 20); beyond, a new one is answered PUBREC and dropped (counted in dropped_in).",
    )
    max_write_buffer: int = Field(
        1024 * 1024,
        gt=0,
        description="Bytes a client's socket has not taken yet above which QoS 0 messages to it are dropped.",
    )
    max_topic_length: int = Field(65535, gt=0, description="Longest topic name or filter, in bytes.")
    max_topic_levels: int = Field(128, gt=0, description="Most '/'-separated levels in a topic.")


class DashboardConfig(_Model):
    """The web dashboard that `make cluster-up` starts (`edgemq dashboard`)."""

    port: Port | None = Field(None, description="HTTP port of the dashboard; unset: the cloud's MQTT port + 50.")
    metrics_port: MetricsPort | None = Field(
        None, description="The dashboard's Prometheus /metrics port; unset: its HTTP port + 1000; -1: off."
    )


class ClusterConfig(_Model):
    """The whole cluster file."""

    run_dir: Path = Field(Path("run"), description="Where pids, logs, stats and buffers live (relative to the file).")
    cloud: CloudConfig = Field(default_factory=CloudConfig, description="The cloud broker.")
    sites: list[SiteConfig] = Field(min_length=1, description="The edge sites.")
    bridge: BridgeConfig = Field(default_factory=BridgeConfig, description="Bridge topic rules and link settings.")
    buffer: BufferConfig = Field(default_factory=BufferConfig, description="Store-and-forward buffer settings.")
    security: SecurityConfig = Field(
        default_factory=SecurityConfig, description="Authentication, access control and TLS listeners."
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Per-broker limits on client input.")
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig, description="The web dashboard.")

    def dashboard_port(self) -> int:
        """The dashboard's HTTP port: the file's, else the cloud's MQTT port + 50 (18880 by default)."""
        return self.dashboard.port if self.dashboard.port is not None else self.cloud.port + 50

    @model_validator(mode="after")
    def _unique(self) -> ClusterConfig:
        site_ids: set[str] = set()
        endpoints: dict[tuple[str, int], str] = {}
        if self.cloud.embedded:
            endpoints[(self.cloud.host, self.cloud.port)] = "cloud"
            if self.cloud.metrics_port is not None and self.cloud.metrics_port > 0:
                endpoints[(self.cloud.host, self.cloud.metrics_port)] = "cloud metrics"
            if self.cloud.tls_port is not None:
                if (self.cloud.host, self.cloud.tls_port) in endpoints:
                    raise ValueError(f"cloud.tls_port {self.cloud.tls_port} is the cloud's plaintext port")
                endpoints[(self.cloud.host, self.cloud.tls_port)] = "cloud"
        for s in self.sites:
            if s.id in site_ids:
                raise ValueError(f"duplicate site id {s.id!r}")
            site_ids.add(s.id)
            for b in s.brokers:
                for port in (b.port, b.tls_port, b.metrics_port):
                    if port is None or port <= 0:
                        continue
                    key = (b.host, port)
                    if key in endpoints:
                        raise ValueError(f"port {port} of {s.id}/{b.id} is already used by {endpoints[key]}")
                    endpoints[key] = f"{s.id}/{b.id}"
        self._check_security()
        return self

    def _check_security(self) -> None:
        sec = self.security
        if sec.generate and self.cloud.embedded and self.cloud.tls_port is None:
            raise ValueError("security.generate needs cloud.tls_port (the embedded cloud's TLS listener)")
        if sec.generate and any(b.tls_port is None for s in self.sites for b in s.brokers):
            raise ValueError("security.generate needs a tls_port on every broker")
        if sec.tls is not None:
            missing = [f"{s.id}/{b.id}" for s in self.sites for b in s.brokers if b.tls_port is None]
            if missing:
                raise ValueError(f"[security.tls] is set but these brokers have no tls_port: {', '.join(missing)}")
        if sec.profile == "demo" and sec.anonymous:
            hosts = [(f"{s.id}/{b.id}", b.host) for s in self.sites for b in s.brokers]
            if self.cloud.embedded:
                hosts.append(("cloud", self.cloud.host))
            exposed = [f"{name} ({host})" for name, host in hosts if not _loopback(host)]
            if exposed:
                raise ValueError(
                    "the demo profile lets anonymous clients in and binds to loopback only; "
                    f"not loopback: {', '.join(exposed)} (use security.profile = 'secure')"
                )

    def site(self, site_id: str) -> SiteConfig:
        """The site with this id; ConfigError if there is none."""
        for s in self.sites:
            if s.id == site_id:
                return s
        raise ConfigError(
            f"no site {site_id!r} in the cluster file",
            hint=f"known sites: {', '.join(s.id for s in self.sites)}",
            site=site_id,
        )

    def locate(self, ref: str) -> tuple[SiteConfig, BrokerConfig]:
        """Resolve '<site>/<broker>' to its models."""
        site_id, sep, broker_id = ref.partition("/")
        if not sep:
            raise ConfigError(f"broker reference {ref!r} is not '<site>/<broker>'", hint="e.g. plant-1/a1")
        site = self.site(site_id)
        return site, site.broker(broker_id)


def _format_error(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(file)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        value = err.get("input")
        shown = "" if isinstance(value, dict | list) else f" (value: {value!r})"
        parts.append(f"{loc}: {msg}{shown}")
    return f"{source}: " + "; ".join(parts)


def loads(text: str, *, base_dir: Path | None = None, source: str = "<cluster file>") -> ClusterConfig:
    """Parse and validate cluster-file text; ``run_dir`` is resolved against ``base_dir``."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}", hint="check quoting and brackets") from None
    try:
        cfg = ClusterConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source), hint="see cluster.example.toml") from None
    if base_dir is not None:
        if not cfg.run_dir.is_absolute():
            cfg = cfg.model_copy(update={"run_dir": (base_dir / cfg.run_dir).resolve()})
        cfg = cfg.model_copy(update={"security": _resolve_security_paths(cfg.security, base_dir)})
    if cfg.security.generate:
        cfg = _with_generated(cfg)
    return cfg


def _resolve_security_paths(sec: SecurityConfig, base_dir: Path) -> SecurityConfig:
    """Security file paths are relative to the cluster file, like ``run_dir``."""

    def resolve(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base_dir / p).resolve()

    update: dict[str, Any] = {"credentials_file": resolve(sec.credentials_file)}
    if sec.client is not None and sec.client.tls is not None:
        update["client"] = sec.client.model_copy(update={"tls": _resolve_tls(sec.client.tls, resolve)})
    if sec.tls is not None:
        tls = sec.tls
        update["tls"] = tls.model_copy(
            update={
                "cert_file": resolve(tls.cert_file),
                "key_file": resolve(tls.key_file),
                "ca_file": resolve(tls.ca_file),
            }
        )
    return sec.model_copy(update=update)


def _resolve_tls(tls: TlsConfig, resolve: Any) -> TlsConfig:
    return tls.model_copy(
        update={"ca_file": resolve(tls.ca_file), "cert_file": resolve(tls.cert_file), "key_file": resolve(tls.key_file)}
    )


def _with_generated(cfg: ClusterConfig) -> ClusterConfig:
    """``security.generate``: unset credential and certificate paths point into <run_dir>/secrets."""
    from broker.provision import Layout

    sec, cloud = cfg.security, cfg.cloud
    lay = Layout(cfg.run_dir)
    update: dict[str, Any] = {}
    if sec.credentials_file is None:
        update["credentials_file"] = lay.users
    if sec.tls is None:
        update["tls"] = ListenerTlsConfig(cert_file=lay.server_cert, key_file=lay.server_key)
    if update:
        sec = sec.model_copy(update=update)
    if cloud.embedded and cloud.tls is None:
        cloud = cloud.model_copy(update={"tls": TlsConfig(ca_file=lay.ca_cert)})
    return cfg.model_copy(update={"security": sec, "cloud": cloud})


def load(path: str | Path) -> ClusterConfig:
    """Read and validate the cluster file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read cluster file {str(p)!r}: {exc.strerror}", hint="pass --config PATH", path=str(p)
        ) from None
    return loads(text, base_dir=p.resolve().parent, source=str(p))
