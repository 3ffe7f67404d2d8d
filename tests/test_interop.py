"""Interop (docs/interop.md): pyroaring bitmaps, numpy lookups, pyarrow members,
Arrow ingest, Parquet import and export; round trips and bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("segmint._core")
pytest.importorskip("numpy")
pytest.importorskip("pyarrow")
pytest.importorskip("pyroaring")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyroaring as roaring
import segmint
from hypothesis import given, settings
from hypothesis import strategies as st
from segmint import Engine, InvalidArgumentError, UnknownAudienceError, UnknownUserError
from segmint.interop import IdMap

NOW = "2026-01-01T00:00:00Z"
NOW_MS = 1_767_225_600_000
MIN = 60_000


def engine() -> Engine:
    return Engine(clock="manual", now=NOW)


def populated() -> Engine:
    """u0..u9; even users bought shoes (u0 twice), u1/u3 are pro."""
    eng = engine()
    eng.define_audience("buyers", 'did("Order Completed", 30d)')
    eng.define_audience("pro", 'trait.plan == "pro"')
    eng.define_audience("nobody", 'did("Never Happens", 1d)')
    for i in range(10):
        eng.identify(f"u{i}", {"plan": "pro" if i in (1, 3) else "free"})
    for i in range(0, 10, 2):
        eng.track(f"u{i}", "Order Completed", {"revenue": 10.0 * i})
    eng.track("u1", "Product Viewed")
    return eng


# --------------------------------------------------------------------------- bitmaps


def test_bitmap_round_trips_through_pyroaring() -> None:
    eng = populated()
    bm = eng.bitmap("buyers")
    assert isinstance(bm, roaring.BitMap)
    assert len(bm) == eng.size("buyers") == 5
    again = roaring.BitMap.deserialize(bm.serialize())
    assert again == bm
    assert len(eng.bitmap("nobody")) == 0


def test_bitmap_with_ids_names_members() -> None:
    eng = populated()
    bm, ids = eng.bitmap_with_ids("buyers")
    assert isinstance(ids, IdMap)
    assert segmint.IdMap is IdMap
    assert len(ids) == len(bm) == 5
    assert sorted(ids.lookup(bm)) == eng.members("buyers")
    assert ids.dense_ids.tolist() == list(bm)
    for dense, ext in zip(ids.dense_ids.tolist(), ids.external_ids, strict=True):
        assert ids[dense] == ext
        assert ids.dense_id(ext) == dense
        assert dense in ids
    with pytest.raises(KeyError):
        ids.dense_id("nobody-like-this")
    missing = max(bm) + 1000
    assert missing not in ids
    with pytest.raises(KeyError):
        ids[missing]
    with pytest.raises(KeyError):
        ids.lookup([missing])


def test_bitmaps_of_different_audiences_combine() -> None:
    eng = populated()
    eng.track("u3", "Order Completed", {"revenue": 1.0})
    buyers, buyer_ids = eng.bitmap_with_ids("buyers")
    pro, pro_ids = eng.bitmap_with_ids("pro")
    both = buyers & pro
    assert buyer_ids.lookup(both) == pro_ids.lookup(both) == ["u3"]
    assert sorted(buyer_ids.lookup(buyers - pro)) == ["u0", "u2", "u4", "u6", "u8"]


def test_bitmap_unknown_audience() -> None:
    eng = populated()
    with pytest.raises(UnknownAudienceError, match="nope"):
        eng.bitmap("nope")
    with pytest.raises(UnknownAudienceError):
        eng.bitmap_with_ids("nope")


# --------------------------------------------------------------------------- lookups


@pytest.mark.parametrize(
    "make",
    [
        lambda ids: np.array(ids),
        lambda ids: np.array(ids, dtype=object),
        lambda ids: np.array(ids, dtype=np.dtypes.StringDType()),
        lambda ids: list(ids),
        lambda ids: tuple(ids),
        lambda ids: pa.array(ids),
        lambda ids: pa.chunked_array([ids[:2], ids[2:]]),
        lambda ids: pa.array(ids).dictionary_encode(),
    ],
    ids=["U", "object", "T", "list", "tuple", "arrow", "chunked", "dictionary"],
)
def test_is_member_array(make: Any) -> None:
    eng = populated()
    ids = ["u0", "u1", "u2", "ghost", "u8", "u0"]
    out = eng.is_member_array(make(ids), "buyers")
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.bool_
    assert out.tolist() == [True, False, True, False, True, True]
    assert out.tolist() == eng.is_member_many(ids, "buyers")


def test_is_member_array_empty() -> None:
    eng = populated()
    out = eng.is_member_array(np.array([], dtype=str), "buyers")
    assert out.shape == (0,)
    assert out.dtype == np.bool_


def test_is_member_array_bad_input() -> None:
    eng = populated()
    with pytest.raises(InvalidArgumentError, match="int64"):
        eng.is_member_array(np.arange(3, dtype=np.int64), "buyers")
    with pytest.raises(InvalidArgumentError, match="float64"):
        eng.is_member_array(np.zeros(2), "buyers")
    with pytest.raises(InvalidArgumentError, match="1-D"):
        eng.is_member_array(np.array([["u0"], ["u1"]]), "buyers")
    with pytest.raises(InvalidArgumentError, match=r"int 7 at index 1"):
        eng.is_member_array(np.array(["u0", 7], dtype=object), "buyers")
    with pytest.raises(InvalidArgumentError, match="int64"):
        eng.is_member_array(pa.array([1, 2]), "buyers")
    with pytest.raises(InvalidArgumentError, match="null"):
        eng.is_member_array(pa.array(["u0", None]), "buyers")
    with pytest.raises(InvalidArgumentError, match="single str"):
        eng.is_member_array("u0", "buyers")
    with pytest.raises(UnknownAudienceError):
        eng.is_member_array(["u0"], "nope")


def test_members_arrow() -> None:
    eng = populated()
    arr = eng.members_arrow("buyers")
    assert isinstance(arr, pa.StringArray)
    assert arr.to_pylist() == eng.members("buyers") == ["u0", "u2", "u4", "u6", "u8"]
    assert len(eng.members_arrow("nobody")) == 0
    with pytest.raises(UnknownAudienceError):
        eng.members_arrow("nope")


# --------------------------------------------------------------------------- Arrow ingest

RULES = {
    "shoes": 'count("Order Completed" where category == "shoes", 30d) >= 2',
    "big": 'sum("Order Completed", revenue, 30d) > 100',
    "ios": 'did("Product Viewed" where context.device.type == "ios", 7d)',
    "pro": 'trait.plan == "pro"',
}


def define(eng: Engine) -> Engine:
    for k, r in RULES.items():
        eng.define_audience(k, r)
    return eng


def state(eng: Engine, users: list[str]) -> dict[str, Any]:
    return {
        "members": {k: eng.members(k) for k in RULES},
        "traits": {u: eng.traits(u) for u in users},
    }


def dict_events() -> list[dict[str, Any]]:
    ts = [f"2025-12-31T23:{m:02d}:00.250Z" for m in range(10)]
    return [
        {"type": "identify", "userId": "a", "traits": {"plan": "pro", "age": 30}},
        {
            "type": "track",
            "userId": "a",
            "event": "Order Completed",
            "properties": {"category": "shoes", "revenue": 80.5},
            "timestamp": ts[1],
            "messageId": "m1",
        },
        {
            "type": "track",
            "userId": "a",
            "event": "Order Completed",
            "properties": {"category": "shoes", "revenue": 30},
            "timestamp": ts[2],
            "messageId": "m2",
        },
        {
            "type": "track",
            "userId": 'b "quoted" \\ \n\t é 🎉',
            "event": "Product Viewed",
            "properties": {"sku": "x"},
            "context": {"device": {"type": "ios"}},
            "timestamp": ts[3],
        },
        {"type": "identify", "userId": "c", "traits": {"plan": "free", "address": {"city": "Z"}}},
    ]


def events_table(events: list[dict[str, Any]]) -> Any:
    """Events as an Arrow table with JSON-text columns and ISO timestamps."""

    def text(v: Any) -> str | None:
        return None if v is None else json.dumps(v)

    return pa.table(
        {
            "type": [e["type"] for e in events],
            "user_id": [e.get("userId") for e in events],
            "event": pa.array([e.get("event") for e in events], pa.string()),
            "timestamp": pa.array([e.get("timestamp") for e in events], pa.string()),
            "message_id": pa.array([e.get("messageId") for e in events], pa.string()),
            "properties": [text(e.get("properties")) for e in events],
            "context": pa.array([text(e.get("context")) for e in events], pa.string()),
            "traits": [text(e.get("traits")) for e in events],
        }
    )


USERS = ["a", 'b "quoted" \\ \n\t é 🎉', "c"]


def test_ingest_arrow_matches_ingest() -> None:
    events = dict_events()
    ref = define(engine())
    assert not ref.ingest(events).errors
    eng = define(engine())
    result = eng.ingest_arrow(events_table(events))
    assert result.errors == []
    assert result.accepted == len(events)
    assert result.last_seq == eng.last_seq
    assert state(eng, USERS) == state(ref, USERS)
    assert eng.members("shoes") == ["a"]
    assert eng.members("ios") == [USERS[1]]


@pytest.mark.parametrize("form", ["iso", "int64", "ts_ms", "ts_us_paris", "ts_s"])
def test_timestamp_forms(form: str) -> None:
    base = NOW_MS - 10 * MIN - 30_000 + 250  # 23:49:30.250, then 23:50:30.250
    ms = [base, base + MIN]
    col: Any = {
        "iso": pa.array(["2025-12-31T23:49:30.250Z", "2026-01-01T00:50:30.250+01:00"]),
        "int64": pa.array(ms, pa.int64()),
        "ts_ms": pa.array(ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "ts_us_paris": pa.array([m * 1000 for m in ms], pa.int64()).cast(
            pa.timestamp("us", tz="Europe/Paris")
        ),
        "ts_s": pa.array([m // 1000 for m in ms], pa.int64()).cast(pa.timestamp("s", tz="UTC")),
    }[form]
    eng = engine()
    eng.define_audience("recent", 'did("Order Completed", 10m)')
    t = pa.table({"user_id": ["a", "b"], "event": ["Order Completed"] * 2, "timestamp": col})
    assert eng.ingest_arrow(t).errors == []
    # a's order is 10.5 min old: out; b's lapses 30 s from now.
    assert eng.members("recent") == ["b"]
    eng.advance(datetime(2026, 1, 1, 0, 0, 29, tzinfo=UTC))
    assert eng.members("recent") == ["b"]
    eng.advance(datetime(2026, 1, 1, 0, 0, 31, tzinfo=UTC))
    assert eng.members("recent") == []


def test_null_timestamp_is_now_and_null_columns() -> None:
    eng = engine()
    eng.define_audience("recent", 'did("X", 1m)')
    t = pa.table(
        {
            "user_id": ["a"],
            "event": ["X"],
            "timestamp": pa.array([None], pa.int64()),
            "message_id": pa.nulls(1),
            "properties": pa.nulls(1),
        }
    )
    assert eng.ingest_arrow(t).errors == []
    assert eng.members("recent") == ["a"]


def test_struct_map_and_list_columns() -> None:
    eng = engine()
    eng.define_audience("shoes", 'count("Order Completed" where category == "shoes", 30d) >= 1')
    eng.define_audience("big", 'sum("Order Completed", revenue, 30d) > 100')
    eng.define_audience("ios", 'did("Order Completed" where context.device.type == "ios", 30d)')
    eng.define_audience("gift", 'did("Order Completed" where gift == true, 30d)')
    props = pa.array(
        [
            {"category": "shoes", "revenue": 150.0, "gift": True, "tags": ["a", "b"], "n": None},
            {"category": "hats", "revenue": 20.0, "gift": False, "tags": [], "n": 3},
            None,
        ],
        pa.struct(
            [
                ("category", pa.dictionary(pa.int32(), pa.string())),
                ("revenue", pa.float64()),
                ("gift", pa.bool_()),
                ("tags", pa.list_(pa.string())),
                ("n", pa.int64()),
            ]
        ),
    )
    ctx = pa.array(
        [[("device", {"type": "ios"})], [("device", {"type": "web"})], None],
        pa.map_(pa.string(), pa.struct([("type", pa.string())])),
    )
    created = datetime(2025, 6, 1, 12, tzinfo=UTC)
    traits = pa.array(
        [None, None, {"plan": "pro", "created_at": created, "address": {"city": 'Pa"ris'}}],
        pa.struct(
            [
                ("plan", pa.string()),
                ("created_at", pa.timestamp("ms", tz="UTC")),
                ("address", pa.struct([("city", pa.string())])),
            ]
        ),
    )
    t = pa.table(
        {
            "type": ["track", "track", "identify"],
            "user_id": ["a", "b", "c"],
            "event": ["Order Completed", "Order Completed", None],
            "properties": props,
            "context": ctx,
            "traits": traits,
        }
    )
    result = eng.ingest_arrow(t)
    assert result.errors == []
    assert eng.members("shoes") == eng.members("big") == eng.members("ios") == ["a"]
    assert eng.members("gift") == ["a"]
    assert eng.traits("c") == {
        "plan": "pro",
        "created_at": "2025-06-01T12:00:00.000Z",
        "address.city": 'Pa"ris',
    }


def test_struct_null_field_leaves_trait_alone() -> None:
    eng = engine()
    eng.identify("a", {"plan": "pro", "country": "US"})
    traits = pa.array([{"plan": None, "country": "FR"}])
    eng.ingest_arrow(pa.table({"type": ["identify"], "user_id": ["a"], "traits": traits}))
    assert eng.traits("a") == {"plan": "pro", "country": "FR"}
    # A JSON null deletes, as in ingest().
    eng.ingest_arrow(pa.table({"user_id": ["a"], "traits": ['{"plan": null}']}))
    assert eng.traits("a") == {"country": "FR"}


def test_type_inferred_from_event_and_extra_columns_ignored() -> None:
    eng = engine()
    eng.define_audience("x", 'did("X", 1d)')
    t = pa.table(
        {
            "user_id": ["a", "b"],
            "event": ["X", None],
            "traits": [None, '{"plan": "pro"}'],
            "ignored": [1, 2],
        }
    )
    assert eng.ingest_arrow(t).errors == []
    assert eng.members("x") == ["a"]
    assert eng.traits("b") == {"plan": "pro"}


def test_json_text_with_line_breaks_and_empty_strings() -> None:
    eng = engine()
    t = pa.table(
        {
            "type": ["identify", "identify"],
            "user_id": ["a", "b"],
            "traits": ['{\n  "plan":\r\n "pro"\n}', ""],
        }
    )
    assert eng.ingest_arrow(t).errors == []
    assert eng.traits("a") == {"plan": "pro"}
    assert eng.traits("b") == {}


def test_anonymous_id_and_large_string_columns() -> None:
    eng = engine()
    t = pa.table(
        {
            "type": pa.array(["identify"] * 2, pa.large_string()),
            "user_id": pa.array([None, "u"], pa.string_view()),
            "anonymous_id": pa.array(["anon", None], pa.large_string()),
            "traits": pa.array(['{"k": 1}', '{"k": 2}'], pa.large_string()),
        }
    )
    assert eng.ingest_arrow(t).errors == []
    assert eng.traits("anon") == {"k": 1}
    assert eng.traits("u") == {"k": 2}


def test_per_row_errors_by_index_across_chunks() -> None:
    eng = engine()
    eng.define_audience("x", 'did("X", 1d)')
    props = pa.array(
        [{"v": x} for x in (1.0, 1.0, float("nan"), 1.0, 1.0, 1.0, 1.0, float("inf"))],
        pa.struct([("v", pa.float64())]),
    )
    t = pa.table(
        {
            "type": ["track", "track", "track", "page", "track", "track", "track", "track"],
            "user_id": ["u0", None, "u2", "u3", "u4", "u5", "u6", "u7"],
            "event": ["X"] * 8,
            "timestamp": ["2025-12-31T23:00:00Z"] * 5 + ["yesterday", None, None],
            "properties": props,
        }
    )
    for chunk_rows in (100, 3, 1):
        eng = engine()
        eng.define_audience("x", 'did("X", 1d)')
        result = eng.ingest_arrow(t, chunk_rows=chunk_rows)
        assert [e.index for e in result.errors] == [1, 2, 3, 5, 7], chunk_rows
        codes = {e.index: e for e in result.errors}
        assert "user id" in codes[1].message
        assert "properties.v" in codes[2].message and "finite" in codes[2].message
        assert "page" in codes[3].message
        assert "timestamp" in codes[5].message
        assert result.accepted == 3
        assert eng.members("x") == ["u0", "u4", "u6"]


def test_rows_converted_on_many_threads_keep_their_error_indexes() -> None:
    """A chunk of 256 rows or more is converted on the engine's threads: the
    bad rows' errors keep their indexes, and the rest is applied as when
    converted row by row (small chunks)."""
    bad = {5, 300, 301, 777, 999}
    t = pa.table(
        {
            "type": ["track"] * 1_000,
            "user_id": [None if i in bad else f"u{i % 50}" for i in range(1_000)],
            "event": [f"E{i % 3}" for i in range(1_000)],
            "timestamp": ["2025-12-31T23:00:00Z"] * 1_000,
        }
    )
    results = []
    for chunk_rows in (1_000, 7):
        eng = Engine(clock="manual", now=datetime(2026, 1, 1, tzinfo=UTC), threads=2)
        eng.define_audience("e0", 'did("E0", 1d)')
        result = eng.ingest_arrow(t, chunk_rows=chunk_rows)
        assert [e.index for e in result.errors] == sorted(bad), chunk_rows
        assert result.accepted == 1_000 - len(bad)
        results.append((changes(eng), eng.members("e0")))
    assert results[0] == results[1]


def test_malformed_json_text_is_a_row_error() -> None:
    eng = engine()
    t = pa.table(
        {
            "user_id": ["a", "b", "c", "d"],
            "event": ["X"] * 4,
            "properties": ['{"ok": 1}', '{"broken": ', "[1, 2]", '{"ok": 2}'],
        }
    )
    result = eng.ingest_arrow(t)
    assert [e.index for e in result.errors] == [1, 2]
    assert result.accepted == 2


def test_record_batch_and_reader_inputs() -> None:
    events = dict_events()
    ref = define(engine())
    ref.ingest(events)
    table = events_table(events)
    batch = table.to_batches()[0]
    e1 = define(engine())
    assert e1.ingest_arrow(batch, chunk_rows=2).errors == []
    e2 = define(engine())
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=2))
    assert e2.ingest_arrow(reader).errors == []
    assert state(e1, USERS) == state(e2, USERS) == state(ref, USERS)


def test_empty_table() -> None:
    eng = engine()
    t = pa.table({"user_id": pa.array([], pa.string()), "event": pa.array([], pa.string())})
    result = eng.ingest_arrow(t)
    assert (result.accepted, result.errors, result.last_seq) == (0, [], 0)


@pytest.mark.parametrize(
    ("columns", "fragments"),
    [
        ({"userId": ["a"], "event": ["X"]}, ["'user_id'", "userId"]),
        ({"user_id": [1], "event": ["X"]}, ["'user_id'", "int64", "string"]),
        ({"user_id": ["a"], "event": [1.5]}, ["'event'", "double"]),
        ({"user_id": ["a"], "timestamp": [1.5]}, ["'timestamp'", "double", "timestamp[ms"]),
        (
            {"user_id": ["a"], "timestamp": pa.array([0], pa.timestamp("ms"))},
            ["'timestamp'", "timezone"],
        ),
        ({"user_id": ["a"], "properties": [1]}, ["'properties'", "int64", "struct"]),
        ({"user_id": ["a"], "traits": pa.array([b"{}"])}, ["'traits'", "binary"]),
        (
            {"user_id": ["a"], "properties": pa.array([{"b": b"x"}])},
            ["'properties.b'", "binary"],
        ),
        (
            {
                "user_id": ["a"],
                "properties": pa.array([[(1, "x")]], pa.map_(pa.int64(), pa.string())),
            },
            ["'properties'", "string keys"],
        ),
        (
            {
                "user_id": ["a"],
                "traits": pa.array([{"t": 0}], pa.struct([("t", pa.timestamp("s"))])),
            },
            ["'traits.t'", "timezone"],
        ),
    ],
    ids=[
        "no-user_id",
        "user_id-int",
        "event-float",
        "timestamp-float",
        "timestamp-naive",
        "properties-int",
        "traits-binary",
        "nested-binary",
        "map-int-keys",
        "nested-naive-timestamp",
    ],
)
def test_malformed_schema(columns: dict[str, Any], fragments: list[str]) -> None:
    eng = engine()
    with pytest.raises(InvalidArgumentError) as err:
        eng.ingest_arrow(pa.table(columns))
    for f in fragments:
        assert f in str(err.value)
    assert eng.user_count == 0


def test_not_arrow() -> None:
    with pytest.raises(InvalidArgumentError, match="dict"):
        engine().ingest_arrow({"user_id": ["a"]})
    with pytest.raises(InvalidArgumentError, match="chunk_rows"):
        engine().ingest_arrow(pa.table({"user_id": ["a"]}), chunk_rows=0)


_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
)


@settings(max_examples=40)
@given(
    rows=st.lists(
        st.tuples(_text, _text, st.dictionaries(_text, _scalar, max_size=3)),
        min_size=1,
        max_size=6,
    )
)
def test_escaping_matches_ingest(rows: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Any user id, event name and property value travels through Arrow
    exactly as through ingest(): same accepted rows, errors and profiles."""
    events = [{"type": "identify", "userId": u, "traits": {"k": e, **p}} for u, e, p in rows] + [
        {"type": "track", "userId": u, "event": e, "properties": p} for u, e, p in rows
    ]
    ref = engine()
    want = ref.ingest(events)
    eng = engine()
    got = eng.ingest_arrow(events_table(events), chunk_rows=4)
    assert [e.index for e in got.errors] == [e.index for e in want.errors]
    assert got.accepted == want.accepted
    for u, _, _ in rows:
        assert eng.traits(u) == ref.traits(u)


