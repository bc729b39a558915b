"""Access-control rules (broker.access) and the amqtt topic plugin over them, without sockets."""

from __future__ import annotations

import asyncio

import pytest
from amqtt.contexts import Action, BaseContext
from amqtt.session import Session
from hypothesis import given
from hypothesis import strategies as st

from broker import auth
from broker.access import AccessPolicy, Principal, covers
from broker.acl import AclPlugin
from broker.config import SecurityConfig
from broker.topics import matches

ROLES = SecurityConfig().roles
POLICY = AccessPolicy(ROLES, "plant-1")
DEV = POLICY.grants(Principal("dev-1", "device"))


def test_device_publishes_only_its_own_telemetry_and_status() -> None:
    assert DEV.may_publish("telemetry/plant-1/dev-1/temp")
    assert DEV.may_publish("telemetry/plant-1/dev-1")  # '#' includes the parent level
    assert DEV.may_publish("status/plant-1/dev-1")
    for topic in (
        "telemetry/plant-1/dev-2/temp",
        "status/plant-1/dev-2",
        "status/plant-1/dev-1/extra",
        "telemetry/plant-2/dev-1/temp",
        "commands/plant-1/dev-1/reboot",
        "edgemq/plant-1/a1/state",
    ):
        assert not DEV.may_publish(topic), topic


def test_device_subscribes_only_to_its_own_commands() -> None:
    assert DEV.may_subscribe("commands/plant-1/dev-1/#")
    assert DEV.may_subscribe("commands/plant-1/dev-1/reboot")
    assert DEV.may_subscribe("commands/plant-1/dev-1/+")
    for f in ("commands/plant-1/+/#", "commands/plant-1/#", "#", "commands/+/dev-1/#", "telemetry/plant-1/dev-1/#"):
        assert not DEV.may_subscribe(f), f
    assert DEV.may_receive("commands/plant-1/dev-1/reboot")
    assert not DEV.may_receive("commands/plant-1/dev-2/reboot")


def test_dashboard_reads_but_never_writes() -> None:
    g = POLICY.grants(Principal("wall", "dashboard"))
    assert g.may_subscribe("telemetry/plant-1/#") and g.may_subscribe("status/plant-1/+")
    assert not g.may_subscribe("commands/plant-1/#") and not g.may_subscribe("#")
    assert not g.may_publish("commands/plant-1/dev-1/x") and not g.may_publish("telemetry/plant-1/dev-1/t")


def test_operator_commands_bridge_and_peer() -> None:
    op = POLICY.grants(Principal("ops", "operator"))
    assert op.may_publish("commands/plant-1/dev-9/reboot") and not op.may_publish("telemetry/plant-1/d/t")
    br = POLICY.grants(Principal("bridge-a1", "bridge"))
    assert br.may_publish("telemetry/plant-1/d/t") and br.may_subscribe("commands/plant-1/#")
    peer = POLICY.grants(Principal("a2", "peer"))
    assert peer.may_subscribe("telemetry/plant-1/#") and not peer.may_subscribe("telemetry/plant-2/#")


def test_site_placeholder_on_a_broker_without_site_is_one_level() -> None:
    cloud = AccessPolicy(ROLES, None)
    br = cloud.grants(Principal("bridge", "bridge"))
    assert br.may_publish("telemetry/any-site/d/t")
    assert not br.may_subscribe("telemetry/#")
    bound = cloud.grants(Principal("bridge", "bridge", site="plant-1"))
    assert not bound.may_publish("telemetry/plant-2/d/t")


def test_admits_checks_site_and_role() -> None:
    assert POLICY.admits(Principal("d", "device", "plant-1"))
    assert not POLICY.admits(Principal("d", "device", "plant-2"))
    assert not POLICY.admits(Principal("d", "no-such-role"))
    assert POLICY.grants(Principal("d", "no-such-role")).publish == ()


def test_covers_edge_cases() -> None:
    assert covers("a/#", "a") and covers("a/#", "a/#") and covers("#", "a/+/b")
    assert covers("a/+", "a/b") and covers("a/+", "a/+")
    assert not covers("a/+", "a/#") and not covers("a/b", "a/+") and not covers("a/+", "a/b/c")
    assert not covers("#", "$SYS/x") and not covers("+/x", "$SYS/x")
    assert covers("$SYS/#", "$SYS/broker")


LEVEL = st.sampled_from(["a", "b", "+", "$s"])


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(LEVEL, min_size=1, max_size=4))
    if draw(st.booleans()):
        levels.append("#")
    return "/".join(levels)


@given(filters(), filters(), st.lists(st.sampled_from(["a", "b", "c", "$s"]), min_size=1, max_size=6))
def test_covered_filter_never_reaches_beyond_the_allowed_one(allowed: str, requested: str, levels: list[str]) -> None:
    # The property the subscribe rule rests on: covers(A, R) and R matches t  =>  A matches t.
    topic = "/".join(levels)
    if covers(allowed, requested) and matches(requested, topic):
        assert matches(allowed, topic)


def _plugin() -> AclPlugin:
    ctx = BaseContext()
    roles = {n: r.model_dump() for n, r in ROLES.items()}
    ctx.config = AclPlugin.Config(site="plant-1", roles=roles)
    return AclPlugin(ctx)


def test_plugin_decides_by_the_sessions_principal() -> None:
    plugin = _plugin()
    session = Session()
    session.client_id = "dev-plant-1-dev-1"

    def ask(topic: str, action: Action) -> bool:
        return asyncio.run(plugin.topic_filtering(session=session, topic=topic, action=action))

    assert not ask("telemetry/plant-1/dev-1/t", Action.PUBLISH)  # nobody authenticated it
    auth.bind_principal(session, Principal("dev-1", "device"))
    assert ask("telemetry/plant-1/dev-1/t", Action.PUBLISH)
    assert not ask("telemetry/plant-1/dev-2/t", Action.PUBLISH)
    assert ask("commands/plant-1/dev-1/#", Action.SUBSCRIBE)
    assert not ask("commands/plant-1/+/#", Action.SUBSCRIBE)
    assert not ask("status/plant-1/dev-2", Action.RECEIVE)
    assert plugin.denied == {"publish": 2, "subscribe": 1, "receive": 1}
    assert asyncio.run(plugin.topic_filtering(session=None, topic="x", action=Action.RECEIVE))


@pytest.mark.parametrize("bad", ["commands/{site}/{dev}/#", "telemetry/#/x"])
def test_bad_role_template_is_a_config_error(bad: str) -> None:
    from broker.config import RoleConfig

    with pytest.raises(ValueError):
        RoleConfig(publish=[bad])
