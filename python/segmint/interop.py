"""Data interop: numpy arrays, pyarrow tables, pyroaring bitmaps and Parquet.

The functions here back the ``Engine`` methods ``bitmap``, ``bitmap_with_ids``,
``is_member_array``, ``members_arrow``, ``ingest_arrow``, ``export_parquet``,
``export_profiles_parquet`` and ``import_parquet`` (see docs/interop.md). They
need the ``data`` extra (numpy, pyarrow, pyroaring); ``import segmint`` does
not import them.

Arrow events become Segment-spec JSON with pyarrow.compute string kernels (one
pass per column, no Python object per row) and go to the engine as
newline-delimited JSON, so a malformed row is an error at its own index and
never affects its neighbours.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
from pyroaring import BitMap

from segmint import _core
from segmint.errors import InvalidArgumentError, UnknownUserError
from segmint.events import BatchError, IngestResult

ArrowEvents: TypeAlias = Any
"""What :func:`ingest_arrow` accepts: a ``pyarrow.Table``, ``RecordBatch``,
``RecordBatchReader`` or any object exporting ``__arrow_c_stream__`` (e.g. a
polars DataFrame). (``Any`` because pyarrow ships no type information.)"""

UserIds: TypeAlias = npt.NDArray[Any] | Sequence[str] | Any
"""What :func:`is_member_array` accepts: a 1-D numpy array of ``str`` (dtype
``U``, ``T`` or ``object``), a list of ``str``, or a pyarrow string array."""

BoolArray: TypeAlias = npt.NDArray[np.bool_]
"""A numpy array of ``bool``."""

StrPath: TypeAlias = str | os.PathLike[str]
"""A file system path."""

#: Event columns read by :func:`ingest_arrow` (any other column is ignored).
EVENT_COLUMNS: tuple[str, ...] = (
    "type",
    "user_id",
    "anonymous_id",
    "event",
    "timestamp",
    "message_id",
    "properties",
    "context",
    "traits",
)

#: Largest JSON payload handed to the engine in one call (its limit is 64 MiB).
MAX_CHUNK_BYTES = 32 * 1024 * 1024

_DAY_MS = 86_400_000
_NEEDS_ESCAPE = r'["\\\x00-\x1f]'
_CONTROL = r"[\x00-\x1f]"
_JSON_COLUMNS = ("properties", "context", "traits")
_TEXT_COLUMNS = ("type", "user_id", "anonymous_id", "event", "message_id")
_TEXT_HELP = "string (or large_string, string_view, dictionary<string>)"


# --------------------------------------------------------------------------- bitmaps


class IdMap:
    """Maps the engine's dense user ids (the integers in an audience bitmap) to
    external user ids.

    Dense ids are engine-wide and stable for the engine's lifetime, so bitmaps
    of different audiences can be combined with pyroaring (``a & b``, ``a - b``)
    and the result named with the map of any audience that holds those ids.
    A map only knows the ids of the bitmap it came with. It is lazy: external
    ids are fetched from the engine when asked for, so making one costs no
    Python work per member.
    """

    __slots__ = ("_core", "_dense")

    def __init__(self, core: _core.Engine, dense_ids: npt.NDArray[np.uint32]) -> None:
        self._core = core
        self._dense = dense_ids

    def __len__(self) -> int:
        return len(self._dense)

    def __contains__(self, dense_id: object) -> bool:
        if not isinstance(dense_id, int | np.integer):
            return False
        i = int(np.searchsorted(self._dense, dense_id))
        return i < len(self._dense) and int(self._dense[i]) == int(dense_id)

    def __getitem__(self, dense_id: int) -> str:
        return self.external_id(dense_id)

    def __repr__(self) -> str:
        return f"IdMap({len(self)} ids)"

    @property
    def dense_ids(self) -> npt.NDArray[np.uint32]:
        """The dense ids, ascending (read-only)."""
        view = self._dense.view()
        view.flags.writeable = False
        return view

    @property
    def external_ids(self) -> list[str]:
        """The external ids, in the order of :attr:`dense_ids` (built on each call)."""
        return self._core.user_ids(self._dense.astype("<u4").tobytes())

    def external_id(self, dense_id: int) -> str:
        """The external id of one dense id; ``KeyError`` if this map lacks it."""
        if dense_id not in self:
            raise KeyError(dense_id)
        return self._core.user_ids(np.array([dense_id], dtype="<u4").tobytes())[0]

    def lookup(self, dense_ids: BitMap | Iterable[int]) -> list[str]:
        """External ids of many dense ids (e.g. a bitmap from ``a & b``), in the
        order given (ascending for a bitmap); ``KeyError`` names the first
        dense id this map lacks."""
        if isinstance(dense_ids, BitMap):
            wanted = np.frombuffer(dense_ids.to_array(), dtype=np.uint32).astype(np.int64)
        else:
            wanted = np.fromiter(dense_ids, dtype=np.int64)
        pos = np.searchsorted(self._dense, wanted)
        found = pos < len(self._dense)
        found[found] = self._dense[pos[found]] == wanted[found]
        if not bool(found.all()):
            raise KeyError(int(wanted[int(np.argmin(found))]))
        return self._core.user_ids(wanted.astype("<u4").tobytes())

    def dense_id(self, external_id: str) -> int:
        """The dense id of an external id; ``KeyError`` if this map lacks it."""
        dense = self._core.dense_id(external_id)
        if dense is None or dense not in self:
            raise KeyError(external_id)
        return dense


def bitmap_with_ids(core: _core.Engine, audience: str) -> tuple[BitMap, IdMap]:
    """Members as a ``pyroaring.BitMap`` of dense ids and the (lazy)
    :class:`IdMap` naming them."""
    bm = BitMap.deserialize(core.bitmap(audience))
    dense = np.frombuffer(bm.to_array(), dtype=np.uint32)
    return bm, IdMap(core, dense)


def bitmap(core: _core.Engine, audience: str) -> BitMap:
    """Members as a ``pyroaring.BitMap`` of dense ids."""
    return BitMap.deserialize(core.bitmap(audience))


# --------------------------------------------------------------------------- lookups


def _user_id_list(user_ids: UserIds) -> list[str]:
    if isinstance(user_ids, pa.ChunkedArray | pa.Array):
        if not _is_text(user_ids.type):
            raise InvalidArgumentError(
                f"user_ids must be strings: got a pyarrow array of type {user_ids.type}"
            )
        if user_ids.null_count:
            raise InvalidArgumentError(
                f"user_ids has {user_ids.null_count} null(s); user ids must be strings"
            )
        return cast(list[str], user_ids.to_pylist())
    if isinstance(user_ids, np.ndarray):
        if user_ids.ndim != 1:
            raise InvalidArgumentError(f"user_ids must be a 1-D array: got shape {user_ids.shape}")
        if user_ids.dtype.kind not in "UTO":
            raise InvalidArgumentError(
                f"user_ids must be strings: got a numpy array of dtype {user_ids.dtype}; "
                "expected dtype str (U), StringDType (T) or object holding str "
                "(e.g. arr.astype(str))"
            )
        return cast(list[str], user_ids.tolist())
    if isinstance(user_ids, str | bytes):
        raise InvalidArgumentError(
            "user_ids must be a sequence of user ids, not a single "
            f"{type(user_ids).__name__}; use is_member() for one user"
        )
    return list(user_ids)


def is_member_array(core: _core.Engine, user_ids: UserIds, audience: str) -> BoolArray:
    """Membership of many users in one audience as a numpy ``bool`` array."""
    ids = _user_id_list(user_ids)
    try:
        flags = core.is_member_many(ids, audience)
    except TypeError:
        i, bad = next(((i, x) for i, x in enumerate(ids) if not isinstance(x, str)), (-1, None))
        raise InvalidArgumentError(
            f"user_ids must all be str: found {type(bad).__name__} {bad!r} at index {i}"
        ) from None
    return np.array(flags, dtype=np.bool_)


def members_arrow(core: _core.Engine, audience: str) -> Any:
    """Members as a ``pyarrow.StringArray`` of external ids, sorted."""
    return pa.array(core.members(audience), pa.string())


# --------------------------------------------------------------------------- Arrow -> JSON


def _is_text(t: Any) -> bool:
    if pa.types.is_dictionary(t):
        return _is_text(t.value_type)
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _to_string(arr: Any) -> Any:
    """A text array as ``pa.string()`` (dictionaries decoded)."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if not pa.types.is_string(arr.type):
        arr = arr.cast(pa.string())
    return arr


