"""The [security] section of the cluster file: defaults, cross-field checks, path resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import BrokerConfig, ListenerTlsConfig, loads
from broker.errors import ConfigError
from broker.tls import broker_listeners, tls_listener

SITE = '[[sites]]\nid = "s"\n[[sites.brokers]]\nid = "a1"\nport = 20001\n'


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        loads(text, source="t.toml")
    return str(info.value)


def test_default_is_demo_with_anonymous_on_loopback() -> None:
    sec = loads(SITE).security
    assert sec.profile == "demo" and sec.anonymous and sec.tls is None
    assert set(sec.roles) >= {"device", "dashboard", "operator", "bridge", "peer"}


def test_demo_refuses_non_loopback_hosts() -> None:
    msg = _error(SITE.replace("port = 20001", 'port = 20001\nhost = "0.0.0.0"'))
    assert "demo profile" in msg and "s/a1 (0.0.0.0)" in msg
    ok = loads(
        '[security]\nprofile = "secure"\ncredentials_file = "u.json"\n'
        + SITE.replace("port = 20001", 'port = 20001\nhost = "0.0.0.0"')
    )
    assert not ok.security.anonymous


def test_secure_needs_a_way_to_log_in() -> None:
    assert "credentials_file" in _error('[security]\nprofile = "secure"\n' + SITE)


def test_unknown_role_and_key() -> None:
    assert "role 'robot'" in _error('[security]\ncert_role = "robot"\n' + SITE)
    assert "security.rolez" in _error("[security]\nrolez = 1\n" + SITE)
    assert "unknown placeholder" in _error(
        '[security.roles.x]\npublish = ["a/{device}"]\n'
        '[security.roles.demo]\npublish = ["#"]\n'
        "[security.roles.device]\n" + SITE
    )


def test_tls_needs_tls_ports_which_must_be_unique() -> None:
    tls = '[security.tls]\ncert_file = "c.pem"\nkey_file = "k.pem"\n'
    assert "no tls_port: s/a1" in _error(tls + SITE)
    assert "port 20001" in _error(tls + SITE + "tls_port = 20001\n")
    assert "require_client_cert needs ca_file" in _error(tls + "require_client_cert = true\n" + SITE)


def test_security_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    text = (
        '[security]\ncredentials_file = "users.json"\n[security.tls]\ncert_file = "c.pem"\n'
        'key_file = "/abs/k.pem"\n' + SITE + "tls_port = 20002\n"
    )
    sec = loads(text, base_dir=tmp_path).security
    assert sec.credentials_file == tmp_path / "users.json"
    assert sec.tls is not None and sec.tls.cert_file == tmp_path / "c.pem" and sec.tls.key_file == Path("/abs/k.pem")


def test_listeners() -> None:
    b = BrokerConfig(id="a1", port=1883, tls_port=8883)
    tls = ListenerTlsConfig(cert_file=Path("/c"), key_file=Path("/k"), ca_file=Path("/ca"))
    assert broker_listeners(None, b) == {"default": {"type": "tcp", "bind": "127.0.0.1:1883"}}
    both = broker_listeners(tls, b)
    assert both["tls"] == {
        "type": "tcp",
        "bind": "127.0.0.1:8883",
        "ssl": True,
        "certfile": "/c",
        "keyfile": "/k",
        "cafile": "/ca",
    }
    only = broker_listeners(tls.model_copy(update={"plaintext": False}), b)
    assert list(only) == ["default"] and only["default"]["ssl"] is True
    assert tls_listener(tls, "h", None) is None and tls_listener(None, "h", 1) is None
