"""Alias calls (docs/semantics.md, "Aliases"): one id comes to name another's
profile, and a profile the id had is merged into it. The differential test in
test_differential.py compares random streams with aliases against the
reference; these are the named cases around it: the paths in (Python call,
JSON, msgspec structs, Arrow, gRPC bytes), shards, what a merged profile
leaves behind, and durability."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import abandon, engine_available

pytestmark = pytest.mark.skipif(not engine_available(), reason="segmint._core not built")

import segmint  # noqa: E402
from segmint import AliasEvent, Engine, TrackEvent  # noqa: E402

NOW = "2026-06-01T00:00:00Z"


def engine(shards: int = 1, **kw: Any) -> Engine:
    return Engine(clock="manual", now=NOW, shards=shards, threads=min(shards, 2), **kw)


def changes(e: Engine, since: int = 0) -> list[tuple[str, str, str, str]]:
    return [(c.user_id, c.audience, c.kind, c.reason) for c in e.changes(since)]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("shards", [1, 3])
def test_an_anonymous_cart_carries_over_to_the_identified_user(shards: int) -> None:
    """The seeds' cart abandoner: the checkout started anonymously counts for the
    user it is aliased to, who enters at the exact instant with no further event;
    the anonymous id leaves what it was in, and later events by it are the user's."""
    e = engine(shards)
    e.define_audience(
        "cart_abandoners",
        'since("Checkout Started") between 2h and 24h '
        'and count("Order Completed", since "Checkout Started") == 0',
    )
    e.define_audience("viewed_twice", 'count("Product Viewed", 7d) >= 2')
    e.define_audience("new_visitor", 'not did("Order Completed")')
    e.track("anon-7", "Product Viewed", {"category": "shoes"})
    e.track("anon-7", "Checkout Started", {})
    e.track("alice", "Product Viewed", {})
    e.identify("alice", {"plan": "pro"})
    assert e.audiences_of("anon-7") == ["new_visitor"]
    seq = e.last_seq
    result = e.alias("anon-7", "alice")
    assert result.changes == 2
    assert changes(e, seq) == [
        ("anon-7", "new_visitor", "exited", "merge"),
        ("alice", "viewed_twice", "entered", "merge"),
    ]
    # The old id now names alice's profile.
    assert e.audiences_of("anon-7") == e.audiences_of("alice") == ["new_visitor", "viewed_twice"]
    assert e.members("new_visitor") == ["alice"]
    assert e.user_count == 1
    e.advance("2026-06-01T02:00:00Z")
    assert e.is_member("alice", "cart_abandoners")
    assert e.entered_at("alice", "cart_abandoners") == at("2026-06-01T02:00:00Z")
    e.track("anon-7", "Order Completed", {"revenue": 10})
    assert e.audiences_of("alice") == ["viewed_twice"]


def test_merged_traits_keep_the_users_values_and_fill_the_rest() -> None:
    e = engine()
    e.define_audience("us_pro", 'trait.country == "US" and trait.plan == "pro"')
    e.identify("anon", {"country": "US", "plan": "free", "address": {"city": "Paris"}})
    e.identify("bob", {"plan": "pro"})
    e.alias("anon", "bob")
    assert e.traits("bob") == {"address.city": "Paris", "country": "US", "plan": "pro"}
    assert e.members("us_pro") == ["bob"]


def test_alias_to_a_new_user_moves_the_profile_and_announces_it() -> None:
    """Downstream tools keyed by user id learn of the memberships: the profile
    leaves under the anonymous id and enters under the new one."""
    e = engine(shards=2)
    e.define_audience("viewers", 'did("Product Viewed", 1d)')
    e.track("anon", "Product Viewed", {})
    seq = e.last_seq
    e.alias("anon", "carol")
    assert changes(e, seq) == [
        ("anon", "viewers", "exited", "merge"),
        ("carol", "viewers", "entered", "merge"),
    ]
    assert e.members("viewers") == ["carol"]
    assert e.entered_at("carol", "viewers") == at(NOW)


def test_an_id_never_seen_only_names_the_user() -> None:
    e = engine()
    e.define_audience("viewers", 'did("Product Viewed", 1d)')
    e.track("dave", "Product Viewed", {})
    seq = e.last_seq
    assert e.alias("device-1", "dave").changes == 0
    assert e.last_seq == seq
    assert e.is_member("device-1", "viewers")
    e.identify("device-1", {"plan": "pro"})
    assert e.traits("dave") == {"plan": "pro"}
    assert e.user_count == 1
    # Aliasing an id to the user it already names, or to itself, changes nothing.
    assert e.alias("device-1", "dave").changes == 0
    assert e.alias("dave", "dave").changes == 0
    assert e.last_seq == seq


