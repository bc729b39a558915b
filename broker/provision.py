"""Generated secrets for one-machine trials of the secure profile (``[security] generate = true``).

``ensure(cfg)`` creates what is missing under ``<run_dir>/secrets`` (directory mode 0700,
files 0600 except the CA certificate):

- ``ca.pem`` / ``ca.key``: a local certificate authority (ECDSA P-256, ten years),
- ``server.pem`` / ``server.key``: the certificate every broker presents on its TLS
  listener (the embedded cloud's too), signed by that CA, valid for ``localhost``,
  127.0.0.1, ::1 and every host of the cluster file, one year,
- ``users.json``: the credentials file (Argon2id hashes, ``broker.credentials``) with
  ``bridge-{site}`` and ``peer-{site}`` for every site, ``dashboard`` and ``operator``,
- ``passwords.json``: the plaintext passwords of those generated users, random
  (``secrets.token_urlsafe``), for edgemq's own processes to log in with. Only the
  processes of this run directory read it (``password(cfg, user)``); it is never
  printed or logged.

``ensure_devices`` adds simulated devices (``dev-0001``...) the same way. Nothing that
exists is replaced: a second ``cluster up`` keeps the CA and every password, so clients
that already have them keep working. Certificates use ``cryptography`` directly.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.errors import ConfigError

if TYPE_CHECKING:
    from broker.config import ClusterConfig

__all__ = ["Layout", "ensure", "ensure_devices", "generated_users", "password"]


@dataclass(frozen=True)
class Layout:
    """Where the generated files of a run directory live."""

    run_dir: Path

    @property
    def dir(self) -> Path:
        return self.run_dir / "secrets"

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def users(self) -> Path:
        return self.dir / "users.json"

    @property
    def passwords(self) -> Path:
        return self.dir / "passwords.json"


def generated_users(cfg: ClusterConfig) -> dict[str, tuple[str, str | None]]:
    """The users ``ensure`` creates: name -> (role, site); roles the file does not define are left out."""
    wanted: dict[str, tuple[str, str | None]] = {"dashboard": ("dashboard", None), "operator": ("operator", None)}
    for site in cfg.sites:
        wanted[f"bridge-{site.id}"] = ("bridge", site.id)
        wanted[f"peer-{site.id}"] = ("peer", site.id)
    return {name: rs for name, rs in wanted.items() if rs[0] in cfg.security.roles}


def ensure(cfg: ClusterConfig) -> Layout:
    """Create whatever is missing (CA, server certificate, generated users); returns the layout."""
    lay = Layout(cfg.run_dir)
    lay.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(lay.dir, 0o700)
    if not (lay.ca_cert.exists() and lay.ca_key.exists()):
        _write_ca(lay)
    hosts = {"localhost", "127.0.0.1", "::1", cfg.cloud.host, *(b.host for s in cfg.sites for b in s.brokers)}
    if not (lay.server_cert.exists() and lay.server_key.exists()) or not _covers(lay.server_cert, hosts):
        _write_server(lay, sorted(hosts))
    _ensure_users(cfg, lay, generated_users(cfg))
    return lay


def ensure_devices(cfg: ClusterConfig, site: str, devices: Iterable[str]) -> dict[str, str]:
    """Device users (role ``device``, bound to ``site``) for ``devices``; returns their passwords."""
    lay = Layout(cfg.run_dir)
    ids = list(devices)
    _ensure_users(cfg, lay, {d: ("device", site) for d in ids})
    known = _read_passwords(lay)
    return {d: known[d] for d in ids}


def password(cfg: ClusterConfig, user: str) -> str | None:
    """The generated password of ``user`` (None if this run directory has none for it)."""
    return _read_passwords(Layout(cfg.run_dir)).get(user)


# ---- users -------------------------------------------------------------------------------------


def _read_passwords(lay: Layout) -> dict[str, str]:
    try:
        data = json.loads(lay.passwords.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {lay.passwords}: {exc}", path=str(lay.passwords)) from None
    passwords = data.get("passwords") if isinstance(data, dict) else None
    if not isinstance(passwords, dict):
        raise ConfigError(f"{lay.passwords} is malformed", hint="delete it with users.json to regenerate both")
    return {str(k): str(v) for k, v in passwords.items()}


def _ensure_users(cfg: ClusterConfig, lay: Layout, wanted: dict[str, tuple[str, str | None]]) -> None:
    from broker.credentials import CredentialStore

    path = cfg.security.credentials_file or lay.users
    store = CredentialStore(path)
    known = _read_passwords(lay)
    users = store.load()
    missing = {n: rs for n, rs in wanted.items() if n not in known or n not in users}
    if not missing:
        return
    for name, (role, site) in missing.items():
        known[name] = secrets.token_urlsafe(18)
        store.add(name, role, password=known[name], site=site)
    _write_private(lay.passwords, json.dumps({"version": 1, "passwords": known}, indent=2) + "\n")


def _write_private(path: Path, text: str | bytes) -> None:
    """Atomic write, mode 0600 from the start (the file is never readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- certificates ------------------------------------------------------------------------------


def _name(cn: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgemq local"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _write_ca(lay: Layout) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = _name(f"edgemq local CA {secrets.token_hex(4)}")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(lay.ca_key, _key_pem(key))
    lay.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    # A new CA invalidates the old server certificate.
    lay.server_cert.unlink(missing_ok=True)


def _write_server(lay: Layout, hosts: list[str]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_cert = x509.load_pem_x509_certificate(lay.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(lay.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{lay.ca_key} is not the EC key edgemq generated", hint="delete the secrets directory")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    alt: list[x509.GeneralName] = []
    for h in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            alt.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("edgemq broker"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(lay.server_key, _key_pem(key))
    lay.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _covers(cert_path: Path, hosts: set[str]) -> bool:
    """Whether the server certificate names every host and is valid for another 30 days."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    names = {str(ip) for ip in alt.get_values_for_type(x509.IPAddress)} | set(alt.get_values_for_type(x509.DNSName))
    fresh = cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    return fresh and all(str(ipaddress.ip_address(h)) in names if _is_ip(h) else h in names for h in hosts)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
