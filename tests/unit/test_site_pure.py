"""Pure parts of site peering: interest summaries, presence merging, peer identities."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker import interest, presence
from broker.membership import control_filters, decode_state, peer_client_id, peer_of
from broker.presence import OFFLINE, ONLINE, Presence, PresenceTable
from broker.topics import matches

LEVEL = st.sampled_from(["a", "b", "c", "+"])
FILTERS = st.lists(
    st.builds(
        lambda levels, tail: "/".join([*levels, *(["#"] if tail else [])]) or "#",
        st.lists(LEVEL, min_size=0, max_size=3),
        st.booleans(),
    ),
    max_size=40,
)
TOPICS = st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=4).map("/".join)


@given(FILTERS, TOPICS, st.integers(1, 6))
def test_summary_never_forwards_less(filters: list[str], topic: str, limit: int) -> None:
    summary = interest.summarize(filters, max_filters=limit)
    assert len(summary) <= max(limit, 1)
    if any(matches(f, topic) for f in filters):
        assert any(matches(f, topic) for f in summary), (filters, summary, topic)


def test_summary_drops_covered_and_dollar_filters_and_widens_past_the_limit() -> None:
    assert interest.summarize(["telemetry/p/#", "telemetry/p/d/temp", "$SYS/#", "status/p/+"]) == (
        "status/p/+",
        "telemetry/p/#",
    )
    many = [f"commands/p/dev-{i}/#" for i in range(300)] + ["telemetry/p/#"]
    assert interest.summarize(many) == ("commands/#", "telemetry/#")
    assert interest.summarize([f"x{i}/y" for i in range(20)], max_filters=5) == ("#",)
    assert interest.summarize([]) == ()


def test_interest_document_round_trips_and_bad_documents_mean_no_interest() -> None:
    doc = interest.decode(interest.encode("a1", ("telemetry/p/+/temp",), 3))
    assert doc.filters == ("telemetry/p/+/temp",) and doc.version == 3
    assert doc.wants("telemetry/p/d/temp") and not doc.wants("telemetry/p/d/hum")
    assert interest.decode(b"").filters == () and interest.decode(b"{}").filters == ()
    assert not interest.decode(b"not json").wants("x")


def test_present_at_is_the_latest_online_record_of_a_live_broker() -> None:
    t = PresenceTable()
    t.update("d", Presence(ONLINE, "a1", 10.0), "a1")
    assert t.present_at("d") == "a1"
    t.update("d", Presence(ONLINE, "a2", 20.0), "a2")
    assert t.present_at("d") == "a2"
    t.update("d", Presence(OFFLINE, "a2", 30.0), "a2")
    assert t.present_at("d") == "a1"  # a1 never said offline (a stale session there)
    t.broker_down("a1")
    assert t.present_at("d") is None
    t.broker_up("a1")
    t.update("d", None, "a1")
    assert t.present_at("d") is None and t.present_at("unknown") is None


def test_a_will_is_stale_only_if_the_device_is_online_elsewhere_since_its_connection_here() -> None:
    t = PresenceTable()
    t.update("d", Presence(ONLINE, "a1", 10.0), "a1")
    assert not t.suppress_will("d", "a1", 10.0)  # online only here
    t.update("d", Presence(ONLINE, "a2", 12.0), "a2")
    assert t.suppress_will("d", "a1", 10.0)  # moved to a2 after it connected here
    assert not t.suppress_will("d", "a1", 13.0)  # connected here after a2: this will is current
    t.broker_down("a2")
    assert not t.suppress_will("d", "a1", 10.0)  # a2 died: nothing says it is anywhere else
    assert not t.suppress_will("other", "a1", 0.0)


def test_presence_records_round_trip_and_reject_garbage() -> None:
    p = Presence(ONLINE, "a2", 12.5)
    assert presence.decode(presence.encode(p), "a2") == p
    assert presence.decode(b"", "a2") is None
    assert presence.decode(b'{"state": "maybe", "since": 1}', "a2") is None
    assert presence.presence_topic("p", "a2", "d") == "edgemq/p/a2/presence/d"


def test_peer_identities_and_control_topics() -> None:
    assert peer_of("plant-1", peer_client_id("plant-1", "a2")) == "a2"
    assert peer_of("plant-1", "peer-plant-2-a2") is None
    assert peer_of("plant-1", "dev-plant-1-d") is None
    assert control_filters("p", "a1") == ["edgemq/p/a1/state", "edgemq/p/a1/interest", "edgemq/p/a1/presence/+"]
    assert decode_state("a1", b'{"state": "online"}').online
    assert not decode_state("a1", b"").online and not decode_state("a1", b"[1]").online
