"""Typed event structs for :meth:`segmint.Engine.ingest` (Segment's spec)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec


class TrackEvent(msgspec.Struct, rename="camel", omit_defaults=True, tag_field="type", tag="track"):
    """A track call: a user did ``event`` with ``properties`` at ``timestamp``."""

    event: str
    user_id: str | None = None
    anonymous_id: str | None = None
    properties: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    timestamp: datetime | str | None = None
    message_id: str | None = None


class IdentifyEvent(
    msgspec.Struct, rename="camel", omit_defaults=True, tag_field="type", tag="identify"
):
    """An identify call: set (or, with ``None``, delete) traits of a user."""

    user_id: str | None = None
    anonymous_id: str | None = None
    traits: dict[str, Any] | None = None
    timestamp: datetime | str | None = None
    message_id: str | None = None


class AliasEvent(msgspec.Struct, rename="camel", omit_defaults=True, tag_field="type", tag="alias"):
    """An alias call: ``previous_id`` names the user from now on, and its
    profile, if any, is merged into the user's (docs/semantics.md, "Aliases")."""

    previous_id: str
    user_id: str | None = None
    anonymous_id: str | None = None
    timestamp: datetime | str | None = None
    message_id: str | None = None


class BatchError(msgspec.Struct, frozen=True):
    """A rejected event of a batch: its index, an error code and a message."""

    index: int
    code: str
    message: str


class IngestResult(msgspec.Struct, frozen=True):
    """The outcome of one batch."""

    accepted: int
    duplicates: int
    errors: list[BatchError]
    last_seq: int
    changes: int


class Change(msgspec.Struct, frozen=True):
    """A change with its gap-free sequence number: a membership change
    (``kind`` ``"entered"`` / ``"exited"``, ``audience`` set) or a change of a
    computed trait's value (``kind`` ``"computed"``, ``audience`` empty,
    ``computed_trait`` the key, ``old`` / ``new`` the values, ``None`` for
    null)."""

    seq: int
    audience: str
    user_id: str
    kind: Literal["entered", "exited", "computed"]
    at: datetime
    reason: Literal["event", "time", "definition", "merge", "delete"]
    computed_trait: str | None = None
    old: Any = None
    new: Any = None


class SnapshotInfo(msgspec.Struct, frozen=True):
    """A snapshot written by :meth:`segmint.Engine.snapshot`."""

    generation: int
    bytes: int
    seconds: float


class Recovery(msgspec.Struct, frozen=True):
    """What opening a data directory did: the snapshot loaded (generation 0:
    none), the log records and events replayed after it, the bytes of a torn
    record cut from the end of the log, and the time each step took."""

    snapshot_generation: int
    records_replayed: int
    events_replayed: int
    torn_bytes: int
    snapshot_seconds: float
    replay_seconds: float
