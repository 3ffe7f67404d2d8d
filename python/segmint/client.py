"""``segmint load``: a client that streams the generated e-commerce workload
into a running sidecar at a chosen rate and shows throughput and audience
sizes. Also a few helpers for gRPC clients (channels, auth, batch encoding)."""

from __future__ import annotations

import argparse
import os
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
import msgspec

from segmint.examples import generate_events
from segmint.proto import segmint_pb2 as pb

_encoder = msgspec.json.Encoder()

INGEST_METHOD = "/segmint.v1.Segmint/Ingest"


def channel(target: str) -> grpc.Channel:
    """An insecure channel to ``HOST:PORT`` or ``unix:///path`` (loopback or a
    local socket; put TLS in front for anything else)."""
    return grpc.insecure_channel(
        target,
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ],
    )


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata carrying a bearer token (empty without one)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def _ms(value: Any) -> int | None:
    if value is None:
        return None
    ts = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if ts.tzinfo is None:
        raise ValueError(f"naive timestamp {value!r}")
    return int(ts.timestamp() * 1000)


def event_to_proto(event: Mapping[str, Any]) -> pb.Event:
    """A Segment-shaped dict (``type``, ``userId``, ``event``, ``properties``,
    ``context``, ``traits``, ``previousId``, ``timestamp``, ``messageId``) as a
    ``segmint.v1.Event`` carrying JSON payloads."""
    out = pb.Event(
        user_id=event.get("userId") or "",
        anonymous_id=event.get("anonymousId") or "",
        message_id=event.get("messageId") or "",
    )
    ms = _ms(event.get("timestamp"))
    if ms is not None:
        seconds, rest = divmod(ms, 1000)
        out.timestamp.seconds = seconds
        out.timestamp.nanos = rest * 1_000_000
    kind = event.get("type") or ("track" if "event" in event else "identify")
    if kind == "track":
        out.track.event = event.get("event") or ""
        if event.get("properties") is not None:
            out.track.properties_json = _encoder.encode(event["properties"])
        if event.get("context") is not None:
            out.track.context_json = _encoder.encode(event["context"])
    elif kind == "identify":
        out.identify.traits_json = _encoder.encode(event.get("traits") or {})
    elif kind == "alias":
        out.alias.previous_id = event.get("previousId") or ""
    else:
        raise ValueError(f"unsupported event type {kind!r}")
    return out


def encode_batch(events: Sequence[Mapping[str, Any]], batch_id: int = 0) -> bytes:
    """A serialized ``EventBatch`` of Segment-shaped dicts."""
    batch = pb.EventBatch(batch_id=batch_id)
    batch.events.extend(event_to_proto(e) for e in events)
    return batch.SerializeToString()


def _with_batch_id(data: bytes, batch_id: int) -> bytes:
    """Prefixes field 1 (batch_id) to a serialized batch that has none."""
    out = bytearray(b"\x08")
    value = batch_id
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            break
    return bytes(out) + data


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = 0
        self.acked = 0
        self.rejected = 0
        self.seq = 0
        self.error: str | None = None


def run_load(args: argparse.Namespace) -> int:
    """Streams ``args.events`` generated events in batches of ``args.batch``
    at ``args.rate`` events/s to ``args.target``; prints throughput and the
    audience sizes. Returns the exit status."""
    from rich.console import Console, Group
    from rich.live import Live
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table

    console = Console(stderr=False)
    token = args.token or os.environ.get("SEGMINT_TOKEN")
    metadata = auth_metadata(token)
    ch = channel(args.target)
    try:
        grpc.channel_ready_future(ch).result(timeout=10)
    except grpc.FutureTimeoutError:
        console.print(f"[red]cannot reach a server at {args.target}[/red]")
        return 1
    rng = random.Random(args.seed)
    nbatches = max(1, -(-args.events // args.batch))
    pool_size = min(nbatches, 16)
    with console.status("generating the workload…"):
        now = datetime.now(UTC)
        generated = [generate_events(rng, args.users, args.batch, now) for _ in range(pool_size)]
        pool = [encode_batch(events) for events in generated]
        counts = [len(events) for events in generated]
    total = sum(counts[i % pool_size] for i in range(nbatches))
    list_audiences = ch.unary_unary(
        "/segmint.v1.Segmint/ListAudiences",
        request_serializer=pb.ListAudiencesRequest.SerializeToString,
        response_deserializer=pb.ListAudiencesResponse.FromString,
    )
    ingest: grpc.StreamStreamMultiCallable[bytes, pb.IngestAck] = ch.stream_stream(
        INGEST_METHOD,
        request_serializer=None,  # already serialized
        response_deserializer=pb.IngestAck.FromString,
    )
    stats = _Stats()
    window = threading.BoundedSemaphore(max(1, args.window))
    stop = threading.Event()
    t0 = time.perf_counter()

    def batches() -> Iterator[bytes]:
        for i in range(nbatches):
            while not window.acquire(timeout=0.2):
                if stop.is_set():
                    return
            if stop.is_set():
                return
            if args.rate > 0:
                due = t0 + stats.sent / args.rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            data = pool[i % pool_size]
            with stats.lock:
                stats.sent += counts[i % pool_size]
            yield _with_batch_id(data, i + 1)

    def audience_table() -> Table:
        table = Table(title="audiences", show_edge=False)
        table.add_column("audience")
        table.add_column("members", justify="right")
        try:
            response = list_audiences(pb.ListAudiencesRequest(), metadata=metadata, timeout=5)
            for a in response.audiences:
                table.add_row(a.key, f"{a.size:,}")
        except grpc.RpcError as e:
            table.add_row("(unavailable)", str(e.code()))
        return table

    progress = Progress(
        TextColumn("[bold]ingest"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
        disable=args.quiet,
    )
    task = progress.add_task("ingest", total=total, rate="")
    table = audience_table()
    last_table = time.perf_counter()
    with Live(
        Group(progress, table), console=console, refresh_per_second=4, transient=False
    ) as live:
        try:
            for ack in ingest(batches(), metadata=metadata):
                window.release()
                with stats.lock:
                    stats.acked += ack.accepted
                    stats.rejected += len(ack.errors)
                    stats.seq = ack.seq
                elapsed = time.perf_counter() - t0
                progress.update(
                    task,
                    completed=stats.acked + stats.rejected,
                    rate=f"{stats.acked / max(elapsed, 1e-9):,.0f} ev/s  seq {stats.seq:,}",
                )
                if time.perf_counter() - last_table > 1.0:
                    table = audience_table()
                    live.update(Group(progress, table))
                    last_table = time.perf_counter()
        except grpc.RpcError as e:
            stats.error = f"{e.code()}: {e.details()}"
        except KeyboardInterrupt:
            stats.error = "interrupted"
        finally:
            stop.set()
        live.update(Group(progress, audience_table()))
    elapsed = time.perf_counter() - t0
    console.print()
    console.print(
        f"sent {stats.acked + stats.rejected:,} events in {elapsed:.2f}s: "
        f"{stats.acked / max(elapsed, 1e-9):,.0f} events/s accepted, "
        f"{stats.rejected:,} rejected, change seq {stats.seq:,}"
    )
    if stats.error:
        console.print(f"[red]stream ended: {stats.error}[/red]")
        return 1
    return 0


__all__ = ["auth_metadata", "channel", "encode_batch", "event_to_proto", "run_load"]
