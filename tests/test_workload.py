"""Tests of the standard workload generator and the DuckDB peer (benches/)."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benches.duckdb_peer import DuckDBPeer, compute_memberships
from benches.workload import (
    DAY_MS,
    EVENTS_SCHEMA,
    HOUR_MS,
    SECOND_MS,
    Agg,
    And,
    AudienceSpec,
    Between,
    Cmp,
    Did,
    Duration,
    Exists,
    In,
    InAudience,
    Not,
    Or,
    Pred,
    Selector,
    Since,
    SinceAnchor,
    SinceTrait,
    Trait,
    Where,
    WorkloadSpec,
    cart_abandoners,
    exclusion,
    first_time_buyers,
    generate_audiences,
    generate_events,
    iter_segment_json,
    lapsed,
    read_audiences,
    recent_purchasers,
    segment_dicts,
    vip,
    write_parquet,
)

SMALL = WorkloadSpec(users=2_000, events=20_000, audiences=300, seed=7, late_fraction=0.01)


@pytest.fixture(scope="module")
def small_events() -> pa.Table:
    return generate_events(SMALL)


# --------------------------------------------------------------------------- generator


def test_deterministic_for_a_seed(small_events: pa.Table) -> None:
    assert generate_events(SMALL).equals(small_events)
    assert generate_audiences(SMALL) == generate_audiences(SMALL)
    other = generate_events(replace(SMALL, seed=8))
    assert not other.equals(small_events)


def test_shape_and_schema(small_events: pa.Table) -> None:
    t = small_events
    assert t.schema.equals(EVENTS_SCHEMA)
    tracks = t.filter(pc.equal(t["type"], "track"))
    idents = t.filter(pc.equal(t["type"], "identify"))
    assert tracks.num_rows == SMALL.events
    assert idents.num_rows == SMALL.users + round(SMALL.trait_update_fraction * SMALL.events)
    ts = t["timestamp"].to_numpy()
    assert ts.max() < SMALL.end_ms
    assert ts.min() >= SMALL.start_ms - 2 * DAY_MS - HOUR_MS
    # arrival order is timestamp order except for the late events
    late = np.sum(np.diff(ts) < 0)
    assert 0 < late < 0.05 * len(ts)
    assert pc.count_distinct(t["message_id"]).as_py() == t.num_rows
    names = set(pc.unique(tracks["event"]).to_pylist())
    assert names == {
        "Product Viewed",
        "Added to Cart",
        "Checkout Started",
        "Order Completed",
        "Email Opened",
        "Subscription Cancelled",
    }
    orders = tracks.filter(pc.equal(tracks["event"], "Order Completed"))
    rev = [json.loads(p)["revenue"] for p in orders["properties"].to_pylist()[:200]]
    assert all(isinstance(r, (int, float)) and (r * 4) == int(r * 4) for r in rev)
    traits = json.loads(idents["traits"][0].as_py())
    assert set(traits) == {"country", "plan", "ltv", "preferred_channel", "created_at"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", traits["created_at"])
    ctx = json.loads(tracks["context"][0].as_py())
    assert ctx["device"]["type"] in ("ios", "android", "web")


def test_zipf_skew_is_visible(small_events: pa.Table) -> None:
    t = small_events.filter(pc.equal(small_events["type"], "track"))
    counts = np.sort(pc.value_counts(t["user_id"]).field("counts").to_numpy())[::-1]
    top = counts[: SMALL.users // 100].sum() / counts.sum()
    assert top > 0.3, top  # top 1 % of users make > 30 % of the events
    assert counts[0] > 50 * np.median(counts)


def test_segment_json_round_trip(small_events: pa.Table) -> None:
    chunks = list(iter_segment_json(small_events, chunk_rows=7_000))
    assert len(chunks) == -(-small_events.num_rows // 7_000)
    rows = [r for c in chunks for r in json.loads(c)]
    assert len(rows) == small_events.num_rows
    assert rows[:50] == segment_dicts(small_events, 0, 50)
    nd = list(iter_segment_json(small_events.slice(0, 10), chunk_rows=4, fmt="ndjson"))
    assert [json.loads(line) for c in nd for line in c.decode().splitlines()] == rows[:10]
    first_track = next(r for r in rows if r["type"] == "track")
    assert set(first_track) == {
        "type",
        "userId",
        "event",
        "properties",
        "context",
        "timestamp",
        "messageId",
    }
    assert first_track["timestamp"].endswith("Z")


def test_files_round_trip(tmp_path: Path) -> None:
    spec = WorkloadSpec(users=100, events=500, audiences=40, seed=3)
    paths = write_parquet(spec, tmp_path)
    auds = [a for _, _, a in generate_audiences(spec)]
    assert read_audiences(paths["audiences_json"]) == auds
    assert read_audiences(paths["audiences"]) == auds
    assert pq.read_table(paths["events"]).equals(generate_events(spec))


# --------------------------------------------------------------------------- rule grammar


_FUNCS_SEL = {"count", "did"}
_FUNCS_PROP = {"sum", "avg", "min", "max", "distinct", "most_frequent"}
_FUNCS_FIRST = {"first", "last"}
_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<dur>\d+[smhdw]\b)|'
    r"(?P<num>\d+(?:\.\d+)?)|(?P<op>==|!=|<=|>=|<|>|[()\[\],.+\-*/])|"
    r"(?P<id>[A-Za-z_][A-Za-z0-9_]*))"
)


class _Parser:
    """Recursive descent over the DESIGN §3 rule language (rejects anything else)."""

    def __init__(self, text: str) -> None:
        self.toks: list[tuple[str, str]] = []
        pos = 0
        text = text.rstrip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            assert m and m.end() > pos, f"bad token at {pos}: {text[pos : pos + 20]!r}"
            kind = m.lastgroup
            assert kind is not None
            self.toks.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0

    def peek(self) -> tuple[str, str]:
        return self.toks[self.i] if self.i < len(self.toks) else ("eof", "")

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        k, v = self.peek()
        assert (value is None or v == value) and (kind is None or k == kind), (
            f"expected {value or kind}, got {v!r} at token {self.i}"
        )
        self.i += 1
        return v

    def accept(self, value: str) -> bool:
        if self.peek()[1] == value:
            self.i += 1
            return True
        return False

    def parse(self) -> None:
        self.expr()
        assert self.peek()[0] == "eof", f"trailing {self.peek()}"

    def expr(self) -> None:
        self.conj()
        while self.accept("or"):
            self.conj()

    def conj(self) -> None:
        self.neg()
        while self.accept("and"):
            self.neg()

    def neg(self) -> None:
        if self.accept("not"):
            self.neg()
        else:
            self.comparison()

    def comparison(self) -> None:
        self.arith()
        k, v = self.peek()
        if k == "op" and v in ("==", "!=", "<", "<=", ">", ">="):
            self.i += 1
            self.arith()
        elif v == "not" and self.toks[self.i + 1][1] in ("in", "between"):
            self.i += 1
            self.comparison_tail()
        elif v in ("in", "between", "contains", "starts_with", "ends_with"):
            self.comparison_tail()

    def comparison_tail(self) -> None:
        v = self.take()
        if v == "in":
            self.take("[")
            self.literal()
            while self.accept(","):
                self.literal()
            self.take("]")
        elif v == "between":
            self.arith()
            self.take("and")
            self.arith()
        else:
            self.arith()

    def literal(self) -> None:
        k, v = self.peek()
        assert k in ("str", "num", "dur") or v in ("true", "false"), f"literal expected: {v}"
        self.i += 1

    def arith(self) -> None:
        self.atom()
        while self.peek()[1] in ("+", "-", "*", "/"):
            self.i += 1
            self.atom()

    def ref(self) -> None:
        self.take(kind="id")
        while self.accept("."):
            self.take(kind="id")

    def atom(self) -> None:
        k, v = self.peek()
        if k in ("str", "num", "dur") or v in ("true", "false"):
            self.i += 1
        elif v == "(":
            self.i += 1
            self.expr()
            self.take(")")
        elif v in ("trait", "computed"):
            self.ref()
        elif k == "id" and self.toks[self.i + 1][1] == "(":
            self.call(v)
        else:
            raise AssertionError(f"unexpected {v!r}")

    def selector(self) -> None:
        self.take(kind="str")
        if self.accept("where"):
            self.where_cond()

    def where_cond(self) -> None:
        self.where_atom()
        while self.peek()[1] in ("and", "or"):
            self.i += 1
            self.where_atom()

    def where_atom(self) -> None:
        self.accept("not")
        self.ref()
        op = self.take(kind="op")
        assert op in ("==", "!=", "<", "<=", ">", ">="), op
        self.literal()

    def window(self) -> None:
        if self.accept(","):
            if self.accept("since"):
                self.take(kind="str")
            else:
                self.take(kind="dur")

    def call(self, name: str) -> None:
        self.take(name)
        self.take("(")
        if name in _FUNCS_SEL:
            self.selector()
            self.window()
        elif name in _FUNCS_PROP:
            self.selector()
            self.take(",")
            self.ref()
            self.window()
        elif name in _FUNCS_FIRST:
            self.selector()
            self.take(",")
            self.ref()
        elif name == "since":
            if self.peek()[0] == "str":
                self.selector()
            else:
                self.take("trait")
                self.take(".")
                self.ref()
        elif name in ("in_audience", "member_for"):
            self.take(kind="str")
        elif name == "exists":
            self.ref()
        else:
            raise AssertionError(f"unknown function {name}")
        self.take(")")


def test_rules_use_only_the_design_grammar() -> None:
    spec = WorkloadSpec(audiences=2_000, hot_audiences=1_200, seed=11)
    auds = generate_audiences(spec)
    assert len(auds) == 2_000 and len({k for k, _, _ in auds}) == 2_000
    keys: set[str] = set()
    for key, text, a in auds:
        assert text.strip() and text == a.text and key == a.key
        _Parser(text).parse()
        assert set(a.depends_on) <= keys, "in_audience must reference earlier audiences"
        keys.add(key)
    assert auds[0][1] == (
        'since("Checkout Started") between 2h and 24h and '
        'count("Order Completed", since "Checkout Started") == 0'
    )
    assert auds[1][1] == 'since("Order Completed") between 60d and 120d'
    assert auds[2][1] == 'sum("Order Completed", revenue, 365d) > 300'
    kinds = {a.kind for _, _, a in auds}
    assert {
        "cart_abandoners",
        "lapsed",
        "vip",
        "micro",
        "exclusion",
        "recent_purchasers",
        "first_time_buyers",
        "cold",
    } <= kinds
    for bad in ('count("x", 7d >= 1', "trait.x === 1", 'foo("x")'):
        with pytest.raises(AssertionError):
            _Parser(bad).parse()


def test_fan_out_control() -> None:
    base = generate_audiences(WorkloadSpec(audiences=1_000))
    fan = generate_audiences(WorkloadSpec(audiences=3_000, hot_audiences=1_000))
    assert fan[:1_000] == base
    hot_names = {
        "Product Viewed",
        "Added to Cart",
        "Checkout Started",
        "Order Completed",
        "Email Opened",
        "Subscription Cancelled",
    }
    cold_keys: set[str] = set()
    for key, text, a in fan[1_000:]:
        assert not a.hot and a.kind == "cold"
        names = set(re.findall(r'"(Event \d+|[A-Z][a-z]+ [A-Z][a-z]+)"', text))
        assert names and not names & hot_names, text
        assert "trait." not in text
        assert set(a.depends_on) <= cold_keys
        cold_keys.add(key)


# --------------------------------------------------------------------------- DuckDB peer

NOW = 1_780_272_000_000  # 2026-06-01T00:00:00Z
H, D, S = HOUR_MS, DAY_MS, SECOND_MS


class _Events:
    """Builds a tiny events table in arrival order."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def track(
        self,
        user: str,
        event: str,
        t: int,
        props: dict[str, Any] | None = None,
        device: str = "web",
        mid: str | None = None,
    ) -> None:
        self.rows.append(
            {
                "type": "track",
                "user_id": user,
                "event": event,
                "timestamp": t,
                "message_id": mid or f"m{len(self.rows)}",
                "properties": json.dumps(props or {}),
                "context": json.dumps({"device": {"type": device}}),
                "traits": None,
            }
        )

    def identify(self, user: str, traits: dict[str, Any], t: int = NOW - D) -> None:
        self.rows.append(
            {
                "type": "identify",
                "user_id": user,
                "event": None,
                "timestamp": t,
                "message_id": f"m{len(self.rows)}",
                "properties": None,
                "context": None,
                "traits": json.dumps(traits),
            }
        )

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=EVENTS_SCHEMA)


