"""The typed facade over the Rust engine."""

from __future__ import annotations

import math
import os
import typing
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, cast

import msgspec

from segmint import _core
from segmint._time import Instant, duration_ms, from_ms, to_ms
from segmint.events import (
    AliasEvent,
    BatchError,
    Change,
    IdentifyEvent,
    IngestResult,
    Recovery,
    SnapshotInfo,
    TrackEvent,
)
from segmint.inspect import (
    ComputedTrait,
    Explanation,
    Overlap,
    Preview,
    Profile,
    explanation,
    profile,
)

if typing.TYPE_CHECKING:
    from pyroaring import BitMap

    from segmint.interop import ArrowEvents, BoolArray, IdMap, StrPath, UserIds

_encoder = msgspec.json.Encoder()

Batch = bytes | Sequence[TrackEvent | IdentifyEvent | AliasEvent | Mapping[str, Any]]
"""What :meth:`Engine.ingest` accepts: JSON bytes (a list, ``{"batch": [...]}`` or
one object per line) or a sequence of event structs / Segment-shaped dicts."""


def _result(raw: tuple[int, int, list[tuple[int, str, str]], int, int]) -> IngestResult:
    accepted, duplicates, errors, last_seq, changes = raw
    return IngestResult(
        accepted=accepted,
        duplicates=duplicates,
        errors=[BatchError(index=i, code=c, message=m) for i, c, m in errors],
        last_seq=last_seq,
        changes=changes,
    )


