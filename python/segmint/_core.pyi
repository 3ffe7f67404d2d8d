"""Type stubs of the Rust extension module (checked by mypy.stubtest)."""

from typing import final

__all__ = [
    "AudienceCycleError",
    "CorruptDataError",
    "Engine",
    "InUseError",
    "InvalidArgumentError",
    "InvalidEventError",
    "LimitExceededError",
    "RuleError",
    "RuleSyntaxError",
    "RuleTypeError",
    "SegmintError",
    "StorageError",
    "UnknownAudienceError",
    "UnknownComputedTraitError",
    "UnknownUserError",
]

_Report = tuple[int, int, list[tuple[int, str, str]], int, int]
_ComputedRow = tuple[str, str | None, str | None]
_ChangeRow = tuple[int, str, str, bool, int, str, _ComputedRow | None]

class SegmintError(Exception):
    """Base class of every segmint error."""

    code: str
    #: The position of the failing item in a batch call (``define_audiences``); else None.
    index: int | None

class RuleError(SegmintError):
    """A rule is invalid; has line, column and snippet."""

    line: int
    column: int
    snippet: str
    reason: str

class RuleSyntaxError(RuleError):
    """The rule text does not parse."""

class RuleTypeError(RuleError):
    """The rule parses but is ill-typed."""

class UnknownAudienceError(SegmintError):
    """No audience with this key."""

class UnknownComputedTraitError(SegmintError):
    """No computed trait with this key."""

class UnknownUserError(SegmintError):
    """The user id was never seen."""

class AudienceCycleError(SegmintError):
    """Audience references would form a cycle."""

class InUseError(SegmintError):
    """The audience or computed trait is referenced by other rules."""

class InvalidEventError(SegmintError):
    """An event is malformed."""

class LimitExceededError(SegmintError):
    """An input exceeds a size limit."""

class InvalidArgumentError(SegmintError):
    """An argument is invalid."""

class StorageError(SegmintError):
    """The data directory cannot be used (I/O, lock, settings)."""

class CorruptDataError(StorageError):
    """A log or snapshot file fails its checksum; names the file and offset."""

    path: str
    offset: int

@final
class Engine:
    """The engine, shared with its ticker thread."""

    def __new__(
        cls,
        *,
        clock: str = "wall",
        now_ms: int | None = None,
        granularity_ms: int = 1000,
        future_skew_ms: int = 300_000,
        shards: int = 0,
        threads: int = 0,
        tick_ms: int = 1000,
        dedup_window_ms: int = 86_400_000,
        data_dir: str | None = None,
        fsync: str = "always",
        fsync_interval_ms: int = 100,
        snapshot_log_bytes: int = 268_435_456,
        change_log_capacity: int = 10_000_000,
    ) -> Engine: ...
    @property
    def recovery(self) -> tuple[int, int, int, int, float, float]: ...
    @property
    def durable(self) -> bool: ...
    @property
    def visible_seq(self) -> int: ...
    @property
    def log_bytes(self) -> int: ...
    def snapshot(self) -> tuple[int, int, float]: ...
    def sync(self) -> None: ...
    def close(self) -> None: ...
    @property
    def now_ms(self) -> int: ...
    @property
    def last_seq(self) -> int: ...
    @property
    def user_count(self) -> int: ...
    def identify(
        self, user_id: str, traits_json: bytes, timestamp_ms: int | None = None
    ) -> _Report: ...
    def track(
        self,
        user_id: str,
        event: str,
        properties_json: bytes | None = None,
        context_json: bytes | None = None,
        timestamp_ms: int | None = None,
        message_id: str | None = None,
    ) -> _Report: ...
    def alias(
        self,
        previous_id: str,
        user_id: str,
        timestamp_ms: int | None = None,
        message_id: str | None = None,
    ) -> _Report: ...
    def ingest_json(self, data: bytes) -> _Report: ...
    def ingest_arrow(self, stream: object, chunk_rows: int = 100_000) -> _Report: ...
    def ingest_proto(self, data: bytes) -> _Report: ...
    def define_audience(self, key: str, rule: str) -> int: ...
    def define_audiences(self, items: list[tuple[str, str]]) -> list[int]: ...
    def define_static_audience(self, key: str, user_ids: list[str]) -> int: ...
    def remove_audience(self, key: str) -> None: ...
    def define_computed_trait(self, key: str, expr: str) -> int: ...
    def remove_computed_trait(self, key: str) -> None: ...
    def computed_traits(self) -> list[tuple[str, str, str]]: ...
    def computed_value_json(self, user_id: str, key: str) -> str: ...
    def audiences(self) -> list[str]: ...
    def rule(self, key: str) -> str: ...
    def is_member(self, user_id: str, key: str) -> bool: ...
    def is_member_many(self, user_ids: list[str], key: str) -> list[bool]: ...
    def audiences_of(self, user_id: str) -> list[str]: ...
    def entered_at_ms(self, user_id: str, key: str) -> int | None: ...
    def members(self, key: str) -> list[str]: ...
    def size(self, key: str) -> int: ...
    def bitmap(self, key: str) -> bytes: ...
    def bitmap_with_ids(self, key: str) -> tuple[bytes, list[str]]: ...
    def user_ids(self, dense_le_u32: bytes) -> list[str]: ...
    def dense_id(self, user_id: str) -> int | None: ...
    def changes(self, since_seq: int = 0, limit: int | None = None) -> list[_ChangeRow]: ...
    def explain_json(self, user_id: str, key: str) -> bytes:
        """JSON object: audience, user_id, rule, member, entered_at (ms or null),
        now (ms), next_change (ms or null) and tree, nested nodes of
        ``{expr, value, holds, needs, children, next_change}``. A ``computed.KEY``
        node has one child (the computed trait's expression, explained the same
        way) and next_change (ms or null: when time alone changes the value);
        other nodes have next_change null."""
    def preview_json(self, rule: str, replacing: str | None = None, limit: int = 100) -> bytes: ...
    def overlap_json(self, keys: list[str]) -> bytes: ...
    def profile_json(self, user_id: str) -> bytes: ...
    def advance(self, to_ms: int) -> int: ...
    def tick(self) -> int: ...
    def traits_json(self, user_id: str) -> bytes | None: ...
    def stats(self) -> list[tuple[str, int]]: ...