def _run(ev: _Events, rules: dict[str, Pred], now: int = NOW) -> dict[str, set[str]]:
    auds = [AudienceSpec(k, "test", r) for k, r in rules.items()]
    return compute_memberships(ev.table(), auds, now)


def test_peer_cart_abandoners() -> None:
    e = _Events()
    e.track("a", "Checkout Started", NOW - 3 * H)
    e.track("b", "Checkout Started", NOW - 3 * H)
    e.track("b", "Order Completed", NOW - 2 * H)
    e.track("c", "Checkout Started", NOW - 2 * H)  # since == 2h: inclusive
    e.track("d", "Checkout Started", NOW - 24 * H)  # since == 24h: inclusive
    e.track("d2", "Checkout Started", NOW - 24 * H - S)
    # same second after flooring to 1 s: the order is not strictly after the checkout
    e.track("e", "Checkout Started", NOW - 5 * H + 100)
    e.track("e", "Order Completed", NOW - 5 * H + 900)
    e.track("f", "Checkout Started", NOW - 10 * H)
    e.track("f", "Checkout Started", NOW - 1 * H)  # the latest one counts
    e.track("g", "Checkout Started", NOW - 3 * H)
    e.track("g", "Checkout Started", NOW + S)  # not visible yet
    e.track("g", "Order Completed", NOW + 2 * S)
    e.track("h", "Order Completed", NOW - 4 * H)  # an order before the checkout
    e.track("h", "Checkout Started", NOW - 3 * H)
    e.track("i", "Product Viewed", NOW - H)
    got = _run(
        e,
        {
            "cart": cart_abandoners(2, 24),
            "no_order_since": Cmp(
                Agg("count", Selector("Order Completed"), window=SinceAnchor("Checkout Started")),
                "==",
                0,
            ),
        },
    )
    assert got["cart"] == {"a", "c", "d", "e", "g", "h"}
    # without a checkout the window is empty: count 0 (i has no checkout at all)
    assert got["no_order_since"] == {"a", "c", "d", "d2", "e", "f", "g", "h", "i"}