def test_a_new_user_by_alias_enters_what_an_empty_profile_is_in() -> None:
    e = engine()
    e.define_audience("no_orders", 'not did("Order Completed")')
    e.alias("device-2", "erin")
    assert changes(e) == [("erin", "no_orders", "entered", "merge")]
    assert e.user_count == 1


def test_a_merged_profile_stays_out_of_later_definitions_and_previews() -> None:
    e = engine(shards=2)
    e.define_audience("viewers", 'did("Product Viewed")')
    e.track("anon", "Product Viewed", {})
    e.track("frank", "Product Viewed", {})
    e.alias("anon", "frank")
    assert e.define_audience("everyone", 'not did("Nothing")') == 1
    assert e.members("everyone") == ["frank"]
    assert e.preview('not did("Nothing")').size == 1
    assert e.define_computed_trait("views", 'count("Product Viewed")') == 1
    assert e.computed_value("frank", "views") == 2
    assert e.computed_value("anon", "views") == 2


def test_computed_traits_and_static_audiences_move_with_the_profile() -> None:
    e = engine(shards=2)
    e.define_computed_trait("spend", 'sum("Order Completed", revenue)')
    e.define_static_audience("beta", ["anon"])
    e.define_audience("big_spender", "computed.spend >= 100")
    e.track("anon", "Order Completed", {"revenue": 60})
    e.track("gina", "Order Completed", {"revenue": 50})
    seq = e.last_seq
    e.alias("anon", "gina")
    log = e.changes(seq)
    anon_spend = [(c.old, c.new) for c in log if c.user_id == "anon" and c.kind == "computed"]
    gina_spend = [(c.old, c.new) for c in log if c.user_id == "gina" and c.kind == "computed"]
    assert anon_spend == [(60, None)] and gina_spend == [(50, 110)]
    assert all(c.reason == "merge" for c in log)
    assert e.audiences_of("gina") == ["beta", "big_spender"]
    assert e.members("beta") == ["gina"]


@pytest.mark.parametrize("shards", [1, 3])
def test_a_static_audience_entered_by_merge_comes_before_its_readers(shards: int) -> None:
    """The merged-into user's changes keep the topological order: the static
    audience it joins is logged before the rule reading it, and the rule's
    `member_for` counts from the merge."""
    e = engine(shards)
    e.define_static_audience("vip", ["anon"])
    e.define_audience("vip_viewer", 'in_audience("vip") and did("Product Viewed")')
    e.define_audience("vip_long", 'member_for("vip") >= 10s')
    e.track("anon", "Product Viewed", {})
    e.track("bob", "Product Viewed", {})
    seq = e.last_seq
    e.alias("anon", "bob")
    assert changes(e, seq) == [
        ("anon", "vip", "exited", "merge"),
        ("anon", "vip_viewer", "exited", "merge"),
        ("bob", "vip", "entered", "merge"),
        ("bob", "vip_viewer", "entered", "merge"),
    ]
    e.advance("2026-06-01T00:00:10Z")
    assert e.audiences_of("bob") == ["vip", "vip_long", "vip_viewer"]
    # Asked by the old id, a profile and an explanation name the user.
    assert e.profile("anon").user_id == "bob"
    assert e.explain("anon", "vip").user_id == "bob"


def test_chained_aliases_follow_to_the_last_profile() -> None:
    e = engine(shards=3)
    e.define_audience("viewed_thrice", 'count("Product Viewed") >= 3')
    for user in ("a", "b", "c"):
        e.track(user, "Product Viewed", {})
    e.alias("a", "b")
    e.alias("b", "c")
    assert e.members("viewed_thrice") == ["c"]
    assert all(e.audiences_of(u) == ["viewed_thrice"] for u in "abc")
    e.define_computed_trait("views", 'count("Product Viewed")')
    e.track("a", "Product Viewed", {})
    assert e.computed_value("c", "views") == 4
    assert e.user_count == 1


