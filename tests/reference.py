"""A naive, obviously-correct reference evaluator of docs/semantics.md.

It keeps the *full* history of every user (every accepted track with its
timestamp, arrival order, properties and context, and the current traits)
and evaluates rules by brute force at any instant. Time-based changes are
found by evaluating every user at every instant where some atomic quantity
of some rule can change (event visibility, window exits, ``since`` and
``member_for`` thresholds); ``exhaustive=True`` evaluates at every multiple
of the granularity instead, which the tests use to check the first method.

Nothing here is clever or fast; it is meant to be read next to the spec.
The differential tests hold the Rust engine to exactly this behaviour.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

# --------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY
UNIT_MS = {"ms": 1, "s": SECOND, "m": MINUTE, "h": HOUR, "d": DAY, "w": WEEK}

Instant = int | str | datetime


class RefError(Exception):
    """Base class of the reference's errors."""


class InvalidInput(RefError, ValueError):
    """A malformed argument (naive datetime, bad timestamp, bad trait, ...)."""


class RejectedEvent(RefError):
    """A track event more than ``future_skew`` in the future."""


class UnknownAudience(RefError, KeyError):
    """No audience with this key."""


class AudienceCycle(RefError):
    """Defining the audience would make references circular."""


class UnknownComputed(RefError, KeyError):
    pass


class InUse(RefError):
    """The audience is referenced by another audience."""


class RuleParseError(RefError, ValueError):
    """The reference parser could not read the rule (it only reads valid rules)."""

    def __init__(self, message: str, text: str, pos: int) -> None:
        self.message = message
        self.pos = pos
        self.line = text.count("\n", 0, pos) + 1
        self.column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        super().__init__(f"{self.line}:{self.column}: {message}")


def parse_iso_ms(text: str) -> int | None:
    """ISO-8601 timestamp with an offset (or a bare date, read as UTC) → ms; else None."""
    s = text.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", s):
        try:
            d = datetime.fromisoformat(s).replace(tzinfo=UTC)
        except ValueError:
            return None
        return (d - EPOCH) // timedelta(milliseconds=1)
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|z|[+-]\d{2}:\d{2})", s):
        return None
    try:
        d = datetime.fromisoformat(s.replace("z", "Z"))
    except ValueError:
        return None
    if d.tzinfo is None:
        return None
    return (d - EPOCH) // timedelta(milliseconds=1)


def to_ms(x: Instant) -> int:
    """An instant given as int ms, aware datetime or ISO string → int ms."""
    if isinstance(x, bool):
        raise InvalidInput(f"not an instant: {x!r}")
    if isinstance(x, int):
        return x
    if isinstance(x, datetime):
        if x.tzinfo is None or x.utcoffset() is None:
            raise InvalidInput("naive datetime: add a timezone")
        return (x - EPOCH) // timedelta(milliseconds=1)
    if isinstance(x, str):
        ms = parse_iso_ms(x)
        if ms is None:
            raise InvalidInput(f"invalid timestamp {x!r}")
        return ms
    raise InvalidInput(f"not an instant: {x!r}")