def test_peer_lapsed_and_windows() -> None:
    e = _Events()
    e.track("l1", "Order Completed", NOW - 60 * D)
    e.track("l2", "Order Completed", NOW - 120 * D)
    e.track("l3", "Order Completed", NOW - 120 * D - S)
    e.track("l4", "Order Completed", NOW - 90 * D)
    e.track("l4", "Order Completed", NOW - 10 * D)
    e.track("l5", "Order Completed", NOW - 60 * D + 999)  # floors to 60d exactly
    e.track("w1", "Email Opened", NOW - 7 * D)  # on the open edge: outside (now-7d, now]
    e.track("w2", "Email Opened", NOW - 7 * D + S)
    e.track("w3", "Email Opened", NOW)  # t == now: visible
    e.track("w4", "Email Opened", NOW + 500)  # floors to now: visible
    e.track("w5", "Email Opened", NOW + S)  # future: invisible
    got = _run(
        e,
        {
            "lapsed": lapsed(60, 120),
            "opened_7d": Did(Selector("Email Opened"), Duration(7 * D)),
            "not_lapsed": Between(
                Since(Selector("Order Completed")),
                Duration(60 * D),
                Duration(120 * D),
                negated=True,
            ),
        },
    )
    assert got["lapsed"] == {"l1", "l2", "l5"}
    assert got["opened_7d"] == {"w2", "w3", "w4"}
    # not between: not null and outside (users without orders are not members)
    assert got["not_lapsed"] == {"l3", "l4"}