def _concat(*parts: Any) -> Any:
    """Element-wise concatenation; null if any part is null."""
    return pc.binary_join_element_wise(*parts, "")


def _any(mask: Any) -> bool:
    return bool(pc.any(mask).as_py())


def _escape(arr: Any) -> Any:
    """JSON string escaping of a ``pa.string()`` array (without the quotes)."""
    if not _any(pc.match_substring_regex(arr, _NEEDS_ESCAPE)):
        return arr
    arr = pc.replace_substring(arr, "\\", "\\\\")
    arr = pc.replace_substring(arr, '"', '\\"')
    if _any(pc.match_substring_regex(arr, _CONTROL)):
        for code in range(32):
            ch = chr(code)
            if _any(pc.match_substring(arr, ch)):
                arr = pc.replace_substring(arr, ch, f"\\u{code:04x}")
    return arr


def _quoted(arr: Any) -> Any:
    """``"text"`` with JSON escaping; null stays null."""
    return _concat('"', _escape(_to_string(arr)), '"')


_HMS: Any = None
_MILLIS: Any = None


def _iso_ms(ms: Any) -> Any:
    """ISO-8601 UTC text with milliseconds (``2026-05-31T12:00:05.123Z``) of an
    int64 array of epoch milliseconds; null stays null.

    Vectorised through lookup tables (one strftime per distinct day), about
    10x faster than ``pc.strftime``.
    """
    global _HMS, _MILLIS
    valid = pc.is_valid(ms)
    values = pc.fill_null(ms, 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    n = len(values)
    if n == 0:
        return pa.array([], pa.string())
    day = np.floor_divide(values, _DAY_MS)
    d0, d1 = int(day.min()), int(day.max())
    if d1 - d0 + 1 > max(4096, n):
        # Widely spread instants: the day table would be larger than the data.
        ts = pa.array(values, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
        text = pc.strftime(ts, format="%Y-%m-%dT%H:%M:%SZ")
    else:
        if _HMS is None:
            _HMS = pa.array(
                [
                    f"{h:02d}:{m:02d}:{s:02d}"
                    for h in range(24)
                    for m in range(60)
                    for s in range(60)
                ],
                pa.string(),
            )
            _MILLIS = pa.array([f".{i:03d}Z" for i in range(1000)], pa.string())
        day_ms = (np.arange(d1 - d0 + 1, dtype=np.int64) + d0) * _DAY_MS
        dates = pc.strftime(
            pa.array(day_ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC")), format="%Y-%m-%dT"
        )
        in_day = values - day * _DAY_MS
        text = _concat(
            dates.take(pa.array(day - d0)),
            _HMS.take(pa.array(in_day // 1000)),
            _MILLIS.take(pa.array(in_day % 1000)),
        )
    return pc.if_else(valid, text, pa.scalar(None, pa.string()))


def _timestamp_ms(arr: Any, what: str) -> Any:
    """Epoch milliseconds (int64) of a timezone-aware timestamp array."""
    if arr.type.tz is None:
        raise InvalidArgumentError(
            f"{what} has type {arr.type} without a timezone, which is ambiguous; "
            "expected timestamp[ms, tz=UTC] (cast with .cast(pa.timestamp('ms', tz='UTC')))"
        )
    if arr.type.unit != "ms":
        arr = arr.cast(pa.timestamp("ms", tz=arr.type.tz), safe=False)
    return arr.view(pa.int64()) if isinstance(arr, pa.Array) else arr.cast(pa.int64())


Issues: TypeAlias = list[tuple[str, npt.NDArray[np.bool_]]]


def _mask(arr: Any) -> npt.NDArray[np.bool_]:
    return cast(npt.NDArray[np.bool_], pc.fill_null(arr, False).to_numpy(zero_copy_only=False))


def _list_json(arr: Any, items: Any, issues: Issues, open_: str, close: str) -> tuple[Any, Issues]:
    """Joins per-element JSON texts ``items`` (aligned with ``arr.flatten()``)
    back into one ``open_ ... close`` text per list of ``arr``."""
    items = pc.fill_null(items, "null")
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(arr) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    lists = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), items)
    text = _concat(open_, pc.binary_join(lists, ","), close)
    text = pc.if_else(pc.is_valid(arr), text, pa.scalar(None, pa.string()))
    row_issues: Issues = []
    if issues:
        parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
        for path, m in issues:
            rows = np.zeros(len(arr), dtype=np.bool_)
            rows[parents[m]] = True
            row_issues.append((path, rows))
    return text, row_issues


def _json_value(arr: Any, path: str) -> tuple[Any, Issues]:
    """JSON text of each value of ``arr`` (null stays null), and the rows that
    cannot be JSON (non-finite floats) as ``(path, mask)`` pairs.

    Struct fields that are null are left out of their object.
    """
    t = arr.type
    n = len(arr)
    if pa.types.is_dictionary(t):
        return _json_value(arr.dictionary_decode(), path)
    if pa.types.is_null(t):
        return pa.nulls(n, pa.string()), []
    if pa.types.is_boolean(t):
        return pc.if_else(arr, "true", "false"), []
    if pa.types.is_integer(t) or pa.types.is_decimal(t):
        return arr.cast(pa.string()), []
    if pa.types.is_floating(t):
        arr = arr.cast(pa.float64())
        bad = _mask(pc.invert(pc.is_finite(arr)))
        return arr.cast(pa.string()), ([(path, bad)] if bad.any() else [])
    if _is_text(t):
        return _quoted(arr), []
    if pa.types.is_timestamp(t):
        return _concat('"', _iso_ms(_timestamp_ms(arr, f"'{path}'")), '"'), []
    if pa.types.is_date(t):
        text = pc.strftime(arr.cast(pa.date32()).cast(pa.timestamp("s")), format="%Y-%m-%d")
        return _concat('"', text, '"'), []
    if pa.types.is_struct(t):
        if t.num_fields == 0:
            return pc.if_else(pc.is_valid(arr), "{}", pa.scalar(None, pa.string())), []
        issues: Issues = []
        parts = []
        for f, child in zip(t, arr.flatten(), strict=True):
            text, sub = _json_value(child, f"{path}.{f.name}")
            issues += sub
            parts.append(_concat(json.dumps(f.name) + ":", text, ","))
        # Null fields become "" (null_handling="skip" drops all-null rows in
        # pyarrow 26), then the trailing "," goes.
        body = pc.binary_join_element_wise(*parts, "", null_handling="replace", null_replacement="")
        body = pc.ascii_rtrim(body, characters=",")
        text = pc.if_else(pc.is_valid(arr), _concat("{", body, "}"), pa.scalar(None, pa.string()))
        return text, issues
    if pa.types.is_map(t):
        if not _is_text(t.key_type):
            raise InvalidArgumentError(
                f"'{path}' is a map with {t.key_type} keys; JSON objects need string keys"
            )
        entries = arr.cast(pa.list_(pa.struct([t.key_field, t.item_field])))
        keys, values = entries.flatten().flatten()
        text, sub = _json_value(values, f"{path}.<value>")
        pairs = _concat(_quoted(keys), ":", pc.fill_null(text, "null"))
        return _list_json(entries, pairs, sub, "{", "}")
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        text, sub = _json_value(arr.flatten(), f"{path}[]")
        return _list_json(arr, text, sub, "[", "]")
    raise InvalidArgumentError(
        f"'{path}' has type {t}, which has no JSON form; supported: string, bool, "
        "integer, float, decimal, timestamp with a timezone, date, struct, map, list"
    )


def _column(batch: Any, name: str) -> Any:
    col = batch.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return col


def check_schema(schema: Any) -> None:
    """Raises ``InvalidArgumentError`` naming the column and the expected type
    when ``schema`` is not a valid events schema (see docs/interop.md)."""
    names = set(schema.names)
    if "user_id" not in names:
        hint = ""
        for alias in ("userId", "userid", "user", "uid", "anonymousId"):
            if alias in names:
                hint = f" (found {alias!r}; rename it to 'user_id')"
                break
        raise InvalidArgumentError(
            f"events table has no 'user_id' column{hint}; expected columns: "
            + ", ".join(EVENT_COLUMNS)
        )
    if len(schema.names) != len(names):
        dup = sorted({n for n in schema.names if schema.names.count(n) > 1} & set(EVENT_COLUMNS))
        if dup:
            raise InvalidArgumentError(f"events table has duplicate column(s) {dup}")
    for name in _TEXT_COLUMNS:
        if name in names and not (
            _is_text(schema.field(name).type) or pa.types.is_null(schema.field(name).type)
        ):
            raise InvalidArgumentError(
                f"column {name!r} has type {schema.field(name).type}; expected {_TEXT_HELP}"
            )
    if "timestamp" in names:
        t = schema.field("timestamp").type
        if pa.types.is_timestamp(t):
            if t.tz is None:
                raise InvalidArgumentError(
                    f"column 'timestamp' has type {t} without a timezone, which is ambiguous; "
                    "expected timestamp[ms, tz=UTC] (cast with "
                    ".cast(pa.timestamp('ms', tz='UTC'))), int64 epoch milliseconds "
                    "or ISO-8601 strings"
                )
        elif not (pa.types.is_integer(t) or _is_text(t) or pa.types.is_null(t)):
            raise InvalidArgumentError(
                f"column 'timestamp' has type {t}; expected timestamp[ms, tz=UTC], "
                "int64 epoch milliseconds or ISO-8601 strings"
            )
    for name in _JSON_COLUMNS:
        if name in names:
            t = schema.field(name).type
            if not (
                _is_text(t) or pa.types.is_struct(t) or pa.types.is_map(t) or pa.types.is_null(t)
            ):
                raise InvalidArgumentError(
                    f"column {name!r} has type {t}; expected JSON object text ({_TEXT_HELP}), "
                    "a struct or a map<string, ...>"
                )


def _json_column(batch: Any, name: str) -> tuple[Any, Issues]:
    col = _column(batch, name)
    if pa.types.is_null(col.type):
        return None, []
    if _is_text(col.type):
        col = _to_string(col)
        # One row, one line: raw line breaks are only valid JSON as whitespace.
        if _any(pc.match_substring_regex(col, r"[\r\n]")):
            col = pc.replace_substring_regex(col, r"[\r\n]", " ")
        empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0)
        return pc.if_else(empty, pa.scalar(None, pa.string()), col), []
    return _json_value(col, name)


@dataclass
class _Chunk:
    """One engine call: NDJSON bytes and the input row of each line."""

    data: bytes
    rows: npt.NDArray[np.int64]


@dataclass
class _Encoded:
    chunks: list[_Chunk]
    errors: list[BatchError] = field(default_factory=list)


def encode_batch(batch: Any, first_row: int = 0) -> _Encoded:
    """Renders an Arrow table or record batch (schema already checked) as
    newline-delimited Segment-spec JSON, split into engine-sized chunks.

    Rows that cannot become JSON (non-finite numbers in struct columns) are
    left out and reported as errors, by row index plus ``first_row``.
    """
    n = batch.num_rows
    names = set(batch.schema.names)
    # One '"key":value,' text per field, null (left out) when the value is
    # null. The JSON-text columns come first and the user id last, so a key
    # that malformed JSON text might repeat is overridden by the named columns.
    pairs: list[Any] = []
    issues: Issues = []
    for name in _JSON_COLUMNS:
        if name in names:
            text, sub = _json_column(batch, name)
            issues += sub
            if text is not None:
                pairs.append(_concat(f'"{name}":', text, ","))

    def text_col(name: str) -> Any:
        col = _column(batch, name) if name in names else None
        return None if col is None or pa.types.is_null(col.type) else col

    kind: Any = text_col("type")
    event = text_col("event")
    if kind is None:
        # Without a type column, a row with an event name is a track call.
        kind = (
            pc.if_else(pc.is_valid(event), "track", "identify") if event is not None else "identify"
        )
    for key, col in (
        ("type", kind),
        ("anonymousId", text_col("anonymous_id")),
        ("event", event),
        ("messageId", text_col("message_id")),
    ):
        if isinstance(col, str):
            pairs.append(f'"{key}":"{col}",')
        elif col is not None:
            pairs.append(_concat(f'"{key}":', _quoted(col), ","))
    if "timestamp" in names:
        ts = _column(batch, "timestamp")
        t = ts.type
        if pa.types.is_timestamp(t):
            ts = _iso_ms(_timestamp_ms(ts, "column 'timestamp'"))
        elif pa.types.is_integer(t):
            ts = _iso_ms(ts.cast(pa.int64()))
        elif not pa.types.is_null(t):
            ts = _escape(_to_string(ts))
        if not pa.types.is_null(t):
            pairs.append(_concat('"timestamp":"', ts, '",'))
    uid = text_col("user_id")
    uid = "null" if uid is None else pc.fill_null(_quoted(uid), "null")
    if isinstance(uid, str) and not any(not isinstance(p, str) for p in pairs):
        lines = pa.array(["{" + "".join(pairs) + '"userId":null}\n'] * n, pa.string())
    else:
        lines = pc.binary_join_element_wise(
            "{", *pairs, '"userId":', uid, "}\n", "", null_handling="replace", null_replacement=""
        )
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()

    rows = np.arange(first_row, first_row + n, dtype=np.int64)
    errors: list[BatchError] = []
    if issues:
        bad = np.zeros(n, dtype=np.bool_)
        for path, m in issues:
            for i in np.flatnonzero(m & ~bad):
                errors.append(
                    BatchError(
                        index=first_row + int(i),
                        code="invalid_event",
                        message=f"invalid event: '{path}' is not a finite number "
                        "(NaN or infinity); numbers must be finite",
                    )
                )
            bad |= m
        keep = ~bad
        lines = lines.filter(pa.array(keep))
        rows = rows[keep]
    return _Encoded(_split(lines, rows), errors)


def _split(lines: Any, rows: npt.NDArray[np.int64]) -> list[_Chunk]:
    """Cuts the NDJSON lines into chunks of at most :data:`MAX_CHUNK_BYTES`."""
    n = len(lines)
    if n == 0:
        return []
    _, offsets_buf, data = lines.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[lines.offset : lines.offset + n + 1]
    offsets = offsets.astype(np.int64)
    chunks: list[_Chunk] = []
    start = 0
    while start < n:
        limit = offsets[start] + MAX_CHUNK_BYTES
        stop = int(np.searchsorted(offsets, limit, side="right")) - 1
        stop = max(min(stop, n), start + 1)
        body = data[int(offsets[start]) : int(offsets[stop])].to_pybytes()
        chunks.append(_Chunk(body, rows[start:stop]))
        start = stop
    return chunks


def _batches(data: ArrowEvents, chunk_rows: int) -> tuple[Any, Iterator[Any]]:
    """The schema and the record batches (at most ``chunk_rows`` rows) of ``data``."""
    if isinstance(data, pa.Table):
        return data.schema, iter(data.to_batches(max_chunksize=chunk_rows))
    if isinstance(data, pa.RecordBatch):
        return data.schema, (data.slice(i, chunk_rows) for i in range(0, data.num_rows, chunk_rows))
    if isinstance(data, pa.RecordBatchReader):
        reader = data
    elif hasattr(data, "__arrow_c_stream__"):
        reader = pa.RecordBatchReader.from_stream(data)
    else:
        raise InvalidArgumentError(
            "expected a pyarrow Table, RecordBatch or RecordBatchReader (or an object "
            f"with __arrow_c_stream__), got {type(data).__name__}"
        )

    def rebatch() -> Iterator[Any]:
        for b in reader:
            for i in range(0, b.num_rows, chunk_rows):
                yield b.slice(i, chunk_rows)

    return reader.schema, rebatch()


def _select(batch: Any) -> Any:
    """Only the event columns (others are ignored)."""
    keep = [n for n in batch.schema.names if n in EVENT_COLUMNS]
    return batch.select(keep)


def ingest_batches(core: _core.Engine, schema: Any, batches: Iterable[Any]) -> IngestResult:
    """Checks ``schema``, then encodes and applies each batch in turn.

    Encoding runs on the calling thread between engine calls: overlapping it
    with the engine's work measured slower (it competes with the engine's own
    worker threads), and it is about a tenth of the engine's time.
    """
    check_schema(schema)
    accepted = duplicates = changes = 0
    errors: list[BatchError] = []
    first_row = 0
    for batch in batches:
        encoded = encode_batch(_select(batch), first_row)
        first_row += batch.num_rows
        errors.extend(encoded.errors)
        for chunk in encoded.chunks:
            acc, dup, errs, _, ch = core.ingest_json(chunk.data)
            accepted += acc
            duplicates += dup
            changes += ch
            errors.extend(
                BatchError(index=int(chunk.rows[i]), code=c, message=m) for i, c, m in errs
            )
    errors.sort(key=lambda e: e.index)
    return IngestResult(
        accepted=accepted,
        duplicates=duplicates,
        errors=errors,
        last_seq=core.last_seq,
        changes=changes,
    )


def ingest_arrow(
    core: _core.Engine, data: ArrowEvents, *, chunk_rows: int = 100_000
) -> IngestResult:
    """Applies Arrow events (schema in docs/interop.md); errors by row index."""
    if chunk_rows < 1:
        raise InvalidArgumentError(f"chunk_rows must be positive, got {chunk_rows}")
    schema, batches = _batches(data, chunk_rows)
    return ingest_batches(core, schema, batches)


# --------------------------------------------------------------------------- Parquet


def import_parquet(core: _core.Engine, path: StrPath, batch_rows: int = 100_000) -> IngestResult:
    """Applies the events of a Parquet file (the :func:`ingest_arrow` schema),
    read ``batch_rows`` rows at a time; errors by row index in the file."""
    if batch_rows < 1:
        raise InvalidArgumentError(f"batch_rows must be positive, got {batch_rows}")
    pf = pq.ParquetFile(os.fspath(path))
    schema = pf.schema_arrow
    check_schema(schema)
    columns = [n for n in schema.names if n in EVENT_COLUMNS]
    batches = pf.iter_batches(batch_size=batch_rows, columns=columns)
    return ingest_batches(core, schema, batches)


def export_parquet(
    core: _core.Engine, audience: str, path: StrPath, *, compression: str = "zstd"
) -> int:
    """Writes an audience's members (``user_id`` string, ``entered_at``
    timestamp[ms, UTC]) sorted by user id; returns the number of rows."""
    members = core.members(audience)
    entered = [core.entered_at_ms(u, audience) for u in members]
    table = pa.table(
        {
            "user_id": pa.array(members, pa.string()),
            "entered_at": pa.array(entered, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        }
    )
    pq.write_table(table, os.fspath(path), compression=compression)
    return len(members)


def export_profiles_parquet(
    core: _core.Engine,
    path: StrPath,
    user_ids: Iterable[str] | None = None,
    *,
    audience: str | None = None,
    compression: str = "zstd",
) -> int:
    """Writes profiles (``user_id``, ``traits`` as JSON text, ``audiences`` as
    list<string>) of the given users or of an audience's members; returns the
    number of rows."""
    if (user_ids is None) == (audience is None):
        raise InvalidArgumentError(
            "export_profiles_parquet needs exactly one of user_ids or audience "
            "(the engine does not yet list all profiles)"
        )
    ids = core.members(audience) if audience is not None else _user_id_list(user_ids)
    traits: list[bytes] = []
    for u in ids:
        raw = core.traits_json(u)
        if raw is None:
            raise UnknownUserError(f"unknown user: {u!r}")
        traits.append(raw)
    table = pa.table(
        {
            "user_id": pa.array(ids, pa.string()),
            "traits": pa.array(traits, pa.binary()).cast(pa.string()),
            "audiences": pa.array([core.audiences_of(u) for u in ids], pa.list_(pa.string())),
        }
    )
    pq.write_table(table, os.fspath(path), compression=compression)
    return len(ids)


__all__ = [
    "EVENT_COLUMNS",
    "ArrowEvents",
    "BoolArray",
    "IdMap",
    "UserIds",
    "bitmap",
    "bitmap_with_ids",
    "check_schema",
    "export_parquet",
    "export_profiles_parquet",
    "import_parquet",
    "ingest_arrow",
    "is_member_array",
    "members_arrow",
]