# --------------------------------------------------------------------------- native Arrow path
# The Rust glue reads the Arrow C stream into the core's events; these check it
# against the JSON path on the same events, row errors by index across record
# batches and pieces, and the engine's own schema check (without the facade's).


def changes(eng: Engine) -> list[tuple[Any, ...]]:
    return [
        (c.seq, c.audience, c.user_id, c.kind, c.at, c.reason, c.computed_trait, c.old, c.new)
        for c in eng.changes(0)
    ]


def _nested_events() -> list[dict[str, Any]]:
    """Track and identify events whose payloads exercise every JSON kind."""
    return [
        {
            "type": "identify",
            "userId": f"u{i}",
            "traits": {
                "plan": ["free", "pro", "enterprise"][i % 3],
                "ltv": 100 * i + 0.5,
                "vip": i % 2 == 0,
                "address": {"city": f"c{i % 4}", "zip": 1000 + i},
                "tags": ["a", "b"] if i % 2 else [],
            },
            "timestamp": f"2025-12-31T2{i % 4}:00:00.000Z",
        }
        for i in range(12)
    ] + [
        {
            "type": "track",
            "userId": f"u{i}",
            "event": ["Order Completed", "Product Viewed"][i % 2],
            "properties": {
                "category": ["shoes", "hats", "bags"][i % 3],
                "revenue": 10.0 * i,
                "gift": i % 3 == 0,
                "count": i,
                "item": {"sku": f"s{i}", "size": {"eu": 40 + i % 3}},
            },
            "context": {"device": {"type": ["ios", "web"][i % 2]}},
            "timestamp": f"2025-12-31T23:{i:02d}:00.000Z",
            "messageId": f"m{i}",
        }
        for i in range(24)
    ]