def test_peer_vip_sums_and_numeric_aggregates() -> None:
    e = _Events()
    e.track("v1", "Order Completed", NOW - D, {"revenue": 200})
    e.track("v1", "Order Completed", NOW - 2 * D, {"revenue": 100.25})
    e.track("v2", "Order Completed", NOW - D, {"revenue": 200})
    e.track("v2", "Order Completed", NOW - D, {"revenue": 100})  # == 300: not > 300
    e.track("v3", "Order Completed", NOW - 365 * D, {"revenue": 250})  # outside the window
    e.track("v3", "Order Completed", NOW - D, {"revenue": 100})
    e.track("v4", "Order Completed", NOW - 365 * D + S, {"revenue": 250})
    e.track("v4", "Order Completed", NOW - D, {"revenue": 100})
    e.track("v5", "Order Completed", NOW - D, {"revenue": "500"})  # not a number: skipped
    e.track("v5", "Order Completed", NOW - D, {"revenue": 10})
    e.track("v6", "Order Completed", NOW - D, {})  # no revenue: skipped
    e.track("v6", "Order Completed", NOW - D, {"revenue": 301})
    e.track("v7", "Order Completed", NOW - D, {"revenue": True})  # booleans are not numbers
    e.track("v8", "Product Viewed", NOW - D, {"revenue": 1000})  # another event
    got = _run(
        e,
        {
            "vip": vip(300, 365),
            "avg_ge_150": Cmp(
                Agg("avg", Selector("Order Completed"), "revenue", Duration(30 * D)), ">=", 150
            ),
            "max_gt_250": Cmp(Agg("max", Selector("Order Completed"), "revenue"), ">", 250),
            "min_lt_50": Cmp(Agg("min", Selector("Order Completed"), "revenue"), "<", 50),
            "no_revenue": Not(Exists(Agg("sum", Selector("Order Completed"), "revenue"))),
        },
    )
    assert got["vip"] == {"v1", "v4", "v6"}
    # avg over the numeric values: v1 150.125, v2 150, v6 301; v5 10; v7 none
    assert got["avg_ge_150"] == {"v1", "v2", "v6"}
    assert got["max_gt_250"] == {"v6"}
    assert got["min_lt_50"] == {"v5"}
    assert got["no_revenue"] == {"v7", "v8"}


