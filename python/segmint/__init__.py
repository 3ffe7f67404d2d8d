"""segmint: a real-time audience segmentation engine.

>>> from segmint import Engine
>>> eng = Engine(clock="manual", now="2026-01-01T00:00:00Z")
>>> eng.define_audience("buyers", 'did("Order Completed", 7d)')
0
>>> _ = eng.track("u1", "Order Completed", {"revenue": 42})
>>> eng.members("buyers")
['u1']
"""

from segmint.engine import Batch, Engine
from segmint.errors import (
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
from segmint.inspect import ComputedTrait, ExplainNode, Explanation, Overlap, Preview, Profile

__version__ = "0.1.0"

__all__ = [
    "AliasEvent",
    "AudienceCycleError",
    "Batch",
    "BatchError",
    "Change",
    "ComputedTrait",
    "CorruptDataError",
    "Engine",
    "ExplainNode",
    "Explanation",
    "IdentifyEvent",
    "InUseError",
    "IngestResult",
    "InvalidArgumentError",
    "InvalidEventError",
    "LimitExceededError",
    "Overlap",
    "Preview",
    "Profile",
    "Recovery",
    "RuleError",
    "RuleSyntaxError",
    "RuleTypeError",
    "SegmintError",
    "SnapshotInfo",
    "StorageError",
    "TrackEvent",
    "UnknownAudienceError",
    "UnknownComputedTraitError",
    "UnknownUserError",
]


def __getattr__(name: str) -> object:
    """Lazy exports that need the ``data`` extra (numpy, pyarrow, pyroaring):
    ``segmint.IdMap`` is :class:`segmint.interop.IdMap`."""
    if name == "IdMap":
        from segmint.interop import IdMap

        return IdMap
    raise AttributeError(f"module 'segmint' has no attribute {name!r}")
