"""Hypothesis strategies: rule ASTs over the whole grammar, their text, and
operation streams (identify / track / advance / define / remove).

The vocabulary is deliberately small (four events, three categories, a few
traits, windows of 10 s to 10 min, small thresholds) so that generated rules
are actually crossed by generated events, and so that windows lapse while
the clock moves.

Generated rules are well typed under the obvious static typing: numbers are
compared with numbers, durations with duration literals, strings with
strings; traits are dynamically typed and may be compared with anything.
They avoid the corners that docs/semantics.md leaves open (see the report
in test_differential.py's docstring).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta, timezone
from typing import Any

from hypothesis import strategies as st
from reference import (
    ARITH_OPS,
    CMP_OPS,
    SECOND,
    Agg,
    Between,
    Bin,
    Computed,
    Dur,
    Exists,
    Expr,
    InAudience,
    ListLit,
    Lit,
    MemberFor,
    Neg,
    Not,
    Prop,
    Selector,
    SinceEvent,
    SinceTrait,
    Trait,
    WinAll,
    Window,
    WinLast,
    WinSince,
    floor_to,
    ms_to_datetime,
    ms_to_iso,
    rule_audiences,
)

# --------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------

EVENTS = ("Product Viewed", "Added to Cart", "Checkout Started", "Order Completed")
CATEGORIES = ("shoes", "skincare", "books")
PROP_DEVICES = ("mobile", "desktop")
CONTEXT_DEVICES = ("ios", "android", "web")
COUNTRIES = ("US", "FR", "DE")
PLANS = ("free", "pro", "enterprise")
CITIES = ("Paris", "Berlin")
TAGS = ("a", "b", "c")
USERS = ("u1", "u2", "u3", "u4")
WINDOWS_MS = tuple(s * SECOND for s in (10, 20, 30, 60, 90, 120, 300, 600))
SINCE_MS = tuple(s * SECOND for s in (0, 10, 30, 60, 90, 120, 300, 600))

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z

# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------

_ATOMIC = (
    Dur,
    ListLit,
    Trait,
    Computed,
    Prop,
    Agg,
    SinceEvent,
    SinceTrait,
    MemberFor,
    InAudience,
    Exists,
)


def render_number(x: float) -> str:
    s = str(int(abs(x))) if x.is_integer() and abs(x) < 1e15 else repr(abs(x))
    return f"(-{s})" if x < 0 else s


def render_string(s: str) -> str:
    return json.dumps(s)


def render_duration(ms: int) -> str:
    for unit, size in (("w", 604_800_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


def _atom(e: Expr) -> str:
    if isinstance(e, (*_ATOMIC, Lit)):  # negative numbers render as `(-3)`
        return render(e)
    return f"({render(e)})"


def render_selector(s: Selector) -> str:
    text = render_string(s.event)
    if s.filter is not None:
        text += f" where {render(s.filter)}"
    return text


def render_window(w: Window) -> str | None:
    match w:
        case WinAll():
            return None
        case WinLast(ms):
            return render_duration(ms)
        case WinSince(sel):
            return f"since {render_selector(sel)}"
    raise TypeError(w)


def render(e: Expr) -> str:
    """Rule text for an AST; ``reference.parse_rule(render(e)) == e``."""
    match e:
        case Lit(v) if isinstance(v, bool):
            return "true" if v else "false"
        case Lit(v) if isinstance(v, float):
            return render_number(v)
        case Lit(v) if isinstance(v, str):
            return render_string(v)
        case Dur(ms):
            return render_duration(ms)
        case ListLit(items):
            return "[" + ", ".join(render(i) for i in items) + "]"
        case Trait(key):
            return f"trait.{key}"
        case Computed(key):
            return f"computed.{key}"
        case Prop(path):
            return path
        case Agg(func, sel, prop, win):
            args = [render_selector(sel)]
            if prop is not None:
                args.append(prop)
            w = render_window(win)
            if w is not None:
                args.append(w)
            return f"{func}({', '.join(args)})"
        case SinceEvent(sel):
            return f"since({render_selector(sel)})"
        case SinceTrait(key):
            return f"since(trait.{key})"
        case MemberFor(a):
            return f"member_for({render_string(a)})"
        case InAudience(a):
            return f"in_audience({render_string(a)})"
        case Exists(x):
            return f"exists({render(x)})"
        case Not(x):
            return f"not {_atom(x)}"
        case Neg(x):
            return f"-{_atom(x)}"
        case Bin(op, a, b):
            return f"{_atom(a)} {op} {_atom(b)}"
        case Between(x, lo, hi, negated):
            kw = "not between" if negated else "between"
            return f"{_atom(x)} {kw} {_atom(lo)} and {_atom(hi)}"
    raise TypeError(f"cannot render {e!r}")


# --------------------------------------------------------------------------
# Rule strategies
# --------------------------------------------------------------------------


def _lit(values: Sequence[Any]) -> st.SearchStrategy[Lit]:
    return st.sampled_from(values).map(lambda v: Lit(float(v) if isinstance(v, int) else v))


def _list_lit(values: Sequence[Any]) -> st.SearchStrategy[ListLit]:
    return st.lists(_lit(values), min_size=1, max_size=3, unique=True).map(
        lambda xs: ListLit(tuple(xs))
    )


def _cmp(lhs: st.SearchStrategy[Expr], rhs: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    return st.builds(Bin, st.sampled_from(CMP_OPS), lhs, rhs)


def _between(
    x: st.SearchStrategy[Expr], bounds: Sequence[Any], make: Any = None
) -> st.SearchStrategy[Expr]:
    def build(args: tuple[Expr, Any, Any, bool]) -> Expr:
        e, a, b, neg = args
        lo, hi = min(a, b), max(a, b)
        mk = make or (lambda v: Lit(float(v)))
        return Between(e, mk(lo), mk(hi), neg)

    return st.tuples(x, st.sampled_from(bounds), st.sampled_from(bounds), st.booleans()).map(build)


@functools.cache
def filters() -> st.SearchStrategy[Expr]:
    """``where`` filters over properties and context."""
    atoms = st.one_of(
        st.builds(Bin, st.sampled_from(["==", "!="]), st.just(Prop("category")), _lit(CATEGORIES)),
        st.builds(
            Bin, st.sampled_from(["in", "not in"]), st.just(Prop("category")), _list_lit(CATEGORIES)
        ),
        _cmp(st.just(Prop("revenue")), _lit([0, 20, 50, 100, 150])),
        st.builds(Bin, st.just("=="), st.just(Prop("context.device.type")), _lit(CONTEXT_DEVICES)),
        st.builds(Bin, st.sampled_from(["==", "!="]), st.just(Prop("device")), _lit(PROP_DEVICES)),
        st.just(Exists(Prop("revenue"))),
        st.builds(
            Bin,
            st.sampled_from(["starts_with", "ends_with", "contains"]),
            st.just(Prop("category")),
            _lit(["s", "oo", "care", "b"]),
        ),
    )
    return st.recursive(
        atoms,
        lambda c: st.one_of(
            st.builds(Bin, st.sampled_from(["and", "or"]), c, c), st.builds(Not, c)
        ),
        max_leaves=3,
    )


@functools.cache
def selectors(with_filter: bool = True) -> st.SearchStrategy[Selector]:
    flt: st.SearchStrategy[Expr | None] = st.none()
    if with_filter:
        flt = st.one_of(st.none(), st.none(), st.none(), filters())
    return st.builds(Selector, st.sampled_from(EVENTS), flt)


@functools.cache
def windows() -> st.SearchStrategy[Window]:
    return st.one_of(
        st.just(WinAll()),
        st.sampled_from(WINDOWS_MS).map(WinLast),
        st.sampled_from(WINDOWS_MS).map(WinLast),
        selectors(with_filter=False).map(WinSince),
    )


@functools.cache
def numeric_aggs() -> st.SearchStrategy[Expr]:
    return st.one_of(
        st.builds(Agg, st.just("count"), selectors(), st.none(), windows()),
        st.builds(
            Agg,
            st.sampled_from(["sum", "avg", "min", "max"]),
            selectors(),
            st.just("revenue"),
            windows(),
        ),
        st.builds(
            Agg,
            st.just("distinct"),
            selectors(),
            st.sampled_from(["category", "revenue", "device"]),
            windows(),
        ),
    )


@functools.cache
def numbers() -> st.SearchStrategy[Expr]:
    """Number-valued expressions (trait.ltv is dynamically typed)."""
    atoms = st.one_of(
        numeric_aggs(),
        numeric_aggs(),
        st.just(Trait("ltv")),
        st.builds(
            Agg, st.sampled_from(["first", "last"]), selectors(), st.just("revenue"), windows()
        ),
    )
    return st.recursive(
        atoms,
        lambda c: st.one_of(
            st.builds(Bin, st.sampled_from(ARITH_OPS), c, c),
            st.builds(Bin, st.sampled_from(ARITH_OPS), c, _lit([0, 1, 2, 10])),
            st.builds(Neg, c),
        ),
        max_leaves=2,
    )


THRESHOLDS = (0, 1, 2, 3, 5, 10, 50, 100, 150, 300, -1)


@functools.cache
def durations_of(audiences: tuple[str, ...]) -> st.SearchStrategy[Expr]:
    """Duration-valued expressions."""
    opts: list[st.SearchStrategy[Expr]] = [
        selectors().map(SinceEvent),
        selectors().map(SinceEvent),
        st.just(SinceTrait("created_at")),
    ]
    if audiences:
        opts.append(st.sampled_from(list(audiences)).map(MemberFor))
    return st.one_of(*opts)


def atoms(audiences: Sequence[str]) -> st.SearchStrategy[Expr]:
    """Boolean-valued leaves of a rule."""
    return _atoms(tuple(audiences))


@functools.cache
def _atoms(audiences: tuple[str, ...]) -> st.SearchStrategy[Expr]:
    str_aggs = st.builds(
        Agg,
        st.sampled_from(["most_frequent", "first", "last"]),
        selectors(),
        st.just("category"),
        windows(),
    )
    durs = durations_of(tuple(audiences))
    last_windows = st.sampled_from(WINDOWS_MS).map(WinLast)
    opts: list[st.SearchStrategy[Expr]] = [
        # time-sensitive atoms first and more often: windows lapse, since grows
        st.builds(Agg, st.just("did"), selectors(), st.none(), last_windows),
        st.builds(Agg, st.just("did"), selectors(False), st.none(), last_windows),
        st.builds(
            Bin,
            st.sampled_from([">=", ">", "==", "<"]),
            st.builds(Agg, st.just("count"), selectors(False), st.none(), last_windows),
            _lit([1, 2]),
        ),
        _cmp(numbers(), _lit(THRESHOLDS)),
        _cmp(numbers(), _lit(THRESHOLDS)),
        _cmp(numeric_aggs(), numeric_aggs()),
        st.builds(Agg, st.just("did"), selectors(), st.none(), windows()),
        st.builds(Agg, st.just("did"), selectors(), st.none(), windows()),
        st.builds(Bin, st.sampled_from(["==", "!="]), str_aggs, _lit(CATEGORIES)),
        st.builds(Bin, st.sampled_from(["in", "not in"]), str_aggs, _list_lit(CATEGORIES)),
        st.builds(
            Bin,
            st.sampled_from(["starts_with", "ends_with", "contains"]),
            str_aggs,
            _lit(["s", "oo", "care"]),
        ),
        st.builds(
            Bin,
            st.sampled_from(["==", "!="]),
            st.builds(
                Agg,
                st.just("most_frequent"),
                selectors(),
                st.sampled_from(["device", "context.device.type"]),
                windows(),
            ),
            _lit(PROP_DEVICES + CONTEXT_DEVICES),
        ),
        _cmp(durs, st.sampled_from(SINCE_MS).map(Dur)),
        _cmp(durs, st.sampled_from(SINCE_MS).map(Dur)),
        _between(durs, SINCE_MS, Dur),
        _between(numbers(), (0, 1, 2, 3, 50, 100, 300)),
        st.builds(Bin, st.sampled_from(["==", "!="]), st.just(Trait("country")), _lit(COUNTRIES)),
        st.builds(
            Bin,
            st.sampled_from(["in", "not in"]),
            st.sampled_from([Trait("country"), Trait("plan"), Trait("tags")]),
            _list_lit(COUNTRIES + PLANS + TAGS),
        ),
        _cmp(st.just(Trait("ltv")), _lit((0, 50, 100, 250, 400))),
        _cmp(st.just(Trait("plan")), _lit(PLANS)),
        _between(st.just(Trait("ltv")), (0, 100, 200, 400)),
        st.builds(
            Bin,
            st.just("contains"),
            st.sampled_from([Trait("tags"), Trait("country")]),
            _lit((*TAGS, "U")),
        ),
        st.builds(
            Bin,
            st.sampled_from(["starts_with", "ends_with"]),
            st.sampled_from([Trait("address.city"), Trait("plan")]),
            _lit(("Pa", "in", "pro", "e")),
        ),
        st.builds(Bin, st.sampled_from(["==", "!="]), st.just(Trait("beta")), _lit([True, False])),
        st.builds(
            Exists,
            st.one_of(
                st.sampled_from(
                    [
                        Trait(k)
                        for k in ("country", "plan", "ltv", "created_at", "address.city", "tags")
                    ]
                ),
                numeric_aggs(),
                str_aggs,
            ),
        ),
    ]
    if audiences:
        opts.append(st.sampled_from(list(audiences)).map(InAudience))
        opts.append(st.sampled_from(list(audiences)).map(InAudience))
    return st.one_of(*opts)


def rules(audiences: Sequence[str] = (), max_leaves: int = 4) -> st.SearchStrategy[Expr]:
    """Well-typed boolean rule ASTs, optionally referencing ``audiences``."""
    return _rules(tuple(audiences), max_leaves)


@functools.cache
def _rules(audiences: tuple[str, ...], max_leaves: int) -> st.SearchStrategy[Expr]:
    return st.recursive(
        atoms(audiences),
        lambda c: st.one_of(
            st.builds(Bin, st.just("and"), c, c),
            st.builds(Bin, st.just("or"), c, c),
            st.builds(Not, c),
        ),
        max_leaves=max_leaves,
    )


def time_atoms(audiences: Sequence[str]) -> st.SearchStrategy[Expr]:
    """Atoms whose truth changes with time alone (windows lapsing, since growing)."""
    last_windows = st.sampled_from(WINDOWS_MS).map(WinLast)
    durs = durations_of(tuple(audiences))
    return st.one_of(
        st.builds(Agg, st.just("did"), selectors(False), st.none(), last_windows),
        st.builds(
            Bin,
            st.sampled_from([">=", "<"]),
            st.builds(Agg, st.just("count"), selectors(False), st.none(), last_windows),
            _lit([1, 2]),
        ),
        _cmp(durs, st.sampled_from(SINCE_MS[1:]).map(Dur)),
        _between(durs, SINCE_MS, Dur),
        st.builds(
            Bin,
            st.sampled_from([">", "<"]),
            st.builds(Agg, st.just("sum"), selectors(False), st.just("revenue"), last_windows),
            _lit([0, 50, 100]),
        ),
    )


@functools.cache
def time_rules(audiences: tuple[str, ...] = ()) -> st.SearchStrategy[Expr]:
    """Small rules built from time-sensitive atoms (and some others)."""
    return st.recursive(
        time_atoms(audiences),
        lambda c: st.one_of(
            st.builds(Bin, st.sampled_from(["and", "or"]), c, c),
            st.builds(Bin, st.sampled_from(["and", "or"]), c, atoms(audiences)),
            st.builds(Not, c),
        ),
        max_leaves=3,
    )


@functools.cache
def definition_rules(audiences: tuple[str, ...]) -> st.SearchStrategy[Expr]:
    """What op_streams defines: time-focused rules half of the time."""
    return st.one_of(time_rules(audiences), rules(audiences))


def rule_texts(audiences: Sequence[str] = ()) -> st.SearchStrategy[str]:
    return rules(audiences).map(render)


# --------------------------------------------------------------------------
# Operation streams
# --------------------------------------------------------------------------


@dataclass
class Identify:
    user: str
    traits: dict[str, Any]


@dataclass
class Track:
    user: str
    event: str
    properties: dict[str, Any]
    timestamp: int | None  # ms; None = the engine's now
    context: dict[str, Any] | None = None
    message_id: str | None = None
    as_datetime: bool = False  # pass the timestamp as an aware datetime instead of a string


@dataclass
class Advance:
    to: int  # ms (not necessarily a multiple of G)


@dataclass
class Alias:
    previous: str
    user: str
    timestamp: int | None = None  # ms; None = the engine's now


@dataclass
class Define:
    key: str
    rule: str


@dataclass
class Remove:
    key: str


Op = Identify | Track | Advance | Alias | Define | Remove

# Ids that only alias calls introduce (an anonymous visitor's, say).
ANONYMOUS = ("anon1", "anon2")


def iso_with_offset(ms: int, offset_minutes: int) -> str:
    """``ms`` as ISO-8601 in a fixed UTC offset, e.g. ``...T02:00:00.250+02:00``."""
    tz = timezone(timedelta(minutes=offset_minutes))
    d = ms_to_datetime(ms).astimezone(tz)
    text = d.isoformat(timespec="milliseconds")
    return text.replace(".000", "")


_MS_JITTER = st.sampled_from((0, 0, 250, 999))
_OFFSETS = st.sampled_from((120, -300, 0, 330))
_LTV = st.one_of(st.integers(0, 500), st.integers(0, 1000).map(lambda x: x / 2), st.just("high"))
_TAG_LISTS = st.lists(st.sampled_from(TAGS), max_size=3, unique=True)
_CITY = st.one_of(st.sampled_from(CITIES), st.none())
_REVENUE = st.one_of(
    st.integers(0, 200), st.integers(0, 400).map(lambda x: x / 2), st.sampled_from(("12", True))
)
_CONTEXT = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {"device": st.fixed_dictionaries({"type": st.sampled_from(CONTEXT_DEVICES)})}
    ),
)
_LATE_S = st.one_of(st.integers(1, 60), st.integers(1, 900))


def draw_trait_timestamp(draw: st.DrawFn, now: int) -> str:
    """An ISO-8601 timestamp up to 20 minutes before ``now``, in UTC or another offset."""
    ms = now - draw(st.integers(0, 1200)) * SECOND - draw(_MS_JITTER)
    if draw(st.booleans()):
        return ms_to_iso(ms)
    return iso_with_offset(ms, draw(_OFFSETS))


def draw_traits(draw: st.DrawFn, now: int) -> dict[str, Any]:
    """Identify traits: some keys set, some deleted with null, one nested object."""
    out: dict[str, Any] = {}

    def opt(key: str, value: Any) -> None:
        if draw(st.booleans()):
            out[key] = None if draw(st.integers(0, 5)) == 0 else value()

    opt("country", lambda: draw(st.sampled_from(COUNTRIES)))
    opt("plan", lambda: draw(st.sampled_from(PLANS)))
    opt("ltv", lambda: draw(_LTV))
    opt(
        "created_at",
        lambda: draw_trait_timestamp(draw, now) if draw(st.integers(0, 5)) else "not a date",
    )
    opt("beta", lambda: draw(st.booleans()))
    opt("tags", lambda: draw(_TAG_LISTS))
    if draw(st.integers(0, 3)) == 0:
        out["address"] = {"city": draw(_CITY)}
    return out


def draw_properties(draw: st.DrawFn) -> dict[str, Any]:
    """Track properties: category, revenue (sometimes not a number), device, a nested object."""
    out: dict[str, Any] = {}
    if draw(st.integers(0, 4)):
        out["category"] = draw(st.sampled_from(CATEGORIES))
    if draw(st.booleans()):
        out["revenue"] = draw(_REVENUE)
    if draw(st.booleans()):
        out["device"] = draw(st.sampled_from(PROP_DEVICES))
    if draw(st.integers(0, 9)) == 0:
        out["item"] = {"sku": draw(st.sampled_from(("x1", "x2")))}
    return out


def draw_event_time(draw: st.DrawFn, now: int, future_skew_ms: int = 300_000) -> int | None:
    """None (= now), now, late, slightly future, exactly at the skew limit, or too far ahead."""
    kind = draw(st.integers(0, 11))
    if kind == 0:
        return None  # stamped `now`
    if kind in (1, 2):
        return now
    if kind <= 7:  # late
        return now - draw(_LATE_S) * SECOND - draw(st.sampled_from((0, 0, 0, 500)))
    if kind <= 9:  # slightly future (accepted)
        return now + draw(st.integers(1, future_skew_ms // SECOND)) * SECOND
    if kind == 10:  # at the skew limit exactly (accepted)
        return now + future_skew_ms
    return now + future_skew_ms + draw(st.integers(1, 60)) * SECOND  # rejected


@st.composite
def traits(draw: st.DrawFn, now: int) -> dict[str, Any]:
    return draw_traits(draw, now)


@st.composite
def properties(draw: st.DrawFn) -> dict[str, Any]:
    return draw_properties(draw)


@st.composite
def event_times(draw: st.DrawFn, now: int, future_skew_ms: int = 300_000) -> int | None:
    return draw_event_time(draw, now, future_skew_ms)


ADVANCE_MS = tuple(s * SECOND for s in (1, 5, 10, 20, 30, 60, 90, 120, 300, 600, 3600))


@functools.cache
def advances_default() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(ADVANCE_MS), st.integers(1, 120_000), st.integers(1, 700_000))


@st.composite
def op_streams(
    draw: st.DrawFn,
    start: int = T0,
    min_ops: int = 8,
    max_ops: int = 40,
    max_audiences: int = 5,
    advance: st.SearchStrategy[int] | None = None,
    granularity_ms: int = 1000,
    future_skew_ms: int = 300_000,
    late_definitions: bool = True,
    aliases: bool = False,
) -> list[Op]:
    """A random stream of engine operations, starting with one definition.

    Timestamps are absolute (ms); the generator follows the clock so that
    late, slightly-future and too-far-future events are produced on purpose.

    With ``late_definitions=False`` every audience is defined before the
    first event (then only removals follow); otherwise definitions and
    redefinitions of leaf audiences are interleaved with the traffic, so that
    backfill must see events that arrived before the rule existed.

    With ``aliases``, alias calls are mixed in: a user or an id no event used
    yet merged into (or named as) another user, which later events may use.
    """
    adv = advance if advance is not None else advances_default()
    now = floor_to(start, granularity_ms)
    auds: list[str] = []
    deps: dict[str, set[str]] = {}
    counter = 0
    with_ids: list[Track] = []
    ops: list[Op] = []

    def dependents(key: str) -> bool:
        return any(key in d for k, d in deps.items() if k != key)

    def define(key: str, others: list[str]) -> None:
        expr = draw(definition_rules(tuple(others)))
        deps[key] = rule_audiences(expr)
        ops.append(Define(key, render(expr)))

    define("a0", [])
    auds.append("a0")
    counter = 1
    kinds = ["track"] * 6 + ["identify"] * 2 + ["advance"] * 4 + ["define", "redefine", "remove"]
    if aliases:
        kinds += ["alias"] * 2
    if not late_definitions:
        for _ in range(draw(st.integers(0, max_audiences - 1))):
            key = f"a{counter}"
            counter += 1
            define(key, list(auds))
            auds.append(key)
        kinds = [k for k in kinds if k not in ("define", "redefine")]
    n = draw(st.integers(min_ops, max_ops))
    for _ in range(n):
        kind = draw(st.sampled_from(kinds))
        if kind == "track":
            ts = draw_event_time(draw, now, future_skew_ms)
            msg: str | None = None
            r = draw(st.integers(0, 9))
            if r == 0 and with_ids:
                ops.append(draw(st.sampled_from(with_ids)))  # an exact retry
                continue
            if r == 1:
                msg = f"m{len(with_ids)}"
            t = Track(
                user=draw(st.sampled_from(USERS)),
                event=draw(st.sampled_from(EVENTS)),
                properties=draw_properties(draw),
                timestamp=ts,
                context=draw(_CONTEXT),
                message_id=msg,
                as_datetime=draw(st.booleans()),
            )
            if msg is not None:
                with_ids.append(t)
            ops.append(t)
        elif kind == "identify":
            ops.append(Identify(draw(st.sampled_from(USERS)), draw_traits(draw, now)))
        elif kind == "alias":
            previous = draw(st.sampled_from(USERS + ANONYMOUS))
            ops.append(
                Alias(
                    previous,
                    draw(st.sampled_from(USERS)),
                    draw_event_time(draw, now, future_skew_ms),
                )
            )
        elif kind == "advance":
            target = now + draw(adv)
            ops.append(Advance(target))
            now = floor_to(target, granularity_ms)
        elif kind == "define" and len(auds) < max_audiences:
            key = f"a{counter}"
            counter += 1
            define(key, list(auds))
            auds.append(key)
        elif kind == "redefine":
            leaves = [k for k in auds if not dependents(k)]
            if leaves:
                key = draw(st.sampled_from(leaves))
                define(key, [k for k in auds if k != key])
        elif kind == "remove" and len(auds) > 1:
            leaves = [k for k in auds if not dependents(k)]
            key = draw(st.sampled_from(leaves))
            auds.remove(key)
            del deps[key]
            ops.append(Remove(key))
    # End with a long advance so that pending windows lapse and `since` grows.
    ops.append(Advance(now + draw(st.sampled_from([15 * 60 * SECOND, 3600 * SECOND]))))
    return ops
