"""Computed traits: each aggregation function windowed and all time, backfill,
``computed.KEY`` in rules, the change log (old and new values), replace,
remove, bad input, and a differential test against the full-history
reference (``tests/reference.py``)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("segmint._core")

import segmint
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import Reference, ms_to_iso
from rulegen import T0
from segmint import (
    InUseError,
    InvalidArgumentError,
    RuleSyntaxError,
    RuleTypeError,
    UnknownComputedTraitError,
)

S = 1000
M = 60 * S
H = 60 * M
D = 24 * H


def at(ms: int) -> str:
    return ms_to_iso(ms)


def engine(shards: int = 2) -> segmint.Engine:
    return segmint.Engine(clock="manual", now=at(T0), shards=shards)


def computed_changes(eng: segmint.Engine, since: int = 0) -> list[tuple[str, str, Any, Any, str]]:
    return [
        (c.computed_trait or "", c.user_id, c.old, c.new, c.reason)
        for c in eng.changes(since)
        if c.kind == "computed"
    ]


def orders(eng: segmint.Engine, user: str = "u") -> None:
    """Four orders: 30 days ago, 10 days ago, 2 hours ago and now."""
    for ago, revenue, category in [
        (30 * D, 100.0, "shoes"),
        (10 * D, 40.0, "bags"),
        (2 * H, 10.0, "shoes"),
        (0, 25.0, "hats"),
    ]:
        eng.track(
            user,
            "Order Completed",
            {"revenue": revenue, "category": category},
            timestamp=at(T0 - ago),
        )


# Each function, all time and over 7 days (orders at -30d, -10d, -2h, now).
FUNCTIONS = [
    ('count("Order Completed")', 4.0),
    ('count("Order Completed", 7d)', 2.0),
    ('count("Order Completed" where category == "shoes", 7d)', 1.0),
    ('sum("Order Completed", revenue)', 175.0),
    ('sum("Order Completed", revenue, 7d)', 35.0),
    ('avg("Order Completed", revenue)', 43.75),
    ('avg("Order Completed", revenue, 7d)', 17.5),
    ('min("Order Completed", revenue)', 10.0),
    ('min("Order Completed", revenue, 7d)', 10.0),
    ('max("Order Completed", revenue)', 100.0),
    ('max("Order Completed", revenue, 7d)', 25.0),
    ('distinct("Order Completed", category)', 3.0),
    ('distinct("Order Completed", category, 7d)', 2.0),
    ('most_frequent("Order Completed", category)', "shoes"),
    ('most_frequent("Order Completed", category, 7d)', "hats"),  # tie: smallest
    ('first("Order Completed", category)', "shoes"),
    ('first("Order Completed", category, 7d)', "shoes"),
    ('last("Order Completed", category)', "hats"),
    ('last("Order Completed", category, 7d)', "hats"),
    ('unique("Order Completed", category)', ["bags", "hats", "shoes"]),
    ('unique("Order Completed", category, 7d)', ["hats", "shoes"]),
    ('sum("Order Completed", revenue) / count("Order Completed")', 43.75),
]


@pytest.mark.parametrize(("expr", "want"), FUNCTIONS, ids=[f[0] for f in FUNCTIONS])
def test_each_function(expr: str, want: Any) -> None:
    eng = engine()
    eng.define_computed_trait("x", expr)
    orders(eng)
    assert eng.profile("u").computed["x"] == want
    assert eng.computed_value("u", "x") == want
    # The reference (full history) agrees.
    ref = Reference(T0)
    ref.define_computed_trait("x", expr)
    for ago, revenue, category in [
        (30 * D, 100.0, "shoes"),
        (10 * D, 40.0, "bags"),
        (2 * H, 10.0, "shoes"),
        (0, 25.0, "hats"),
    ]:
        ref.track("u", "Order Completed", {"revenue": revenue, "category": category}, T0 - ago)
    got = ref.computed_value("u", "x")
    assert (list(got) if isinstance(got, tuple) else got) == want


def test_windowed_value_lapses_at_the_exact_instant() -> None:
    eng = engine()
    eng.define_computed_trait("spend_7d", 'sum("Order Completed", revenue, 7d)')
    eng.define_audience("spender", "computed.spend_7d >= 30")
    orders(eng)
    assert eng.computed_value("u", "spend_7d") == 35.0
    assert eng.is_member("u", "spender")
    seq = eng.last_seq
    eng.advance(at(T0 + 8 * D))
    changes = [c for c in eng.changes(seq)]
    # -2h lapses at 7d - 2h (35 -> 25, the rule exits), now lapses at 7d (-> null).
    assert [(c.kind, c.old, c.new, c.at, c.reason) for c in changes if c.kind == "computed"] == [
        ("computed", 35.0, 25.0, segmint._time.from_ms(T0 + 7 * D - 2 * H), "time"),
        ("computed", 25.0, None, segmint._time.from_ms(T0 + 7 * D), "time"),
    ]
    exits = [c for c in changes if c.kind == "exited"]
    assert [(c.audience, c.at) for c in exits] == [
        ("spender", segmint._time.from_ms(T0 + 7 * D - 2 * H))
    ]
    assert "spend_7d" not in eng.profile("u").computed


def test_backfill_over_existing_profiles() -> None:
    eng = engine(shards=3)
    eng.define_audience("buyers", 'did("Order Completed")')  # keeps the state all time
    for i in range(5):
        for _ in range(i):
            eng.track(f"u{i}", "Order Completed", {"revenue": 10.0})
    eng.identify("quiet", {"plan": "free"})
    seq = eng.last_seq
    # u0 never sent anything: no profile. "quiet" has one, with 0 orders.
    assert eng.define_computed_trait("orders", 'count("Order Completed")') == 5
    got = {u: new for _, u, _, new, _ in computed_changes(eng, seq)}
    assert got == {"u1": 1.0, "u2": 2.0, "u3": 3.0, "u4": 4.0, "quiet": 0.0}
    assert all(
        c.reason == "definition" and c.old is None for c in eng.changes(seq) if c.kind == "computed"
    )
    assert eng.computed_traits() == [
        segmint.ComputedTrait("orders", 'count("Order Completed")', "number")
    ]


def test_change_log_carries_old_and_new_values() -> None:
    eng = engine()
    eng.define_computed_trait("last_cat", 'last("Product Viewed", category)')
    eng.track("u", "Product Viewed", {"category": "shoes"})
    eng.track("u", "Product Viewed", {"category": "shoes"})  # same value: no change
    eng.track("u", "Product Viewed", {"category": "bags"})
    eng.track("u", "Product Viewed", {})  # no category: skipped
    assert computed_changes(eng) == [
        ("last_cat", "u", None, "shoes", "event"),
        ("last_cat", "u", "shoes", "bags", "event"),
    ]
    # Membership changes keep their fields.
    eng.define_audience("bags", 'computed.last_cat == "bags"')
    member = [c for c in eng.changes() if c.kind == "entered"]
    assert [(c.audience, c.user_id, c.reason, c.computed_trait) for c in member] == [
        ("bags", "u", "definition", None)
    ]


def test_computed_in_rules_follows_events() -> None:
    eng = engine()
    eng.define_computed_trait("ltv", 'sum("Order Completed", revenue)')
    eng.define_computed_trait("cats", 'unique("Product Viewed", category)')
    eng.define_audience("vip", "computed.ltv > 100 and exists(computed.cats)")
    eng.define_audience("shoe_fans", 'computed.cats contains "shoes"')
    eng.define_audience("bag_or_hat", 'computed.cats in ["bags", "hats"]')
    eng.track("u", "Order Completed", {"revenue": 80.0})
    eng.track("u", "Product Viewed", {"category": "bags"})
    assert eng.audiences_of("u") == ["bag_or_hat"]
    seq = eng.last_seq
    eng.track("u", "Order Completed", {"revenue": 30.0})
    assert eng.audiences_of("u") == ["bag_or_hat", "vip"]
    kinds = [(c.kind, c.computed_trait or c.audience) for c in eng.changes(seq)]
    assert kinds == [("computed", "ltv"), ("entered", "vip")], "the value, then the rule"
    eng.track("u", "Product Viewed", {"category": "shoes"})
    assert eng.profile("u").computed == {"cats": ["bags", "shoes"], "ltv": 110.0}
    assert eng.audiences_of("u") == ["bag_or_hat", "shoe_fans", "vip"]


def test_replace_re_evaluates_rules() -> None:
    eng = engine()
    eng.define_computed_trait("n", 'count("Product Viewed", 7d)')
    eng.define_audience("active", "computed.n >= 2")
    eng.track("u", "Product Viewed", {"category": "shoes"})
    eng.track("u", "Product Viewed", {"category": "bags"})
    assert eng.is_member("u", "active")
    seq = eng.last_seq
    eng.define_computed_trait("n", 'count("Product Viewed" where category == "shoes", 7d)')
    assert [(c.kind, c.old, c.new, c.reason) for c in eng.changes(seq)] == [
        ("computed", 2.0, 0.0, "definition"),  # a new state: counted from now on
        ("exited", None, None, "definition"),
    ]
    assert eng.computed_traits()[0].expression.startswith('count("Product Viewed" where')
    # A replacement of another type breaks the rule: an error naming it, nothing changes.
    with pytest.raises(RuleTypeError, match="audience 'active'") as err:
        eng.define_computed_trait("n", 'unique("Product Viewed", category)')
    assert err.value.line == 1 and err.value.column == 1
    assert eng.computed_traits()[0].type == "number"


def test_remove() -> None:
    eng = engine()
    eng.define_computed_trait("n", 'count("X")')
    eng.define_audience("a", "computed.n >= 1")
    eng.define_audience("b", "trait.x == 1 or computed.n == 0")
    eng.track("u", "X")
    with pytest.raises(InUseError, match=r"computed\.n.*a, b"):
        eng.remove_computed_trait("n")
    eng.remove_audience("a")
    eng.remove_audience("b")
    seq = eng.last_seq
    eng.remove_computed_trait("n")
    assert computed_changes(eng, seq) == [("n", "u", 1.0, None, "delete")]
    assert eng.computed_traits() == []
    assert eng.profile("u").computed == {}
    with pytest.raises(UnknownComputedTraitError):
        eng.remove_computed_trait("n")
    with pytest.raises(UnknownComputedTraitError):
        eng.computed_value("u", "n")


def test_unknown_computed_trait_in_rule_points_at_it() -> None:
    eng = engine()
    with pytest.raises(RuleTypeError) as err:
        eng.define_audience("a", 'trait.plan == "pro"\n  and computed.ltv > 5')
    assert (err.value.line, err.value.column) == (2, 7)
    assert "unknown computed trait 'ltv'" in str(err.value)
    assert "^^^^^^^^^^^^" in err.value.snippet
    eng.define_computed_trait("ltv2", 'sum("A", revenue)')
    with pytest.raises(RuleTypeError, match="expected one of: ltv2"):
        eng.define_audience("a", "computed.ltv > 5")
    with pytest.raises(RuleTypeError):
        eng.preview("computed.nope > 1")


@pytest.mark.parametrize(
    ("expr", "exc", "fragment"),
    [
        ('count("A", 30d) >= 3', RuleTypeError, "must be an aggregate"),
        ("trait.ltv", RuleTypeError, "must be an aggregate"),
        ("3 + 4", RuleTypeError, "without any aggregate"),
        ('sum("A", revenue, 30x)', RuleSyntaxError, "duration"),
        ('sum("A", revenue', RuleSyntaxError, "expected"),
        ('cnt("A")', RuleSyntaxError, "did you mean 'count'"),
        ('computed.x + count("A")', RuleTypeError, "must be an aggregate"),
        ('in_audience("vip")', RuleTypeError, "in_audience"),
        ('sum("A", revenue) + since("A")', RuleTypeError, "since"),
    ],
)
def test_bad_expressions(expr: str, exc: type[Exception], fragment: str) -> None:
    eng = engine()
    with pytest.raises(exc, match=fragment) as err:
        eng.define_computed_trait("x", expr)
    assert err.value.line >= 1 and err.value.column >= 1  # type: ignore[attr-defined]
    assert eng.computed_traits() == []


@pytest.mark.parametrize("key", ["", "bad key", "1st", "a..b", "x\n"])
def test_bad_keys(key: str) -> None:
    with pytest.raises(InvalidArgumentError, match="computed trait key"):
        engine().define_computed_trait(key, 'count("A")')


def test_type_of_computed_in_rules() -> None:
    eng = engine()
    eng.define_computed_trait("ltv", 'sum("A", revenue)')
    eng.define_computed_trait("cats", 'unique("A", category)')
    with pytest.raises(RuleTypeError, match="number"):
        eng.define_audience("x", 'computed.ltv == "gold"')
    with pytest.raises(RuleTypeError, match="list"):
        eng.define_audience("x", 'computed.cats == "shoes"')
    with pytest.raises(RuleTypeError, match="duration"):
        eng.define_audience("x", "computed.ltv > 3d")


# ------------------------------------------------------- differential


EXPRS = {
    "n": 'count("A", 30m)',
    "n_all": 'count("A")',
    "rev": 'sum("A", revenue, 1h)',
    "avg": 'avg("B", revenue)',
    "lo": 'min("A", revenue, 20m)',
    "hi": 'max("B", revenue, 2h)',
    "d": 'distinct("A", category, 45m)',
    "mf": 'most_frequent("B", category)',
    "f": 'first("A", category, 1h)',
    "l": 'last("B", category)',
    "u": 'unique("A", category, 30m)',
    "s": 'count("A", since "B")',
    "mix": 'sum("A", revenue) / count("B", 1h)',
}
RULE = "computed.n >= 2 or computed.rev > 5"

track_op = st.tuples(
    st.just("track"),
    st.sampled_from(["u0", "u1", "u2"]),
    st.sampled_from(["A", "B"]),
    st.one_of(st.none(), st.integers(-3, 9)),
    st.sampled_from(["c0", "c1", "c2"]),
    st.integers(-60, 3 * 3600),  # seconds ago (negative: slightly in the future)
)
advance_op = st.tuples(st.just("advance"), st.integers(1, 3 * 3600))


@settings(deadline=None)
@given(st.lists(st.one_of(track_op, track_op, advance_op), min_size=1, max_size=40))
def test_values_match_the_reference(ops: list[tuple[Any, ...]]) -> None:
    """Computed traits defined up front (so their states see every event):
    after every operation each user's value equals the reference's value over
    the full history, the rule reading them agrees, and the last change
    logged per (user, key) carries the current value."""
    eng = engine()
    ref = Reference(T0)
    for key, expr in EXPRS.items():
        eng.define_computed_trait(key, expr)
        ref.define_computed_trait(key, expr)
    eng.define_audience("r", RULE)
    ref.define_audience("r", RULE)
    now = T0
    for op in ops:
        if op[0] == "track":
            _, user, name, revenue, cat, ago = op
            props: dict[str, Any] = {"category": cat}
            if revenue is not None:
                props["revenue"] = float(revenue)
            t = now - ago * S
            eng.track(user, name, props, timestamp=at(t))
            ref.track(user, name, props, t)
        else:
            now += op[1] * S
            eng.advance(at(now))
            ref.advance(now)
        for user in ref.users:
            for key in EXPRS:
                want = ref.computed_value(user, key)
                want = list(want) if isinstance(want, tuple) else want
                assert eng.computed_value(user, key) == pytest.approx(want), (user, key, op)
            assert eng.is_member(user, "r") == ref.is_member(user, "r"), (user, op)
    last: dict[tuple[str, str], Any] = {}
    for key, user, _, new, _ in computed_changes(eng):
        last[(key, user)] = new
    for (key, user), value in last.items():
        assert value == eng.computed_value(user, key)