NESTED_RULES = {
    "shoes": 'count("Order Completed" where category == "shoes", 30d) >= 1',
    "big": 'sum("Order Completed", revenue, 30d) > 100',
    "ios_gift": 'did("Order Completed" where context.device.type == "ios" and gift == true, 7d)',
    "sized": 'did("Product Viewed" where item.size.eu == 41, 7d)',
    "pro_city": 'trait.plan == "pro" and trait.address.city == "c1" or trait.vip == true',
    "tagged": 'trait.tags contains "a" and trait.ltv > 300',
}


def _nested_engine() -> Engine:
    eng = engine()
    for k, r in NESTED_RULES.items():
        eng.define_audience(k, r)
    eng.define_computed_trait("spend", 'sum("Order Completed", revenue, 30d)')
    eng.define_computed_trait("sizes", 'unique("Product Viewed", item.size.eu)')
    return eng


def _structs(events: list[dict[str, Any]]) -> Any:
    """The events as a table with struct payload columns and a timestamp column."""
    return pa.table(
        {
            "type": [e["type"] for e in events],
            "user_id": [e["userId"] for e in events],
            "event": pa.array([e.get("event") for e in events], pa.string()),
            "timestamp": pa.array(
                [datetime.fromisoformat(e["timestamp"]) for e in events],
                pa.timestamp("ms", tz="UTC"),
            ),
            "message_id": pa.array([e.get("messageId") for e in events], pa.string()),
            "properties": pa.array([e.get("properties") for e in events]),
            "context": pa.array([e.get("context") for e in events]),
            "traits": pa.array([e.get("traits") for e in events]),
        }
    )