def test_alias_arrives_by_every_batch_path() -> None:
    """JSON bytes, msgspec structs, dicts and an Arrow table decode alias calls
    alike; the events after one in the same batch see it."""
    import pyarrow as pa

    def run(batch: Any) -> list[str]:
        e = engine(shards=2)
        e.define_audience("viewed_twice", 'count("Product Viewed") >= 2')
        e.track("anon", "Product Viewed", {})
        result = e.ingest(batch)
        assert result.errors == [] and result.accepted == 2
        return e.members("viewed_twice")

    json = b'[{"type":"alias","previousId":"anon","userId":"hal"},'
    json += b'{"type":"track","userId":"anon","event":"Product Viewed"}]'
    structs = [
        AliasEvent(previous_id="anon", user_id="hal"),
        TrackEvent(event="Product Viewed", user_id="anon"),
    ]
    dicts = [
        {"type": "alias", "previousId": "anon", "userId": "hal"},
        {"type": "track", "userId": "anon", "event": "Product Viewed"},
    ]
    table = pa.table(
        {
            "type": ["alias", "track"],
            "user_id": ["hal", "anon"],
            "event": [None, "Product Viewed"],
            "previous_id": ["anon", None],
        }
    )
    assert run(json) == run(structs) == run(dicts) == run(table) == ["hal"]


def test_a_bad_alias_fails_alone_and_changes_nothing() -> None:
    e = engine()
    e.define_audience("viewers", 'did("Product Viewed")')
    e.track("ivy", "Product Viewed", {})
    seq = e.last_seq
    result = e.ingest(
        b'[{"type":"alias","userId":"ivy"},{"type":"alias","previousId":"","userId":"ivy"},'
        b'{"type":"alias","previousId":"x","userId":"ivy","timestamp":"2027-01-01T00:00:00Z"},'
        b'{"type":"track","userId":"ivy","event":"Product Viewed"}]'
    )
    assert [(err.index, err.code) for err in result.errors] == [
        (0, "invalid_event"),
        (1, "invalid_event"),
        (2, "invalid_event"),
    ]
    assert "non-empty 'previousId'" in result.errors[0].message
    assert "ahead of the engine's clock" in result.errors[2].message
    assert e.last_seq == seq and e.user_count == 1
    with pytest.raises(segmint.InvalidEventError, match="must not be empty"):
        e.alias("", "ivy")
    # A retried alias (same message id) applies once.
    assert e.alias("j1", "ivy", message_id="m1").duplicates == 0
    assert e.alias("j1", "ivy", message_id="m1").duplicates == 1


def test_grpc_batches_carry_alias_calls() -> None:
    from segmint.proto import segmint_pb2 as pb

    batch = pb.EventBatch(
        events=[
            pb.Event(user_id="kim", alias=pb.Alias(previous_id="anon")),
            pb.Event(user_id="kim", alias=pb.Alias()),
        ]
    )
    e = engine()
    e.define_audience("viewers", 'did("Product Viewed")')
    e.track("anon", "Product Viewed", {})
    from segmint.engine import _result

    # As the server applies an Ingest stream's batches.
    result = _result(e._core.ingest_proto(batch.SerializeToString()))
    assert [err.index for err in result.errors] == [1]
    assert e.members("viewers") == ["kim"]
    # The client's encoder writes a Segment-shaped alias as one.
    from segmint.client import encode_batch

    encoded = encode_batch([{"type": "alias", "previousId": "kim", "userId": "lou"}])
    assert _result(e._core.ingest_proto(encoded)).errors == []
    assert e.members("viewers") == ["lou"]


@pytest.mark.parametrize("snapshot", [False, True])
def test_aliases_survive_a_restart(tmp_path: Path, snapshot: bool) -> None:
    """From the log (replayed) or from a snapshot (format 5 keeps the ids an
    alias redirected and which profiles were merged away), the reopened engine
    resolves the old ids and leaves the merged profile out of new rules."""
    e = engine(shards=2, data_dir=tmp_path, fsync="never")
    e.define_audience("viewers", 'count("Product Viewed") >= 2')
    e.track("anon", "Product Viewed", {})
    e.track("lee", "Product Viewed", {})
    e.alias("anon", "lee")
    e.alias("phone", "lee")
    before = changes(e)
    if snapshot:
        e.close()  # writes a snapshot: the log is read no more
    else:
        e.sync()
        abandon(e)
    again = engine(shards=2, data_dir=tmp_path)
    assert (again.recovery.snapshot_generation > 0) == snapshot
    assert (again.recovery.events_replayed > 0) != snapshot
    assert changes(again) == before
    assert again.user_count == 1
    assert again.audiences_of("anon") == again.audiences_of("phone") == ["viewers"]
    assert again.define_audience("everyone", 'not did("Nothing")') == 1
    again.define_computed_trait("views", 'count("Product Viewed")')
    again.track("phone", "Product Viewed", {})
    assert again.computed_value("lee", "views") == 3
    assert again.members("everyone") == ["lee"]
    again.close()
