"""Conversions between the API's timestamps and the core's milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from segmint._core import InvalidArgumentError

Instant = datetime | str
"""A timezone-aware datetime or an ISO-8601 string with an offset."""


def to_ms(value: Instant, what: str = "timestamp") -> int:
    """Milliseconds since the epoch; a naive datetime or string is an error."""
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidArgumentError(
                f"invalid {what} {value!r}: expected ISO-8601 like 2026-01-01T12:00:00Z"
            ) from None
        value = parsed
    if not isinstance(value, datetime):
        raise InvalidArgumentError(
            f"invalid {what}: expected a timezone-aware datetime or an ISO-8601 string, "
            f"got {type(value).__name__}"
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgumentError(
            f"invalid {what} {value.isoformat()}: a naive datetime is ambiguous; "
            "give it a timezone (e.g. tzinfo=datetime.UTC)"
        )
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return delta // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    """A UTC datetime from milliseconds since the epoch."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


def duration_ms(value: str | timedelta, what: str) -> int:
    """Milliseconds of a duration given as ``timedelta`` or text like ``5m``."""
    if isinstance(value, timedelta):
        return value // timedelta(milliseconds=1)
    units = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
    text = value.strip()
    digits = text.rstrip("mshdw")
    unit = text[len(digits) :]
    if not digits.isdigit() or unit not in units:
        raise InvalidArgumentError(
            f"invalid {what} {value!r}: expected a number and a unit, like 1s, 5m, 2h or 30d"
        )
    return int(digits) * units[unit]
