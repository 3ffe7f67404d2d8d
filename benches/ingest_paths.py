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

Each (audiences, path) pair runs in a fresh Python process (``--in-process``
runs them all in this one): one path's heap left behind slows the next by up
to 2x on the development box. Prints one JSON object per (audiences, path,
repeat) and a summary table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
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


def _measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Runs the asked paths in this process; one record per run."""
    spec = WorkloadSpec(users=args.users, events=args.events, audiences=max(args.audiences))
    table = generate_events(spec)
    end_ms = int(pc.max(table.column("timestamp")).as_py())
    inputs: dict[str, Any] = {"arrow": table}
    if "json" in args.paths:
        inputs["json"] = list(iter_segment_json(table, args.chunk_rows))
    if "msgspec" in args.paths:
        inputs["msgspec"] = msgspec_events(table)
    if "arrow_struct" in args.paths:
        inputs["arrow_struct"] = struct_table(table)
    all_audiences = [(k, text) for k, text, _ in generate_audiences(spec)]
    records = []
    eng, auds = None, []
    for n_aud in args.audiences:
        auds = all_audiences[:n_aud]
        for how in args.paths:
            for r in range(args.repeat):
                secs, eng = run_once(how, inputs, auds, end_ms, args.chunk_rows)
                rec = {
                    "audiences": n_aud,
                    "path": how,
                    "repeat": r,
                    "rows": table.num_rows,
                    "seconds": round(secs, 4),
                    "events_per_s": round(table.num_rows / secs),
                }
                print(json.dumps(rec), flush=True)
                records.append(rec)
    if args.lookups and eng is not None:
        key = auds[0][0] if auds else None
        if key is None:
            eng.define_audience("any_order", 'did("Order Completed")')
            key = "any_order"
        for r in range(args.repeat):
            n, rate = lookups_per_s(eng, table, key, args.lookups)
            rec = {"lookups": n, "repeat": r, "lookups_per_s": round(rate)}
            print(json.dumps(rec), flush=True)
            records.append(rec)
    return records


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--audiences", type=int, nargs="+", default=[0, 1000])
    p.add_argument("--chunk-rows", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--lookups", type=int, default=100_000)
    p.add_argument("--in-process", action="store_true", help="run every path in this process")
    args = p.parse_args(argv)

    if args.in_process:
        records = _measure(args)
    else:
        records = []
        common = [
            f"--users={args.users}",
            f"--events={args.events}",
            f"--chunk-rows={args.chunk_rows}",
            f"--repeat={args.repeat}",
            "--in-process",
        ]
        runs = [([n], [how], 0) for n in args.audiences for how in args.paths]
        runs.append(([max(args.audiences)], ["arrow"], args.lookups))
        for auds, paths, lookups in runs:
            cmd = [sys.executable, __file__, *common, "--audiences", *map(str, auds)]
            cmd += ["--paths", *paths, f"--lookups={lookups}"]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            for line in out.splitlines():
                if line.startswith("{"):
                    rec = json.loads(line)
                    if lookups and "lookups" not in rec:
                        continue  # the engine for the lookups, not a figure
                    print(line, flush=True)
                    records.append(rec)

    rows = next((r["rows"] for r in records if "rows" in r), 0)
    print(
        f"\n{rows} rows ({args.events} track + identify), {args.users} users, "
        f"chunk_rows={args.chunk_rows}"
    )
    print(f"{'audiences':>9} {'path':>13}  events/s (each run)")
    summary: dict[tuple[int, str], list[float]] = {}
    for r in records:
        if "path" in r:
            summary.setdefault((r["audiences"], r["path"]), []).append(r["events_per_s"])
    for (n_aud, how), rates in summary.items():
        print(f"{n_aud:>9} {how:>13}  " + ", ".join(f"{x / 1e3:,.0f}k" for x in rates))
    for r in records:
        if "lookups" in r:
            print(
                f"is_member_array: {r['lookups']} ids, run {r['repeat']}: "
                f"{r['lookups_per_s'] / 1e6:.2f} M lookups/s"
            )


if __name__ == "__main__":
    main()
