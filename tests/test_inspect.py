"""explain, preview, overlap and profile: explain trees are checked node by
node against the reference evaluator, previews against an actual replace."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

segmint = pytest.importorskip("segmint")

from reference import Duration, Reference, ms_to_iso, to_ms  # noqa: E402

T0 = "2026-06-01T00:00:00Z"
UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}

RULES = {
    "cart_abandoners": 'since("Checkout Started") between 2h and 24h'
    ' and count("Order Completed", since "Checkout Started") == 0',
    "vip": 'sum("Order Completed", revenue, 365d) > 300 or trait.ltv > 1000',
    "skincare_fans": 'trait.country == "US" and trait.plan in ["pro", "enterprise"]'
    ' and count("Product Viewed" where category == "skincare", 30d) >= 2',
    "favourite": 'most_frequent("Product Viewed", category, 30d) == "shoes"'
    ' and avg("Order Completed", revenue) >= 50',
    "not_vip_recent": 'did("Order Completed", 7d) and not in_audience("vip")',
}


def _ops() -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    return [
        ("identify", ("ada", {"country": "US", "plan": "pro", "ltv": 120}), {}),
        ("identify", ("bob", {"country": "FR", "plan": "free", "ltv": 1500}), {}),
        ("track", ("ada", "Product Viewed", {"category": "skincare"}), {}),
        ("track", ("ada", "Product Viewed", {"category": "shoes"}), {}),
        ("track", ("ada", "Product Viewed", {"category": "skincare"}), {}),
        ("track", ("ada", "Checkout Started", {}), {}),
        ("track", ("bob", "Order Completed", {"revenue": 80.0}), {}),
        ("track", ("bob", "Product Viewed", {"category": "shoes"}), {}),
        ("advance", ("2026-06-01T03:00:00Z",), {}),
        ("track", ("ada", "Order Completed", {"revenue": 20.0}), {}),
    ]


def _pair() -> tuple[Any, Reference]:
    eng = segmint.Engine(clock="manual", now=T0)
    ref = Reference(now=T0)
    for key, rule in RULES.items():
        eng.define_audience(key, rule)
        ref.define_audience(key, rule)
    for name, args, kwargs in _ops():
        getattr(eng, name)(*args, **kwargs)
        getattr(ref, name)(*args, **kwargs)
    return eng, ref


def _duration_ms(text: str) -> int:
    sign = -1 if text.startswith("-") else 1
    return sign * sum(int(n) * UNITS[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d)", text))


def _same(engine_value: str, ref_value: Any) -> bool:
    if ref_value is None:
        return engine_value == "null"
    if isinstance(ref_value, bool):
        return engine_value == str(ref_value).lower()
    if isinstance(ref_value, Duration):
        return _duration_ms(engine_value) == ref_value.ms
    if isinstance(ref_value, int | float):
        return float(engine_value) == pytest.approx(float(ref_value))
    if isinstance(ref_value, str):
        return engine_value == '"' + ref_value + '"'
    return False


def _walk(node: Any) -> list[Any]:
    return [node, *(n for c in node.children for n in _walk(c))]


@pytest.mark.parametrize("user", ["ada", "bob"])
@pytest.mark.parametrize("audience", sorted(RULES))
def test_explain_nodes_match_reference(user: str, audience: str) -> None:
    eng, ref = _pair()
    x = eng.explain(user, audience)
    assert x.member == eng.is_member(user, audience) == (user in ref.members(audience))
    for node in _walk(x.tree):
        if node.expr.startswith(("in_audience", "not ")) or " and " in node.expr:
            continue  # compound nodes: checked through their children and the membership
        expected = ref.value(user, node.expr)
        assert _same(node.value, expected), (node.expr, node.value, expected)
        if node.holds is not None:
            assert node.holds == bool(expected)


def test_explain_reports_the_exact_next_change() -> None:
    eng, _ = _pair()
    x = eng.explain("ada", "cart_abandoners")
    # Checkout at 00:00, order at 03:00 (after it): no time change can make her enter.
    assert not x.member and x.next_change is None
    eng.track("ada", "Checkout Started", {})
    x = eng.explain("ada", "cart_abandoners")
    assert x.next_change is not None
    assert x.next_change.isoformat() == "2026-06-01T05:00:00+00:00"
    eng.advance(x.next_change)
    assert eng.is_member("ada", "cart_abandoners")
    assert "needs between 2h and 1d" in x.tree.render()


def test_preview_equals_an_actual_replace() -> None:
    eng, _ = _pair()
    seq = eng.last_seq
    rule = 'sum("Order Completed", revenue, 365d) > 10'
    p = eng.preview(rule, replacing="vip")
    assert eng.last_seq == seq and eng.rule("vip") == RULES["vip"]
    eng.define_audience("vip", rule)
    changes = eng.changes(seq)
    assert sorted(c.user_id for c in changes if c.audience == "vip" and c.kind == "entered") == (
        p.entering
    )
    assert sorted(c.user_id for c in changes if c.audience == "vip" and c.kind == "exited") == (
        p.exiting
    )
    assert p.size == eng.size("vip") and p.profiles == 2


def test_overlap_and_profile() -> None:
    eng, _ = _pair()
    o = eng.overlap("vip", "favourite")
    assert o.sizes == [eng.size("vip"), eng.size("favourite")]
    both = set(eng.members("vip")) & set(eng.members("favourite"))
    assert o.pairwise[0][1] == o.all == len(both)
    prof = eng.profile("ada")
    assert prof.traits == {"country": "US", "plan": "pro", "ltv": 120}
    assert sorted(prof.audiences) == eng.audiences_of("ada")


def test_bad_inspect_calls() -> None:
    eng, _ = _pair()
    with pytest.raises(segmint.UnknownUserError):
        eng.explain("nobody", "vip")
    with pytest.raises(segmint.UnknownAudienceError):
        eng.explain("ada", "nope")
    with pytest.raises(segmint.RuleSyntaxError):
        eng.preview("count(")
    with pytest.raises(segmint.UnknownAudienceError):
        eng.overlap("vip", "nope")
    with pytest.raises(segmint.UnknownUserError):
        eng.profile("nobody")


def test_static_audience_in_rules() -> None:
    eng, _ = _pair()
    assert eng.define_static_audience("uploaded", ["ada", "zed"]) == 2
    assert eng.rule("uploaded") == "<static list>"
    eng.define_audience("uploaded_fans", 'in_audience("uploaded") and trait.country == "US"')
    assert eng.members("uploaded_fans") == ["ada"]
    assert eng.define_static_audience("uploaded", ["bob"]) == 1
    assert eng.members("uploaded_fans") == []
    assert eng.members("uploaded") == ["bob"]
    with pytest.raises(segmint.InvalidArgumentError):
        eng.define_static_audience("uploaded", [""])


# ---------------------------------------------------------------------------
# computed traits in explain: a `computed.KEY` node carries the computed
# trait's own expression as a subtree, and the next instant time alone
# changes its value.

COMPUTED = {
    "spend_30d": 'sum("Order Completed", revenue, 30d)',
    "views_7d": 'count("Product Viewed", 7d)',
    "aov": 'sum("Order Completed", revenue) / count("Order Completed")',
    "categories": 'unique("Product Viewed", category)',
    "favourite_30d": 'most_frequent("Product Viewed", category, 30d)',
}

COMPUTED_RULES = {
    "big_recent": "computed.spend_30d > 50 and computed.views_7d >= 2",
    "aov_or_shoes": 'computed.aov >= 40 or computed.categories contains "shoes"',
    "favourite_shoes": 'computed.favourite_30d == "shoes" and trait.country == "US"',
    "arith": "computed.spend_30d * 2 - computed.views_7d > 100",
}

DAY = 86_400_000
HOUR = 3_600_000


def _computed_pair() -> tuple[Any, Reference]:
    eng = segmint.Engine(clock="manual", now=T0)
    ref = Reference(now=T0)
    for side in (eng, ref):
        for key, expr in COMPUTED.items():
            side.define_computed_trait(key, expr)
        for key, rule in COMPUTED_RULES.items():
            side.define_audience(key, rule)
    t0 = to_ms(T0)
    ops: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("identify", ("ada", {"country": "US"}), {}),
        ("identify", ("bob", {"country": "FR"}), {}),
        ("track", ("ada", "Order Completed", {"revenue": 60.0}), {}),
        ("track", ("ada", "Product Viewed", {"category": "shoes"}), {}),
        ("track", ("bob", "Product Viewed", {"category": "bags"}), {}),
        ("advance", (ms_to_iso(t0 + 5 * DAY),), {}),
        ("track", ("ada", "Product Viewed", {"category": "shoes"}), {}),
        ("track", ("ada", "Product Viewed", {"category": "hats"}), {}),
        ("track", ("bob", "Order Completed", {"revenue": 45.0}), {}),
        ("track", ("bob", "Order Completed", {"revenue": 30.0}), {}),
        ("advance", (ms_to_iso(t0 + 5 * DAY + 3 * HOUR),), {}),
        ("track", ("ada", "Order Completed", {"revenue": 20.0}), {}),
    ]
    for name, args, kwargs in ops:
        getattr(eng, name)(*args, **kwargs)
        getattr(ref, name)(*args, **kwargs)
    return eng, ref


def _same_any(engine_value: str, ref_value: Any) -> bool:
    if isinstance(ref_value, list | tuple):
        return bool(json.loads(engine_value) == list(ref_value))
    return _same(engine_value, ref_value)


def _computed_nodes(tree: Any) -> list[Any]:
    return [n for n in _walk(tree) if re.fullmatch(r"computed\.[\w.]+", n.expr)]


@pytest.mark.parametrize("user", ["ada", "bob"])
@pytest.mark.parametrize("audience", sorted(COMPUTED_RULES))
def test_explain_expands_computed_traits(user: str, audience: str) -> None:
    eng, ref = _computed_pair()
    x = eng.explain(user, audience)
    assert x.member == eng.is_member(user, audience) == (user in ref.members(audience))
    computed_nodes = _computed_nodes(x.tree)
    assert computed_nodes, "every rule here reads a computed trait"
    for node in computed_nodes:
        key = node.expr.removeprefix("computed.")
        # One child: the computed trait's own expression, as rule text.
        assert len(node.children) == 1
        (sub,) = node.children
        assert sub.expr.replace(" ", "") == COMPUTED[key].replace(" ", "")
        assert sub.value == node.value
        assert node.holds is None and node.needs is None
    for node in _walk(x.tree):
        if node.expr.startswith("not ") or " and " in node.expr or " or " in node.expr:
            continue  # compound nodes: checked through their children and the membership
        expected = ref.value(user, node.expr)
        assert _same_any(node.value, expected), (node.expr, node.value, expected)
        if node.holds is not None:
            assert node.holds == bool(expected)
        if not re.fullmatch(r"computed\.[\w.]+", node.expr):
            assert node.next_change is None


@pytest.mark.parametrize("user", ["ada", "bob"])
def test_explain_computed_next_change_matches_reference(user: str) -> None:
    eng, ref = _computed_pair()
    now = to_ms(eng.now)
    seen = 0
    for audience in COMPUTED_RULES:
        for node in _computed_nodes(eng.explain(user, audience).tree):
            value_now = ref.value(user, node.expr)
            if node.next_change is None:
                # Constant in time (within the year explain looks ahead).
                for ahead in (HOUR, DAY, 7 * DAY, 31 * DAY, 200 * DAY):
                    assert ref.value(user, node.expr, at=now + ahead) == value_now, node.expr
                continue
            seen += 1
            t = to_ms(node.next_change)
            assert t > now
            # The value holds until one granularity step before, and differs at t.
            for before in (now + 1000, (now + t) // 2, t - 1000):
                assert ref.value(user, node.expr, at=before) == value_now, (node.expr, before)
            assert ref.value(user, node.expr, at=t) != value_now, node.expr
    assert seen > 0


@pytest.mark.parametrize("user", ["ada", "bob"])
@pytest.mark.parametrize("audience", sorted(COMPUTED_RULES))
def test_explain_next_change_sees_computed_traits_lapse(user: str, audience: str) -> None:
    """A rule reading only computed traits changes by time when they do: the
    explanation's next_change is the exact instant (the engine and the
    reference agree before and at it)."""
    eng, ref = _computed_pair()
    x = eng.explain(user, audience)
    if x.next_change is None:
        eng.advance(ms_to_iso(to_ms(eng.now) + 200 * DAY))
        assert eng.is_member(user, audience) == x.member
        return
    t = to_ms(x.next_change)
    for side in (eng, ref):
        side.advance(ms_to_iso(t - 1000))
    assert eng.is_member(user, audience) == x.member == (user in ref.members(audience))
    for side in (eng, ref):
        side.advance(ms_to_iso(t))
    assert eng.is_member(user, audience) != x.member
    assert eng.is_member(user, audience) == (user in ref.members(audience))


def test_explain_computed_render() -> None:
    eng, _ = _computed_pair()
    text = eng.explain("ada", "big_recent").tree.render()
    assert "  · computed.spend_30d = 80, changes at 2026-07-01T00:00:00+00:00" in text
    assert '    · sum("Order Completed", revenue, 30d) = 80' in text


def test_stats_count_the_heap_and_the_change_log() -> None:
    eng = segmint.Engine(clock="manual", now=T0)
    empty = eng.stats()
    assert empty["change_log_bytes"] == 0
    eng.define_audience("viewers", 'did("Product Viewed")')
    for i in range(100):
        eng.track(f"u{i}", "Product Viewed")
    stats = eng.stats()
    assert stats["users"] == 100 and stats["last_seq"] == 100
    # 100 entries of 16 bytes in the log's first chunk (1 MiB of entries).
    assert stats["change_log_bytes"] >= 100 * 16
    assert stats["heap_bytes"] > empty["heap_bytes"]


def test_change_log_capacity_keeps_the_latest_changes() -> None:
    eng = segmint.Engine(clock="manual", now=T0, change_log_capacity=5)
    eng.define_audience("viewers", 'did("Product Viewed")')
    for i in range(10):
        eng.track(f"u{i}", "Product Viewed")
    assert eng.last_seq == 10
    assert [c.seq for c in eng.changes(5)] == [6, 7, 8, 9, 10]
    with pytest.raises(segmint.InvalidArgumentError, match="change_log_capacity"):
        eng.changes(0)
    with pytest.raises(segmint.InvalidArgumentError, match="at least 1"):
        segmint.Engine(clock="manual", now=T0, change_log_capacity=0)
