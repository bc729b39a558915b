"""Cluster file loading: the default file loads, and every error case names field and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import ClusterConfig, load, loads
from broker.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
[[sites]]
id = "plant-1"
[[sites.brokers]]
id = "a1"
port = 20001
"""


def test_default_cluster_file_loads() -> None:
    cfg = load(ROOT / "cluster.toml")
    assert [s.id for s in cfg.sites] == ["plant-1"]
    assert [b.id for b in cfg.sites[0].brokers] == ["a1", "a2", "a3"]
    assert cfg.run_dir.is_absolute()
    assert cfg.run_dir == (ROOT / "run").resolve()


def test_example_cluster_file_loads() -> None:
    cfg = load(ROOT / "cluster.example.toml")
    assert cfg.sites


def test_minimal_file_gets_defaults() -> None:
    cfg = loads(MINIMAL)
    assert cfg.cloud.embedded
    assert [r.pattern for r in cfg.bridge.uplink] == ["telemetry/#", "status/#"]
    assert [r.pattern for r in cfg.bridge.downlink] == ["commands/{site}/#"]
    assert cfg.buffer.durability == "os"


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        loads(text, source="t.toml")
    return str(info.value)


def test_unknown_key_is_named() -> None:
    msg = _error(MINIMAL + "\n[cloud]\nprot = 1\n")
    assert "cloud.prot" in msg and "unknown key" in msg


def test_duplicate_broker_id() -> None:
    msg = _error(MINIMAL + '[[sites.brokers]]\nid = "a1"\nport = 20002\n')
    assert "duplicate broker id 'a1'" in msg


def test_duplicate_port() -> None:
    msg = _error(MINIMAL + '[[sites.brokers]]\nid = "a2"\nport = 20001\n')
    assert "port 20001" in msg and "plant-1/a1" in msg


def test_port_clashes_with_embedded_cloud() -> None:
    msg = _error(MINIMAL.replace("20001", "18830"))
    assert "already used by cloud" in msg


def test_metrics_port_clashing_with_a_broker_port_is_named() -> None:
    msg = _error(MINIMAL + 'metrics_port = 20002\n[[sites.brokers]]\nid = "a2"\nport = 20002\n')
    assert "port 20002" in msg and "plant-1/a1" in msg


def test_ports_of_metrics_and_dashboard_come_from_the_file() -> None:
    cfg = loads(MINIMAL + "metrics_port = 9201\n[cloud]\nmetrics_port = -1\n[dashboard]\nport = 8080\n")
    assert cfg.sites[0].brokers[0].metrics_port == 9201
    assert cfg.cloud.metrics_port == -1
    assert cfg.dashboard_port() == 8080
    assert loads(MINIMAL).dashboard_port() == 18830 + 50


def test_duplicate_site() -> None:
    text = MINIMAL + MINIMAL.replace("20001", "20002")
    assert "duplicate site id 'plant-1'" in _error(text)


def test_bad_port_value_is_shown() -> None:
    msg = _error(MINIMAL.replace("20001", "70000"))
    assert "sites.0.brokers.0.port" in msg and "70000" in msg


def test_bad_weight() -> None:
    msg = _error(MINIMAL + "weight = -1\n")
    assert "weight" in msg and "-1" in msg


def test_bad_topic_filter_in_rule() -> None:
    msg = _error(MINIMAL + '[bridge]\nuplink = [{pattern = "telemetry/#/x"}]\n')
    assert "bridge.uplink.0.pattern" in msg and "'#' must be a whole, last level" in msg


def test_bad_durability() -> None:
    msg = _error(MINIMAL + '[buffer]\ndurability = "maybe"\n')
    assert "buffer.durability" in msg and "maybe" in msg


def test_backoff_order() -> None:
    assert "reconnect_max_s" in _error(MINIMAL + "[bridge]\nreconnect_min_s = 5\nreconnect_max_s = 1\n")


def test_no_sites() -> None:
    assert "sites" in _error('run_dir = "x"\n')


def test_not_toml() -> None:
    assert "not valid TOML" in _error("[[sites]\n")


def test_unreadable_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "missing.toml")
    assert "missing.toml" in str(info.value) and "cannot read" in str(info.value)


def test_locate() -> None:
    cfg = loads(MINIMAL)
    site, b = cfg.locate("plant-1/a1")
    assert (site.id, b.port) == ("plant-1", 20001)
    for ref in ("plant-1", "plant-2/a1", "plant-1/zz"):
        with pytest.raises(ConfigError):
            cfg.locate(ref)


def test_models_are_frozen_and_documented() -> None:
    # Every field of every model carries a description (the file is its own reference).
    seen: set[type] = set()

    def walk(model: type) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            assert field.description, f"{model.__name__}.{name} has no description"
            ann = field.annotation
            for arg in (*getattr(ann, "__args__", ()), ann):
                if isinstance(arg, type) and hasattr(arg, "model_fields"):
                    walk(arg)

    walk(ClusterConfig)
    assert len(seen) >= 6
