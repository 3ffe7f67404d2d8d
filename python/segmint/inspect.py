"""Result types of :meth:`Engine.explain`, :meth:`Engine.preview`,
:meth:`Engine.overlap`, :meth:`Engine.profile` and :meth:`Engine.computed_traits`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from segmint._time import from_ms


class ExplainNode(msgspec.Struct, frozen=True):
    """One node of an explanation: an expression and its value for the user now.

    ``holds`` is set for conditions; ``needs`` for comparisons with a constant
    (``">= 3"``), so that ``count("Order Completed", 30d) = 2, needs >= 3`` reads
    as ``f"{node.expr} = {node.value}, needs {node.needs}"``.

    A ``computed.KEY`` node has one child, the computed trait's value
    expression explained the same way, and ``next_change``: the next instant
    at which time alone changes the computed trait's value (``None`` if none
    within a year, and on every other node)."""

    expr: str
    value: str
    holds: bool | None
    needs: str | None
    children: list[ExplainNode]
    next_change: datetime | None = None

    def render(self, indent: int = 0) -> str:
        """The tree as indented text, one node a line."""
        mark = {True: "✓", False: "✗", None: "·"}[self.holds]
        needs = f", needs {self.needs}" if self.needs else ""
        changes = f", changes at {self.next_change.isoformat()}" if self.next_change else ""
        lines = [f"{'  ' * indent}{mark} {self.expr} = {self.value}{needs}{changes}"]
        lines += [c.render(indent + 1) for c in self.children]
        return "\n".join(lines)


class Explanation(msgspec.Struct, frozen=True):
    """Why a user is (or is not) in an audience, and when time alone changes it."""

    audience: str
    user_id: str
    rule: str
    member: bool
    entered_at: datetime | None
    now: datetime
    tree: ExplainNode
    next_change: datetime | None


class Preview(msgspec.Struct, frozen=True):
    """What a rule would select against live state (nothing saved or emitted)."""

    size: int
    sample: list[str]
    entering: list[str]
    exiting: list[str]
    profiles: int


class Overlap(msgspec.Struct, frozen=True):
    """Exact sizes of audiences and of their intersections."""

    audiences: list[str]
    sizes: list[int]
    pairwise: list[list[int]]
    all: int


class Profile(msgspec.Struct, frozen=True):
    """Traits, computed traits (those with a non-null value) and audiences
    (with entry instants) of one user."""

    user_id: str
    traits: dict[str, Any]
    audiences: dict[str, datetime]
    computed: dict[str, Any] = msgspec.field(default_factory=dict)


class ComputedTrait(msgspec.Struct, frozen=True):
    """A defined computed trait: its key, value expression and type
    (``"number"``, ``"list"`` or ``"any"``)."""

    key: str
    expression: str
    type: str


def _maybe(ms: int | None) -> datetime | None:
    return None if ms is None else from_ms(ms)


def _node(d: dict[str, Any]) -> ExplainNode:
    return ExplainNode(
        expr=d["expr"],
        value=d["value"],
        holds=d["holds"],
        needs=d["needs"],
        children=[_node(c) for c in d["children"]],
        next_change=_maybe(d.get("next_change")),
    )


def explanation(raw: bytes) -> Explanation:
    """Decodes the core's JSON explanation."""
    d = msgspec.json.decode(raw)
    tree = _node(d["tree"])
    return Explanation(
        audience=d["audience"],
        user_id=d["user_id"],
        rule=d["rule"],
        member=d["member"],
        entered_at=_maybe(d["entered_at"]),
        now=from_ms(d["now"]),
        tree=tree,
        next_change=_maybe(d["next_change"]),
    )


def profile(raw: bytes) -> Profile:
    """Decodes the core's JSON profile."""
    d = msgspec.json.decode(raw)
    return Profile(
        user_id=d["user_id"],
        traits=dict(d["traits"]),
        audiences={k: from_ms(at) for k, at in d["audiences"]},
        computed=dict(d.get("computed", [])),
    )