def _check_finite(value: Any, path: str) -> None:
    """JSON has no NaN or infinity (msgspec would write null, i.e. delete)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise _core.InvalidEventError(f"invalid event: '{path}' is {value}; numbers must be finite")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list | tuple):
        for v in value:
            _check_finite(v, path)


def _json(value: Mapping[str, Any] | None) -> bytes | None:
    if value is None:
        return None
    _check_finite(value, "")
    return _encoder.encode(value)


class Engine:
    """A real-time audience segmentation engine.

    Args:
        clock: ``"wall"`` follows the system clock (a background ticker fires
            time-based changes every ``tick``); ``"manual"`` moves only by
            :meth:`advance` and starts at ``now``.
        now: start of the manual clock (default: the current time).
        granularity: time granularity G; instants are floored to it.
        future_skew: how far ahead of the clock an event may be stamped.
        shards: number of user partitions (default: one per core).
        threads: worker threads for batches (default: one per core).
        tick: period of the wall-clock ticker.
        dedup_window: how long a ``messageId`` is remembered, so that a retried
            event is applied once (kept across restarts with ``data_dir``).
        data_dir: a directory to persist to (write-ahead log and snapshots).
            On start the engine recovers from it; without it the engine lives
            in memory only. See docs/operations.md, "Durability".
        fsync: when the log reaches stable storage: ``"always"`` (before a call
            returns; concurrent batches share an fsync), ``"interval"`` (every
            ``fsync_interval``) or ``"never"`` (left to the OS).
        fsync_interval: the period of ``fsync="interval"``.
        snapshot_log_bytes: take a snapshot once the current log file is this
            large (0: only on :meth:`snapshot` and :meth:`close`).
        change_log_capacity: how many changes (at least 1) the in-memory change
            log keeps for :meth:`changes` and subscribers to resume from (16 bytes
            a membership change); older ones are dropped, and asking for them
            raises :class:`InvalidArgumentError`.

    A durable engine is a context manager: ``with Engine(data_dir=...) as e``
    closes it (final snapshot) on exit.
    """

    def __init__(
        self,
        *,
        clock: Literal["wall", "manual"] = "wall",
        now: Instant | None = None,
        granularity: str | timedelta = "1s",
        future_skew: str | timedelta = "5m",
        shards: int | None = None,
        threads: int | None = None,
        tick: str | timedelta = "1s",
        dedup_window: str | timedelta = "24h",
        data_dir: StrPath | None = None,
        fsync: Literal["always", "interval", "never"] = "always",
        fsync_interval: str | timedelta = "100ms",
        snapshot_log_bytes: int = 256 << 20,
        change_log_capacity: int = 10_000_000,
    ) -> None:
        self._core = _core.Engine(
            clock=clock,
            now_ms=None if now is None else to_ms(now, "now"),
            granularity_ms=duration_ms(granularity, "granularity"),
            future_skew_ms=duration_ms(future_skew, "future_skew"),
            shards=shards or 0,
            threads=threads or 0,
            tick_ms=duration_ms(tick, "tick"),
            dedup_window_ms=duration_ms(dedup_window, "dedup_window"),
            data_dir=None if data_dir is None else os.fspath(data_dir),
            fsync=fsync,
            fsync_interval_ms=duration_ms(fsync_interval, "fsync_interval"),
            snapshot_log_bytes=snapshot_log_bytes,
            change_log_capacity=change_log_capacity,
        )

    @property
    def durable(self) -> bool:
        """Whether the engine persists to a data directory."""
        return self._core.durable

    @property
    def visible_seq(self) -> int:
        """The last seq :meth:`changes` shows: with ``fsync="always"``, changes
        become visible once their log record is on stable storage."""
        return self._core.visible_seq

    @property
    def log_bytes(self) -> int:
        """Bytes of write-ahead log written since the last snapshot."""
        return self._core.log_bytes

    @property
    def recovery(self) -> Recovery:
        """What opening the data directory found and replayed."""
        gen, records, events, torn, snap_s, replay_s = self._core.recovery
        return Recovery(
            snapshot_generation=gen,
            records_replayed=records,
            events_replayed=events,
            torn_bytes=torn,
            snapshot_seconds=snap_s,
            replay_seconds=replay_s,
        )

    def snapshot(self) -> SnapshotInfo:
        """Writes a snapshot of the whole state now and deletes the log files it
        makes obsolete. Raises :class:`InvalidArgumentError` in memory."""
        generation, size, seconds = self._core.snapshot()
        return SnapshotInfo(generation=generation, bytes=size, seconds=seconds)

    def sync(self) -> None:
        """Flushes the write-ahead log to stable storage now, whatever ``fsync``."""
        self._core.sync()

    def close(self) -> None:
        """Stops the ticker, writes a final snapshot and releases the data
        directory (another engine may then open it). The engine stays readable
        in memory; nothing written after ``close`` is persisted."""
        self._core.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def now(self) -> datetime:
        """The engine's clock (UTC)."""
        return from_ms(self._core.now_ms)

    @property
    def last_seq(self) -> int:
        """Sequence number of the last change (0 before any)."""
        return self._core.last_seq

    @property
    def user_count(self) -> int:
        """Number of profiles."""
        return self._core.user_count

    def identify(
        self, user_id: str, traits: Mapping[str, Any], *, timestamp: Instant | None = None
    ) -> IngestResult:
        """Sets traits (nested mappings flatten to dotted keys; ``None`` deletes)."""
        ts = None if timestamp is None else to_ms(timestamp)
        return _result(self._core.identify(user_id, _json(traits) or b"{}", ts))

    def track(
        self,
        user_id: str,
        event: str,
        properties: Mapping[str, Any] | None = None,
        *,
        timestamp: Instant | None = None,
        context: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> IngestResult:
        """Records that ``user_id`` did ``event`` (at ``timestamp``, default now)."""
        ts = None if timestamp is None else to_ms(timestamp)
        raw = self._core.track(user_id, event, _json(properties), _json(context), ts, message_id)
        return _result(raw)

    def alias(
        self,
        previous_id: str,
        user_id: str,
        *,
        timestamp: Instant | None = None,
        message_id: str | None = None,
    ) -> IngestResult:
        """Makes ``previous_id`` (an anonymous id, an earlier user id) name
        ``user_id``'s profile from now on. If ``previous_id`` had a profile, it
        is merged into ``user_id``'s (created if new): it leaves its audiences,
        and ``user_id`` gains its events, the traits it lacks and its static
        audiences, and is evaluated afresh; those changes have reason
        ``"merge"`` (docs/semantics.md, "Aliases")."""
        ts = None if timestamp is None else to_ms(timestamp)
        return _result(self._core.alias(previous_id, user_id, ts, message_id))

    def ingest(self, batch: Batch | ArrowEvents) -> IngestResult:
        """Applies a batch with the GIL released; bad events are reported by index
        in ``errors`` and the others are applied. A pyarrow ``Table`` /
        ``RecordBatch`` (or any Arrow stream) goes through :meth:`ingest_arrow`."""
        if hasattr(batch, "__arrow_c_stream__") or hasattr(batch, "to_batches"):
            return self.ingest_arrow(batch)
        data = (
            batch
            if isinstance(batch, bytes | bytearray | memoryview)
            else _encoder.encode(list(batch))
        )
        return _result(self._core.ingest_json(bytes(data)))

    def define_audience(self, key: str, rule: str) -> int:
        """Defines (or replaces) an audience, evaluates it over every profile with
        reason ``definition``, and returns its size."""
        return self._core.define_audience(key, rule)

    def define_audiences(self, items: Iterable[tuple[str, str]]) -> list[int]:
        """Defines many audiences with one backfill pass; all or nothing.
        Returns each item's size after it (a key named twice takes its last
        rule, and both items report that size). No items, nothing done.

        Much faster than one :meth:`define_audience` call each for a large
        catalog: the rules are indexed once, not once per call.

        Raises:
            SegmintError: the first invalid item's error (a RuleSyntaxError,
                UnknownAudienceError, AudienceCycleError, ...); its message
                starts with ``item N ("key")`` and its ``index`` is N.
                Nothing is defined.
        """
        return self._core.define_audiences(list(items))

    def define_static_audience(self, key: str, user_ids: Iterable[str]) -> int:
        """Defines (or replaces) a static audience from an uploaded list of user ids
        (like Customer.io's manual segments). Unseen ids become profiles; rules use
        it through ``in_audience`` / ``member_for``; events never change it. Entries,
        exits and what depends on them get reason ``definition``. Returns its size."""
        return self._core.define_static_audience(key, list(user_ids))

    def remove_audience(self, key: str) -> None:
        """Removes an audience; its members exit with reason ``delete``."""
        self._core.remove_audience(key)

    def define_computed_trait(self, key: str, expr: str) -> int:
        """Defines (or replaces) a computed trait: ``expr`` is a value expression
        over the user's events, such as ``sum("Order Completed", revenue, 90d)``
        or ``unique("Product Viewed", category)`` (docs/rules.md). It is
        evaluated over every profile (each value that differs from the current
        one, null for a new trait, is a change with reason ``definition``),
        kept up to date by events and by time, readable on :meth:`profile` and
        in rules as ``computed.KEY``. Replacing it re-evaluates the rules that
        read it. Returns how many profiles have a (non-null) value.

        Raises:
            RuleSyntaxError, RuleTypeError: the expression is invalid (with
                line and column), or a replacement would change its type so
                that a rule reading it no longer type-checks (the rule is named).
            InvalidArgumentError: the key is not a name usable as ``computed.KEY``.
        """
        return self._core.define_computed_trait(key, expr)

    def remove_computed_trait(self, key: str) -> None:
        """Removes a computed trait; every non-null value is logged as a change
        to ``None`` with reason ``delete``.

        Raises:
            InUseError: a rule reads it (the message names the audiences).
            UnknownComputedTraitError: no such computed trait.
        """
        self._core.remove_computed_trait(key)

    def computed_traits(self) -> list[ComputedTrait]:
        """Defined computed traits (key, expression, type), in definition order."""
        return [ComputedTrait(k, x, t) for k, x, t in self._core.computed_traits()]

    def computed_value(self, user_id: str, key: str) -> Any:
        """A user's value of a computed trait (``None`` when null or for an
        unknown user); ``UnknownComputedTraitError`` for an unknown key."""
        return msgspec.json.decode(self._core.computed_value_json(user_id, key))

    def audiences(self) -> list[str]:
        """Defined audience keys, in definition order."""
        return self._core.audiences()

    def rule(self, key: str) -> str:
        """The rule text of an audience."""
        return self._core.rule(key)

    def is_member(self, user_id: str, audience: str) -> bool:
        """Whether the user is in the audience (unknown users are in none)."""
        return self._core.is_member(user_id, audience)

    def is_member_many(self, user_ids: Iterable[str], audience: str) -> list[bool]:
        """Membership of many users in one audience."""
        return self._core.is_member_many(list(user_ids), audience)

    def audiences_of(self, user_id: str) -> list[str]:
        """The audiences a user is in, sorted."""
        return self._core.audiences_of(user_id)

    def entered_at(self, user_id: str, audience: str) -> datetime | None:
        """When the user entered the audience, if a member."""
        ms = self._core.entered_at_ms(user_id, audience)
        return None if ms is None else from_ms(ms)

    def members(self, audience: str) -> list[str]:
        """Members as external ids, sorted."""
        return self._core.members(audience)

    def size(self, audience: str) -> int:
        """Number of members."""
        return self._core.size(audience)

    def traits(self, user_id: str) -> dict[str, Any] | None:
        """A user's traits (dotted keys), or ``None`` for an unknown user."""
        raw = self._core.traits_json(user_id)
        return None if raw is None else cast(dict[str, Any], msgspec.json.decode(raw))

    def changes(self, since_seq: int = 0, limit: int | None = None) -> list[Change]:
        """Changes with ``seq > since_seq`` in order (at most ``limit``):
        membership changes and computed-trait value changes (see :class:`Change`)."""
        out = []
        for seq, audience, user, entered, at, reason, computed in self._core.changes(
            since_seq, limit
        ):
            if computed is None:
                out.append(
                    Change(
                        seq=seq,
                        audience=audience,
                        user_id=user,
                        kind="entered" if entered else "exited",
                        at=from_ms(at),
                        reason=cast(Any, reason),
                    )
                )
            else:
                key, old, new = computed
                out.append(
                    Change(
                        seq=seq,
                        audience="",
                        user_id=user,
                        kind="computed",
                        at=from_ms(at),
                        reason=cast(Any, reason),
                        computed_trait=key,
                        old=None if old is None else msgspec.json.decode(old),
                        new=None if new is None else msgspec.json.decode(new),
                    )
                )
        return out

    def explain(self, user_id: str, audience: str) -> Explanation:
        """The audience's rule as a tree with each node's value for the user now,
        whether the user is a member, and the next instant at which time alone
        changes the result (``None`` if none within a year). A ``computed.KEY``
        node has the computed trait's own expression as its one child,
        explained the same way, and the next instant at which time alone
        changes the computed value (``ExplainNode.next_change``)."""
        return explanation(self._core.explain_json(user_id, audience))

    def preview(self, rule: str, *, replacing: str | None = None, limit: int = 100) -> Preview:
        """Evaluates ``rule`` over every profile against live state without saving
        or emitting anything: size, a sample of members, and when ``replacing`` an
        audience, who would enter and who would exit (at most ``limit`` each)."""
        return msgspec.json.decode(self._core.preview_json(rule, replacing, limit), type=Preview)

    def overlap(self, *audiences: str) -> Overlap:
        """Exact sizes of the audiences, of each pair's intersection and of the
        intersection of all of them."""
        return msgspec.json.decode(self._core.overlap_json(list(audiences)), type=Overlap)

    def profile(self, user_id: str) -> Profile:
        """Traits, computed traits (``computed``: those with a non-null value)
        and audiences (with entry instants) of a user; ``UnknownUserError`` if
        the user was never seen."""
        return profile(self._core.profile_json(user_id))

    def advance(self, now: Instant) -> int:
        """Manual clock: moves time forward to ``now``, firing every time-based
        change at its exact instant; returns the number of changes."""
        return self._core.advance(to_ms(now, "now"))

    def tick(self) -> int:
        """Wall clock: fires the timers due now (the ticker does this every tick)."""
        return self._core.tick()

    def stats(self) -> dict[str, int]:
        """Counters: users, audiences, shards, pending timers, heap bytes (profiles,
        memberships, timers, user and message ids), change log bytes (the in-memory
        change log: up to ``change_log_capacity`` changes, 16 bytes a membership
        change), last seq."""
        return dict(self._core.stats())

    # ------------------------------------------------------------------ interop
    # numpy / pyarrow / pyroaring / Parquet (the ``data`` extra); docs/interop.md.

    def bitmap(self, audience: str) -> BitMap:
        """Members as a ``pyroaring.BitMap`` of the engine's dense user ids,
        deserialised from the portable format (no per-member Python work).

        Dense ids are engine-wide and stable, so bitmaps of different audiences
        combine with pyroaring operators; name them with :meth:`bitmap_with_ids`.
        """
        from segmint import interop

        return interop.bitmap(self._core, audience)

    def bitmap_with_ids(self, audience: str) -> tuple[BitMap, IdMap]:
        """Members as a ``pyroaring.BitMap`` and the :class:`segmint.interop.IdMap` that
        maps its dense ids to external user ids (``id_map[dense_id]``,
        ``id_map.lookup(bitmap)``)."""
        from segmint import interop

        return interop.bitmap_with_ids(self._core, audience)

    def is_member_array(self, user_ids: UserIds, audience: str) -> BoolArray:
        """Membership of many users in one audience as a numpy ``bool`` array
        aligned with ``user_ids`` (a 1-D numpy array of ``str``, a list of
        ``str`` or a pyarrow string array); unknown users are ``False``.

        Raises:
            InvalidArgumentError: ``user_ids`` is not strings (the dtype is named).
            UnknownAudienceError: no such audience.
        """
        from segmint import interop

        return interop.is_member_array(self._core, user_ids, audience)

    def members_arrow(self, audience: str) -> Any:
        """Members as a ``pyarrow.StringArray`` of external ids, sorted."""
        from segmint import interop

        return interop.members_arrow(self._core, audience)

    def ingest_arrow(self, data: ArrowEvents, *, chunk_rows: int = 100_000) -> IngestResult:
        """Applies events from a pyarrow ``Table``, ``RecordBatch`` or
        ``RecordBatchReader``, or any object with ``__arrow_c_stream__``
        (columns ``type``, ``user_id``, ``event``, ``timestamp``,
        ``message_id``, ``properties``, ``context``, ``traits``,
        ``anonymous_id``; see docs/interop.md). The engine reads the columns
        through the Arrow C stream interface with the GIL released,
        ``chunk_rows`` rows at a time. Bad rows are reported by row index in
        ``errors``; the others are applied.

        Raises:
            InvalidArgumentError: the schema is malformed (a missing ``user_id``
                column, a column of the wrong type); nothing is applied.
        """
        from segmint import interop

        return interop.ingest_arrow(self._core, data, chunk_rows=chunk_rows)

    def import_parquet(self, path: StrPath, batch_rows: int = 100_000) -> IngestResult:
        """Applies the events of a Parquet file (the :meth:`ingest_arrow`
        schema), streamed ``batch_rows`` rows at a time; errors by row index in
        the file. The schema is checked before anything is applied."""
        from segmint import interop

        return interop.import_parquet(self._core, path, batch_rows)

    def export_parquet(self, audience: str, path: StrPath, *, compression: str = "zstd") -> int:
        """Writes an audience's members to Parquet (``user_id`` string,
        ``entered_at`` timestamp[ms, UTC]), sorted by user id; returns the row
        count. Reads ``entered_at`` per member (one engine call each)."""
        from segmint import interop

        return interop.export_parquet(self._core, audience, path, compression=compression)

    def export_profiles_parquet(
        self,
        path: StrPath,
        user_ids: Iterable[str] | None = None,
        *,
        audience: str | None = None,
        compression: str = "zstd",
    ) -> int:
        """Writes profiles to Parquet (``user_id``, ``traits`` as JSON text,
        ``audiences`` as list<string>) for the given users or an audience's
        members (exactly one); returns the row count. One engine call per
        profile and column.

        Raises:
            UnknownUserError: a user id was never seen.
        """
        from segmint import interop

        return interop.export_profiles_parquet(
            self._core, path, user_ids, audience=audience, compression=compression
        )


__all__ = ["AliasEvent", "Batch", "Engine", "IdentifyEvent", "TrackEvent"]