def _final(eng: Engine) -> dict[str, Any]:
    users = [f"u{i}" for i in range(24)]
    return {
        "members": {k: eng.members(k) for k in NESTED_RULES},
        "traits": {u: eng.traits(u) for u in users},
        "computed": {
            u: (eng.computed_value(u, "spend"), eng.computed_value(u, "sizes")) for u in users
        },
        "changes": changes(eng),
    }


@pytest.mark.parametrize("chunk_rows", [100_000, 7, 1])
def test_struct_and_json_text_payloads_give_the_same_results(chunk_rows: int) -> None:
    events = _nested_events()
    by_json = _nested_engine()
    assert by_json.ingest(json.dumps(events).encode()).errors == []
    by_text = _nested_engine()
    assert by_text.ingest_arrow(events_table(events), chunk_rows=chunk_rows).errors == []
    by_struct = _nested_engine()
    assert by_struct.ingest_arrow(_structs(events), chunk_rows=chunk_rows).errors == []
    want = _final(by_json)
    assert any(want["members"].values()) and want["changes"]
    assert _final(by_text) == want
    assert _final(by_struct) == want
    for eng in (by_json, by_text, by_struct):
        eng.advance("2026-01-20T00:00:00Z")
    assert changes(by_struct) == changes(by_text) == changes(by_json)


