"""Data interop: numpy arrays, pyarrow tables, pyroaring bitmaps and Parquet.

The functions here back the ``Engine`` methods ``bitmap``, ``bitmap_with_ids``,
``is_member_array``, ``members_arrow``, ``ingest_arrow``, ``export_parquet``,
``export_profiles_parquet`` and ``import_parquet`` (see docs/interop.md). They
need the ``data`` extra (numpy, pyarrow, pyroaring); ``import segmint`` does
not import them.

Arrow events go to the engine through the Arrow C stream interface: the Rust
glue reads the columns directly into the core's events, with the GIL
released (no JSON rendering, no Python object per row), so a malformed row is
an error at its own index and never affects its neighbours.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence
from typing import Any, TypeAlias, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa  # type: ignore[import-untyped]
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
    "previous_id",
)

_JSON_COLUMNS = ("properties", "context", "traits")
_TEXT_COLUMNS = ("type", "user_id", "anonymous_id", "event", "message_id", "previous_id")
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


# --------------------------------------------------------------------------- Arrow ingest


def _is_text(t: Any) -> bool:
    if pa.types.is_dictionary(t):
        return _is_text(t.value_type)
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _check_value_type(t: Any, path: str) -> None:
    """Raises ``InvalidArgumentError`` when values of type ``t`` (a struct or
    map payload's field at ``path``) have no JSON form."""
    if pa.types.is_dictionary(t):
        _check_value_type(t.value_type, path)
    elif (
        pa.types.is_null(t)
        or pa.types.is_boolean(t)
        or pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_decimal(t)
        or pa.types.is_date(t)
        or _is_text(t)
    ):
        return
    elif pa.types.is_timestamp(t):
        if t.tz is None:
            raise InvalidArgumentError(
                f"'{path}' has type {t} without a timezone, which is ambiguous; "
                "expected timestamp[ms, tz=UTC] (cast with .cast(pa.timestamp('ms', tz='UTC')))"
            )
    elif pa.types.is_struct(t):
        for f in t:
            _check_value_type(f.type, f"{path}.{f.name}")
    elif pa.types.is_map(t):
        if not _is_text(t.key_type):
            raise InvalidArgumentError(
                f"'{path}' is a map with {t.key_type} keys; JSON objects need string keys"
            )
        _check_value_type(t.item_type, f"{path}.<value>")
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        _check_value_type(t.value_type, f"{path}[]")
    else:
        raise InvalidArgumentError(
            f"'{path}' has type {t}, which has no JSON form; supported: string, bool, "
            "integer, float, decimal, timestamp with a timezone, date, struct, map, list"
        )


def check_schema(schema: Any) -> None:
    """Raises ``InvalidArgumentError`` naming the column (or nested field) and
    the expected type when ``schema`` is not a valid events schema (see
    docs/interop.md). The engine checks the schema again."""
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
            if pa.types.is_struct(t) or pa.types.is_map(t):
                _check_value_type(t, name)
            elif not (_is_text(t) or pa.types.is_null(t)):
                raise InvalidArgumentError(
                    f"column {name!r} has type {t}; expected JSON object text ({_TEXT_HELP}), "
                    "a struct or a map<string, ...>"
                )


def _reader(data: ArrowEvents) -> Any:
    """``data`` as a ``pyarrow.RecordBatchReader`` (zero-copy)."""
    if isinstance(data, pa.RecordBatchReader):
        return data
    if isinstance(data, pa.Table):
        return data.to_reader()
    if isinstance(data, pa.RecordBatch):
        return pa.RecordBatchReader.from_batches(data.schema, [data])
    if hasattr(data, "__arrow_c_stream__"):
        return pa.RecordBatchReader.from_stream(data)
    raise InvalidArgumentError(
        "expected a pyarrow Table, RecordBatch or RecordBatchReader (or an object "
        f"with __arrow_c_stream__), got {type(data).__name__}"
    )


def _apply(core: _core.Engine, reader: Any, chunk_rows: int) -> IngestResult:
    check_schema(reader.schema)
    accepted, duplicates, errs, last_seq, changes = core.ingest_arrow(reader, chunk_rows)
    return IngestResult(
        accepted=accepted,
        duplicates=duplicates,
        errors=[BatchError(index=i, code=c, message=m) for i, c, m in errs],
        last_seq=last_seq,
        changes=changes,
    )


def ingest_arrow(
    core: _core.Engine, data: ArrowEvents, *, chunk_rows: int = 100_000
) -> IngestResult:
    """Applies Arrow events (schema in docs/interop.md); errors by row index."""
    if chunk_rows < 1:
        raise InvalidArgumentError(f"chunk_rows must be positive, got {chunk_rows}")
    return _apply(core, _reader(data), chunk_rows)


# --------------------------------------------------------------------------- Parquet


def import_parquet(core: _core.Engine, path: StrPath, batch_rows: int = 100_000) -> IngestResult:
    """Applies the events of a Parquet file (the :func:`ingest_arrow` schema),
    read ``batch_rows`` rows at a time; errors by row index in the file."""
    if batch_rows < 1:
        raise InvalidArgumentError(f"batch_rows must be positive, got {batch_rows}")
    pf = pq.ParquetFile(os.fspath(path))
    check_schema(pf.schema_arrow)
    columns = [n for n in pf.schema_arrow.names if n in EVENT_COLUMNS]
    batches = pf.iter_batches(batch_size=batch_rows, columns=columns)
    first = next(batches, None)
    if first is None:
        return IngestResult(accepted=0, duplicates=0, errors=[], last_seq=core.last_seq, changes=0)
    reader = pa.RecordBatchReader.from_batches(first.schema, itertools.chain([first], batches))
    return _apply(core, reader, batch_rows)


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
