"""The warehouse-native peer: DuckDB recomputing audiences in SQL (DESIGN §7).

The events table of :func:`benches.workload.generate_events` is loaded into
DuckDB once (typed property columns extracted from the JSON, the latest value of
every referenced trait per user); every audience is then compiled from its
:class:`~benches.workload.AudienceSpec` to SQL and evaluated at an instant
``now``. It is both a benchmark peer and a correctness oracle for the engine,
so it follows docs/semantics.md to the letter:

* instants are integer milliseconds floored to the granularity G (event
  timestamps, ``now``, timestamp traits); durations are exact;
* an event is visible when ``t <= now``; a window ``W`` holds ``now - W < t``;
  ``since "X"`` holds ``t > tX`` (``tX`` the latest visible ``X``, empty if none);
* traits are the last identify value per key in arrival (row) order, a JSON
  ``null`` deletes; identify calls apply whatever their timestamp (the table is
  what was ingested); every user id in the table is a profile;
* a comparison involving null or values of different types is false and
  ``not`` is plain negation (SQL NULLs are folded to FALSE at each comparison);
* rows repeating an earlier ``message_id`` are dropped (retries apply once).

Audiences are evaluated level by level of the ``in_audience`` DAG, several per
query (``batch_size``), one scan of the events per query.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benches.workload import (
    Agg,
    And,
    AudienceSpec,
    Between,
    Cmp,
    Did,
    Duration,
    Exists,
    In,
    InAudience,
    Not,
    Operand,
    Or,
    Pred,
    Scalar,
    Selector,
    Since,
    SinceAnchor,
    SinceTrait,
    Trait,
    Value,
    Where,
    Window,
)

ColType = Literal["str", "num", "bool"]
_NUM_TYPES = "('UBIGINT', 'BIGINT', 'DOUBLE', 'HUGEINT')"
_SQL_OP = {"==": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}

AudienceLike = AudienceSpec | tuple[str, str, AudienceSpec]


@dataclass
class PeerTiming:
    """Wall-clock seconds of one peer run, with the sizes that produced them."""

    load_s: float
    compute_s: float
    rows: int
    users: int
    audiences: int
    queries: int
    members: int = 0
    per_query_s: list[float] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        """Load plus compute."""
        return self.load_s + self.compute_s


def _q(s: str) -> str:
    """SQL string literal."""
    return "'" + s.replace("'", "''") + "'"


def _json_path(path: str) -> str:
    return _q("$." + ".".join('"' + seg.replace('"', '\\"') + '"' for seg in path.split(".")))


def _num(x: float | int) -> str:
    return f"CAST({float(x)!r} AS DOUBLE)"


def _lit_type(v: Scalar) -> ColType:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "num"
    return "str"


def _lit_sql(v: Scalar) -> str:
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, (int, float)):
        return _num(v)
    return _q(v)


def _typed_json(src: str, path: str, typ: ColType) -> str:
    """Typed extraction of a JSON value: NULL when missing, null or of another type."""
    if typ == "str":
        return (
            f"CASE WHEN json_type({src}, {path}) = 'VARCHAR' "
            f"THEN json_extract_string({src}, {path}) END"
        )
    if typ == "num":
        return (
            f"CASE WHEN json_type({src}, {path}) IN {_NUM_TYPES} "
            f"THEN CAST(json_extract({src}, {path}) AS DOUBLE) END"
        )
    return (
        f"CASE WHEN json_type({src}, {path}) = 'BOOLEAN' "
        f"THEN CAST(json_extract({src}, {path}) AS BOOLEAN) END"
    )


def _parse_ts(expr: str) -> str:
    """Epoch ms of an ISO-8601 string (UTC when it has no offset); NULL when it is not one."""
    return f"epoch_ms(TRY_CAST({expr} AS TIMESTAMPTZ))"


def _floor(expr: str, g: int) -> str:
    return f"({expr} - ((({expr}) % {g}) + {g}) % {g})" if g > 1 else expr


def _normalise(audiences: Iterable[AudienceLike]) -> list[AudienceSpec]:
    out = []
    for a in audiences:
        out.append(a[2] if isinstance(a, tuple) else a)
    return out


def _walk_preds(p: Pred) -> Iterable[Pred]:
    yield p
    if isinstance(p, Not):
        yield from _walk_preds(p.arg)
    elif isinstance(p, (And, Or)):
        for a in p.args:
            yield from _walk_preds(a)


def _values(p: Pred) -> Iterable[Value | Selector]:
    for q in _walk_preds(p):
        if isinstance(q, (Cmp, Between, In)):
            yield q.lhs
        elif isinstance(q, Exists):
            yield q.value
        elif isinstance(q, Did):
            yield q.selector


def _levels(auds: list[AudienceSpec]) -> list[list[int]]:
    """Audience indices grouped by depth in the in_audience DAG (definition order within)."""
    index = {a.key: i for i, a in enumerate(auds)}
    if len(index) != len(auds):
        raise ValueError("duplicate audience keys")
    depth: dict[int, int] = {}
    visiting: set[int] = set()

    def d(i: int) -> int:
        if i in depth:
            return depth[i]
        if i in visiting:
            raise ValueError(f"audience cycle through {auds[i].key!r}")
        visiting.add(i)
        deps = []
        for k in auds[i].depends_on:
            if k not in index:
                raise KeyError(f"{auds[i].key!r} references unknown audience {k!r}")
            deps.append(d(index[k]))
        visiting.discard(i)
        depth[i] = 1 + max(deps) if deps else 0
        return depth[i]

    for i in range(len(auds)):
        d(i)
    levels: list[list[int]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for i in range(len(auds)):
        levels[depth[i]].append(i)
    return levels


class _Batch:
    """Compiles a group of audiences into one query (one scan of the events)."""

    def __init__(self, peer: DuckDBPeer, now: int) -> None:
        self.peer = peer
        self.now = now
        self.anchors: dict[str, str] = {}  # SQL aggregate -> alias in "anc"
        self.aggs: dict[str, str] = {}  # SQL aggregate -> alias in "agg"
        self.events: set[str] = set()

    # -- events
    def selector(self, sel: Selector, tbl: str) -> str:
        self.events.add(sel.event)
        parts = [f"{tbl}.event = {_q(sel.event)}"]
        for w in sel.where:
            parts.append(self.where(w, tbl))
        return " AND ".join(parts)

    def where(self, w: Where, tbl: str) -> str:
        typ = _lit_type(w.value)
        col = self.peer.prop_columns[(w.field, typ)]
        if typ == "bool" and w.op not in ("==", "!="):
            return "FALSE"
        return f"COALESCE({tbl}.{col} {_SQL_OP[w.op]} {_lit_sql(w.value)}, FALSE)"

    def anchor(self, event: str) -> str:
        self.events.add(event)
        sql = f"max(ts) FILTER (WHERE event = {_q(event)})"
        if sql not in self.anchors:
            self.anchors[sql] = f"a{len(self.anchors)}"
        return "anc." + self.anchors[sql]

    def window(self, window: Window) -> str:
        if window is None:
            return "TRUE"
        if isinstance(window, Duration):
            return f"ev.ts > {self.now - window.ms}"
        if isinstance(window, SinceAnchor):
            return f"ev.ts > {self.anchor(window.event)}"
        raise TypeError(window)

    def agg(self, sql: str) -> str:
        if sql not in self.aggs:
            self.aggs[sql] = f"v{len(self.aggs)}"
        return "agg." + self.aggs[sql]

    # -- values: (SQL, kind) with kind in num | dur | json
    def value(self, v: Value) -> tuple[str, str]:
        if isinstance(v, Trait):
            return "t." + self.peer.trait_columns[v.key], "trait"
        if isinstance(v, SinceTrait):
            return f"({self.now} - t.{self.peer.trait_columns[v.key]}_ts)", "dur"
        if isinstance(v, Since):
            cond = self.selector(v.selector, "ev")
            return f"({self.now} - {self.agg(f'max(ev.ts) FILTER (WHERE {cond})')})", "dur"
        cond = f"{self.selector(v.selector, 'ev')} AND {self.window(v.window)}"
        if v.fn == "count":
            return f"COALESCE({self.agg(f'count(*) FILTER (WHERE {cond})')}, 0)", "num"
        if v.prop is None:
            raise ValueError(f"{v.fn} needs a property")
        if v.fn == "distinct":
            col = "ev." + self.peer.prop_columns[(v.prop, "str")]
            return f"COALESCE({self.agg(f'count(DISTINCT {col}) FILTER (WHERE {cond})')}, 0)", "num"
        col = "ev." + self.peer.prop_columns[(v.prop, "num")]
        if v.fn == "avg":
            sql = f"sum({col}) FILTER (WHERE {cond}) / count({col}) FILTER (WHERE {cond})"
        else:
            sql = f"{v.fn}({col}) FILTER (WHERE {cond})"
        return self.agg(sql), "num"

    def operand(self, lhs: str, kind: str, rhs: Operand) -> tuple[str, str] | None:
        """(typed lhs, rhs SQL) for a comparison, None when the types cannot match."""
        if isinstance(rhs, Duration):
            return (lhs, str(rhs.ms)) if kind == "dur" else None
        if kind == "dur":
            return None
        typ = _lit_type(rhs)
        if kind == "trait":
            return f"{lhs}_{typ}", _lit_sql(rhs)
        return (lhs, _lit_sql(rhs)) if typ == "num" else None

    # -- predicates: SQL booleans that are never NULL
    def pred(self, p: Pred) -> str:
        if isinstance(p, Cmp):
            lhs, kind = self.value(p.lhs)
            ops = self.operand(lhs, kind, p.rhs)
            if ops is None or (isinstance(p.rhs, bool) and p.op not in ("==", "!=")):
                return "FALSE"
            return f"COALESCE({ops[0]} {_SQL_OP[p.op]} {ops[1]}, FALSE)"
        if isinstance(p, Between):
            lhs, kind = self.value(p.lhs)
            lo, hi = self.operand(lhs, kind, p.lo), self.operand(lhs, kind, p.hi)
            if lo is None or hi is None or lo[0] != hi[0]:
                return "FALSE"
            inside = f"{lo[0]} BETWEEN {lo[1]} AND {hi[1]}"
            return f"COALESCE({'NOT ' if p.negated else ''}({inside}), FALSE)"
        if isinstance(p, In):
            return self.in_list(p)
        if isinstance(p, Exists):
            lhs, kind = self.value(p.value)
            if kind == "trait":
                return f"COALESCE({lhs}_exists, FALSE)"
            return f"({lhs} IS NOT NULL)"
        if isinstance(p, Did):
            cond = f"{self.selector(p.selector, 'ev')} AND {self.window(p.window)}"
            return f"COALESCE({self.agg(f'count(*) FILTER (WHERE {cond})')}, 0) >= 1"
        if isinstance(p, InAudience):
            return f"(u.uid IN (SELECT uid FROM mem WHERE aud = {self.peer.aud_ids[p.key]}))"
        if isinstance(p, Not):
            return f"(NOT {self.pred(p.arg)})"
        if isinstance(p, And):
            return "(" + " AND ".join(self.pred(a) for a in p.args) + ")"
        if isinstance(p, Or):
            return "(" + " OR ".join(self.pred(a) for a in p.args) + ")"
        raise TypeError(f"not a predicate: {p!r}")

    def in_list(self, p: In) -> str:
        lhs, kind = self.value(p.lhs)
        present = f"COALESCE({lhs}_exists, FALSE)" if kind == "trait" else f"({lhs} IS NOT NULL)"
        if not p.values:
            member = "FALSE"
        else:
            types = {_lit_type(v) for v in p.values}
            if len(types) != 1:
                raise ValueError(f"mixed literal types in {p!r}")
            typ = types.pop()
            items = ", ".join(_lit_sql(v) for v in p.values)
            if kind == "trait":
                member = f"COALESCE({lhs}_{typ} IN ({items}), FALSE)"
                if typ == "str":
                    member += f" OR COALESCE(list_has_any({lhs}_list, [{items}]), FALSE)"
                present = f"COALESCE({lhs}_exists, FALSE)"
            elif kind == "num" and typ == "num":
                member = f"COALESCE({lhs} IN ({items}), FALSE)"
            else:
                member = "FALSE"
        if p.negated:
            return f"({present} AND NOT ({member}))"
        return f"({member})"

    def sql(self, preds: list[str]) -> str:
        now = self.now
        events = ", ".join(_q(e) for e in sorted(self.events)) or "NULL"
        ctes = []
        joins = ""
        if self.anchors:
            cols = ", ".join(f"{s} AS {a}" for s, a in self.anchors.items())
            ctes.append(
                f"anc AS (SELECT uid, {cols} FROM ev WHERE ts <= {now} "
                f"AND event IN ({events}) GROUP BY uid)"
            )
        if self.aggs:
            cols = ", ".join(f"{s} AS {a}" for s, a in self.aggs.items())
            anc_join = " LEFT JOIN anc ON anc.uid = ev.uid" if self.anchors else ""
            ctes.append(
                f"agg AS (SELECT ev.uid, {cols} FROM ev{anc_join} WHERE ev.ts <= {now} "
                f"AND ev.event IN ({events}) GROUP BY ev.uid)"
            )
            joins += " LEFT JOIN agg ON agg.uid = u.uid"
        joins += " LEFT JOIN traits t ON t.uid = u.uid"
        with_ = ("WITH " + ", ".join(ctes) + " ") if ctes else ""
        cols = ", ".join(f"{p} AS m{i}" for i, p in enumerate(preds))
        return f"{with_}SELECT u.uid, {cols} FROM users u{joins}"


class DuckDBPeer:
    """Events loaded into DuckDB, ready to compute audience memberships at any ``now``.

    ``events``: a table with the columns of ``benches.workload.EVENTS_SCHEMA``
    (``type``, ``user_id``, ``event``, ``timestamp`` int64 ms, ``message_id``,
    ``properties``/``context``/``traits`` JSON text), rows in arrival order.
    """

    def __init__(
        self,
        events: pa.Table,
        audiences: Sequence[AudienceLike],
        *,
        granularity_ms: int = 1_000,
        dedupe: bool = True,
        threads: int | None = None,
    ) -> None:
        t0 = time.perf_counter()
        self.audiences = _normalise(audiences)
        self.granularity_ms = granularity_ms
        self.aud_ids = {a.key: i for i, a in enumerate(self.audiences)}
        self.levels = _levels(self.audiences)
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        if threads is not None:
            self.con.execute(f"SET threads = {int(threads)}")
        self._load(events, dedupe)
        self.load_s = time.perf_counter() - t0

    def _collect_columns(self) -> None:
        props: dict[tuple[str, ColType], str] = {}
        traits: dict[str, str] = {}

        def add_prop(name: str, typ: ColType) -> None:
            if (name, typ) not in props:
                props[(name, typ)] = f"p{len(props)}"

        def add_sel(sel: Selector) -> None:
            for w in sel.where:
                add_prop(w.field, _lit_type(w.value))

        for a in self.audiences:
            for v in _values(a.rule):
                if isinstance(v, Selector):
                    add_sel(v)
                elif isinstance(v, (Trait, SinceTrait)):
                    traits.setdefault(v.key, f"t{len(traits)}")
                elif isinstance(v, Since):
                    add_sel(v.selector)
                elif isinstance(v, Agg):
                    add_sel(v.selector)
                    if v.prop is not None and v.fn != "count":
                        add_prop(v.prop, "str" if v.fn == "distinct" else "num")
        self.prop_columns = props
        self.trait_columns = traits

    def _load(self, events: pa.Table, dedupe: bool) -> None:
        self._collect_columns()
        con = self.con
        raw = events.append_column("arrival", pa.array(np.arange(events.num_rows, dtype=np.int64)))
        con.register("raw_in", raw)
        if pc.any(pc.is_null(events.column("timestamp"))).as_py():
            raise ValueError("every event needs a timestamp")
        src = "raw_in"
        if dedupe and "message_id" in events.column_names:
            n_ids = pc.count(events.column("message_id")).as_py()
            n_distinct = pc.count_distinct(events.column("message_id")).as_py()
            if n_ids != n_distinct:
                con.execute(
                    "CREATE TEMP TABLE raw_dedup AS SELECT * FROM raw_in QUALIFY "
                    "message_id IS NULL OR row_number() OVER "
                    "(PARTITION BY message_id ORDER BY arrival) = 1"
                )
                src = "raw_dedup"
        con.execute(
            f"CREATE TABLE users AS SELECT (row_number() OVER (ORDER BY user_id) - 1)"
            f"::INTEGER AS uid, user_id FROM (SELECT DISTINCT user_id FROM {src} "
            f"WHERE user_id IS NOT NULL)"
        )
        g = self.granularity_ms
        prop_cols = "".join(
            f", {_typed_json(*self._prop_source(name), typ)} AS {col}"
            for (name, typ), col in self.prop_columns.items()
        )
        con.execute(
            f"CREATE TABLE ev AS SELECT u.uid, r.event, {_floor('r.timestamp', g)} AS ts"
            f"{prop_cols} FROM {src} r JOIN users u ON u.user_id = r.user_id "
            f"WHERE r.type = 'track' ORDER BY r.event, u.uid"
        )
        # the latest identify value per key (JSON; a JSON null when deleted), then typed views
        latest = "".join(
            f", arg_max(json_extract(r.traits, {_json_path(k)}), r.arrival) FILTER (WHERE "
            f"json_exists(r.traits, {_json_path(k)})) AS {col}"
            for k, col in self.trait_columns.items()
        )
        typed = "".join(self._typed_trait(col) for col in self.trait_columns.values())
        con.execute(
            f"CREATE TABLE traits AS SELECT uid{typed} FROM (SELECT u.uid{latest} "
            f"FROM {src} r JOIN users u ON u.user_id = r.user_id "
            f"WHERE r.type = 'identify' GROUP BY u.uid)"
        )
        con.execute("CREATE TABLE mem (aud INTEGER, uid INTEGER)")
        con.unregister("raw_in")
        con.execute("DROP TABLE IF EXISTS raw_dedup")
        self.user_names = np.asarray(
            con.sql("SELECT user_id FROM users ORDER BY uid")
            .to_arrow_table()
            .column("user_id")
            .to_pylist(),
            dtype=object,
        )
        self.rows = events.num_rows

    def _typed_trait(self, col: str) -> str:
        """Typed columns of one trait: _str/_num/_bool, _exists, _list, _ts (floored ms)."""
        here = "'$'"
        return (
            f", {_typed_json(col, here, 'str')} AS {col}_str"
            f", {_typed_json(col, here, 'num')} AS {col}_num"
            f", {_typed_json(col, here, 'bool')} AS {col}_bool"
            f", ({col} IS NOT NULL AND json_type({col}) <> 'NULL') AS {col}_exists"
            f", CASE WHEN json_type({col}) = 'ARRAY' THEN from_json({col}, '[\"VARCHAR\"]')"
            f" END AS {col}_list"
            f", {_floor(_parse_ts(_typed_json(col, here, 'str')), self.granularity_ms)}"
            f" AS {col}_ts"
        )

    @staticmethod
    def _prop_source(name: str) -> tuple[str, str]:
        if name.startswith("context."):
            return "r.context", _json_path(name[len("context.") :])
        return "r.properties", _json_path(name)

    def compiled_sql(self, now_ms: int, keys: Sequence[str]) -> str:
        """The query computing the given audiences (not referencing each other) at ``now_ms``."""
        batch = _Batch(self, _floor_int(now_ms, self.granularity_ms))
        preds = [batch.pred(self.audiences[self.aud_ids[k]].rule) for k in keys]
        return batch.sql(preds)

    def memberships(
        self, now_ms: int, *, batch_size: int = 64, timing: PeerTiming | None = None
    ) -> dict[str, set[str]]:
        """Every audience's members (external ids) at ``now_ms``, in definition order."""
        now = _floor_int(now_ms, self.granularity_ms)
        con = self.con
        con.execute("DELETE FROM mem")
        needed = {k for a in self.audiences for k in a.depends_on}
        result: dict[int, set[str]] = {}
        for level in self.levels:
            for start in range(0, len(level), max(1, batch_size)):
                group = level[start : start + max(1, batch_size)]
                batch = _Batch(self, now)
                preds = [batch.pred(self.audiences[i].rule) for i in group]
                t0 = time.perf_counter()
                tbl = con.sql(batch.sql(preds)).to_arrow_table()
                uid = tbl.column("uid").to_numpy()
                new_mem: list[np.ndarray] = []
                new_aud: list[np.ndarray] = []
                for j, i in enumerate(group):
                    mask = tbl.column(f"m{j}").to_numpy(zero_copy_only=False)
                    ids = uid[mask]
                    result[i] = set(self.user_names[ids].tolist())
                    if self.audiences[i].key in needed and len(ids):
                        new_mem.append(ids)
                        new_aud.append(np.full(len(ids), i, dtype=np.int32))
                if new_mem:
                    con.register(
                        "mem_new",
                        pa.table(
                            {
                                "aud": np.concatenate(new_aud),
                                "uid": np.concatenate(new_mem).astype(np.int32),
                            }
                        ),
                    )
                    con.execute("INSERT INTO mem SELECT aud, uid FROM mem_new")
                    con.unregister("mem_new")
                if timing is not None:
                    timing.per_query_s.append(time.perf_counter() - t0)
                    timing.queries += 1
        return {a.key: result[i] for i, a in enumerate(self.audiences)}


