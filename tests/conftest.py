"""Shared test set-up: hypothesis profiles, the reference/engine pair harness.

Hypothesis profiles (select with ``HYPOTHESIS_PROFILE``; default ``ci``):

- ``ci``: ~150 examples per property, no deadline (the default run).
- ``dev``: 30 examples, for quick local iterations.
- ``thorough``: 2,000 examples, for a long soak.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference import (
    RefChange,
    Reference,
    RejectedEvent,
    dt_to_ms,
    ms_to_datetime,
    ms_to_iso,
)
from rulegen import Advance, Alias, Define, Identify, Op, Remove, Track

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("ci", max_examples=150, deadline=None, suppress_health_check=_SUPPRESS)
settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=_SUPPRESS)
settings.register_profile(
    "thorough", max_examples=2000, deadline=None, suppress_health_check=_SUPPRESS
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def engine_available() -> bool:
    """Whether the compiled engine (``segmint._core``) can be imported."""
    try:
        return importlib.util.find_spec("segmint._core") is not None
    except (ImportError, ValueError):
        return False


def abandon(eng: Any) -> None:
    """Releases a durable engine's directory without the final snapshot of
    ``close()``, as a crash would (what was synced stays)."""
    eng._core = None
    import gc

    gc.collect()


# A change as compared between engine and reference: (audience, user, kind, at_ms, reason).
ChangeTuple = tuple[str, str, str, int, str]


def change_tuple(c: Any) -> ChangeTuple:
    """Normalises an engine ``segmint.Change`` or a ``RefChange`` to a plain tuple."""
    if isinstance(c, RefChange):
        return (c.audience, c.user, c.kind, c.at, c.reason)
    at = c.at if isinstance(c.at, int) else dt_to_ms(c.at)
    return (c.audience, c.user_id, str(c.kind), at, str(c.reason))


def by_user_audience(
    changes: list[ChangeTuple],
) -> dict[tuple[str, str], list[tuple[str, int, str]]]:
    out: dict[tuple[str, str], list[tuple[str, int, str]]] = defaultdict(list)
    for aud, user, kind, at, reason in changes:
        out[(user, aud)].append((kind, at, reason))
    return dict(out)


def by_user(changes: list[ChangeTuple]) -> dict[str, list[tuple[str, str, int, str]]]:
    """Per user, the ordered (audience, kind, at, reason) of its changes.

    The order of changes within one user is fully specified (instant, then
    event arrival, then audience in topological/definition order), whereas
    the order between users at one instant depends on internal user ids.
    """
    out: dict[str, list[tuple[str, str, int, str]]] = defaultdict(list)
    for aud, user, kind, at, reason in changes:
        out[user].append((aud, kind, at, reason))
    return dict(out)


class Pair:
    """Applies every operation to the reference and (when built) the engine,
    and checks after each one that both agree."""

    def __init__(
        self,
        now: int,
        engine: bool,
        granularity_ms: int = 1000,
        future_skew_ms: int = 300_000,
    ) -> None:
        self.ref = Reference(now=now, granularity_ms=granularity_ms, future_skew_ms=future_skew_ms)
        self.eng: Any = None
        if engine:
            import segmint

            self.sg = segmint
            kwargs: dict[str, Any] = {}
            if granularity_ms != 1000:
                kwargs["granularity"] = f"{granularity_ms}ms"
            if future_skew_ms != 300_000:
                kwargs["future_skew"] = f"{future_skew_ms}ms"
            self.eng = segmint.Engine(clock="manual", now=ms_to_iso(now), **kwargs)

    # ---- operations
    def identify(self, user: str, traits: dict[str, Any]) -> list[RefChange]:
        before = len(self.ref.changes())
        self.ref.identify(user, traits)
        if self.eng is not None:
            self.eng.identify(user, traits)
        self.check()
        return self.ref.changes()[before:]

    def track(
        self,
        user: str,
        event: str,
        properties: dict[str, Any] | None = None,
        timestamp: int | None = None,
        context: dict[str, Any] | None = None,
        message_id: str | None = None,
        as_datetime: bool = False,
    ) -> list[RefChange]:
        before = len(self.ref.changes())
        ref_rejected = False
        try:
            self.ref.track(user, event, properties, timestamp, context, message_id)
        except RejectedEvent:
            ref_rejected = True
        if self.eng is not None:
            kwargs: dict[str, Any] = {}
            if timestamp is not None:
                kwargs["timestamp"] = (
                    ms_to_datetime(timestamp) if as_datetime else ms_to_iso(timestamp)
                )
            if context is not None:
                kwargs["context"] = context
            if message_id is not None:
                kwargs["message_id"] = message_id
            eng_rejected = False
            try:
                self.eng.track(user, event, dict(properties or {}), **kwargs)
            except self.sg.InvalidEventError:
                eng_rejected = True
            assert eng_rejected == ref_rejected, (
                f"track {event!r} at {timestamp}: engine rejected={eng_rejected}, "
                f"reference rejected={ref_rejected}"
            )
        self.check()
        return self.ref.changes()[before:]

    def alias(self, previous: str, user: str, timestamp: int | None = None) -> list[RefChange]:
        before = len(self.ref.changes())
        ref_rejected = False
        try:
            self.ref.alias(previous, user, timestamp)
        except RejectedEvent:
            ref_rejected = True
        if self.eng is not None:
            eng_rejected = False
            ts = None if timestamp is None else ms_to_iso(timestamp)
            try:
                self.eng.alias(previous, user, timestamp=ts)
            except self.sg.InvalidEventError:
                eng_rejected = True
            assert eng_rejected == ref_rejected, f"alias at {timestamp}: engine {eng_rejected}"
        self.check()
        return self.ref.changes()[before:]

    def advance(self, to: int) -> list[RefChange]:
        before = len(self.ref.changes())
        n_ref = self.ref.advance(to)
        if self.eng is not None:
            n_eng = self.eng.advance(ms_to_iso(to))
            assert n_eng == n_ref, f"advance to {ms_to_iso(to)}: engine {n_eng}, reference {n_ref}"
        self.check()
        return self.ref.changes()[before:]

    def define(self, key: str, rule: str) -> int:
        size = self.ref.define_audience(key, rule)
        if self.eng is not None:
            eng_size = self.eng.define_audience(key, rule)
            assert eng_size == size, f"define {key} = {rule!r}: engine size {eng_size} != {size}"
        self.check()
        return size

    def remove(self, key: str) -> None:
        self.ref.remove_audience(key)
        if self.eng is not None:
            self.eng.remove_audience(key)
        self.check()

    def apply(self, op: Op) -> None:
        match op:
            case Identify(user, traits):
                self.identify(user, traits)
            case Track(user, event, props, ts, ctx, mid, as_dt):
                self.track(user, event, props, ts, ctx, mid, as_dt)
            case Alias(previous, user, ts):
                self.alias(previous, user, ts)
            case Advance(to):
                self.advance(to)
            case Define(key, rule):
                self.define(key, rule)
            case Remove(key):
                self.remove(key)
            case _:
                raise TypeError(op)

    # ---- checks
    def check(self) -> None:
        """Engine and reference agree on the clock, the audiences and every membership."""
        if self.eng is None:
            return
        ref, eng = self.ref, self.eng
        assert dt_to_ms(eng.now) == ref.now
        assert sorted(eng.audiences()) == sorted(ref.audiences())
        for key in ref.audiences():
            members = ref.members(key)
            assert eng.members(key) == members, (
                f"audience {key} = {ref.rule(key)!r} at {ms_to_iso(ref.now)}: "
                f"engine {eng.members(key)} != reference {members}"
            )
            assert eng.size(key) == len(members)
        for user in ref.users:
            assert eng.audiences_of(user) == ref.audiences_of(user), user
        assert eng.last_seq == len(ref.changes())

    def engine_changes(self) -> list[ChangeTuple]:
        assert self.eng is not None
        changes = self.eng.changes()
        seqs = [c.seq for c in changes]
        assert seqs == list(range(1, len(changes) + 1)), "sequence numbers must be gap-free"
        return [change_tuple(c) for c in changes]

    def changes(self, per_user_order: bool = True, exact: bool = False) -> list[ChangeTuple]:
        """The reference's changes; when the engine runs, checked equal to the engine's.

        Always compared: per (user, audience), the sequence of (kind, at, reason).
        With ``per_user_order``, also the order of one user's changes across
        audiences (which pins the topological/definition order of audiences).
        With ``exact``, the whole ordered list (only where no two users change
        at the same instant, since the order of users is internal).
        """
        ref = [change_tuple(c) for c in self.ref.changes()]
        if self.eng is not None:
            eng = self.engine_changes()
            ats = [c[3] for c in eng]
            assert ats == sorted(ats), "change instants must not go back"
            assert by_user_audience(eng) == by_user_audience(ref)
            if per_user_order:
                assert by_user(eng) == by_user(ref)
            if exact:
                assert eng == ref
        return ref


PairFactory = Callable[..., Pair]


@pytest.fixture(params=["reference", "engine"])
def make_pair(request: pytest.FixtureRequest) -> Iterator[PairFactory]:
    """A factory of ``Pair``s: reference alone, and reference + engine when built."""
    with_engine = request.param == "engine"
    if with_engine and not engine_available():
        pytest.skip("segmint._core is not built")

    def factory(now: int | str | datetime, **kwargs: Any) -> Pair:
        from reference import to_ms

        return Pair(to_ms(now), engine=with_engine, **kwargs)

    yield factory
