"""The exception hierarchy: every error is a :class:`SegmintError`."""

from segmint._core import (
    AudienceCycleError,
    InUseError,
    InvalidArgumentError,
    InvalidEventError,
    LimitExceededError,
    RuleError,
    RuleSyntaxError,
    RuleTypeError,
    SegmintError,
    UnknownAudienceError,
    UnknownComputedTraitError,
    UnknownUserError,
)

__all__ = [
    "AudienceCycleError",
    "InUseError",
    "InvalidArgumentError",
    "InvalidEventError",
    "LimitExceededError",
    "RuleError",
    "RuleSyntaxError",
    "RuleTypeError",
    "SegmintError",
    "UnknownAudienceError",
    "UnknownComputedTraitError",
    "UnknownUserError",
]