def test_peer_micro_segment_traits_and_where() -> None:
    e = _Events()
    shoes = {"category": "shoes"}
    for u in ("m1", "m2", "m3", "m4", "m5"):
        e.track(u, "Product Viewed", NOW - D, shoes, device="ios")
    for u in ("m1", "m3", "m4", "m5"):
        e.track(u, "Product Viewed", NOW - 2 * D, shoes, device="ios")
    e.track("m2", "Product Viewed", NOW - 2 * D, shoes, device="android")
    e.track("m5", "Order Completed", NOW - 3 * D, {"revenue": 5})
    e.identify("m1", {"country": "US"})
    e.identify("m2", {"country": "US"})
    e.identify("m3", {"country": "GB"})
    e.identify("m3", {"country": "US"}, t=NOW - 2 * D)  # arrives later: wins
    e.identify("m4", {"country": "US"})
    e.identify("m4", {"country": None})  # deletes
    e.identify("m5", {"country": "US"})
    e.track("m6", "Product Viewed", NOW - D, {"category": 7}, device="ios")  # not a string
    e.track("m6", "Product Viewed", NOW - D, {}, device="ios")
    e.identify("m6", {"country": "US"})
    rule = And(
        (
            Cmp(Trait("country"), "==", "US"),
            Cmp(
                Agg(
                    "count",
                    Selector(
                        "Product Viewed",
                        (
                            Where("category", "==", "shoes"),
                            Where("context.device.type", "==", "ios"),
                        ),
                    ),
                    window=Duration(7 * D),
                ),
                ">=",
                2,
            ),
            Not(Did(Selector("Order Completed"), Duration(7 * D))),
        )
    )
    not_shoes = Did(Selector("Product Viewed", (Where("category", "!=", "shoes"),)))
    got = _run(
        e, {"micro": rule, "not_shoes": not_shoes, "not_us": Not(Cmp(Trait("country"), "==", "US"))}
    )
    assert got["micro"] == {"m1", "m3"}
    # != on a missing property, or across types (7 is a number), is false
    assert got["not_shoes"] == set()
    assert got["not_us"] == {"m4"}


def test_peer_trait_comparisons() -> None:
    e = _Events()
    e.identify(
        "p1",
        {
            "plan": "pro",
            "ltv": 250,
            "preferred_channel": "email",
            "created_at": "2026-05-25T00:00:00Z",
        },
    )
    e.identify("p2", {"plan": "free", "ltv": 100, "created_at": "2025-01-01T00:00:00Z"})
    e.identify(
        "p3",
        {"plan": "enterprise", "ltv": "300", "preferred_channel": None, "created_at": "not a date"},
    )
    e.identify(
        "p4", {"plan": ["pro", "beta"], "ltv": 500.5, "created_at": "2026-05-18T00:00:00.999+00:00"}
    )
    e.identify("p5", {"ltv": 99.99, "created_at": "2026-05-18T00:00:00Z"})
    e.track("p6", "Product Viewed", NOW - D)  # no traits at all
    got = _run(
        e,
        {
            "plan_in": In(Trait("plan"), ("pro", "enterprise")),
            "plan_not_in": In(Trait("plan"), ("pro", "enterprise"), negated=True),
            "ltv_between": Between(Trait("ltv"), 100, 500),
            "ltv_not_between": Between(Trait("ltv"), 100, 500, negated=True),
            "has_channel": Exists(Trait("preferred_channel")),
            "not_ltv_gt_100": Not(Cmp(Trait("ltv"), ">", 100)),
            "new": Cmp(SinceTrait("created_at"), "<", Duration(14 * D)),
            "new_le": Cmp(SinceTrait("created_at"), "<=", Duration(14 * D)),
            "plan_ne_free": Cmp(Trait("plan"), "!=", "free"),
            "pro_or_rich": Or((Cmp(Trait("plan"), "==", "pro"), Cmp(Trait("ltv"), ">=", 500))),
        },
    )
    assert got["plan_in"] == {"p1", "p3", "p4"}  # p4: a list with an element in the list
    assert got["plan_not_in"] == {"p2"}
    assert got["ltv_between"] == {"p1", "p2"}  # p3's "300" is a string
    assert got["ltv_not_between"] == {"p4", "p5"}
    assert got["has_channel"] == {"p1"}  # p3's was set to null: deleted
    assert got["not_ltv_gt_100"] == {"p2", "p3", "p5", "p6"}
    # 14d before NOW is 2026-05-18T00:00:00Z; p4's .999 floors to it; "<" excludes, "<=" not
    assert got["new"] == {"p1"}
    assert got["new_le"] == {"p1", "p4", "p5"}
    assert got["plan_ne_free"] == {"p1", "p3"}  # a list is not a string
    assert got["pro_or_rich"] == {"p1", "p4"}