def _floor_int(x: int, g: int) -> int:
    return x - x % g if g > 1 else x


def compute_memberships(
    events_table: pa.Table,
    audiences: Sequence[AudienceLike],
    now_ms: int,
    *,
    granularity_ms: int = 1_000,
    batch_size: int = 64,
    dedupe: bool = True,
) -> dict[str, set[str]]:
    """Members (external user ids) of every audience at ``now_ms``, per docs/semantics.md.

    ``audiences``: :class:`AudienceSpec` objects or the ``(key, text, spec)``
    tuples of :func:`benches.workload.generate_audiences`.
    """
    peer = DuckDBPeer(events_table, audiences, granularity_ms=granularity_ms, dedupe=dedupe)
    return peer.memberships(now_ms, batch_size=batch_size)


def time_memberships(
    events_table: pa.Table,
    audiences: Sequence[AudienceLike],
    now_ms: int,
    *,
    granularity_ms: int = 1_000,
    batch_size: int = 64,
    repeat: int = 1,
    threads: int | None = None,
) -> tuple[dict[str, set[str]], PeerTiming]:
    """Load once, compute all memberships ``repeat`` times; return the last result and timing.

    ``compute_s`` is the best of the repeats. ``threads=1`` pins DuckDB to one
    core (for per-core ratios); ``batch_size=1`` is one query per audience.
    """
    peer = DuckDBPeer(events_table, audiences, granularity_ms=granularity_ms, threads=threads)
    best = float("inf")
    result: dict[str, set[str]] = {}
    timing = PeerTiming(peer.load_s, 0.0, peer.rows, len(peer.user_names), len(peer.audiences), 0)
    for _ in range(max(1, repeat)):
        run = PeerTiming(peer.load_s, 0.0, peer.rows, len(peer.user_names), len(peer.audiences), 0)
        t0 = time.perf_counter()
        result = peer.memberships(now_ms, batch_size=batch_size, timing=run)
        run.compute_s = time.perf_counter() - t0
        if run.compute_s < best:
            best, timing = run.compute_s, run
    timing.members = sum(len(m) for m in result.values())
    return result, timing


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: generate a workload, run the peer at its end instant, print the timing."""
    from benches.workload import WorkloadSpec, generate_audiences, generate_events

    ap = argparse.ArgumentParser(description="DuckDB peer on the standard workload")
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--audiences", type=int, default=1_000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    spec = WorkloadSpec(users=a.users, events=a.events, audiences=a.audiences)
    events = generate_events(spec)
    auds = generate_audiences(spec)
    result, t = time_memberships(
        events, auds, spec.end_ms, batch_size=a.batch_size, threads=a.threads
    )
    sizes: dict[str, Any] = {k: len(v) for k, v in list(result.items())[:10]}
    print(
        f"rows={t.rows} users={t.users} audiences={t.audiences} queries={t.queries} "
        f"load={t.load_s:.2f}s compute={t.compute_s:.2f}s members={t.members}"
    )
    print("first sizes:", sizes)


if __name__ == "__main__":
    main()