def ms_to_datetime(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def ms_to_iso(ms: int) -> str:
    """``2026-01-01T00:00:00Z`` or ``2026-01-01T00:00:00.250Z``."""
    d = ms_to_datetime(ms)
    base = d.strftime("%Y-%m-%dT%H:%M:%S")
    frac = ms % 1000
    return f"{base}.{frac:03d}Z" if frac else f"{base}Z"


def dt_to_ms(d: datetime) -> int:
    return to_ms(d)


def floor_to(t: int, g: int) -> int:
    return (t // g) * g


def ceil_to(t: int, g: int) -> int:
    return -((-t) // g) * g


def parse_duration(text: str) -> int:
    """``2h`` → 7_200_000."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d|w)", text.strip())
    if not m:
        raise InvalidInput(f"invalid duration {text!r}")
    return int(m.group(1)) * UNIT_MS[m.group(2)]


# --------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Duration:
    """A duration value (``since``, ``member_for``, duration literals)."""

    ms: int


Value = bool | float | str | tuple[str, ...] | Duration | None


def tag(v: Value) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, float):
        return "num"
    if isinstance(v, str):
        return "str"
    if isinstance(v, tuple):
        return "list"
    if isinstance(v, Duration):
        return "dur"
    raise TypeError(f"not a value: {v!r}")


def is_num(v: Value) -> bool:
    return isinstance(v, float)


def value_key(v: Value) -> tuple[str, Any]:
    """Hashable key with value equality (1 == 1.0, but 1 != true != "1")."""
    return (tag(v), v)


def total_order_key(v: Value) -> tuple[int, Any]:
    """false < true < numbers < strings (the tie order of most_frequent)."""
    if isinstance(v, bool):
        return (0, int(v))
    if isinstance(v, float):
        return (1, v)
    if isinstance(v, str):
        return (2, v)
    if isinstance(v, tuple):
        return (3, v)
    if isinstance(v, Duration):
        return (4, v.ms)
    raise TypeError(v)


def scalar_from_json(v: Any) -> Value:
    """A JSON-ish leaf value → Value (ints become floats; lists of strings → tuples).

    Returns None for null and for anything that is not a supported scalar.
    """
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        return v
    if isinstance(v, list | tuple) and all(isinstance(x, str) for x in v):
        return tuple(v)
    return None


# --------------------------------------------------------------------------
# Rule AST (mirrors rust/segmint-core/src/rules/ast.rs)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Lit:
    value: bool | float | str


@dataclass(frozen=True)
class Dur:
    ms: int


@dataclass(frozen=True)
class ListLit:
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Trait:
    key: str


@dataclass(frozen=True)
class Computed:
    key: str


@dataclass(frozen=True)
class Prop:
    """An event property in a ``where`` filter: ``category``, ``context.device.type``."""

    path: str


@dataclass(frozen=True)
class Selector:
    event: str
    filter: Expr | None = None


@dataclass(frozen=True)
class WinAll:
    pass


@dataclass(frozen=True)
class WinLast:
    ms: int


@dataclass(frozen=True)
class WinSince:
    selector: Selector


Window = WinAll | WinLast | WinSince

AGG_FUNCS = (
    "count",
    "did",
    "sum",
    "avg",
    "min",
    "max",
    "distinct",
    "most_frequent",
    "first",
    "last",
    "unique",
)
NO_PROPERTY_FUNCS = ("count", "did")


@dataclass(frozen=True)
class Agg:
    func: str
    selector: Selector
    prop: str | None = None
    window: Window = field(default_factory=WinAll)


@dataclass(frozen=True)
class SinceEvent:
    selector: Selector


@dataclass(frozen=True)
class SinceTrait:
    key: str


@dataclass(frozen=True)
class MemberFor:
    audience: str


@dataclass(frozen=True)
class InAudience:
    audience: str


@dataclass(frozen=True)
class Exists:
    expr: Expr


@dataclass(frozen=True)
class Not:
    expr: Expr


@dataclass(frozen=True)
class Neg:
    expr: Expr


CMP_OPS = ("==", "!=", "<", "<=", ">", ">=")
STR_OPS = ("contains", "starts_with", "ends_with")
ARITH_OPS = ("+", "-", "*", "/")
BOOL_OPS = ("and", "or")
LIST_OPS = ("in", "not in")


@dataclass(frozen=True)
class Bin:
    op: str
    lhs: Expr
    rhs: Expr


@dataclass(frozen=True)
class Between:
    expr: Expr
    low: Expr
    high: Expr
    negated: bool = False


Expr = (
    Lit
    | Dur
    | ListLit
    | Trait
    | Computed
    | Prop
    | Agg
    | SinceEvent
    | SinceTrait
    | MemberFor
    | InAudience
    | Exists
    | Not
    | Neg
    | Bin
    | Between
)


def walk(e: Expr | Selector | Window | None) -> Iterator[Any]:
    """Every node below (and including) ``e``, selectors and windows included."""
    if e is None:
        return
    yield e
    match e:
        case ListLit(items):
            for i in items:
                yield from walk(i)
        case Selector(_, flt):
            yield from walk(flt)
        case WinSince(sel):
            yield from walk(sel)
        case Agg(_, sel, _, win):
            yield from walk(sel)
            yield from walk(win)
        case SinceEvent(sel):
            yield from walk(sel)
        case Exists(x) | Not(x) | Neg(x):
            yield from walk(x)
        case Bin(_, a, b):
            yield from walk(a)
            yield from walk(b)
        case Between(x, lo, hi, _):
            yield from walk(x)
            yield from walk(lo)
            yield from walk(hi)
        case _:
            pass


def rule_durations(e: Expr) -> set[int]:
    """Every duration in the rule: window lengths and duration literals."""
    out: set[int] = set()
    for n in walk(e):
        if isinstance(n, Dur | WinLast):
            out.add(n.ms)
    return out


def rule_audiences(e: Expr) -> set[str]:
    """Audiences referenced with in_audience / member_for."""
    return {n.audience for n in walk(e) if isinstance(n, InAudience | MemberFor)}


# --------------------------------------------------------------------------
# Parser (accepts valid rules; see DESIGN §3 and ast.rs)
# --------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<dur>\d+(?:ms|s|m|h|d|w))(?![A-Za-z0-9_.])
  | (?P<num>\d+(?:\.\d+)?)(?![A-Za-z0-9_.])
  | (?P<str>"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<op>==|!=|<=|>=|<|>|\+|-|\*|/|\(|\)|\[|\]|,)
    """,
    re.VERBOSE,
)

KEYWORDS = {
    "and",
    "or",
    "not",
    "in",
    "between",
    "contains",
    "starts_with",
    "ends_with",
    "where",
    "since",
    "true",
    "false",
}


@dataclass(frozen=True)
class Token:
    kind: str  # dur num str name op eof
    text: str
    pos: int


def _unescape(body: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append({"n": "\n", "t": "\t"}.get(nxt, nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def tokenize(text: str) -> list[Token]:
    toks: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m:
            raise RuleParseError(f"unexpected character {text[pos]!r}", text, pos)
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            toks.append(Token(kind, m.group(), pos))
        pos = m.end()
    toks.append(Token("eof", "", len(text)))
    return toks


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = tokenize(text)
        self.i = 0

    # -- helpers
    def peek(self, k: int = 0) -> Token:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self) -> Token:
        t = self.peek()
        self.i += 1
        return t

    def at(self, text: str, k: int = 0) -> bool:
        t = self.peek(k)
        return t.kind in ("op", "name") and t.text == text

    def expect(self, text: str) -> Token:
        t = self.next()
        if t.text != text or t.kind not in ("op", "name"):
            raise RuleParseError(f"expected {text!r}, found {t.text!r}", self.text, t.pos)
        return t

    def fail(self, what: str) -> RuleParseError:
        t = self.peek()
        return RuleParseError(f"expected {what}, found {t.text!r}", self.text, t.pos)

    def string(self) -> str:
        t = self.next()
        if t.kind != "str":
            raise RuleParseError("expected a string", self.text, t.pos)
        return _unescape(t.text[1:-1])

    # -- grammar
    def rule(self) -> Expr:
        e = self.or_()
        if self.peek().kind != "eof":
            raise self.fail("end of rule")
        return e

    def or_(self) -> Expr:
        e = self.and_()
        while self.at("or"):
            self.next()
            e = Bin("or", e, self.and_())
        return e

    def and_(self) -> Expr:
        e = self.not_()
        while self.at("and"):
            self.next()
            e = Bin("and", e, self.not_())
        return e

    def not_(self) -> Expr:
        if self.at("not"):
            self.next()
            return Not(self.not_())
        return self.cmp()

    def cmp(self) -> Expr:
        lhs = self.add()
        t = self.peek()
        if t.kind == "op" and t.text in CMP_OPS:
            self.next()
            return Bin(t.text, lhs, self.add())
        if self.at("in"):
            self.next()
            return Bin("in", lhs, self.list_())
        if self.at("not") and self.at("in", 1):
            self.next()
            self.next()
            return Bin("not in", lhs, self.list_())
        if self.at("between") or (self.at("not") and self.at("between", 1)):
            negated = self.at("not")
            if negated:
                self.next()
            self.next()
            lo = self.add()
            self.expect("and")
            hi = self.add()
            return Between(lhs, lo, hi, negated)
        if t.kind == "name" and t.text in STR_OPS:
            self.next()
            return Bin(t.text, lhs, self.add())
        return lhs

    def add(self) -> Expr:
        e = self.mul()
        while self.peek().kind == "op" and self.peek().text in ("+", "-"):
            op = self.next().text
            e = Bin(op, e, self.mul())
        return e

    def mul(self) -> Expr:
        e = self.unary()
        while self.peek().kind == "op" and self.peek().text in ("*", "/"):
            op = self.next().text
            e = Bin(op, e, self.unary())
        return e

    def unary(self) -> Expr:
        if self.at("-"):
            self.next()
            inner = self.unary()
            if isinstance(inner, Lit) and isinstance(inner.value, float):
                return Lit(-inner.value)
            return Neg(inner)
        return self.primary()

    def list_(self) -> ListLit:
        self.expect("[")
        items: list[Expr] = []
        if not self.at("]"):
            items.append(self.add())
            while self.at(","):
                self.next()
                items.append(self.add())
        self.expect("]")
        return ListLit(tuple(items))

    def primary(self) -> Expr:
        t = self.peek()
        if t.kind == "num":
            self.next()
            return Lit(float(t.text))
        if t.kind == "dur":
            self.next()
            return Dur(parse_duration(t.text))
        if t.kind == "str":
            return Lit(self.string())
        if self.at("("):
            self.next()
            e = self.or_()
            self.expect(")")
            return e
        if self.at("["):
            return self.list_()
        if t.kind == "name":
            if t.text in ("true", "false"):
                self.next()
                return Lit(t.text == "true")
            if self.at("(", 1):
                return self.call()
            if t.text in KEYWORDS:
                raise self.fail("an expression")
            self.next()
            return self.path(t.text)
        raise self.fail("an expression")

    @staticmethod
    def path(name: str) -> Expr:
        if name.startswith("trait."):
            return Trait(name[len("trait.") :])
        if name.startswith("computed."):
            return Computed(name[len("computed.") :])
        if name.startswith("properties."):
            return Prop(name[len("properties.") :])
        return Prop(name)

    def selector(self) -> Selector:
        event = self.string()
        flt: Expr | None = None
        if self.at("where"):
            self.next()
            flt = self.or_()
        return Selector(event, flt)

    def call(self) -> Expr:
        name = self.next().text
        self.expect("(")
        if name in AGG_FUNCS:
            sel = self.selector()
            prop: str | None = None
            window: Window = WinAll()
            if name not in NO_PROPERTY_FUNCS:
                self.expect(",")
                pt = self.next()
                if pt.kind != "name":
                    raise RuleParseError("expected a property", self.text, pt.pos)
                prop = pt.text.removeprefix("properties.")
            if self.at(","):
                self.next()
                if self.at("since"):
                    self.next()
                    window = WinSince(self.selector())
                else:
                    wt = self.next()
                    if wt.kind != "dur":
                        raise RuleParseError("expected a window", self.text, wt.pos)
                    window = WinLast(parse_duration(wt.text))
            self.expect(")")
            return Agg(name, sel, prop, window)
        if name == "since":
            t = self.peek()
            if t.kind == "name" and t.text.startswith("trait."):
                self.next()
                self.expect(")")
                return SinceTrait(t.text[len("trait.") :])
            sel = self.selector()
            self.expect(")")
            return SinceEvent(sel)
        if name in ("member_for", "in_audience"):
            key = self.string()
            self.expect(")")
            return MemberFor(key) if name == "member_for" else InAudience(key)
        if name == "exists":
            e = self.or_()
            self.expect(")")
            return Exists(e)
        raise RuleParseError(f"unknown function {name!r}", self.text, self.toks[self.i - 2].pos)


def parse_rule(text: str) -> Expr:
    """Parses rule text into the AST above (valid rules only)."""
    return _Parser(text).rule()


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------


@dataclass
class TrackedEvent:
    name: str
    t: int  # floored timestamp, ms
    arrival: int  # global arrival order
    props: dict[str, Value]  # flattened properties, plus context under "context."


@dataclass
class UserState:
    uid: str
    index: int  # first-seen order
    events: list[TrackedEvent] = field(default_factory=list)
    traits: dict[str, Value] = field(default_factory=dict)
    entered: dict[str, int] = field(default_factory=dict)  # audience -> entered_at (members)


@dataclass
class _Env:
    user: UserState
    now: int
    g: int
    event: TrackedEvent | None = None  # inside a `where` filter
    computed: Mapping[str, Expr] = field(default_factory=dict)  # computed trait expressions


def _truthy(v: Value) -> bool:
    return v is True


def _eq(a: Value, b: Value) -> bool:
    if a is None or b is None or tag(a) != tag(b):
        return False
    if isinstance(a, tuple):
        return False
    return a == b


def compare(op: str, a: Value, b: Value) -> bool:
    """Comparison: false on null or mismatched types; booleans only == and !=."""
    if a is None or b is None:
        return False
    ta, tb = tag(a), tag(b)
    if ta != tb or ta == "list":
        return False
    if ta == "bool" and op not in ("==", "!="):
        return False
    match op:
        case "==":
            return a == b
        case "!=":
            return a != b
        case "<":
            return a < b  # type: ignore[operator]
        case "<=":
            return a <= b  # type: ignore[operator]
        case ">":
            return a > b  # type: ignore[operator]
        case ">=":
            return a >= b  # type: ignore[operator]
    raise ValueError(op)


def _arith(op: str, a: Value, b: Value) -> Value:
    if not (is_num(a) and is_num(b)):
        return None
    assert isinstance(a, float) and isinstance(b, float)
    match op:
        case "+":
            r = a + b
        case "-":
            r = a - b
        case "*":
            r = a * b
        case "/":
            if b == 0:
                return None
            r = a / b
        case _:
            raise ValueError(op)
    return r


def _prop_value(ev: TrackedEvent, path: str) -> Value:
    return ev.props.get(path)


def _matches(sel: Selector, ev: TrackedEvent, env: _Env) -> bool:
    if ev.name != sel.event:
        return False
    if sel.filter is None:
        return True
    sub = _Env(env.user, env.now, env.g, ev, env.computed)
    return _truthy(evaluate(sel.filter, sub))


def _visible(env: _Env, sel: Selector) -> list[TrackedEvent]:
    return [e for e in env.user.events if e.t <= env.now and _matches(sel, e, env)]


def window_events(env: _Env, sel: Selector, window: Window) -> list[TrackedEvent]:
    """Visible events matching ``sel`` inside ``window`` at ``env.now``, in arrival order."""
    evs = _visible(env, sel)
    match window:
        case WinAll():
            return evs
        case WinLast(w):
            return [e for e in evs if env.now - w < e.t]
        case WinSince(anchor):
            xs = [e.t for e in _visible(env, anchor)]
            if not xs:
                return []
            tx = max(xs)
            return [e for e in evs if e.t > tx]
    raise TypeError(window)


def aggregate(func: str, evs: list[TrackedEvent], prop: str | None) -> Value:
    if func == "count":
        return float(len(evs))
    if func == "did":
        return len(evs) >= 1
    assert prop is not None
    having = [(e, _prop_value(e, prop)) for e in evs]
    having = [(e, v) for e, v in having if v is not None]
    if func in ("sum", "avg", "min", "max"):
        nums = [v for _, v in having if isinstance(v, float)]
        if not nums:
            return None
        if func == "sum":
            return float(sum(nums))
        if func == "avg":
            return float(sum(nums)) / len(nums)
        # + 0.0: a zero is 0, never -0 (docs/semantics.md).
        return (min(nums) if func == "min" else max(nums)) + 0.0
    scalars = [(e, v) for e, v in having if tag(v) in ("bool", "num", "str")]
    if func == "distinct":
        return float(len({value_key(v) for _, v in scalars}))
    if func == "most_frequent":
        if not scalars:
            return None
        counts: dict[tuple[str, Any], int] = {}
        vals: dict[tuple[str, Any], Value] = {}
        for _, v in scalars:
            k = value_key(v)
            counts[k] = counts.get(k, 0) + 1
            vals.setdefault(k, v)
        best = max(counts.values())
        return min((vals[k] for k, c in counts.items() if c == best), key=total_order_key)
    if func == "unique":
        uniq = {value_key(v): v for _, v in scalars}
        return tuple(sorted(uniq.values(), key=total_order_key))  # type: ignore[arg-type]
    if func in ("first", "last"):
        if not having:
            return None
        if func == "first":
            return min(having, key=lambda ev: (ev[0].t, ev[0].arrival))[1]
        return max(having, key=lambda ev: (ev[0].t, ev[0].arrival))[1]
    raise ValueError(func)


def evaluate(e: Expr, env: _Env) -> Value:
    """The value of ``e`` for ``env.user`` at instant ``env.now``."""
    match e:
        case Lit(v):
            return v
        case Dur(ms):
            return Duration(ms)
        case ListLit(items):
            raise TypeError("a list literal has no value outside `in`")
        case Trait(key):
            return env.user.traits.get(key)
        case Computed(key):
            # A computed trait is its value expression, evaluated at the same instant.
            return evaluate(env.computed[key], env)
        case Prop(path):
            if env.event is None:
                raise TypeError(f"property {path!r} outside a where filter")
            return _prop_value(env.event, path)
        case Agg(func, sel, prop, win):
            return aggregate(func, window_events(env, sel, win), prop)
        case SinceEvent(sel):
            ts = [ev.t for ev in _visible(env, sel)]
            return Duration(env.now - max(ts)) if ts else None
        case SinceTrait(key):
            raw = env.user.traits.get(key)
            if not isinstance(raw, str):
                return None
            ts_ms = parse_iso_ms(raw)
            return None if ts_ms is None else Duration(env.now - floor_to(ts_ms, env.g))
        case MemberFor(aud):
            at = env.user.entered.get(aud)
            return None if at is None else Duration(env.now - at)
        case InAudience(aud):
            return aud in env.user.entered
        case Exists(x):
            return evaluate(x, env) is not None
        case Not(x):
            return not _truthy(evaluate(x, env))
        case Neg(x):
            neg = evaluate(x, env)
            return -neg if isinstance(neg, float) else None
        case Bin("and", a, b):
            return _truthy(evaluate(a, env)) and _truthy(evaluate(b, env))
        case Bin("or", a, b):
            return _truthy(evaluate(a, env)) or _truthy(evaluate(b, env))
        case Bin(op, a, ListLit(items)) if op in LIST_OPS:
            lhs = evaluate(a, env)
            elems = [evaluate(i, env) for i in items]
            if lhs is None:
                return False
            if isinstance(lhs, tuple):
                inside = any(_eq(s, el) for s in lhs for el in elems)
            else:
                inside = any(_eq(lhs, el) for el in elems)
            return inside if op == "in" else not inside
        case Bin(op, a, b) if op in CMP_OPS:
            return compare(op, evaluate(a, env), evaluate(b, env))
        case Bin(op, a, b) if op in ARITH_OPS:
            return _arith(op, evaluate(a, env), evaluate(b, env))
        case Bin(op, a, b) if op in STR_OPS:
            text, part = evaluate(a, env), evaluate(b, env)
            if not isinstance(part, str):
                return False
            if op == "contains":
                if isinstance(text, str | tuple):
                    return part in text
                return False
            if not isinstance(text, str):
                return False
            return text.startswith(part) if op == "starts_with" else text.endswith(part)
        case Between(x, lo, hi, negated):
            val, low, high = evaluate(x, env), evaluate(lo, env), evaluate(hi, env)
            if negated:
                # "present and outside the range": a value of another type is
                # neither inside nor outside (unlike `not in`).
                return compare("<", val, low) or compare(">", val, high)
            return compare("<=", low, val) and compare("<=", val, high)
    raise TypeError(f"cannot evaluate {e!r}")


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------

_DELETE = object()


def _flatten(obj: Mapping[str, Any], prefix: str, out: list[tuple[str, Any]], strict: bool) -> None:
    for k, v in obj.items():
        if not isinstance(k, str):
            raise InvalidInput(f"key {k!r} is not a string")
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, Mapping):
            if not v:
                out.append((key, _DELETE))
            else:
                _flatten(v, key, out, strict)
        elif v is None:
            out.append((key, _DELETE))
        elif isinstance(v, list | tuple):
            if all(isinstance(x, str) for x in v):
                out.append((key, tuple(v)))
            elif strict:
                raise InvalidInput(
                    f"{key!r} is a list holding non-strings; lists hold strings only"
                )
        elif isinstance(v, bool | str):
            out.append((key, v))
        elif isinstance(v, int | float):
            if isinstance(v, float) and not math.isfinite(v):
                raise InvalidInput(f"{key!r} is not a finite number")
            out.append((key, float(v)))
        elif strict:
            raise InvalidInput(f"{key!r} has an unsupported type {type(v).__name__}")


def flatten_traits(traits: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """[(dotted key, value or _DELETE)], raising InvalidInput on bad values."""
    out: list[tuple[str, Any]] = []
    _flatten(traits, "", out, strict=True)
    return out


def flatten_props(
    properties: Mapping[str, Any] | None, context: Mapping[str, Any] | None
) -> dict[str, Value]:
    out: list[tuple[str, Any]] = []
    if properties:
        _flatten(properties, "", out, strict=False)
    if context:
        _flatten(context, "context", out, strict=False)
    return {k: v for k, v in out if v is not _DELETE}


# --------------------------------------------------------------------------
# The reference engine
# --------------------------------------------------------------------------


class RefChange(NamedTuple):
    audience: str
    user: str
    kind: str  # "entered" | "exited"
    at: int  # ms
    reason: str  # "event" | "time" | "definition" | "delete"


@dataclass
class _Audience:
    key: str
    text: str
    expr: Expr
    order: int  # definition order (kept when replaced)
    deps: set[str]


class Reference:
    """Brute-force model of the engine with a manual clock."""

    def __init__(
        self,
        now: Instant = 0,
        granularity_ms: int = 1000,
        future_skew_ms: int = 300_000,
        exhaustive: bool = False,
    ) -> None:
        if granularity_ms <= 0:
            raise InvalidInput("granularity must be positive")
        self.g = granularity_ms
        self.skew = future_skew_ms
        self.exhaustive = exhaustive
        self.now = floor_to(to_ms(now), self.g)
        self.users: dict[str, UserState] = {}
        self.auds: dict[str, _Audience] = {}
        self._def_counter = 0
        self._arrival = 0
        self._message_ids: set[str] = set()
        self._changes: list[RefChange] = []
        self.computed: dict[str, Expr] = {}  # computed trait key -> value expression
        self.alias_of: dict[str, str] = {}  # a user id an alias redirected -> the id it names

    # ---- helpers
    def _floor(self, t: int) -> int:
        return floor_to(t, self.g)

    def _resolve(self, uid: str) -> str:
        """The user id ``uid`` names (itself unless an alias redirected it)."""
        while uid in self.alias_of:
            uid = self.alias_of[uid]
        return uid

    def _user(self, uid: str) -> UserState:
        uid = self._resolve(uid)
        u = self.users.get(uid)
        if u is None:
            u = UserState(uid, len(self.users))
            self.users[uid] = u
        return u

    def topo_order(self) -> list[str]:
        """Audience keys, dependencies first; ties in definition order."""
        indeg = {k: len(a.deps) for k, a in self.auds.items()}
        dependents: dict[str, list[str]] = {k: [] for k in self.auds}
        for k, a in self.auds.items():
            for d in a.deps:
                dependents[d].append(k)
        heap = [(a.order, k) for k, a in self.auds.items() if indeg[k] == 0]
        heapq.heapify(heap)
        out: list[str] = []
        while heap:
            _, k = heapq.heappop(heap)
            out.append(k)
            for d in dependents[k]:
                indeg[d] -= 1
                if indeg[d] == 0:
                    heapq.heappush(heap, (self.auds[d].order, d))
        assert len(out) == len(self.auds), "cycle"
        return out

    def _eval_user(
        self, u: UserState, at: int, reason: str, keys: Iterable[str]
    ) -> list[RefChange]:
        """Re-evaluates ``keys`` (in topological order) for one user at ``at``."""
        out: list[RefChange] = []
        for k in keys:
            env = _Env(u, at, self.g, computed=self.computed)
            val = _truthy(evaluate(self.auds[k].expr, env))
            was = k in u.entered
            if val and not was:
                u.entered[k] = at
                out.append(RefChange(k, u.uid, "entered", at, reason))
            elif was and not val:
                del u.entered[k]
                out.append(RefChange(k, u.uid, "exited", at, reason))
        return out

    def _durations(self) -> set[int]:
        ds: set[int] = {0}
        for a in self.auds.values():
            ds |= rule_durations(a.expr)
        for x in self.computed.values():
            ds |= rule_durations(x)
        return ds

    def define_computed_trait(self, key: str, expr: str) -> None:
        """Defines (or replaces) a computed trait: rules read ``computed.KEY``
        as ``expr`` evaluated at the same instant. (Values are not logged:
        the reference models memberships; tests compare values directly.)"""
        self.computed[key] = parse_rule(expr)
        users = sorted(self.users.values(), key=lambda x: x.index)
        for k in self.topo_order():
            if any(isinstance(n, Computed) and n.key == key for n in walk(self.auds[k].expr)):
                for u in users:
                    self._changes.extend(self._eval_user(u, self.now, "definition", [k]))

    def computed_value(self, user: str, key: str) -> Value:
        """A user's value of a computed trait now (full history)."""
        return self.value(user, self.computed[key])

    def _user_points(self, u: UserState) -> set[int]:
        pts = {e.t for e in u.events}
        for v in u.traits.values():
            if isinstance(v, str):
                ms = parse_iso_ms(v)
                if ms is not None:
                    pts.add(self._floor(ms))
        pts.update(u.entered.values())
        return pts

    def _candidates(self, points: Iterable[int], durs: set[int]) -> set[int]:
        out: set[int] = set()
        for p in points:
            for d in durs:
                out.add(ceil_to(p + d, self.g))
                out.add(ceil_to(p + d + 1, self.g))
        return out

    # ---- inputs
    def identify(self, user: str, traits: Mapping[str, Any] | None = None) -> list[RefChange]:
        if not isinstance(user, str) or not user:
            raise InvalidInput("no user id")
        flat = flatten_traits(traits or {})
        u = self._user(user)
        for k, v in flat:
            if v is _DELETE:
                for key in [x for x in u.traits if x == k or x.startswith(k + ".")]:
                    del u.traits[key]
            else:
                u.traits[k] = v
        changes = self._eval_user(u, self.now, "event", self.topo_order())
        self._changes.extend(changes)
        return changes

    def track(
        self,
        user: str,
        event: str,
        properties: Mapping[str, Any] | None = None,
        timestamp: Instant | None = None,
        context: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> list[RefChange]:
        if not isinstance(user, str) or not user:
            raise InvalidInput("no user id")
        if not isinstance(event, str) or not event:
            raise InvalidInput("no event name")
        t = self.now if timestamp is None else self._floor(to_ms(timestamp))
        if t > self.now + self.skew:
            raise RejectedEvent(f"timestamp {ms_to_iso(t)} is too far in the future")
        props = flatten_props(properties, context)
        if message_id is not None:
            if message_id in self._message_ids:
                return []
            self._message_ids.add(message_id)
        u = self._user(user)
        self._arrival += 1
        u.events.append(TrackedEvent(event, t, self._arrival, props))
        changes = self._eval_user(u, self.now, "event", self.topo_order())
        self._changes.extend(changes)
        return changes

    def alias(
        self,
        previous: str,
        user: str,
        timestamp: Instant | None = None,
        message_id: str | None = None,
    ) -> list[RefChange]:
        """``previous`` names ``user`` from now on; a profile ``previous`` had
        is merged into ``user``'s (docs/semantics.md, "Aliases"): it leaves
        every audience, ``user``'s gains its events (as if they had arrived
        after its own) and the traits it lacks, and is evaluated afresh. Every
        change has reason "merge"."""
        for x in (previous, user):
            if not isinstance(x, str) or not x:
                raise InvalidInput("no user id")
        t = self.now if timestamp is None else self._floor(to_ms(timestamp))
        if t > self.now + self.skew:
            raise RejectedEvent(f"timestamp {ms_to_iso(t)} is too far in the future")
        if message_id is not None:
            if message_id in self._message_ids:
                return []
            self._message_ids.add(message_id)
        a_name, b_name = self._resolve(previous), self._resolve(user)
        a = self.users.get(a_name)
        if previous == user or (a is not None and a_name == b_name):
            return []
        changes: list[RefChange] = []
        if a is not None:
            for k in self.topo_order():
                if k in a.entered:
                    del a.entered[k]
                    changes.append(RefChange(k, a.uid, "exited", self.now, "merge"))
            del self.users[a_name]
        new = b_name not in self.users
        b = self._user(b_name)
        if a is not None:
            for ev in sorted(a.events, key=lambda e: e.arrival):
                self._arrival += 1
                ev.arrival = self._arrival
                b.events.append(ev)
            b.traits = {**a.traits, **b.traits}
        self.alias_of[a_name if a is not None else previous] = b_name
        if a is not None or new:
            changes.extend(self._eval_user(b, self.now, "merge", self.topo_order()))
        self._changes.extend(changes)
        return changes

    def define_audience(self, key: str, rule: str) -> int:
        expr = parse_rule(rule)
        deps = rule_audiences(expr)
        for d in deps:
            if d not in self.auds:
                raise UnknownAudience(d)
        if key in deps or any(key in self._closure(d) for d in deps):
            raise AudienceCycle(key)
        for n in walk(expr):
            if isinstance(n, Computed) and n.key not in self.computed:
                raise UnknownComputed(n.key)
        old = self.auds.get(key)
        order = old.order if old else self._def_counter
        if old is None:
            self._def_counter += 1
        self.auds[key] = _Audience(key, rule, expr, order, deps)
        # The audience and (when replaced) everything that depends on it.
        keys = [k for k in self.topo_order() if key in self._closure(k)]
        for k in keys:
            for u in sorted(self.users.values(), key=lambda x: x.index):
                self._changes.extend(self._eval_user(u, self.now, "definition", [k]))
        return self.size(key)

    def _closure(self, key: str) -> set[str]:
        """Audiences that ``key`` depends on, transitively (including itself)."""
        seen: set[str] = set()
        stack = [key]
        while stack:
            k = stack.pop()
            if k in seen or k not in self.auds:
                continue
            seen.add(k)
            stack.extend(self.auds[k].deps)
        return seen

    def remove_audience(self, key: str) -> None:
        if key not in self.auds:
            raise UnknownAudience(key)
        users = [k for k, a in self.auds.items() if key in a.deps]
        if users:
            raise InUse(f"{key!r} is used by {', '.join(users)}")
        for u in sorted(self.users.values(), key=lambda x: x.index):
            if key in u.entered:
                del u.entered[key]
                self._changes.append(RefChange(key, u.uid, "exited", self.now, "delete"))
        del self.auds[key]

    def advance(self, to: Instant) -> int:
        """Moves the clock to ``to``, emitting every time-based change in (now, to]."""
        target = self._floor(to_ms(to))
        if target < self.now:
            raise InvalidInput("the clock cannot go back")
        order = self.topo_order()
        pos = {k: i for i, k in enumerate(order)}
        durs = self._durations()
        found: list[tuple[int, int, int, RefChange]] = []
        for u in self.users.values():
            if self.exhaustive:
                instants: Iterable[int] = range(self.now + self.g, target + 1, self.g)
                for c in instants:
                    for ch in self._eval_user(u, c, "time", order):
                        found.append((c, u.index, pos[ch.audience], ch))
                continue
            heap = sorted(c for c in self._candidates(self._user_points(u), durs) if c > self.now)
            heapq.heapify(heap)
            last = self.now
            while heap:
                c = heapq.heappop(heap)
                if c <= last:
                    continue
                if c > target:
                    break
                last = c
                for ch in self._eval_user(u, c, "time", order):
                    found.append((c, u.index, pos[ch.audience], ch))
                    if ch.kind == "entered":
                        for x in self._candidates([c], durs):
                            if x > c:
                                heapq.heappush(heap, x)
        found.sort(key=lambda x: x[:3])
        self._changes.extend(ch for *_, ch in found)
        self.now = target
        return len(found)

    # ---- queries
    def audiences(self) -> list[str]:
        return [k for k, _ in sorted(self.auds.items(), key=lambda kv: kv[1].order)]

    def rule(self, key: str) -> str:
        if key not in self.auds:
            raise UnknownAudience(key)
        return self.auds[key].text

    def is_member(self, user: str, key: str) -> bool:
        if key not in self.auds:
            raise UnknownAudience(key)
        u = self.users.get(self._resolve(user))
        return u is not None and key in u.entered

    def members(self, key: str) -> list[str]:
        if key not in self.auds:
            raise UnknownAudience(key)
        return sorted(u.uid for u in self.users.values() if key in u.entered)

    def size(self, key: str) -> int:
        return len(self.members(key))

    def audiences_of(self, user: str) -> list[str]:
        u = self.users.get(self._resolve(user))
        return sorted(u.entered) if u else []

    def entered_at(self, user: str, key: str) -> int | None:
        u = self.users.get(self._resolve(user))
        return None if u is None else u.entered.get(key)

    def changes(self) -> list[RefChange]:
        return list(self._changes)

    def value(self, user: str, expr: str | Expr, at: Instant | None = None) -> Value:
        """Evaluates an expression for a user at ``at`` (default: now); for tests."""
        e = parse_rule(expr) if isinstance(expr, str) else expr
        u = self.users.get(self._resolve(user)) or UserState(user, -1)
        t = self.now if at is None else self._floor(to_ms(at))
        return evaluate(e, _Env(u, t, self.g, computed=self.computed))