def test_peer_audience_references_and_first_time_buyers() -> None:
    e = _Events()
    e.track("x1", "Order Completed", NOW - 100 * D, {"revenue": 400})  # vip, not recent
    e.track("x2", "Order Completed", NOW - 5 * D, {"revenue": 400})  # vip, recent, first-time
    e.track("x3", "Order Completed", NOW - 5 * D, {"revenue": 4}, mid="dup")
    e.track("x3", "Order Completed", NOW - 5 * D, {"revenue": 4}, mid="dup")  # retry: once
    e.track("x4", "Order Completed", NOW - 5 * D, {"revenue": 4})
    e.track("x4", "Order Completed", NOW - 50 * D, {"revenue": 4})  # two orders
    e.identify("x5", {"plan": "pro"})
    rules: dict[str, Pred] = {
        # defined out of dependency order on purpose
        "vip_not_recent": exclusion("vip", "recent_purchasers"),
        "vip": vip(300, 365),
        "recent_purchasers": recent_purchasers(30),
        "first_time_buyers": first_time_buyers(30),
        "not_vip": Not(InAudience("vip")),
        "deep": And(
            (InAudience("vip_not_recent"), Cmp(Agg("count", Selector("Order Completed")), ">=", 1))
        ),
        "cold": Cmp(Agg("count", Selector("Event 3"), window=Duration(7 * D)), ">=", 1),
    }
    got = _run(e, rules)
    assert got["vip"] == {"x1", "x2"}
    assert got["recent_purchasers"] == {"x2", "x3", "x4"}
    assert got["vip_not_recent"] == {"x1"}
    assert got["deep"] == {"x1"}
    assert got["first_time_buyers"] == {"x2", "x3"}
    assert got["not_vip"] == {"x3", "x4", "x5"}
    assert got["cold"] == set()
    assert list(got) == list(rules)


def test_peer_batching_and_cycles() -> None:
    e = _Events()
    e.track("a", "Order Completed", NOW - D, {"revenue": 500})
    e.track("b", "Checkout Started", NOW - 3 * H)
    rules = {f"k{i}": (vip(100 * i) if i % 2 else cart_abandoners(1, i + 3)) for i in range(9)}
    auds = [AudienceSpec(k, "t", r) for k, r in rules.items()]
    peer = DuckDBPeer(e.table(), auds)
    assert peer.memberships(NOW, batch_size=1) == peer.memberships(NOW, batch_size=4)
    now = peer.memberships(NOW)
    assert now["k0"] == {"b"} and now["k1"] == {"a"} and now["k5"] == set()
    # later the checkout ages out of the 1h-3h window
    assert peer.memberships(NOW + 2 * H)["k0"] == set()
    cyc = [AudienceSpec("p", "t", InAudience("q")), AudienceSpec("q", "t", InAudience("p"))]
    with pytest.raises(ValueError, match="cycle"):
        DuckDBPeer(e.table(), cyc)


def test_peer_runs_on_the_generated_workload(small_events: pa.Table) -> None:
    auds = generate_audiences(replace(SMALL, audiences=120))
    got = compute_memberships(small_events, auds, SMALL.end_ms)
    assert list(got) == [k for k, _, _ in auds]
    sizes = {k: len(v) for k, v in got.items()}
    assert sizes["vip"] > 0 and sizes["lapsed"] > 0 and sizes["recent_purchasers"] > 0
    users = set(pc.unique(small_events["user_id"]).to_pylist())
    assert all(v <= users for v in got.values())
    assert got["vip_not_recent"] == got["vip"] - got["recent_purchasers"]
    assert sum(1 for s in sizes.values() if s) > len(sizes) // 3


