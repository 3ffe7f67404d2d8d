"""The exception hierarchy: every error is a :class:`SegmintError`."""

from segmint._core import (
    AudienceCycleError,
    CorruptDataError,
    InUseError,
    InvalidArgumentError,
    InvalidEventError,
    LimitExceededError,
    RuleError,
    RuleSyntaxError,
    RuleTypeError,
    SegmintError,
    StorageError,
    UnknownAudienceError,
    UnknownComputedTraitError,
    UnknownUserError,
)

__all__ = [
    "AudienceCycleError",
    "CorruptDataError",
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
