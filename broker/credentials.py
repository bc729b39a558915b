"""The credentials file: users, their role and site, and salted Argon2id password hashes.

Format (JSON, written atomically, mode 0600)::

    {"version": 1,
     "users": {"dev-0001": {"role": "device", "site": "plant-1",
                            "hash": "$argon2id$v=19$m=65536,t=3,p=4$..."}}}

Hashes come from argon2-cffi's ``PasswordHasher`` (Argon2id, random 16-byte salt per
hash, parameters stored in the hash string; new hashes use OWASP's baseline
m=19 MiB, t=2, p=1, and older hashes with other parameters still verify). A user may have no ``hash``: it can then
log in only with a client certificate whose common name is its id (mutual TLS); the
entry still gives that certificate its role and site.

``edgemq users add|remove|list`` edits the file; brokers re-read it when its
modification time changes, so changes apply to the next CONNECT without a restart.
Passwords never leave this module except as hashes.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from broker.errors import ConfigError

__all__ = ["CredentialStore", "User", "hash_password", "valid_name"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# OWASP's Argon2id baseline (19 MiB, 2 passes, 1 lane): gateways are small machines, and
# every CONNECT that is not in the verified cache pays this once.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# Verified against when the user is unknown, so unknown and known users cost the same time.
_DUMMY_HASH = _HASHER.hash("edgemq-timing-equaliser")


def valid_name(name: str) -> bool:
    """User ids are single topic levels (they fill '{id}' in topic templates)."""
    return bool(_NAME.match(name))


def hash_password(password: str) -> str:
    """A salted Argon2id hash of ``password``."""
    return _HASHER.hash(password)


@dataclass(frozen=True)
class User:
    """One entry of the credentials file (``password_hash`` None: certificate only)."""

    name: str
    role: str
    site: str | None
    password_hash: str | None

    def verify(self, password: str) -> bool:
        """True if ``password`` matches (constant work whatever the outcome)."""
        return verify_hash(self.password_hash, password)


def verify_hash(password_hash: str | None, password: str) -> bool:
    """Check ``password`` against an Argon2 hash; None (no password set) never matches."""
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


class CredentialStore:
    """The credentials file at ``path``: read, add, remove (each write is atomic)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, User]:
        """All users; an absent file has none. ConfigError if the file is unreadable or malformed."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(
                f"cannot read credentials file {str(self.path)!r}: {exc.strerror}", path=str(self.path)
            ) from None
        try:
            data = json.loads(text)
            users: dict[str, User] = {}
            for name, entry in data["users"].items():
                if not valid_name(name) or not isinstance(entry.get("role"), str):
                    raise ValueError(f"bad entry {name!r}")
                users[name] = User(name, entry["role"], entry.get("site"), entry.get("hash"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"credentials file {str(self.path)!r} is malformed: {exc}",
                hint="edit it only with 'edgemq users'",
                path=str(self.path),
            ) from None
        return users

    def mtime(self) -> float | None:
        """Modification time, or None if the file does not exist."""
        try:
            return self.path.stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            return None

    def add(self, name: str, role: str, *, password: str | None, site: str | None = None) -> User:
        """Add or replace a user; ``password`` None makes a certificate-only user."""
        if not valid_name(name):
            raise ConfigError(
                f"invalid user name {name!r}", hint="letters, digits, '_', '.', '-' (a single topic level)"
            )
        if site is not None and not valid_name(site):
            raise ConfigError(f"invalid site id {site!r}")
        users = self.load()
        user = User(name, role, site, hash_password(password) if password is not None else None)
        users[name] = user
        self._write(users)
        return user

    def remove(self, name: str) -> bool:
        """Remove a user; False if there was none."""
        users = self.load()
        if users.pop(name, None) is None:
            return False
        self._write(users)
        return True

    def _write(self, users: dict[str, User]) -> None:
        doc: dict[str, Any] = {"version": 1, "users": {}}
        for u in sorted(users.values(), key=lambda u: u.name):
            entry: dict[str, Any] = {"role": u.role}
            if u.site is not None:
                entry["site"] = u.site
            if u.password_hash is not None:
                entry["hash"] = u.password_hash
            doc["users"][u.name] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".credentials-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
