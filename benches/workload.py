"""The standard segmint workload (DESIGN §7), seeded and reproducible.

Three things live here:

* a small typed AST of rules (:class:`AudienceSpec` and the node classes) that
  renders to the rule language of DESIGN §3 / docs/rules.md and that
  ``benches/duckdb_peer.py`` compiles to SQL, so the engine and the peer are
  driven by the very same definitions;
* :func:`generate_events`: users with Zipf(``zipf_a``) activity, shopping
  sessions (views → cart → checkout → order, e-mail opens, cancellations) over
  ``days`` days ending at ``end_ms``, identify calls with traits, all as one
  pyarrow table in arrival order (timestamp order, plus optional late events);
* :func:`generate_audiences`: audiences from the seeds' use cases (cart
  abandoners, lapsed, VIP, micro-segments, recent purchasers, exclusions,
  first-time buyers) with varied thresholds, categories and windows, and a
  fan-out control mode (only the first ``hot_audiences`` reference events that
  occur).

Everything is a pure function of :class:`WorkloadSpec`; the event and audience
random streams are independent, so the first 1,000 of 10,000 audiences are
the 1,000-audience set.

Run ``python -m benches.workload --help`` to write a workload to disk.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# --------------------------------------------------------------------------- time

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

#: 2026-06-01T00:00:00Z: the default end of the workload (and a natural ``now``).
DEFAULT_END_MS = 1_780_272_000_000

# --------------------------------------------------------------------------- taxonomy

EVENT_NAMES: tuple[str, ...] = (
    "Product Viewed",
    "Added to Cart",
    "Checkout Started",
    "Order Completed",
    "Email Opened",
    "Subscription Cancelled",
)
PV, ATC, CS, OC, EO, SC = range(6)

CATEGORIES: tuple[str, ...] = (
    "shoes",
    "skincare",
    "apparel",
    "electronics",
    "home",
    "beauty",
    "sports",
    "books",
)
CATEGORY_WEIGHTS = (0.22, 0.18, 0.16, 0.12, 0.1, 0.09, 0.08, 0.05)
DEVICES: tuple[str, ...] = ("ios", "android", "web")
DEVICE_WEIGHTS = (0.42, 0.28, 0.30)
CHANNELS: tuple[str, ...] = ("email", "ads", "organic", "push")
CHANNEL_WEIGHTS = (0.2, 0.3, 0.4, 0.1)
COUNTRIES: tuple[str, ...] = ("US", "GB", "DE", "FR", "CA", "BR", "IN", "JP")
COUNTRY_WEIGHTS = (0.4, 0.12, 0.1, 0.08, 0.08, 0.08, 0.08, 0.06)
PLANS: tuple[str, ...] = ("free", "basic", "pro", "enterprise")
PLAN_WEIGHTS = (0.55, 0.25, 0.15, 0.05)
TRAIT_KEYS: tuple[str, ...] = ("country", "plan", "ltv", "preferred_channel", "created_at")

#: Column order and types of the events table.
EVENTS_SCHEMA = pa.schema(
    [
        pa.field("type", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("event", pa.string()),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("message_id", pa.string()),
        pa.field("properties", pa.string()),
        pa.field("context", pa.string()),
        pa.field("traits", pa.string()),
    ]
)


# --------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class WorkloadSpec:
    """Size and shape of one workload. Every output is a pure function of it.

    ``events`` counts track calls; identify calls come on top: one per user
    (before the user's first track call) plus ``trait_update_fraction * events``
    trait updates. ``hot_audiences`` (fan-out control) makes only the first K
    audiences reference events that occur; the others reference
    ``cold_event_names`` distinct names (``"Event 17"``) that never occur and are
    false on an empty profile, so they cannot fan out from the workload's events.
    """

    users: int = 100_000
    events: int = 1_000_000
    days: int = 180
    audiences: int = 1_000
    seed: int = 42
    end_ms: int = DEFAULT_END_MS
    zipf_a: float = 1.1
    late_fraction: float = 0.0
    trait_update_fraction: float = 0.05
    hot_audiences: int | None = None
    cold_event_names: int = 1_000

    @property
    def start_ms(self) -> int:
        """First instant of the event span (``end_ms - days``)."""
        return self.end_ms - self.days * DAY_MS

    def to_dict(self) -> dict[str, Any]:
        """The spec as a JSON-able dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------- rule AST

CmpOp: TypeAlias = Literal["==", "!=", "<", "<=", ">", ">="]
AggFn: TypeAlias = Literal["count", "sum", "avg", "min", "max", "distinct"]
Scalar: TypeAlias = str | int | float | bool


@dataclass(frozen=True)
class Duration:
    """A duration literal (``2h``, ``60d``), exact milliseconds (a multiple of 1 s)."""

    ms: int


@dataclass(frozen=True)
class Where:
    """One property condition of a selector: ``category == "shoes"``.

    ``field`` is a property path (dots for nesting) or ``context.<path>``.
    """

    field: str
    op: CmpOp
    value: Scalar


@dataclass(frozen=True)
class Selector:
    """An event selector: a name and a conjunction of property conditions."""

    event: str
    where: tuple[Where, ...] = ()


@dataclass(frozen=True)
class SinceAnchor:
    """The window ``since "X"``: events strictly after the latest visible ``X``."""

    event: str


Window: TypeAlias = Duration | SinceAnchor | None


@dataclass(frozen=True)
class Trait:
    """``trait.KEY``."""

    key: str


@dataclass(frozen=True)
class Agg:
    """``count(E, W)`` or ``fn(E, prop, W)`` for sum/avg/min/max/distinct."""

    fn: AggFn
    selector: Selector
    prop: str | None = None
    window: Window = None


@dataclass(frozen=True)
class Since:
    """``since(E)``: time since the latest visible matching event."""

    selector: Selector


@dataclass(frozen=True)
class SinceTrait:
    """``since(trait.KEY)``: time since a timestamp trait."""

    key: str


Value: TypeAlias = Trait | Agg | Since | SinceTrait
Operand: TypeAlias = Scalar | Duration


@dataclass(frozen=True)
class Cmp:
    """``lhs OP rhs`` with a literal right-hand side."""

    lhs: Value
    op: CmpOp
    rhs: Operand


@dataclass(frozen=True)
class Between:
    """``lhs between lo and hi`` (inclusive), or ``not between``."""

    lhs: Value
    lo: Operand
    hi: Operand
    negated: bool = False


@dataclass(frozen=True)
class In:
    """``lhs in [..]`` or ``lhs not in [..]``."""

    lhs: Value
    values: tuple[Scalar, ...]
    negated: bool = False


@dataclass(frozen=True)
class Exists:
    """``exists(trait.KEY)``."""

    value: Value


@dataclass(frozen=True)
class Did:
    """``did(E, W)`` == ``count(E, W) >= 1``."""

    selector: Selector
    window: Window = None


@dataclass(frozen=True)
class InAudience:
    """``in_audience("key")``."""

    key: str


@dataclass(frozen=True)
class Not:
    """``not p``."""

    arg: Pred


@dataclass(frozen=True)
class And:
    """``p and q and ...``."""

    args: tuple[Pred, ...]


@dataclass(frozen=True)
class Or:
    """``p or q or ...``."""

    args: tuple[Pred, ...]


Pred: TypeAlias = Cmp | Between | In | Exists | Did | InAudience | Not | And | Or

_NODE_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        Duration,
        Where,
        Selector,
        SinceAnchor,
        Trait,
        Agg,
        Since,
        SinceTrait,
        Cmp,
        Between,
        In,
        Exists,
        Did,
        InAudience,
        Not,
        And,
        Or,
    )
}


