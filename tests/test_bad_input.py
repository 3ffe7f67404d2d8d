"""Bad input against the engine API (docs/api.md, docs/rules.md): every bad
input gets a clear error of the right class and changes nothing else.

Rule errors are checked for class, ``.line``, ``.column`` (1-based, in
characters) and a few lowercase fragments that a message saying what was
wrong and what was expected would contain (the snippet is removed from the
message before matching, so the source text itself does not count). Type
errors may reasonably point at the operator, an operand or the whole
expression, so a set of columns is accepted there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

pytest.importorskip("segmint._core")

import segmint

NOW = "2026-01-01T00:00:00Z"


@dataclass(frozen=True)
class Bad:
    rule: str
    lines: tuple[int, ...]
    columns: tuple[int, ...]
    fragments: tuple[str, ...]  # all must appear (lowercase) in the message
    id: str


def syn(
    rule: str, line: int | tuple[int, ...], column: int | tuple[int, ...], *frags: str, id: str
) -> Bad:
    lines = line if isinstance(line, tuple) else (line,)
    cols = column if isinstance(column, tuple) else (column,)
    return Bad(rule, lines, cols, frags, id)


SYNTAX: list[Bad] = [
    syn("", 1, 1, "empty", id="empty"),
    syn("   \n  ", (1, 2), (1, 3, 4), "empty", id="blank"),
    syn('trait.country = "US"', 1, 15, "==", id="single-equals"),
    syn("trait.a === 1", 1, 9, "==", id="triple-equals"),
    syn("trait.a <> 1", 1, 9, "!=", id="diamond"),
    syn('trait.country == "US', 1, 18, "unterminated", id="unterminated-string"),
    syn('"unterminated', 1, 1, "unterminated", id="unterminated-only"),
    syn('count("Order Completed", 30d) >= ', 1, (33, 34), "expected", "end", id="eof-after-op"),
    syn('count("Order Completed" 30d) >= 3', 1, 25, "expected", "30d", id="missing-comma"),
    syn('count("Order Completed", 30x) >= 3', 1, 26, "duration", "30x", id="bad-unit"),
    syn('since("Order Completed") > 1y', 1, 28, "duration", "1y", id="year-unit"),
    syn('count("A", 1.5d) >= 1', 1, 12, "duration", "1.5d", id="fractional-duration"),
    syn("count(Order Completed, 30d) >= 3", 1, 7, "expected", "order", id="unquoted-event"),
    syn('frobnicate("x") > 1', 1, 1, "unknown", "frobnicate", id="unknown-function"),
    syn('cnt("Order Completed") >= 3', 1, 1, "cnt", "count", id="misspelled-function"),
    syn('COUNT("A") >= 1', 1, 1, "count", id="uppercase-function"),
    syn('trait.country == "US" and', 1, (25, 26), "expected", "and", id="dangling-and"),
    syn('trait.country == "US" or or trait.plan == "pro"', 1, 26, "expected", "or", id="double-or"),
    syn('(trait.country == "US"', 1, (23, 1), "expected", ")", id="unclosed-paren"),
    syn('trait.country == "US")', 1, 22, ")", id="extra-paren"),
    syn('trait.plan in ["pro", "free"', 1, (29, 15), "expected", "]", id="unclosed-list"),
    syn('trait.plan in ["pro",, "free"]', 1, 22, ",", id="double-comma"),
    syn('trait.plan in ["pro" "enterprise"]', 1, 22, "expected", "]", id="list-missing-comma"),
    syn("trait.ltv between 1 5", 1, 21, "expected", "and", id="between-missing-and"),
    syn("trait.ltv between 1 and", 1, (24, 21), "expected", id="between-eof"),
    syn('did("Added to Cart", 7d) and not', 1, (33, 30), "expected", id="dangling-not"),
    syn("not", 1, (4, 1), "expected", id="not-alone"),
    syn('count("A", 30d) >= 3 3', 1, 22, "3", id="trailing-number"),
    syn('trait.country == "US" trait.plan == "pro"', 1, 23, "and", id="missing-and"),
    syn("trait.a == 1,", 1, 13, ",", id="trailing-comma"),
    syn('count("A", since) >= 1', 1, 17, "since", "event", id="since-window-no-event"),
    syn("since() > 1d", 1, 7, "since", "event", id="since-empty"),
    syn("member_for() > 1d", 1, 12, "member_for", "audience", id="member-for-empty"),
    syn("in_audience(vip)", 1, 13, "in_audience", "quotes", id="in-audience-unquoted"),
    syn('count("A", 30d) >= 3 and @', 1, 26, "@", id="stray-character"),
    syn("trait.a && trait.b", 1, 9, "and", id="double-ampersand"),
    syn("trait.a == 1 || trait.b == 2", 1, 14, "or", id="double-pipe"),
    syn('count("A") >= 1 AND trait.a == 1', 1, 17, "and", id="uppercase-keyword"),
    syn('count("A" where , 7d) >= 1', 1, 17, "expected", id="empty-filter"),
    syn('count("A" where category ==, 7d) >= 1', 1, 28, "expected", id="filter-missing-value"),
    syn('count(where category == "shoes") > 0', 1, 7, "where", "event", id="where-no-event"),
    syn('count("A", 30d, 7d) >= 1', 1, (15, 17), "count", id="too-many-args"),
    syn('sum("A") > 1', 1, (8, 1), "property", id="sum-missing-property"),
    syn('count("A",) >= 1', 1, 11, "expected", "window", id="empty-window"),
    syn('count "A" >= 1', 1, (1, 7), "expected", "(", id="call-missing-paren"),
    syn("exists()", 1, 8, "exists", id="exists-empty"),
    syn('category == "shoes"', 1, 1, "category", "where", id="bare-property-outside-filter"),
    syn("1 < trait.age < 5", 1, 15, "chain", id="chained-comparison"),
    syn('trait.a == 1 and\n  count("X") >= x', 2, 17, "x", id="multiline-unknown-name"),
    syn(
        'trait.country == "US"\n  and count("A", 30d) >= >= 3',
        2,
        26,
        "expected",
        ">=",
        id="multiline-double-op",
    ),
    syn(
        'since("Checkout Started") between 2h and 24h\n'
        '    and count("Order Completed", since "Checkout Started") == 0\n'
        "    and )",
        3,
        9,
        "expected",
        id="multiline-third-line",
    ),
    syn('count("A", 7d) >= 1 # a comment\n  and ]', 2, 7, "expected", id="after-comment"),
    syn('trait.x == "é" and trait.y = 1', 1, 28, "==", id="columns-count-characters"),
    syn(r'trait.x == "a\q"', 1, (14, 12), "escape", id="bad-escape"),
    syn("(" * 60 + "trait.x == 1" + ")" * 60, 1, tuple(range(1, 62)), "deep", id="too-deep"),
]


def typ(rule: str, columns: tuple[int, ...], *frags: str, id: str) -> Bad:
    return Bad(rule, (1,), columns, frags, id)


TYPE: list[Bad] = [
    typ('count("A", 30d)', (1,), "condition", id="number-as-rule"),
    typ("trait.a", (1,), "condition", id="dynamic-as-rule"),
    typ('count("A", 30d) >= "3"', (1, 17, 20), "number", "string", id="number-vs-string"),
    typ('since("A") > 3', (1, 12, 14), "duration", "number", id="duration-vs-number"),
    typ('count("A", 30d) > 3d', (1, 17, 19), "duration", "number", id="number-vs-duration"),
    typ("since(trait.created_at) >= 10", (1, 25, 28), "duration", id="since-trait-vs-number"),
    typ('member_for("vip") > 3', (1, 19, 21), "duration", id="member-for-vs-number"),
    typ('since("A") == "x"', (1, 12, 15), "duration", "string", id="duration-vs-string"),
    typ('did("A") + 1 > 0', (1, 10, 12), "+", id="bool-arithmetic"),
    typ('-did("A") > 1', (1, 2), "-", id="negated-bool"),
    typ('sum("A", revenue) and did("B")', (1, 19), "and", "condition", id="number-and"),
    typ("trait.x == 1 and 3", (14, 18), "condition", id="and-number-literal"),
    typ('not count("A")', (1, 5), "not", "condition", id="not-number"),
    typ('"abc" > 3', (1, 7, 9), "string", "number", id="literal-mismatch"),
    typ(
        'count("A", 30d) + since("A") > 1d', (1, 17, 19), "+", "duration", id="number-plus-duration"
    ),
    typ('unique("A", category) contains "shoes"', (1,), "unique", "computed", id="unique-in-rule"),
    typ(
        'count("A" where trait.country == "US") > 1',
        (17,),
        "trait.country",
        "where",
        id="trait-in-filter",
    ),
    typ('since("A") between 120d and 60d', (1, 12, 20, 29), "120d", "60d", id="empty-range"),
    typ('count("A") between 5 and 1', (1, 12, 20, 26), "5", "1", id="empty-number-range"),
    typ('trait.plan in "pro"', (15,), "list", id="in-without-list"),
    typ('count("A") in ["x"]', (1, 12, 15, 16), "number", "string", id="in-list-wrong-type"),
    typ('exists(since("A"))', (1, 8), "exists", id="exists-of-duration"),
    typ('count("A") contains "x"', (1, 12, 21), "contains", id="contains-on-number"),
    typ('in_audience("vip") == 1', (1, 20, 23), "number", id="bool-vs-number"),
]


@pytest.fixture
def eng() -> Iterator[Any]:
    e = segmint.Engine(clock="manual", now=NOW)
    e.define_audience("vip", 'trait.plan == "vip"')
    e.define_audience("us", 'trait.country == "US"')
    e.identify("u0", {"country": "US", "plan": "vip"})
    e.track("u0", "Order Completed", {"revenue": 10})
    yield e


def snapshot(e: Any) -> dict[str, Any]:
    """Everything a failed call must leave as it was."""
    auds = e.audiences()
    return {
        "audiences": auds,
        "rules": {a: e.rule(a) for a in auds},
        "members": {a: e.members(a) for a in auds},
        "sizes": {a: e.size(a) for a in auds},
        "u0": e.audiences_of("u0"),
        "last_seq": e.last_seq,
        "changes": len(e.changes()),
        "now": e.now,
    }


def message(exc: BaseException) -> str:
    text = str(exc)
    snippet = getattr(exc, "snippet", None)
    if snippet:
        text = text.replace(snippet, "")
    return text.lower()


def check_rule_error(e: Any, bad: Bad, cls: type[BaseException]) -> None:
    before = snapshot(e)
    with pytest.raises(cls) as info:
        e.define_audience("t", bad.rule)
    exc: Any = info.value
    assert isinstance(info.value, segmint.RuleError)
    assert isinstance(info.value, segmint.SegmintError)
    assert exc.line in bad.lines, (exc.line, exc.column, str(exc))
    assert exc.column in bad.columns, (exc.line, exc.column, str(exc))
    msg = message(exc)
    for frag in bad.fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    assert isinstance(exc.snippet, str) and "^" in exc.snippet
    assert snapshot(e) == before
    assert "t" not in e.audiences()


@pytest.mark.parametrize("bad", SYNTAX, ids=[b.id for b in SYNTAX])
def test_rule_syntax_errors(eng: Any, bad: Bad) -> None:
    check_rule_error(eng, bad, segmint.RuleSyntaxError)


@pytest.mark.parametrize("bad", TYPE, ids=[b.id for b in TYPE])
def test_rule_type_errors(eng: Any, bad: Bad) -> None:
    check_rule_error(eng, bad, segmint.RuleTypeError)


def test_bad_redefinition_keeps_the_old_rule(eng: Any) -> None:
    before = snapshot(eng)
    with pytest.raises(segmint.RuleSyntaxError):
        eng.define_audience("us", 'trait.country = "FR"')
    with pytest.raises(segmint.RuleTypeError):
        eng.define_audience("us", 'count("A") == "FR"')
    assert snapshot(eng) == before
    assert eng.rule("us") == 'trait.country == "US"'


def test_oversized_rule(eng: Any) -> None:
    before = snapshot(eng)
    with pytest.raises((segmint.LimitExceededError, segmint.RuleSyntaxError)):
        eng.define_audience("t", "trait.x == 1 or " * 5000 + "trait.x == 2")
    assert snapshot(eng) == before


# --------------------------------------------------------------------------
# Audience references
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule",
    [
        'in_audience("nope")',
        'member_for("nope") > 1d',
        'in_audience("vip") and not in_audience("nope")',
        'trait.x == 1 or (member_for("nope") between 1d and 2d)',
    ],
)
def test_unknown_audience_in_rule(eng: Any, rule: str) -> None:
    before = snapshot(eng)
    with pytest.raises(segmint.UnknownAudienceError) as info:
        eng.define_audience("t", rule)
    assert "nope" in str(info.value)
    assert snapshot(eng) == before


@pytest.mark.parametrize(
    "call",
    [
        lambda e: e.is_member("u0", "nope"),
        lambda e: e.members("nope"),
        lambda e: e.size("nope"),
        lambda e: e.rule("nope"),
        lambda e: e.remove_audience("nope"),
    ],
    ids=["is_member", "members", "size", "rule", "remove"],
)
def test_unknown_audience_in_queries(eng: Any, call: Callable[[Any], Any]) -> None:
    before = snapshot(eng)
    with pytest.raises(segmint.UnknownAudienceError):
        call(eng)
    assert snapshot(eng) == before


def test_unknown_user_is_simply_not_a_member(eng: Any) -> None:
    assert eng.is_member("nobody", "vip") is False
    assert eng.audiences_of("nobody") == []


@pytest.mark.parametrize(
    "key, rule",
    [
        ("vip", 'in_audience("uses_vip")'),  # vip -> uses_vip -> vip
        ("vip", 'member_for("uses_uses_vip") > 1s'),  # longer cycle
        ("vip", 'in_audience("vip")'),  # self reference
        ("uses_vip", 'in_audience("uses_uses_vip") or trait.x == 1'),
    ],
)
def test_audience_cycles(eng: Any, key: str, rule: str) -> None:
    eng.define_audience("uses_vip", 'in_audience("vip") and trait.country == "US"')
    eng.define_audience("uses_uses_vip", 'in_audience("uses_vip")')
    before = snapshot(eng)
    with pytest.raises(segmint.AudienceCycleError):
        eng.define_audience(key, rule)
    assert snapshot(eng) == before


def test_remove_audience_in_use(eng: Any) -> None:
    eng.define_audience("uses_vip", 'not in_audience("vip")')
    before = snapshot(eng)
    with pytest.raises(segmint.InUseError) as info:
        eng.remove_audience("vip")
    assert "uses_vip" in str(info.value)
    assert snapshot(eng) == before


@pytest.mark.parametrize("key", ["", "a\nb", "x" * 5000])
def test_bad_audience_keys(eng: Any, key: str) -> None:
    before = snapshot(eng)
    with pytest.raises((segmint.InvalidArgumentError, segmint.LimitExceededError)):
        eng.define_audience(key, "trait.x == 1")
    assert snapshot(eng) == before


@pytest.mark.parametrize(
    ("items", "error", "index"),
    [
        ([("ok_a", 'did("A")'), ("bad_b", "trait.x +")], segmint.RuleSyntaxError, 1),
        ([("ok_a", 'did("A")'), ("bad_b", "trait.x + 1")], segmint.RuleTypeError, 1),
        ([("bad_a", 'in_audience("nope")'), ("ok_b", 'did("A")')], segmint.UnknownAudienceError, 0),
        (
            [("ok_a", 'did("A")'), ("ok_b", 'did("B")'), ("", 'did("C")')],
            segmint.InvalidArgumentError,
            2,
        ),
        (
            [("c1", 'did("A")'), ("c2", 'in_audience("c1")'), ("c1", 'in_audience("c2")')],
            segmint.AudienceCycleError,
            2,
        ),
    ],
)
def test_batch_definition_errors_name_the_item(
    eng: Any, items: list[tuple[str, str]], error: type[Exception], index: int
) -> None:
    before = snapshot(eng)
    with pytest.raises(error) as info:
        eng.define_audiences(items)
    assert info.value.index == index
    assert str(info.value).startswith(f'item {index} ("{items[index][0]}"): ')
    assert snapshot(eng) == before


def test_batch_definitions_return_sizes_last_rule_wins_and_empty_is_nothing(eng: Any) -> None:
    before = snapshot(eng)
    assert eng.define_audiences([]) == []
    assert snapshot(eng) == before
    sizes = eng.define_audiences(
        [("twice", 'trait.plan == "none"'), ("vip2", 'trait.plan == "vip"'), ("twice", "true")]
    )
    assert sizes == [1, 1, 1]
    assert eng.rule("twice") == "true" and eng.members("twice") == ["u0"]


def test_a_long_key_is_cut_in_the_item_prefix(eng: Any) -> None:
    key = "k" * 5000
    with pytest.raises(segmint.LimitExceededError) as info:
        eng.define_audiences([(key, 'did("A")')])
    assert info.value.index == 0
    assert str(info.value).startswith(f'item 0 ("{"k" * 64}…"): ')


def test_every_error_has_a_code_and_an_index() -> None:
    # Raised by the Python layer, not through the engine's error mapping.
    with pytest.raises(segmint.InvalidArgumentError) as info:
        segmint.Engine(clock="manual", now="not a time")
    assert info.value.code == "invalid_argument" and info.value.index is None
    codes = {
        "SegmintError": "internal",
        "RuleError": "rule",
        "RuleSyntaxError": "rule_syntax",
        "RuleTypeError": "rule_type",
        "UnknownAudienceError": "unknown_audience",
        "UnknownComputedTraitError": "unknown_computed_trait",
        "UnknownUserError": "unknown_user",
        "AudienceCycleError": "audience_cycle",
        "InUseError": "in_use",
        "InvalidEventError": "invalid_event",
        "LimitExceededError": "limit_exceeded",
        "InvalidArgumentError": "invalid_argument",
        "StorageError": "storage",
        "CorruptDataError": "corrupt_data",
    }
    exported = {
        name
        for name in dir(segmint)
        if isinstance(getattr(segmint, name), type)
        and issubclass(getattr(segmint, name), segmint.SegmintError)
    }
    assert exported == set(codes)
    for name, code in codes.items():
        cls = getattr(segmint, name)
        assert cls.code == code and cls.index is None, name


def test_errors_outside_batches_have_no_index(eng: Any) -> None:
    with pytest.raises(segmint.RuleSyntaxError) as info:
        eng.define_audience("bad", "trait.x +")
    assert info.value.index is None and info.value.line == 1


@pytest.mark.parametrize("ids", [["u1", ""], ["u1", "u2", "x" * 5000]])
def test_bad_static_audience_ids_name_their_position(eng: Any, ids: list[str]) -> None:
    before = snapshot(eng)
    with pytest.raises((segmint.InvalidArgumentError, segmint.LimitExceededError)) as info:
        eng.define_static_audience("uploaded", ids)
    assert f"user id {len(ids) - 1} of the list" in str(info.value)
    assert snapshot(eng) == before


# --------------------------------------------------------------------------
# Events, timestamps, traits
# --------------------------------------------------------------------------

BAD_EVENT = (segmint.InvalidEventError, segmint.InvalidArgumentError)


@pytest.mark.parametrize(
    "call, classes",
    [
        (lambda e: e.track("", "Order Completed", {}), BAD_EVENT),
        (lambda e: e.track("u1", "", {}), BAD_EVENT),
        (lambda e: e.identify("", {"plan": "x"}), BAD_EVENT),
        (
            lambda e: e.track("u1", "X", {}, timestamp=datetime(2026, 1, 1)),
            (segmint.InvalidArgumentError,),
        ),
        (
            lambda e: e.track("u1", "X", {}, timestamp="2026-01-01T00:00:00"),
            (segmint.InvalidArgumentError, segmint.InvalidEventError),
        ),
        (lambda e: e.track("u1", "X", {}, timestamp="not a time"), BAD_EVENT),
        (lambda e: e.track("u1", "X", {}, timestamp="2026-13-45T00:00:00Z"), BAD_EVENT),
        (
            lambda e: e.track("u1", "X", {}, timestamp="2026-01-01T00:05:01Z"),
            (segmint.InvalidEventError,),
        ),
        (
            lambda e: e.track("u1", "X", {}, timestamp="2027-01-01T00:00:00Z"),
            (segmint.InvalidEventError,),
        ),
        (lambda e: e.identify("u0", {"country": "FR", "tags": [1, 2]}), BAD_EVENT),
        (lambda e: e.identify("u0", {"country": "FR", "ltv": math.nan}), BAD_EVENT),
        (lambda e: e.identify("u0", {"country": "FR", "ltv": math.inf}), BAD_EVENT),
        (
            lambda e: e.track("u1", "X", {f"p{i}": i for i in range(600)}),
            (segmint.LimitExceededError, segmint.InvalidEventError),
        ),
        (
            lambda e: e.track("u" * 5000, "X", {}),
            (segmint.LimitExceededError, segmint.InvalidEventError),
        ),
    ],
    ids=[
        "track-no-user",
        "track-no-event-name",
        "identify-no-user",
        "naive-datetime",
        "naive-string",
        "garbage-timestamp",
        "impossible-date",
        "one-second-past-skew",
        "far-future",
        "list-of-numbers-trait",
        "nan-trait",
        "inf-trait",
        "too-many-properties",
        "huge-user-id",
    ],
)
def test_bad_events_change_nothing(
    eng: Any, call: Callable[[Any], Any], classes: tuple[type[BaseException], ...]
) -> None:
    before = snapshot(eng)
    with pytest.raises(classes) as info:
        call(eng)
    assert isinstance(info.value, segmint.SegmintError)
    assert str(info.value)
    assert snapshot(eng) == before
    assert eng.audiences_of("u1") == []


def test_event_at_the_skew_limit_is_accepted(eng: Any) -> None:
    eng.track("u1", "X", {}, timestamp="2026-01-01T00:05:00Z")
    eng.track("u1", "X", {}, timestamp="2026-01-01T00:05:00.999Z")  # floors to the limit


@pytest.mark.parametrize(
    "call",
    [
        lambda e: e.advance("2025-12-31T23:59:59Z"),
        lambda e: e.advance(datetime(2026, 1, 2)),
        lambda e: e.advance("tomorrow"),
    ],
    ids=["backwards", "naive", "garbage"],
)
def test_bad_clock_moves(eng: Any, call: Callable[[Any], Any]) -> None:
    before = snapshot(eng)
    with pytest.raises(segmint.InvalidArgumentError):
        call(eng)
    assert snapshot(eng) == before


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clock": "manual", "now": datetime(2026, 1, 1)},
        {"clock": "manual", "now": "yesterday"},
        {"clock": "sundial"},
        {"clock": "manual", "now": NOW, "granularity": "abc"},
        {"clock": "manual", "now": NOW, "future_skew": "5 minutes"},
        {"clock": "manual", "now": NOW, "change_log_capacity": 0},
        {"clock": "manual", "now": NOW, "change_log_capacity": -1},
    ],
    ids=[
        "naive-now",
        "garbage-now",
        "unknown-clock",
        "bad-granularity",
        "bad-skew",
        "no-change-log",
        "negative-change-log",
    ],
)
def test_bad_engine_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(segmint.InvalidArgumentError):
        segmint.Engine(**kwargs)


# --------------------------------------------------------------------------
# Batches: per-item errors, good items applied
# --------------------------------------------------------------------------


def _track(user: str | None, event: str = "Order Completed", **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "track", "event": event, "properties": {"revenue": 5}}
    if user is not None:
        item["userId"] = user
    item.update(extra)
    return item


MIXED_BATCH: list[Any] = [
    _track("u1"),  # 0 ok
    _track(None),  # 1 no user id
    {"type": "identify", "userId": "u2", "traits": {"country": "US"}},  # 2 ok
    _track("u3", timestamp="2027-01-01T00:00:00Z"),  # 3 too far in the future
    _track("u3", timestamp="yesterday"),  # 4 garbage timestamp
    _track("u3", timestamp="2026-01-01T00:00:00"),  # 5 no offset
    {"type": "page", "userId": "u3"},  # 6 unsupported type
    {"type": "identify", "anonymousId": "anon1", "traits": {"country": "US"}},  # 7 ok
    {"type": "identify", "userId": "u4", "traits": {"country": "US", "tags": [1]}},  # 8 bad list
    42,  # 9 not an object
    {"type": "track", "userId": None, "anonymousId": None, "event": "X"},  # 10 no user id
    {"type": "identify", "userId": "u5", "anonymousId": "anon5", "traits": {"country": "US"}},
]
MIXED_ERRORS = [1, 3, 4, 5, 6, 8, 9, 10]


def test_batch_errors_by_index_and_good_items_applied(eng: Any) -> None:
    seq = eng.last_seq
    result = eng.ingest(MIXED_BATCH)
    assert sorted(err.index for err in result.errors) == MIXED_ERRORS
    for err in result.errors:
        assert err.message and isinstance(err.code, str)
    assert result.accepted == len(MIXED_BATCH) - len(MIXED_ERRORS)
    assert result.last_seq == eng.last_seq
    assert eng.members("us") == ["anon1", "u0", "u2", "u5"]  # userId wins over anonymousId
    assert eng.audiences_of("u3") == [] and eng.audiences_of("u4") == []
    changes = eng.changes(since_seq=seq)
    assert [(c.user_id, c.reason) for c in changes] == [
        ("u2", "event"),
        ("anon1", "event"),
        ("u5", "event"),
    ]


def test_batch_as_ndjson_bytes(eng: Any) -> None:
    lines = [
        b'{"type": "identify", "userId": "u2", "traits": {"country": "US"}}',
        b"{oops",
        b'{"type": "track", "event": "X"}',
        b'{"type": "identify", "userId": "u3", "traits": {"country": "US"}}',
    ]
    result = eng.ingest(b"\n".join(lines))
    assert sorted(err.index for err in result.errors) == [1, 2]
    assert eng.members("us") == ["u0", "u2", "u3"]


@pytest.mark.parametrize("payload", [b"[{", b"hello", b'{"batch": 3}'])
def test_malformed_batch_changes_nothing(eng: Any, payload: bytes) -> None:
    before = snapshot(eng)
    try:
        result = eng.ingest(payload)
    except segmint.SegmintError:
        pass
    else:
        assert result.accepted == 0 and result.errors
    assert snapshot(eng) == before


def test_all_bad_batch_changes_nothing(eng: Any) -> None:
    before = snapshot(eng)
    result = eng.ingest([MIXED_BATCH[i] for i in MIXED_ERRORS])
    assert result.accepted == 0
    assert sorted(err.index for err in result.errors) == list(range(len(MIXED_ERRORS)))
    assert snapshot(eng) == before