def test_workload_table_equals_its_json() -> None:
    """The generated standard workload through ingest_arrow (JSON-text payloads,
    int64 timestamps; and struct payloads) and through ingest(bytes): the same
    memberships and the same change log, also after time passes."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benches.ingest_paths import struct_table
    from benches.workload import (
        WorkloadSpec,
        generate_audiences,
        generate_events,
        iter_segment_json,
    )

    spec = WorkloadSpec(users=400, events=4_000, audiences=60, days=30)
    table = generate_events(spec)
    audiences = [(k, text) for k, text, _ in generate_audiences(spec)]
    end = datetime.fromtimestamp(spec.end_ms / 1000, UTC)

    def fresh() -> Engine:
        eng = Engine(clock="manual", now=end, shards=3)
        eng.define_audiences(audiences)
        eng.define_computed_trait("views", 'count("Product Viewed", 7d)')
        return eng

    by_json = fresh()
    for chunk in iter_segment_json(table, 1_000):
        assert by_json.ingest(chunk).errors == []
    by_arrow = fresh()
    assert by_arrow.ingest_arrow(table, chunk_rows=1_000).errors == []
    by_struct = fresh()
    assert by_struct.ingest_arrow(struct_table(table), chunk_rows=1_000).errors == []
    assert len(changes(by_json)) > 100
    keys = [k for k, _ in audiences]
    for eng in (by_arrow, by_struct):
        assert changes(eng) == changes(by_json)
        assert {k: eng.members(k) for k in keys} == {k: by_json.members(k) for k in keys}
    for eng in (by_json, by_arrow, by_struct):
        eng.advance(datetime.fromtimestamp(spec.end_ms / 1000 + 40 * 86_400, UTC))
    assert changes(by_arrow) == changes(by_struct) == changes(by_json)


def test_row_errors_by_index_across_record_batches() -> None:
    """Errors carry the row index in the whole stream, whatever the record
    batches and the pieces; each bad row fails alone with a clear message."""
    rows = [
        ("track", "u0", "X", None, None),
        ("track", "u1", "X", '{"bad": ', None),  # malformed JSON text
        ("track", "u2", "", None, None),  # empty event name
        ("identify", "u3", None, None, '{"tags": [1, 2]}'),  # traits: list of numbers
        ("track", "u4", "X", "[1]", None),  # not an object
        ("track", "u5", "X", None, None),
        ("alias", "u6", None, None, None),  # an alias without a previous_id
        ("track", "u7", "X", '{"k": "' + "x" * 40_000 + '"}', None),  # too large
        ("track", "u8", "X", '{"ok": 1}', None),
        ("track", "u9", None, None, None),  # track without a name
    ]
    table = pa.table(
        {
            "type": [r[0] for r in rows],
            "user_id": [r[1] for r in rows],
            "event": pa.array([r[2] for r in rows], pa.string()),
            "properties": pa.array([r[3] for r in rows], pa.string()),
            "traits": pa.array([r[4] for r in rows], pa.string()),
        }
    )
    expected = {
        1: "'properties' is not valid JSON",
        2: "'event' name is empty",
        3: "'tags' is a list holding a number",
        4: "'properties' must be an object",
        6: "an alias call needs a non-empty 'previous_id'",
        7: "event is too large",
        9: "needs an 'event' name",
    }
    for sizes, chunk_rows in [((10,), 100), ((3, 3, 4), 100), ((4, 6), 3), ((1,) * 10, 1)]:
        batches, start = [], 0
        for n in sizes:
            batches.append(table.slice(start, n).to_batches()[0])
            start += n
        reader = pa.RecordBatchReader.from_batches(table.schema, batches)
        eng = engine()
        eng.define_audience("x", 'did("X", 1d)')
        result = eng.ingest_arrow(reader, chunk_rows=chunk_rows)
        got = {e.index: e for e in result.errors}
        assert sorted(got) == sorted(expected), (sizes, chunk_rows)
        for i, fragment in expected.items():
            assert fragment in got[i].message, (i, got[i].message)
            code = "limit_exceeded" if i == 7 else "invalid_event"
            assert got[i].code == code
        assert result.accepted == 3
        assert eng.members("x") == ["u0", "u5", "u8"]


@pytest.mark.parametrize(
    ("columns", "fragments"),
    [
        ({"userId": ["a"]}, ["'user_id'"]),
        ({"user_id": [1]}, ["'user_id'", "Int64"]),
        ({"user_id": ["a"], "timestamp": [1.5]}, ["'timestamp'", "Float64"]),
        ({"user_id": ["a"], "timestamp": pa.array([0], pa.timestamp("ms"))}, ["timezone"]),
        ({"user_id": ["a"], "properties": [1]}, ["'properties'", "Int64"]),
        ({"user_id": ["a"], "properties": pa.array([{"b": b"x"}])}, ["'properties.b'"]),
        (
            {"user_id": ["a"], "traits": pa.array([[(1, "x")]], pa.map_(pa.int64(), pa.string()))},
            ["'traits'", "string keys"],
        ),
        (
            {
                "user_id": ["a"],
                "traits": pa.array([{"t": [0]}], pa.struct([("t", pa.list_(pa.timestamp("s")))])),
            },
            ["'traits.t[]'", "timezone"],
        ),
    ],
)
def test_engine_checks_the_schema_itself(columns: dict[str, Any], fragments: list[str]) -> None:
    """The engine refuses a bad schema before applying anything, also when
    called without the facade's check (its messages use Arrow's type names)."""
    eng = engine()
    with pytest.raises(InvalidArgumentError) as err:
        eng._core.ingest_arrow(pa.table(columns).to_reader())
    for f in fragments:
        assert f in str(err.value), str(err.value)
    assert eng.user_count == 0


def test_not_a_stream_and_stream_errors() -> None:
    eng = engine()
    with pytest.raises(InvalidArgumentError, match="Arrow stream"):
        eng._core.ingest_arrow({"user_id": ["a"]})
    with pytest.raises(InvalidArgumentError, match="chunk_rows"):
        eng._core.ingest_arrow(pa.table({"user_id": ["a"]}), 0)
    schema = pa.schema([("user_id", pa.string()), ("event", pa.string())])

    def failing() -> Any:
        yield pa.record_batch([pa.array(["a"]), pa.array(["X"])], schema=schema)
        raise ValueError("the source broke")

    reader = pa.RecordBatchReader.from_batches(schema, failing())
    with pytest.raises(InvalidArgumentError, match="the source broke"):
        eng.ingest_arrow(reader)
    assert eng.user_count == 1  # the first batch stays applied


def test_more_value_types() -> None:
    """Dictionary, decimal, date, float32, nested lists and maps with null
    values, big record batches: as their JSON forms."""
    import decimal

    props = pa.array(
        [
            {
                "category": "shoes",
                "price": decimal.Decimal("12.50"),
                "day": datetime(2025, 12, 30).date(),
                "ratio": 0.5,
                "sizes": [[40, 41]],
            },
            None,
        ],
        pa.struct(
            [
                ("category", pa.dictionary(pa.int8(), pa.string())),
                ("price", pa.decimal128(6, 2)),
                ("day", pa.date32()),
                ("ratio", pa.float32()),
                ("sizes", pa.list_(pa.list_(pa.int64()))),
            ]
        ),
    )
    traits = pa.array([None, [("plan", "pro"), ("old", None)]], pa.map_(pa.string(), pa.string()))
    eng = engine()
    eng.identify("b", {"old": "x", "keep": "y"})
    eng.define_audience("pricey", 'sum("Buy", price, 1d) > 12 and last("Buy", day) == "2025-12-30"')
    eng.define_audience("half", 'avg("Buy", ratio) == 0.5')
    t = pa.table(
        {
            "user_id": pa.array(["a", "b"]).dictionary_encode(),
            "event": ["Buy", None],
            "properties": props,
            "traits": traits,
        }
    )
    assert eng.ingest_arrow(t).errors == []
    assert eng.members("pricey") == eng.members("half") == ["a"]
    # A map's null value deletes (as JSON null does); a struct's null field does not.
    assert eng.traits("b") == {"plan": "pro", "keep": "y"}


# --------------------------------------------------------------------------- Parquet


def test_export_parquet(tmp_path: Path) -> None:
    eng = populated()
    eng.advance("2026-01-01T00:05:00Z")
    eng.track("u9", "Order Completed")
    path = tmp_path / "buyers.parquet"
    assert eng.export_parquet("buyers", path) == 6
    t = pq.read_table(path)
    assert t.schema.field("entered_at").type == pa.timestamp("ms", tz="UTC")
    assert t.column("user_id").to_pylist() == eng.members("buyers")
    assert t.column("entered_at").to_pylist() == [
        eng.entered_at(u, "buyers") for u in eng.members("buyers")
    ]
    assert eng.export_parquet("nobody", tmp_path / "empty.parquet") == 0
    with pytest.raises(UnknownAudienceError):
        eng.export_parquet("nope", tmp_path / "x.parquet")


def test_export_profiles_parquet(tmp_path: Path) -> None:
    eng = populated()
    path = tmp_path / "profiles.parquet"
    assert eng.export_profiles_parquet(path, audience="pro") == 2
    rows = pq.read_table(path).to_pylist()
    assert [r["user_id"] for r in rows] == ["u1", "u3"]
    assert json.loads(rows[0]["traits"]) == {"plan": "pro"}
    assert rows[0]["audiences"] == ["pro"]
    assert eng.export_profiles_parquet(path, ["u2", "u1"]) == 2
    rows = pq.read_table(path).to_pylist()
    assert [(r["user_id"], r["audiences"]) for r in rows] == [("u2", ["buyers"]), ("u1", ["pro"])]
    with pytest.raises(UnknownUserError, match="ghost"):
        eng.export_profiles_parquet(path, ["u1", "ghost"])
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        eng.export_profiles_parquet(path)
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        eng.export_profiles_parquet(path, ["u1"], audience="pro")


def test_import_parquet_round_trip(tmp_path: Path) -> None:
    events = dict_events() * 3  # repeats: duplicates by message id, re-applied traits
    path = tmp_path / "events.parquet"
    pq.write_table(events_table(events), path, row_group_size=4)
    ref = define(engine())
    want = ref.ingest_arrow(events_table(events))
    eng = define(engine())
    got = eng.import_parquet(path, batch_rows=3)
    assert (got.accepted, got.duplicates, got.errors) == (want.accepted, want.duplicates, [])
    assert got.duplicates == 4
    assert state(eng, USERS) == state(ref, USERS)


def test_import_parquet_errors(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pq.write_table(pa.table({"user_id": ["a", None, "c"], "event": ["X"] * 3}), path)
    result = engine().import_parquet(path, batch_rows=1)
    assert [e.index for e in result.errors] == [1]
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"user": ["a"], "event": ["X"]}), bad)
    eng = engine()
    with pytest.raises(InvalidArgumentError, match="'user_id'"):
        eng.import_parquet(bad)
    assert eng.user_count == 0
    with pytest.raises(InvalidArgumentError, match="batch_rows"):
        eng.import_parquet(path, batch_rows=0)


def test_ingest_dispatches_arrow_tables() -> None:
    import pyarrow as pa

    eng = segmint.Engine(clock="manual", now="2026-01-01T00:00:00Z")
    eng.define_audience("buyers", 'did("Buy", 1d)')
    table = pa.table({"user_id": ["a", "b"], "event": ["Buy", "Look"]})
    result = eng.ingest(table)
    assert result.accepted == 2 and not result.errors
    assert eng.members("buyers") == ["a"]