def render_literal(value: Operand) -> str:
    """Render a literal in rule syntax (strings JSON-quoted, integral numbers bare)."""
    if isinstance(value, Duration):
        return render_duration(value.ms)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def render_duration(ms: int) -> str:
    """Render milliseconds as ``Nd`` (2 days or more), else ``Nh``, ``Nm`` or ``Ns``.

    The largest exact unit is used, except that whole days under 2 days stay
    hours (``24h``) and weeks are written in days (``14d``), as in the seeds.
    """
    if ms <= 0 or ms % SECOND_MS:
        raise ValueError(f"duration must be a positive whole number of seconds: {ms} ms")
    if ms % DAY_MS == 0 and ms >= 2 * DAY_MS:
        return f"{ms // DAY_MS}d"
    for unit, size in (("h", HOUR_MS), ("m", MINUTE_MS)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms // SECOND_MS}s"


def _render_selector(sel: Selector) -> str:
    text = json.dumps(sel.event)
    if sel.where:
        conds = " and ".join(f"{w.field} {w.op} {render_literal(w.value)}" for w in sel.where)
        text += f" where {conds}"
    return text


def _render_window(window: Window) -> str:
    if window is None:
        return ""
    if isinstance(window, Duration):
        return ", " + render_duration(window.ms)
    return f", since {json.dumps(window.event)}"


def render_value(v: Value) -> str:
    """Render a value expression in rule syntax."""
    if isinstance(v, Trait):
        return f"trait.{v.key}"
    if isinstance(v, SinceTrait):
        return f"since(trait.{v.key})"
    if isinstance(v, Since):
        return f"since({_render_selector(v.selector)})"
    if v.fn == "count":
        return f"count({_render_selector(v.selector)}{_render_window(v.window)})"
    if v.prop is None:
        raise ValueError(f"{v.fn} needs a property")
    return f"{v.fn}({_render_selector(v.selector)}, {v.prop}{_render_window(v.window)})"


def _is_compound(p: Pred) -> bool:
    return isinstance(p, (And, Or, Cmp, Between, In))


def render_rule(p: Pred) -> str:
    """Render a predicate in the rule language of DESIGN §3."""
    if isinstance(p, Cmp):
        return f"{render_value(p.lhs)} {p.op} {render_literal(p.rhs)}"
    if isinstance(p, Between):
        neg = "not " if p.negated else ""
        lo, hi = render_literal(p.lo), render_literal(p.hi)
        return f"{render_value(p.lhs)} {neg}between {lo} and {hi}"
    if isinstance(p, In):
        neg = "not " if p.negated else ""
        items = ", ".join(render_literal(v) for v in p.values)
        return f"{render_value(p.lhs)} {neg}in [{items}]"
    if isinstance(p, Exists):
        return f"exists({render_value(p.value)})"
    if isinstance(p, Did):
        return f"did({_render_selector(p.selector)}{_render_window(p.window)})"
    if isinstance(p, InAudience):
        return f"in_audience({json.dumps(p.key)})"
    if isinstance(p, Not):
        inner = render_rule(p.arg)
        return f"not ({inner})" if _is_compound(p.arg) else f"not {inner}"
    if isinstance(p, And):
        return " and ".join(
            f"({render_rule(a)})" if isinstance(a, Or) else render_rule(a) for a in p.args
        )
    if isinstance(p, Or):
        return " or ".join(
            f"({render_rule(a)})" if isinstance(a, And) else render_rule(a) for a in p.args
        )
    raise TypeError(f"not a predicate: {p!r}")


def referenced_audiences(p: Pred) -> tuple[str, ...]:
    """Keys of the audiences a predicate references, in first-use order."""
    out: list[str] = []

    def walk(q: Pred) -> None:
        if isinstance(q, InAudience):
            if q.key not in out:
                out.append(q.key)
        elif isinstance(q, Not):
            walk(q.arg)
        elif isinstance(q, (And, Or)):
            for a in q.args:
                walk(a)

    walk(p)
    return tuple(out)


def node_to_json(node: Any) -> Any:
    """Encode an AST node (or tree) as JSON-able data: dicts tagged with ``"@"``."""
    if is_dataclass(node) and not isinstance(node, type):
        out: dict[str, Any] = {"@": type(node).__name__}
        for f in fields(node):
            out[f.name] = node_to_json(getattr(node, f.name))
        return out
    if isinstance(node, (tuple, list)):
        return [node_to_json(x) for x in node]
    return node


def node_from_json(data: Any) -> Any:
    """Inverse of :func:`node_to_json` (lists become tuples)."""
    if isinstance(data, dict):
        cls = _NODE_TYPES[data["@"]]
        return cls(**{k: node_from_json(v) for k, v in data.items() if k != "@"})
    if isinstance(data, list):
        return tuple(node_from_json(x) for x in data)
    return data


@dataclass(frozen=True)
class AudienceSpec:
    """A generated audience: key, use-case kind, and the rule as an AST.

    ``hot`` is false for fan-out-control audiences over events that never occur.
    """

    key: str
    kind: str
    rule: Pred
    hot: bool = True

    @property
    def text(self) -> str:
        """The rule in the rule language."""
        return render_rule(self.rule)

    @property
    def depends_on(self) -> tuple[str, ...]:
        """Audiences referenced through ``in_audience``."""
        return referenced_audiences(self.rule)

    def to_json(self) -> dict[str, Any]:
        """JSON-able form: key, kind, hot, rule text and the AST."""
        return {
            "key": self.key,
            "kind": self.kind,
            "hot": self.hot,
            "rule": self.text,
            "spec": node_to_json(self.rule),
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> AudienceSpec:
        """Inverse of :meth:`to_json`."""
        return AudienceSpec(
            data["key"], data["kind"], node_from_json(data["spec"]), bool(data.get("hot", True))
        )


# --------------------------------------------------------------------------- events


def _str_array(values: Sequence[str]) -> pa.Array:
    return pa.array(list(values), pa.string())


def _choice(rng: np.random.Generator, n: int, weights: Sequence[float]) -> np.ndarray:
    cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
    cdf /= cdf[-1]
    out = np.searchsorted(cdf, rng.random(n), side="right")
    return np.minimum(out, len(weights) - 1).astype(np.int32)


def _concat(*parts: pa.Array | str) -> pa.Array:
    """Element-wise string concatenation (null if any array part is null)."""
    return pc.binary_join_element_wise(*parts, "")


_HMS = pa.array(
    [f"{h:02d}:{m:02d}:{x:02d}" for h in range(24) for m in range(60) for x in range(60)],
    pa.string(),
)
_MILLIS = pa.array([f".{i:03d}Z" for i in range(1000)], pa.string())


def _iso(ms: np.ndarray) -> pa.Array:
    """ISO-8601 UTC strings with milliseconds: ``2026-05-31T12:00:05.123Z``.

    Vectorised through lookup tables (one strftime per distinct day).
    """
    ms = np.asarray(ms, dtype=np.int64)
    if len(ms) == 0:
        return pa.array([], pa.string())
    day = np.floor_divide(ms, DAY_MS)
    d0 = int(day.min())
    n_days = int(day.max()) - d0 + 1
    day_ts = pa.array((np.arange(n_days, dtype=np.int64) + d0) * DAY_MS, pa.int64())
    dates = pc.strftime(day_ts.cast(pa.timestamp("ms", tz="UTC")), format="%Y-%m-%dT")
    in_day = ms - day * DAY_MS
    return _concat(
        dates.take(pa.array(day - d0)),
        _HMS.take(pa.array(in_day // SECOND_MS)),
        _MILLIS.take(pa.array(in_day % SECOND_MS)),
    )


def _iso_seconds(ms: np.ndarray) -> pa.Array:
    """ISO-8601 UTC strings with whole seconds: ``2025-11-02T08:15:00Z``."""
    secs = np.floor_divide(ms, SECOND_MS)
    ts = pa.array(secs, pa.int64()).cast(pa.timestamp("s", tz="UTC"))
    return pc.strftime(ts, format="%Y-%m-%dT%H:%M:%SZ")


def _num_str(values: np.ndarray) -> pa.Array:
    """Shortest round-trip decimal text of float64 values (valid JSON numbers)."""
    return pa.array(values, pa.float64()).cast(pa.string())


def user_ids(n: int) -> pa.Array:
    """External ids of users ``0..n-1``: ``u0000000``, ``u0000001``, ..."""
    digits = pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string())
    return _concat("u", pc.utf8_lpad(digits, width=7, padding="0"))


def _zipf_users(rng: np.random.Generator, n: int, users: int, a: float) -> np.ndarray:
    """Draw ``n`` user indices, user at activity rank r with probability ∝ r^-a.

    Ranks are assigned to user indices by a seeded permutation, so ids carry no
    activity order.
    """
    weights = np.arange(1, users + 1, dtype=np.float64) ** -a
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    rank = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), users - 1)
    perm = rng.permutation(users).astype(np.int64)
    return perm[rank]


# session slots: one e-mail open, up to 8 views, cart, checkout, order, cancellation
_SLOT_EVENT = np.array([EO, PV, PV, PV, PV, PV, PV, PV, PV, ATC, CS, OC, SC], dtype=np.int8)
_MEAN_EVENTS_PER_SESSION = 3.2


def _sessions(rng: np.random.Generator, spec: WorkloadSpec) -> dict[str, np.ndarray]:
    """Track events of shopping sessions, truncated to exactly ``spec.events`` rows."""
    n_events = spec.events
    n_s = int(n_events / _MEAN_EVENTS_PER_SESSION * 1.1) + 32
    while True:
        email = rng.random(n_s) < 0.3
        views = np.minimum(1 + rng.poisson(1.2, n_s), 8)
        cart = rng.random(n_s) < 0.4
        checkout = cart & (rng.random(n_s) < 0.55)
        order = checkout & (rng.random(n_s) < 0.6)
        cancel = rng.random(n_s) < 0.004
        mask = np.zeros((n_s, 13), dtype=bool)
        mask[:, 0] = email
        mask[:, 1:9] = np.arange(8)[None, :] < views[:, None]
        mask[:, 9] = cart
        mask[:, 10] = checkout
        mask[:, 11] = order
        mask[:, 12] = cancel
        if int(mask.sum()) >= n_events:
            break
        n_s *= 2
    sess, slot = np.nonzero(mask)
    sess, slot = sess[:n_events], slot[:n_events]
    n_s = int(sess[-1]) + 1 if n_events else 0

    s_user = _zipf_users(rng, n_s, spec.users, spec.zipf_a)
    s_start = rng.integers(spec.start_ms, spec.end_ms, n_s, dtype=np.int64)
    s_cat = _choice(rng, n_s, CATEGORY_WEIGHTS)
    s_dev = _choice(rng, n_s, DEVICE_WEIGHTS)
    s_chan = _choice(rng, n_s, CHANNEL_WEIGHTS)

    ev = _SLOT_EVENT[slot]
    n = len(ev)
    # time within the session: gaps of ~45 s; orders a few minutes after checkout,
    # or (20 %) hours later, after the abandonment window has opened
    gap = rng.exponential(45_000.0, n)
    is_order = ev == OC
    late_order = rng.random(n) < 0.2
    gap = np.where(
        is_order,
        np.where(late_order, rng.exponential(8 * HOUR_MS, n), rng.exponential(3 * MINUTE_MS, n)),
        gap,
    )
    gap_i = gap.astype(np.int64)
    first = np.flatnonzero(np.r_[True, sess[1:] != sess[:-1]])
    gap_i[first] = 0
    csum = np.cumsum(gap_i)
    counts = np.diff(np.r_[first, n])
    offset = csum - np.repeat(csum[first], counts)
    ts = np.minimum(s_start[sess] + offset, spec.end_ms - 1)

    cat = s_cat[sess].copy()
    drift = (ev == PV) & (rng.random(n) < 0.25)
    cat[drift] = _choice(rng, int(drift.sum()), CATEGORY_WEIGHTS)
    chan = s_chan[sess].copy()
    chan[ev == EO] = CHANNELS.index("email")
    revenue = np.maximum(np.round(rng.lognormal(math.log(60.0), 0.8, n) * 4.0) / 4.0, 1.0)
    return {
        "user": s_user[sess],
        "ts": ts,
        "event": ev,
        "category": cat,
        "device": s_dev[sess],
        "channel": chan,
        # multiples of 0.25: sums are exact in f64 whatever the order of addition
        "revenue": revenue,
    }


def _track_properties(
    ev: np.ndarray, cat: np.ndarray, chan: np.ndarray, revenue: np.ndarray
) -> pa.Array:
    n_cat, n_chan = len(CATEGORIES), len(CHANNELS)
    prefixes = []
    for e in range(len(EVENT_NAMES)):
        for c in CATEGORIES:
            for ch in CHANNELS:
                if e == SC:
                    prefixes.append(f'{{"channel":"{ch}"')
                else:
                    prefixes.append(f'{{"category":"{c}","channel":"{ch}"')
    idx = (ev.astype(np.int64) * n_cat + cat) * n_chan + chan
    prefix = _str_array(prefixes).take(pa.array(idx))
    rev = _concat(',"revenue":', _num_str(revenue), "}")
    close = pc.if_else(pa.array(ev == OC), rev, pa.scalar("}"))
    return _concat(prefix, close)


def _identifies(
    rng: np.random.Generator, spec: WorkloadSpec, track_user: np.ndarray, track_ts: np.ndarray
) -> dict[str, Any]:
    """One identify per user (just before its first track call) plus trait updates."""
    users = spec.users
    first = np.full(users, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, track_user, track_ts)
    never = first == np.iinfo(np.int64).max
    base_ts = first - rng.integers(SECOND_MS, HOUR_MS, users, dtype=np.int64)
    base_ts[never] = rng.integers(spec.start_ms, spec.end_ms, int(never.sum()), dtype=np.int64)
    created = base_ts - (rng.exponential(120 * DAY_MS, users)).astype(np.int64)
    ltv = np.round(rng.lognormal(math.log(150.0), 1.0, users), 2)
    country = _choice(rng, users, COUNTRY_WEIGHTS)
    plan = _choice(rng, users, PLAN_WEIGHTS)
    pref = _choice(rng, users, CHANNEL_WEIGHTS)
    base_traits = _concat(
        '{"country":"',
        _str_array(COUNTRIES).take(pa.array(country)),
        '","plan":"',
        _str_array(PLANS).take(pa.array(plan)),
        '","ltv":',
        _num_str(ltv),
        ',"preferred_channel":"',
        _str_array(CHANNELS).take(pa.array(pref)),
        '","created_at":"',
        _iso_seconds(created),
        '"}',
    )

    n_up = round(spec.trait_update_fraction * spec.events)
    up_user = _zipf_users(rng, n_up, users, spec.zipf_a) if n_up else np.zeros(0, np.int64)
    lo = base_ts[up_user]
    up_ts = lo + (rng.random(n_up) * (spec.end_ms - lo)).astype(np.int64)
    variant = _choice(rng, n_up, (0.5, 0.25, 0.1, 0.15))
    up_ltv = _num_str(np.round(rng.lognormal(math.log(250.0), 1.0, n_up), 2))
    up_plan = _str_array(PLANS).take(pa.array(_choice(rng, n_up, PLAN_WEIGHTS)))
    up_pref = _str_array(CHANNELS).take(pa.array(_choice(rng, n_up, CHANNEL_WEIGHTS)))
    up_country = _str_array(COUNTRIES).take(pa.array(_choice(rng, n_up, COUNTRY_WEIGHTS)))
    up_traits = pc.choose(
        pa.array(variant.astype(np.int8)),
        _concat('{"plan":"', up_plan, '","ltv":', up_ltv, "}"),
        _concat('{"preferred_channel":"', up_pref, '"}'),
        pa.array(['{"preferred_channel":null}'] * n_up, pa.string()),
        _concat('{"country":"', up_country, '","ltv":', up_ltv, "}"),
    )
    return {
        "user": np.concatenate([np.arange(users, dtype=np.int64), up_user]),
        "ts": np.concatenate([base_ts, up_ts]),
        "traits": pa.concat_arrays([base_traits, up_traits]),
    }


def generate_events(spec: WorkloadSpec) -> pa.Table:
    """Generate the workload's events as one table in arrival (ingest) order.

    Columns (:data:`EVENTS_SCHEMA`): ``type`` ("track"/"identify"), ``user_id``,
    ``event`` (null for identify), ``timestamp`` (int64 ms since the epoch, UTC),
    ``message_id`` (unique), ``properties`` / ``context`` (JSON objects, track
    only), ``traits`` (JSON object, identify only; ``null`` values delete).
    Rows are sorted by timestamp except for ``late_fraction`` of track events
    whose timestamp was moved back (by ~30 min, at most 2 days) after sorting.
    """
    rng = np.random.default_rng([spec.seed, 0])
    tr = _sessions(rng, spec)
    idn = _identifies(rng, spec, tr["user"], tr["ts"])
    n_t, n_i = len(tr["ts"]), len(idn["ts"])

    ts = np.concatenate([tr["ts"], idn["ts"]])
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    is_track = order < n_t
    if spec.late_fraction > 0:
        late = is_track & (rng.random(n_t + n_i) < spec.late_fraction)
        delay = np.clip(rng.exponential(30 * MINUTE_MS, int(late.sum())), SECOND_MS, 2 * DAY_MS)
        ts[late] -= delay.astype(np.int64)

    track_props = _track_properties(tr["event"], tr["category"], tr["channel"], tr["revenue"])
    contexts = _str_array([f'{{"device":{{"type":"{d}"}}}}' for d in DEVICES])
    track_ctx = contexts.take(pa.array(tr["device"]))
    take = pa.array(order)
    null_i = pa.nulls(n_i, pa.string())
    null_t = pa.nulls(n_t, pa.string())
    user = np.concatenate([tr["user"], idn["user"]])[order]
    ev_idx = np.concatenate([tr["event"].astype(np.int64), np.zeros(n_i, np.int64)])[order]
    event = pc.if_else(
        pa.array(is_track),
        _str_array(EVENT_NAMES).take(pa.array(ev_idx)),
        pa.scalar(None, pa.string()),
    )
    msg = _concat(
        f"m{spec.seed}-", pc.cast(pa.array(np.arange(n_t + n_i, dtype=np.int64)), pa.string())
    )
    cols = {
        "type": _str_array(["track", "identify"]).take(pa.array((~is_track).astype(np.int8))),
        "user_id": user_ids(spec.users).take(pa.array(user)),
        "event": event,
        "timestamp": pa.array(ts, pa.int64()),
        "message_id": msg,
        "properties": pa.concat_arrays([track_props, null_i]).take(take),
        "context": pa.concat_arrays([track_ctx, null_i]).take(take),
        "traits": pa.concat_arrays([null_t, idn["traits"]]).take(take),
    }
    return pa.Table.from_pydict(cols, schema=EVENTS_SCHEMA)


# --------------------------------------------------------------------------- Segment JSON


_NEEDS_ESCAPE = r'["\\\x00-\x1f]'


def segment_json_rows(table: pa.Table) -> pa.Array:
    """Each row as one Segment-spec JSON object (string array, vectorised).

    Track: ``{"type","userId","event","properties","context","timestamp","messageId"}``;
    identify: ``{"type","userId","traits","timestamp","messageId"}``; ``timestamp`` is
    ISO-8601 UTC with milliseconds. Falls back to a per-row ``json.dumps`` when an
    id or event name would need escaping.
    """
    t = table.combine_chunks()
    text_cols = [t.column(c) for c in ("user_id", "event", "message_id")]
    if any(pc.any(pc.match_substring_regex(c, _NEEDS_ESCAPE)).as_py() for c in text_cols):
        return pa.array([json.dumps(r, separators=(",", ":")) for r in segment_dicts(t)])
    uid = t.column("user_id")
    iso = _iso(t.column("timestamp").to_numpy())
    mid = pc.if_else(
        pc.is_null(t.column("message_id")),
        pa.scalar("null"),
        _concat('"', t.column("message_id"), '"'),
    )
    props = pc.coalesce(t.column("properties"), pa.scalar("{}"))
    ctx = pc.coalesce(t.column("context"), pa.scalar("{}"))
    traits = pc.coalesce(t.column("traits"), pa.scalar("{}"))
    track = _concat(
        '{"type":"track","userId":"',
        uid,
        '","event":"',
        t.column("event"),
        '","properties":',
        props,
        ',"context":',
        ctx,
        ',"timestamp":"',
        iso,
        '","messageId":',
        mid,
        "}",
    )
    ident = _concat(
        '{"type":"identify","userId":"',
        uid,
        '","traits":',
        traits,
        ',"timestamp":"',
        iso,
        '","messageId":',
        mid,
        "}",
    )
    rows = pc.if_else(pc.equal(t.column("type"), "track"), track, ident)
    return rows.combine_chunks() if isinstance(rows, pa.ChunkedArray) else rows


def iter_segment_json(
    table: pa.Table, chunk_rows: int = 10_000, fmt: Literal["array", "ndjson"] = "array"
) -> Iterator[bytes]:
    """Yield the table as Segment-spec JSON batches for ``Engine.ingest`` (bytes).

    ``fmt="array"`` yields ``[{...},{...}]``; ``"ndjson"`` one object per line.
    Each batch holds ``chunk_rows`` rows (the last one fewer), in arrival order.
    """
    sep = "," if fmt == "array" else "\n"
    rows = _concat(segment_json_rows(table), sep).cast(pa.large_string())
    if isinstance(rows, pa.ChunkedArray):
        rows = rows.combine_chunks()
    n = len(rows)
    if n == 0:
        return
    _, offsets_buf, data = rows.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[rows.offset : rows.offset + n + 1]
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        body = data[int(offsets[start]) : int(offsets[stop])].to_pybytes()
        yield b"[" + body[:-1] + b"]" if fmt == "array" else body


def segment_dicts(table: pa.Table, start: int = 0, stop: int | None = None) -> list[dict[str, Any]]:
    """Rows ``[start, stop)`` as Segment-spec dicts (for ``Engine.ingest(list)``)."""
    sl = table.slice(start, (stop if stop is not None else table.num_rows) - start)
    out: list[dict[str, Any]] = []
    iso = _iso(sl.column("timestamp").to_numpy()).to_pylist()
    for i, r in enumerate(sl.to_pylist()):
        d: dict[str, Any] = {"type": r["type"], "userId": r["user_id"]}
        if r["type"] == "track":
            d["event"] = r["event"]
            d["properties"] = json.loads(r["properties"]) if r["properties"] else {}
            d["context"] = json.loads(r["context"]) if r["context"] else {}
        else:
            d["traits"] = json.loads(r["traits"]) if r["traits"] else {}
        d["timestamp"] = iso[i]
        d["messageId"] = r["message_id"]
        out.append(d)
    return out


# --------------------------------------------------------------------------- audiences


def _w(days: int = 0, hours: int = 0) -> Duration:
    return Duration(days * DAY_MS + hours * HOUR_MS)


def _sel(event: str, *where: tuple[str, CmpOp, Scalar]) -> Selector:
    return Selector(event, tuple(Where(f, op, v) for f, op, v in where))


def _count(sel: Selector, window: Window = None) -> Agg:
    return Agg("count", sel, None, window)


def cart_abandoners(
    lo_h: int = 2, hi_h: int = 24, anchor: str = "Checkout Started", goal: str = "Order Completed"
) -> Pred:
    """``since(anchor) between lo and hi and count(goal, since anchor) == 0``."""
    return And(
        (
            Between(Since(Selector(anchor)), _w(hours=lo_h), _w(hours=hi_h)),
            Cmp(_count(Selector(goal), SinceAnchor(anchor)), "==", 0),
        )
    )


def lapsed(lo_d: int = 60, hi_d: int = 120, event: str = "Order Completed") -> Pred:
    """``since(event) between lo and hi`` (days)."""
    return Between(Since(Selector(event)), _w(lo_d), _w(hi_d))


def vip(threshold: float = 300, days: int = 365, event: str = "Order Completed") -> Pred:
    """``sum(event, revenue, Wd) > threshold``."""
    return Cmp(Agg("sum", Selector(event), "revenue", _w(days)), ">", threshold)


def recent_purchasers(days: int = 30, event: str = "Order Completed") -> Pred:
    """``did(event, Wd)``."""
    return Did(Selector(event), _w(days))


def exclusion(include: str, exclude: str) -> Pred:
    """``in_audience(include) and not in_audience(exclude)``."""
    return And((InAudience(include), Not(InAudience(exclude))))


def first_time_buyers(days: int = 30, event: str = "Order Completed") -> Pred:
    """``count(event) == 1 and since(event) < Wd``."""
    return And((Cmp(_count(Selector(event)), "==", 1), Cmp(Since(Selector(event)), "<", _w(days))))


def _canonical() -> list[tuple[str, str, Pred]]:
    """The seeds' examples, verbatim: the first audiences of every hot set."""
    return [
        ("cart_abandoners", "cart_abandoners", cart_abandoners()),
        ("lapsed", "lapsed", lapsed()),
        ("vip", "vip", vip()),
        ("recent_purchasers", "recent_purchasers", recent_purchasers()),
        ("vip_not_recent", "exclusion", exclusion("vip", "recent_purchasers")),
        ("first_time_buyers", "first_time_buyers", first_time_buyers()),
        (
            "new_users",
            "micro",
            And(
                (
                    Cmp(SinceTrait("created_at"), "<", _w(14)),
                    Cmp(_count(Selector("Order Completed")), "==", 0),
                )
            ),
        ),
        (
            "shoe_fans_ios_us",
            "micro",
            And(
                (
                    Cmp(Trait("country"), "==", "US"),
                    Cmp(
                        _count(
                            _sel(
                                "Product Viewed",
                                ("category", "==", "shoes"),
                                ("context.device.type", "==", "ios"),
                            ),
                            _w(7),
                        ),
                        ">=",
                        2,
                    ),
                    Not(Did(Selector("Order Completed"), _w(7))),
                )
            ),
        ),
        (
            "skincare_pro",
            "micro",
            And(
                (
                    In(Trait("plan"), ("pro", "enterprise")),
                    Cmp(
                        _count(_sel("Added to Cart", ("category", "==", "skincare")), _w(30)),
                        ">=",
                        1,
                    ),
                    Cmp(Trait("ltv"), ">", 500),
                )
            ),
        ),
    ]


_KINDS = (
    "cart_abandoners",
    "lapsed",
    "vip",
    "recent_purchasers",
    "exclusion",
    "first_time_buyers",
    "micro",
)
_KIND_WEIGHTS = (0.15, 0.12, 0.15, 0.08, 0.12, 0.08, 0.30)


def _pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def _micro_atom(rng: np.random.Generator, which: int) -> Pred:
    cat = _pick(rng, CATEGORIES)
    if which == 0:
        return Cmp(Trait("country"), "==", _pick(rng, COUNTRIES))
    if which == 1:
        picks = rng.choice(len(COUNTRIES), size=int(rng.integers(2, 4)), replace=False)
        return In(
            Trait("country"),
            tuple(COUNTRIES[int(i)] for i in sorted(picks)),
            negated=bool(rng.random() < 0.3),
        )
    if which == 2:
        picks = rng.choice(len(PLANS), size=2, replace=False)
        return In(Trait("plan"), tuple(PLANS[int(i)] for i in sorted(picks)))
    if which == 3:
        threshold = float(_pick(rng, (50, 100, 250, 500, 1000)))
        return Cmp(Trait("ltv"), _pick(rng, (">=", ">")), threshold)
    if which == 4:
        return Cmp(Trait("preferred_channel"), "==", _pick(rng, CHANNELS))
    if which == 5:
        return Cmp(
            _count(
                _sel("Product Viewed", ("category", "==", cat)), _w(int(_pick(rng, (7, 14, 30))))
            ),
            ">=",
            int(rng.integers(1, 6)),
        )
    if which == 6:
        return Cmp(
            _count(
                _sel(
                    "Added to Cart",
                    ("category", "==", cat),
                    ("context.device.type", "==", _pick(rng, DEVICES)),
                ),
                _w(int(_pick(rng, (7, 30, 90)))),
            ),
            ">=",
            1,
        )
    if which == 7:
        return Did(_sel("Email Opened"), _w(int(_pick(rng, (3, 7, 14)))))
    if which == 8:
        return Not(Did(_sel("Order Completed"), _w(int(_pick(rng, (7, 30, 90))))))
    if which == 9:
        return Cmp(SinceTrait("created_at"), "<", _w(int(_pick(rng, (14, 30, 90, 365)))))
    if which == 10:
        return Exists(Trait("preferred_channel"))
    if which == 11:
        return Cmp(
            Agg("avg", _sel("Order Completed"), "revenue", _w(90)),
            ">=",
            float(_pick(rng, (40, 60, 80, 120))),
        )
    if which == 12:
        return Cmp(
            Agg("max", _sel("Order Completed", ("category", "==", cat)), "revenue", _w(180)),
            ">",
            float(_pick(rng, (50, 100, 200))),
        )
    if which == 13:
        return Cmp(
            _count(_sel("Order Completed", ("channel", "==", _pick(rng, CHANNELS))), _w(90)),
            ">=",
            1,
        )
    if which == 14:
        return Cmp(Trait("plan"), "!=", "free")
    if which == 15:
        return Cmp(
            Since(_sel("Product Viewed", ("category", "==", cat))),
            "<",
            _w(hours=int(_pick(rng, (6, 24, 72)))),
        )
    if which == 16:
        return Or((Cmp(Trait("plan"), "==", "pro"), Cmp(Trait("ltv"), ">", 300.0)))
    if which == 17:
        return Between(
            Trait("ltv"),
            100.0,
            float(_pick(rng, (300, 500, 1000))),
            negated=bool(rng.random() < 0.3),
        )
    if which == 18:
        return Cmp(Agg("min", _sel("Order Completed"), "revenue", _w(365)), "<", 20.0)
    return Not(Cmp(_count(_sel("Product Viewed", ("channel", "==", "ads")), _w(30)), ">=", 3))


_N_MICRO_ATOMS = 20


def _hot_audience(rng: np.random.Generator, kind: str, earlier: list[str]) -> Pred:
    if kind == "cart_abandoners":
        lo = int(_pick(rng, (1, 2, 3, 4, 6)))
        hi = int(_pick(rng, (12, 24, 48, 72)))
        if rng.random() < 0.25:
            return cart_abandoners(lo, hi, "Added to Cart", "Checkout Started")
        return cart_abandoners(lo, hi)
    if kind == "lapsed":
        lo = int(_pick(rng, (30, 45, 60, 90)))
        return lapsed(lo, lo + int(_pick(rng, (30, 60, 90))))
    if kind == "vip":
        p = vip(float(_pick(rng, (100, 200, 300, 500, 1000))), int(_pick(rng, (30, 90, 180, 365))))
        if rng.random() < 0.2:
            return Or((p, Cmp(Trait("ltv"), ">", float(_pick(rng, (500, 1000, 2000))))))
        return p
    if kind == "recent_purchasers":
        days = int(_pick(rng, (7, 14, 30, 60)))
        if rng.random() < 0.3:
            return Did(
                _sel("Order Completed", ("category", "==", _pick(rng, CATEGORIES))), _w(days)
            )
        return recent_purchasers(days)
    if kind == "exclusion" and len(earlier) >= 2:
        i, j = rng.choice(len(earlier), size=2, replace=False)
        return exclusion(earlier[int(i)], earlier[int(j)])
    if kind == "first_time_buyers":
        return first_time_buyers(int(_pick(rng, (7, 14, 30, 90))))
    n_atoms = int(rng.integers(3, 6))
    which = rng.choice(_N_MICRO_ATOMS, size=n_atoms, replace=False)
    return And(tuple(_micro_atom(rng, int(w)) for w in which))


def _cold_audience(rng: np.random.Generator, n_names: int, earlier_cold: list[str]) -> Pred:
    """A rule over events that never occur, false on an empty profile."""

    def name() -> str:
        return f"Event {int(rng.integers(n_names))}"

    shape = int(rng.integers(6))
    if shape == 0:
        return Cmp(
            _count(Selector(name()), _w(int(_pick(rng, (7, 30, 90))))),
            ">=",
            int(rng.integers(1, 4)),
        )
    if shape == 1:
        return Cmp(
            _count(_sel(name(), ("category", "==", _pick(rng, CATEGORIES))), _w(30)), ">=", 1
        )
    if shape == 2:
        return vip(float(_pick(rng, (100, 300, 1000))), int(_pick(rng, (30, 365))), name())
    if shape == 3:
        return cart_abandoners(
            int(_pick(rng, (1, 2, 4))), int(_pick(rng, (24, 48))), name(), name()
        )
    if shape == 4 and earlier_cold:
        return And((InAudience(_pick(rng, earlier_cold)), Did(Selector(name()), _w(30))))
    return And((Did(Selector(name()), _w(7)), Not(Did(Selector(name()), _w(7)))))


def generate_audiences(spec: WorkloadSpec) -> list[tuple[str, str, AudienceSpec]]:
    """Generate ``spec.audiences`` audiences as ``(key, rule_text, AudienceSpec)``.

    The first ones are the seeds' examples verbatim (``cart_abandoners``,
    ``lapsed``, ``vip``, ``recent_purchasers``, ``vip_not_recent``, ...), then
    variants keyed ``<kind>_<index>``. ``in_audience`` only references earlier
    audiences, so definition order is a valid topological order. With
    ``spec.hot_audiences = K`` the audiences from index K on are ``cold_<index>``
    over never-occurring ``"Event N"`` names (and only reference other cold ones).
    """
    hot_n = (
        spec.audiences if spec.hot_audiences is None else min(spec.hot_audiences, spec.audiences)
    )
    rng = np.random.default_rng([spec.seed, 1])
    cold_rng = np.random.default_rng([spec.seed, 2])
    out: list[AudienceSpec] = []
    hot_keys: list[str] = []
    cold_keys: list[str] = []
    canon = _canonical()
    for i in range(spec.audiences):
        if i < hot_n:
            if i < len(canon):
                key, kind, rule = canon[i]
            else:
                kind = str(_KINDS[int(_choice(rng, 1, _KIND_WEIGHTS)[0])])
                if kind == "exclusion" and len(hot_keys) < 2:
                    kind = "micro"
                rule = _hot_audience(rng, kind, hot_keys)
                key = f"{kind}_{i:05d}"
            out.append(AudienceSpec(key, kind, rule, True))
            hot_keys.append(key)
        else:
            key = f"cold_{i:05d}"
            rule = _cold_audience(cold_rng, spec.cold_event_names, cold_keys)
            out.append(AudienceSpec(key, "cold", rule, False))
            cold_keys.append(key)
    return [(a.key, a.text, a) for a in out]


# --------------------------------------------------------------------------- files


def export(spec: WorkloadSpec, out: Path) -> tuple[Path, Path]:
    """Events as NDJSON (cached by spec) and audiences as ``[[key, rule], ...]``."""
    out.mkdir(parents=True, exist_ok=True)
    name = f"events-{spec.users}-{spec.events}-{spec.days}-{spec.seed}.ndjson"
    events = out / name
    if not events.exists():
        rows = segment_json_rows(generate_events(spec))
        tmp = out / f".{name}.{os.getpid()}"
        with tmp.open("w") as f:
            for start in range(0, len(rows), 200_000):
                f.write("\n".join(rows.slice(start, 200_000).to_pylist()))
                f.write("\n")
        tmp.replace(events)
    return events, export_audiences(spec, out)


def export_audiences(spec: WorkloadSpec, out: Path) -> Path:
    """The audiences alone as ``[[key, rule], ...]`` (they depend only on the
    audience count, the hot count and the seed)."""
    out.mkdir(parents=True, exist_ok=True)
    auds = out / f"audiences-{spec.audiences}-{spec.hot_audiences}-{spec.seed}.json"
    tmp = out / f".{auds.name}.{os.getpid()}"
    tmp.write_text(json.dumps([[k, text] for k, text, _ in generate_audiences(spec)]))
    tmp.replace(auds)
    return auds


def write_parquet(
    spec: WorkloadSpec, directory: str | Path, events: pa.Table | None = None
) -> dict[str, Path]:
    """Write ``events.parquet``, ``audiences.parquet``, ``audiences.json``, ``spec.json``.

    Returns the paths by name. ``audiences.parquet`` has columns key, kind, hot,
    rule (text) and spec (the AST as JSON text, see :func:`node_to_json`).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    table = events if events is not None else generate_events(spec)
    auds = [a for _, _, a in generate_audiences(spec)]
    paths = {
        "events": d / "events.parquet",
        "audiences": d / "audiences.parquet",
        "audiences_json": d / "audiences.json",
        "spec": d / "spec.json",
    }
    pq.write_table(table, paths["events"], compression="zstd")
    rows = [a.to_json() for a in auds]
    pq.write_table(
        pa.table(
            {
                "key": [r["key"] for r in rows],
                "kind": [r["kind"] for r in rows],
                "hot": [r["hot"] for r in rows],
                "rule": [r["rule"] for r in rows],
                "spec": [json.dumps(r["spec"], separators=(",", ":")) for r in rows],
            }
        ),
        paths["audiences"],
    )
    paths["audiences_json"].write_text(json.dumps(rows, indent=1) + "\n")
    paths["spec"].write_text(json.dumps(spec.to_dict(), indent=1) + "\n")
    return paths


def read_audiences(path: str | Path) -> list[AudienceSpec]:
    """Read audiences written by :func:`write_parquet` (``.json`` or ``.parquet``)."""
    p = Path(path)
    if p.suffix == ".json":
        return [AudienceSpec.from_json(r) for r in json.loads(p.read_text())]
    t = pq.read_table(p).to_pylist()
    return [
        AudienceSpec(r["key"], r["kind"], node_from_json(json.loads(r["spec"])), r["hot"])
        for r in t
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: generate a workload and write it (``python -m benches.workload OUT``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("out", type=Path)
    d = WorkloadSpec()
    ap.add_argument("--users", type=int, default=d.users)
    ap.add_argument("--events", type=int, default=d.events)
    ap.add_argument("--days", type=int, default=d.days)
    ap.add_argument("--audiences", type=int, default=d.audiences)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--late-fraction", type=float, default=d.late_fraction)
    ap.add_argument("--hot-audiences", type=int, default=None)
    a = ap.parse_args(argv)
    spec = replace(
        d,
        users=a.users,
        events=a.events,
        days=a.days,
        audiences=a.audiences,
        seed=a.seed,
        late_fraction=a.late_fraction,
        hot_audiences=a.hot_audiences,
    )
    t0 = time.perf_counter()
    events = generate_events(spec)
    t1 = time.perf_counter()
    paths = write_parquet(spec, a.out, events)
    print(
        f"{events.num_rows} rows generated in {t1 - t0:.2f} s; wrote "
        + ", ".join(str(p) for p in paths.values())
    )


if __name__ == "__main__":
    main()