def test_rule_text_of_every_node() -> None:
    p = And(
        (
            Cmp(
                Agg(
                    "count",
                    Selector(
                        "Product Viewed",
                        (
                            Where("category", "==", "shoes"),
                            Where("context.device.type", "==", "ios"),
                        ),
                    ),
                    window=Duration(7 * D),
                ),
                ">=",
                2,
            ),
            Or((Cmp(Trait("plan"), "==", "pro"), Not(Exists(Trait("email"))))),
            Not(
                Cmp(Agg("avg", Selector("Order Completed"), "revenue", Duration(90 * D)), ">", 50.5)
            ),
            In(Trait("plan"), ("pro", "enterprise"), negated=True),
            Between(Since(Selector("Order Completed")), Duration(36 * H), Duration(90 * 60 * S)),
        )
    )
    assert AudienceSpec("x", "t", p).text == (
        'count("Product Viewed" where category == "shoes" and context.device.type == "ios", 7d)'
        ' >= 2 and (trait.plan == "pro" or not exists(trait.email)) and '
        'not (avg("Order Completed", revenue, 90d) > 50.5) and '
        'trait.plan not in ["pro", "enterprise"] and '
        'since("Order Completed") between 36h and 90m'
    )


# --------------------------------------------------------------------------- differential


class _NaiveEvaluator:
    """A direct reading of docs/semantics.md over the AST, to cross-check the SQL."""

    def __init__(self, table: pa.Table, g: int = 1_000) -> None:
        self.g = g
        self.events: dict[str, list[tuple[int, str, dict[str, Any], dict[str, Any]]]] = {}
        self.traits: dict[str, dict[str, Any]] = {}
        seen: set[str] = set()
        for r in table.to_pylist():
            if r["message_id"] is not None:
                if r["message_id"] in seen:
                    continue
                seen.add(r["message_id"])
            user = r["user_id"]
            self.events.setdefault(user, [])
            tr = self.traits.setdefault(user, {})
            if r["type"] == "track":
                t = r["timestamp"] - r["timestamp"] % g
                self.events[user].append(
                    (
                        t,
                        r["event"],
                        json.loads(r["properties"] or "{}"),
                        json.loads(r["context"] or "{}"),
                    )
                )
            else:
                for k, v in json.loads(r["traits"]).items():
                    if v is None:
                        tr.pop(k, None)
                    else:
                        tr[k] = v

    @staticmethod
    def _kind(v: Any) -> str | None:
        if v is None:
            return None
        if isinstance(v, bool):
            return "bool"
        if isinstance(v, (int, float)):
            return "num"
        if isinstance(v, str):
            return "str"
        if isinstance(v, Duration):
            return "dur"
        return "list"

    def _cmp(self, a: Any, op: str, b: Any) -> bool:
        ka, kb = self._kind(a), self._kind(b)
        if ka is None or kb is None or ka != kb or ka == "list":
            return False
        if ka == "dur":
            a, b = a.ms, b.ms
        if ka == "bool" and op not in ("==", "!="):
            return False
        return bool(
            {"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
        )

    @staticmethod
    def _field(props: dict[str, Any], ctx: dict[str, Any], path: str) -> Any:
        src: Any = ctx if path.startswith("context.") else props
        for part in path.removeprefix("context.").split("."):
            if not isinstance(src, dict) or part not in src:
                return None
            src = src[part]
        return src

    def _matching(self, user: str, sel: Selector, now: int) -> list[tuple[int, dict[str, Any]]]:
        out = []
        for t, name, props, ctx in self.events[user]:
            if (
                t <= now
                and name == sel.event
                and all(
                    self._cmp(self._field(props, ctx, w.field), w.op, w.value) for w in sel.where
                )
            ):
                out.append((t, props))
        return out

    def value(self, v: Any, user: str, now: int) -> Any:
        if isinstance(v, Trait):
            return self.traits[user].get(v.key)
        if isinstance(v, SinceTrait):
            x = self.traits[user].get(v.key)
            if not isinstance(x, str):
                return None
            try:
                from datetime import datetime

                ms = int(datetime.fromisoformat(x).timestamp() * 1000)
            except ValueError:
                return None
            return Duration(now - (ms - ms % self.g))
        if isinstance(v, Since):
            ts = [t for t, _ in self._matching(user, v.selector, now)]
            return Duration(now - max(ts)) if ts else None
        assert isinstance(v, Agg)
        rows = self._matching(user, v.selector, now)
        if isinstance(v.window, Duration):
            w = v.window.ms
            rows = [(t, p) for t, p in rows if t > now - w]
        elif isinstance(v.window, SinceAnchor):
            anchor = [t for t, _ in self._matching(user, Selector(v.window.event), now)]
            rows = [(t, p) for t, p in rows if anchor and t > max(anchor)]
        if v.fn == "count":
            return len(rows)
        assert v.prop is not None
        vals = [p.get(v.prop) for _, p in rows]
        if v.fn == "distinct":
            return len({json.dumps(x) for x in vals if x is not None})
        nums: list[float] = [
            x for x in vals if isinstance(x, (int, float)) and x is not True and x is not False
        ]
        if not nums:
            return None
        if v.fn == "sum":
            return sum(nums)
        if v.fn == "avg":
            return sum(nums) / len(nums)
        return min(nums) if v.fn == "min" else max(nums)

    def pred(self, p: Pred, user: str, now: int, mem: dict[str, set[str]]) -> bool:
        if isinstance(p, Cmp):
            return self._cmp(self.value(p.lhs, user, now), p.op, p.rhs)
        if isinstance(p, Between):
            x = self.value(p.lhs, user, now)
            inside = self._cmp(x, ">=", p.lo) and self._cmp(x, "<=", p.hi)
            if not p.negated:
                return inside
            return self._cmp(x, "<", p.lo) or self._cmp(x, ">", p.hi)
        if isinstance(p, In):
            x = self.value(p.lhs, user, now)
            xs = x if isinstance(x, list) else [x]
            member = any(self._cmp(e, "==", v) for e in xs for v in p.values)
            return (x is not None and not member) if p.negated else member
        if isinstance(p, Exists):
            return self.value(p.value, user, now) is not None
        if isinstance(p, Did):
            return bool(self.value(Agg("count", p.selector, None, p.window), user, now) >= 1)
        if isinstance(p, InAudience):
            return user in mem[p.key]
        if isinstance(p, Not):
            return not self.pred(p.arg, user, now, mem)
        if isinstance(p, And):
            return all(self.pred(a, user, now, mem) for a in p.args)
        assert isinstance(p, Or)
        return any(self.pred(a, user, now, mem) for a in p.args)

    def memberships(self, auds: list[AudienceSpec], now: int) -> dict[str, set[str]]:
        now -= now % self.g
        mem: dict[str, set[str]] = {}
        for a in auds:  # generated audiences only reference earlier ones
            mem[a.key] = {u for u in self.events if self.pred(a.rule, u, now, mem)}
        return mem


@pytest.mark.parametrize("back_ms", [0, 3 * DAY_MS + 7 * HOUR_MS + 1_234])
def test_peer_matches_naive_evaluator_on_the_workload(back_ms: int) -> None:
    spec = WorkloadSpec(
        users=250,
        events=3_000,
        audiences=300,
        hot_audiences=250,
        seed=5,
        late_fraction=0.05,
        days=150,
    )
    events = generate_events(spec)
    auds = [a for _, _, a in generate_audiences(spec)]
    now = spec.end_ms - back_ms
    expected = _NaiveEvaluator(events).memberships(auds, now)
    got = compute_memberships(events, auds, now)
    diff = {k: (got[k] ^ expected[k]) for k in expected if got[k] != expected[k]}
    assert not diff, {k: (v, next(a.text for a in auds if a.key == k)) for k, v in diff.items()}
    assert sum(1 for v in expected.values() if v) > 100


def test_peer_matches_the_reference_evaluator() -> None:
    """The peer agrees with tests/reference.py fed the same events, also after advance()."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    reference = pytest.importorskip("reference")
    spec = WorkloadSpec(
        users=100, events=800, audiences=120, hot_audiences=110, seed=3, late_fraction=0.05
    )
    events = generate_events(spec)
    auds = generate_audiences(spec)
    ref = reference.Reference(now=spec.end_ms)
    for r in events.to_pylist():
        if r["type"] == "track":
            props, ctx = json.loads(r["properties"]), json.loads(r["context"])
            ref.track(r["user_id"], r["event"], props, r["timestamp"], ctx, r["message_id"])
        else:
            ref.identify(r["user_id"], json.loads(r["traits"]))
    for key, text, _ in auds:
        ref.define_audience(key, text)
    peer = DuckDBPeer(events, auds)
    for now in (spec.end_ms, spec.end_ms + 3 * DAY_MS + 5 * HOUR_MS + 17_000):
        if now != spec.end_ms:
            ref.advance(now)
        got = peer.memberships(now)
        diff = {
            k: got[k] ^ set(ref.members(k)) for k, _, _ in auds if got[k] != set(ref.members(k))
        }
        assert not diff, diff
