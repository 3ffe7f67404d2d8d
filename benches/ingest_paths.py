"""Batch ingest events/s of each Python input path on the same events, and
batched ``is_member`` lookups/s.

Every path applies the same generated workload (``benches/workload.py``) to a
fresh engine on the manual clock (set to the workload's last instant), with no
audiences (decoding dominates) and with the standard generated audiences:

* ``json``: ``Engine.ingest(bytes)``, Segment JSON arrays rendered beforehand
  (not timed);
* ``msgspec``: ``Engine.ingest(list[TrackEvent | IdentifyEvent])``, the structs
  built beforehand (not timed);
* ``arrow``: ``Engine.ingest_arrow(table)`` on the workload's table (JSON-text
  ``properties`` / ``context`` / ``traits``, int64 timestamps);
* ``arrow_struct``: the same table with struct ``properties`` / ``context``
  and a ``timestamp[ms, tz=UTC]`` column (``traits`` stay JSON text, as a
  sparse traits struct would not delete).

    python benches/ingest_paths.py --users 20000 --events 200000 --audiences 0 1000

Prints one JSON object per (audiences, path, repeat) and a summary table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from benches.workload import (
    WorkloadSpec,
    generate_audiences,
    generate_events,
    iter_segment_json,
    segment_dicts,
)

PATHS = ("json", "msgspec", "arrow", "arrow_struct")


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def struct_table(table: pa.Table) -> pa.Table:
    """``properties`` and ``context`` as struct columns, ``timestamp`` as
    ``timestamp[ms, tz=UTC]``."""
    out = table
    for name in ("properties", "context"):
        col = pc.fill_null(table.column(name).combine_chunks(), "{}")
        text = "\n".join(col.to_pylist()).encode()
        parsed = pj.read_json(pa.py_buffer(text)).to_struct_array()
        if isinstance(parsed, pa.ChunkedArray):
            parsed = parsed.combine_chunks()
        valid = pc.is_valid(table.column(name).combine_chunks())
        parsed = pc.if_else(valid, parsed, pa.scalar(None, parsed.type))
        out = out.set_column(out.schema.get_field_index(name), name, parsed)
    ts = table.column("timestamp").cast(pa.timestamp("ms", tz="UTC"))
    return out.set_column(out.schema.get_field_index("timestamp"), "timestamp", ts)


def msgspec_events(table: pa.Table) -> list[Any]:
    """The rows as segmint's msgspec structs."""
    from segmint import IdentifyEvent, TrackEvent

    out: list[Any] = []
    for d in segment_dicts(table):
        d = dict(d)
        kind = d.pop("type")
        fields = {
            "user_id": d.pop("userId"),
            "timestamp": d.pop("timestamp"),
            "message_id": d.pop("messageId"),
        }
        if kind == "track":
            out.append(
                TrackEvent(
                    event=d["event"], properties=d["properties"], context=d["context"], **fields
                )
            )
        else:
            out.append(IdentifyEvent(traits=d["traits"], **fields))
    return out


def run_once(
    how: str,
    inputs: dict[str, Any],
    audiences: list[tuple[str, str]],
    end_ms: int,
    chunk_rows: int,
) -> tuple[float, Any]:
    """Seconds to ingest everything through one path, and the engine."""
    from segmint import Engine

    eng = Engine(clock="manual", now=_dt(end_ms))
    if audiences:
        eng.define_audiences(audiences)
    t = time.perf_counter()
    if how == "json":
        for chunk in inputs["json"]:
            eng.ingest(chunk)
    elif how == "msgspec":
        structs = inputs["msgspec"]
        for i in range(0, len(structs), chunk_rows):
            eng.ingest(structs[i : i + chunk_rows])
    elif how == "arrow":
        eng.ingest_arrow(inputs["arrow"], chunk_rows=chunk_rows)
    elif how == "arrow_struct":
        eng.ingest_arrow(inputs["arrow_struct"], chunk_rows=chunk_rows)
    return time.perf_counter() - t, eng


def lookups_per_s(eng: Any, table: pa.Table, audience: str, n: int) -> tuple[int, float]:
    ids = pc.unique(table.column("user_id")).to_pylist()
    rng = np.random.default_rng(1)
    pick = rng.choice(len(ids), size=n, replace=len(ids) < n)
    arr = np.array([ids[int(i)] for i in pick], dtype=object)
    eng.is_member_array(arr[:1000], audience)
    t = time.perf_counter()
    eng.is_member_array(arr, audience)
    return len(arr), len(arr) / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--audiences", type=int, nargs="+", default=[0, 1000])
    p.add_argument("--chunk-rows", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--lookups", type=int, default=100_000)
    args = p.parse_args(argv)

    spec = WorkloadSpec(users=args.users, events=args.events, audiences=max(args.audiences))
    table = generate_events(spec)
    end_ms = int(pc.max(table.column("timestamp")).as_py())
    inputs: dict[str, Any] = {
        "json": list(iter_segment_json(table, args.chunk_rows)),
        "arrow": table,
    }
    if "msgspec" in args.paths:
        inputs["msgspec"] = msgspec_events(table)
    if "arrow_struct" in args.paths:
        inputs["arrow_struct"] = struct_table(table)
    all_audiences = [(k, text) for k, text, _ in generate_audiences(spec)]
    rows = table.num_rows
    summary: dict[tuple[int, str], list[float]] = {}
    last_engine = None
    for n_aud in args.audiences:
        auds = all_audiences[:n_aud]
        for how in args.paths:
            for r in range(args.repeat):
                secs, eng = run_once(how, inputs, auds, end_ms, args.chunk_rows)
                rate = rows / secs
                summary.setdefault((n_aud, how), []).append(rate)
                print(
                    json.dumps(
                        {
                            "audiences": n_aud,
                            "path": how,
                            "repeat": r,
                            "rows": rows,
                            "seconds": round(secs, 4),
                            "events_per_s": round(rate),
                        }
                    ),
                    flush=True,
                )
                last_engine = (eng, auds)
    print(
        f"\n{rows} rows ({args.events} track + identify), {args.users} users, "
        f"chunk_rows={args.chunk_rows}"
    )
    print(f"{'audiences':>9} {'path':>13}  events/s (each run)")
    for (n_aud, how), rates in summary.items():
        print(f"{n_aud:>9} {how:>13}  " + ", ".join(f"{r / 1e3:,.0f}k" for r in rates))
    if args.lookups and last_engine is not None:
        eng, auds = last_engine
        key = auds[0][0] if auds else None
        if key is None:
            eng.define_audience("any_order", 'did("Order Completed")')
            key = "any_order"
        for r in range(args.repeat):
            n, rate = lookups_per_s(eng, table, key, args.lookups)
            print(f"is_member_array: {n} ids, run {r}: {rate / 1e6:.2f} M lookups/s")


if __name__ == "__main__":
    main()
