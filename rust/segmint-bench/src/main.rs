//! `segmint-bench`: measures segmint-core on a workload exported by
//! `benches/workload.py` (events as NDJSON in time order, audiences as a
//! JSON list of `[key, rule]`). Prints one JSON object of figures.
//!
//! Usage: `segmint-bench EVENTS.ndjson AUDIENCES.json [--threads N]
//! [--shards N] [--chunk N] [--latency-samples N] [--probe-tail N] [--hot K]
//! [--backfills N] [--backfill-rule RULE] [--max-events N]
//! [--data-dir DIR --fsync always|interval|never]`
//!
//! The latency samples are events spread over the stream, held back and
//! sent one per call at the end; with `--probe-tail N`, the stream's last
//! N events instead (a file ending with one kind of event times that kind
//! on profiles with the whole history behind them).
//!
//! With `--data-dir` the engine is durable: ingest figures include the
//! write-ahead log, and the run ends by measuring recovery (log replay),
//! a snapshot, and a start from that snapshot.

use std::time::Instant;

use cpu_time::ThreadTime;

/// mimalloc: the engine allocates many small objects (profiles, states,
/// change entries); glibc malloc spent ~12% of ingest in its free lists.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use segmint_core::event::decode_json_batch;
use segmint_core::limits::Limits;
use segmint_core::{Clock, Engine, EngineConfig, Event, FsyncPolicy, StorageConfig};

/// One latency probe: a function of its own, so that a profiler can
/// collect the probes apart from the bulk ingest
/// (`valgrind --tool=callgrind --toggle-collect=*probe_ingest*`).
#[inline(never)]
fn probe_ingest(
    engine: &mut Engine,
    event: Event,
) -> segmint_core::Result<segmint_core::IngestReport> {
    engine.ingest(vec![Ok(event)])
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn text_arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The median of sorted values (of the two middle ones for an even
/// count); `None` for none.
fn median(sorted: &[f64]) -> Option<f64> {
    let middle = sorted.len() / 2;
    match sorted.len() % 2 {
        _ if sorted.is_empty() => None,
        1 => Some(sorted[middle]),
        _ => Some((sorted[middle - 1] + sorted[middle]) / 2.0),
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_owned)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!(
            "usage: segmint-bench EVENTS.ndjson AUDIENCES.json [--threads N] [--shards N] \
             [--chunk N] [--latency-samples N] [--probe-tail N] [--hot K] [--backfills N] \
             [--alias-samples N] \
             [--backfill-rule RULE] \
             [--max-events N] [--data-dir DIR --fsync always|interval|never]"
        );
        std::process::exit(2);
    }
    let threads = arg(&args, "--threads", 1);
    let shards = arg(&args, "--shards", threads);
    let chunk = arg(&args, "--chunk", 50_000);
    let latency_samples = arg(&args, "--latency-samples", 20_000);
    let probe_tail = arg(&args, "--probe-tail", 0);
    let hot = arg(&args, "--hot", usize::MAX);

    let limits = Limits {
        max_batch_bytes: usize::MAX,
        ..Limits::default()
    };
    let max_events = arg(&args, "--max-events", usize::MAX);
    // The process before any input: at the end every event has been
    // consumed and dropped, so the growth is the engine's (with what the
    // allocator keeps).
    let rss_before = rss_bytes();
    let raw = std::fs::read(&args[1]).expect("read events");
    // JSON decoding is timed on its own (ingest figures start from decoded
    // events, as the msgspec and Arrow paths do).
    let t = Instant::now();
    let events: Vec<Event> = decode_json_batch(&raw, &limits)
        .expect("decode events")
        .into_iter()
        .take(max_events)
        .map(|e| e.expect("valid event"))
        .collect();
    let decode_s = t.elapsed().as_secs_f64();
    let decoded_total = raw.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
    drop(raw);
    let audiences: Vec<(String, String)> =
        serde_json::from_slice(&std::fs::read(&args[2]).expect("read audiences"))
            .expect("audiences json");
    let first_ts = events.iter().find_map(|e| e.timestamp).unwrap_or(0);

    let config = EngineConfig {
        clock: Clock::Manual(first_ts),
        shards,
        threads,
        ..Default::default()
    };
    let data_dir = text_arg(&args, "--data-dir").map(std::path::PathBuf::from);
    // Durable, every backfill is a logged definition that recovery replays:
    // one, as before, keeps the replay figure to the events.
    let default_backfills = if data_dir.is_some() { 1 } else { 15 };
    let backfills = arg(&args, "--backfills", default_backfills).max(1);
    let fsync_name = text_arg(&args, "--fsync").unwrap_or("always").to_owned();
    let storage = data_dir.as_ref().map(|dir| StorageConfig {
        dir: dir.clone(),
        fsync: FsyncPolicy::parse(&fsync_name, 100).expect("fsync policy"),
        // Snapshots are measured explicitly at the end.
        snapshot_log_bytes: 0,
    });
    let mut engine = match &storage {
        None => Engine::new(config.clone()).expect("engine"),
        Some(st) => {
            let _ = std::fs::remove_dir_all(&st.dir);
            Engine::open(config.clone(), st.clone()).expect("open").0
        }
    };
    let refs: Vec<(&str, &str)> = audiences
        .iter()
        .map(|(k, r)| (k.as_str(), r.as_str()))
        .collect();
    let t = Instant::now();
    engine
        .define_audiences(&refs)
        .map_err(|(i, e)| format!("audience {i}: {e}"))
        .expect("define");
    let define_s = t.elapsed().as_secs_f64();

    // Hold back a sample of events to time one by one at the end.
    let sample_every = (events.len() / latency_samples.max(1)).max(1);
    let tail_from = events.len().saturating_sub(probe_tail);
    let (mut bulk, mut probes) = (Vec::with_capacity(events.len()), Vec::new());
    for (i, e) in events.into_iter().enumerate() {
        let probe = match probe_tail {
            0 => i % sample_every == sample_every - 1 && probes.len() < latency_samples,
            _ => i >= tail_from,
        };
        if probe {
            probes.push(e);
        } else {
            bulk.push(e);
        }
    }
    let total = bulk.len();
    let mut ingest_s = 0.0;
    let mut advance_s = 0.0;
    // CPU time of this (the calling) thread inside ingest and advance: the
    // steps no other thread can share. The shards' work runs on the pool
    // while this thread sleeps, so on several threads this is ingest's
    // serial part.
    let mut ingest_caller_cpu_s = 0.0;
    let mut advance_caller_cpu_s = 0.0;
    let mut bulk = bulk.into_iter().peekable();
    while bulk.peek().is_some() {
        let batch: Vec<Event> = bulk.by_ref().take(chunk).collect();
        // Move the clock to the batch's last instant: time-based changes fire too.
        let last = batch
            .iter()
            .filter_map(|e| e.timestamp)
            .max()
            .unwrap_or(engine.now());
        let (t, cpu) = (Instant::now(), ThreadTime::now());
        if last > engine.now() {
            engine.advance(last).expect("advance");
        }
        advance_s += t.elapsed().as_secs_f64();
        advance_caller_cpu_s += cpu.elapsed().as_secs_f64();
        let (t, cpu) = (Instant::now(), ThreadTime::now());
        let report = engine
            .ingest(batch.into_iter().map(Ok).collect())
            .expect("logging the batch");
        ingest_s += t.elapsed().as_secs_f64();
        ingest_caller_cpu_s += cpu.elapsed().as_secs_f64();
        assert!(report.errors.is_empty(), "{:?}", report.errors.first());
    }
    let changes_after_bulk = engine.last_seq();
    let work = engine.counters();

    // Latency: one event per call, as a request-at-a-time caller sees it.
    // Also by kind (the event's name, or identify), with the changes each
    // made: the tail is the events that move many audiences at once.
    let mut lat_us = Vec::with_capacity(probes.len());
    let mut by_kind: std::collections::BTreeMap<String, (Vec<f64>, usize)> = Default::default();
    for mut e in probes {
        e.timestamp = Some(engine.now());
        let kind = match &e.body {
            segmint_core::EventBody::Track { name, .. } => name.to_string(),
            segmint_core::EventBody::Identify { .. } => "identify".to_owned(),
            segmint_core::EventBody::Alias { .. } => "alias".to_owned(),
        };
        let t = Instant::now();
        let report = probe_ingest(&mut engine, e);
        let us = t.elapsed().as_secs_f64() * 1e6;
        lat_us.push(us);
        let entry = by_kind.entry(kind).or_default();
        entry.0.push(us);
        entry.1 += report.map_or(0, |r| r.changes);
    }
    lat_us.sort_by(f64::total_cmp);
    let latency_by_kind: serde_json::Map<String, serde_json::Value> = by_kind
        .into_iter()
        .map(|(kind, (mut us, changes))| {
            us.sort_by(f64::total_cmp);
            let figures = serde_json::json!({
                "samples": us.len(),
                "p50_us": percentile(&us, 0.50),
                "p99_us": percentile(&us, 0.99),
                "changes_per_event": changes as f64 / us.len() as f64,
            });
            (kind, figures)
        })
        .collect();

    // Inspect (issue 3): preview of a replacement rule over every profile,
    // and explain of sampled (user, audience) pairs.
    let (first_key, first_rule) = &audiences[0];
    let t = Instant::now();
    let preview = engine
        .preview(
            &format!("{first_rule} or trait.ltv > 900"),
            Some(first_key),
            10,
        )
        .expect("preview");
    let preview_s = t.elapsed().as_secs_f64();
    let mut explain_us = Vec::new();
    let user_count = engine.user_count() as u32;
    for i in 0..1_000u32.min(user_count) {
        let uid = (i.wrapping_mul(7919)) % user_count;
        let user = engine.user_id(uid).expect("dense id").to_owned();
        let (key, _) = &audiences[(i as usize * 104_729) % audiences.len()];
        let t = Instant::now();
        engine.explain(&user, key).expect("explain");
        explain_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    explain_us.sort_by(f64::total_cmp);

    // Backfill: a new audience over every live profile. Its count reads a
    // state the workload's rules keep (`did("Order Completed", ...)`), so
    // the profiles with orders are evaluated in full and some enter; a
    // count of events no rule kept would find every profile without them.
    // One backfill takes tens of milliseconds and moves by 10% with the
    // machine, so `--backfills` audiences are defined and the median is
    // reported. Each after the first counts over a window one more minute
    // long, removed once timed: an atom of its own, whose timers are new,
    // as a new audience's are (a removed audience's atom keeps its timers,
    // so defining the same rule again would find them set). The memory
    // figures are read after the first, before the others leave theirs.
    let users = engine.user_count();
    // `--backfill-rule` backfills another rule, `{window}` in it standing
    // for that window (a rule without it repeats its atoms from run to run).
    let template = text_arg(&args, "--backfill-rule")
        .unwrap_or(r#"trait.country == "US" and count("Order Completed", {window}m) >= 2"#)
        .to_owned();
    let rule = |minutes: u32| template.replace("{window}", &minutes.to_string());
    let thirty_days = 30 * 24 * 60;
    let mut backfill_s = Vec::with_capacity(backfills);
    let mut remove_s = Vec::with_capacity(backfills);
    let t = Instant::now();
    let size = engine
        .define_audience("bench_backfill", &rule(thirty_days))
        .expect("backfill");
    backfill_s.push(t.elapsed().as_secs_f64());
    let heap = engine.heap_bytes();
    let rss = rss_bytes().saturating_sub(rss_before);
    let pending_timers = engine.pending_timers();
    for run in 1..backfills as u32 {
        let key = format!("bench_backfill_{run}");
        let t = Instant::now();
        engine
            .define_audience(&key, &rule(thirty_days + run))
            .expect("backfill");
        backfill_s.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        engine.remove_audience(&key).expect("remove");
        remove_s.push(t.elapsed().as_secs_f64());
    }
    remove_s.sort_by(f64::total_cmp);
    // After the runs' audiences came and went: what they left behind.
    let heap_after_backfills = engine.heap_bytes();
    backfill_s.sort_by(f64::total_cmp);
    let backfill_median_s = median(&backfill_s).expect("one backfill at least");
    let backfill_best_s = backfill_s[0];

    // Aliases, after every other figure (they merge profiles away): pairs
    // of users spread over the id space, each user in one pair at most,
    // the first merged into the second, one call each, as a sign-up
    // merges an anonymous visitor. (No profile is merged away before: the
    // dense ids are the profiles.)
    let alias_samples = arg(&args, "--alias-samples", 1_000);
    let pairs = engine.user_count() as u32 / 2;
    let mut alias_us = Vec::with_capacity(alias_samples);
    let mut alias_changes = 0;
    for i in 0..(alias_samples as u32).min(pairs) {
        let from = 2 * (i.wrapping_mul(7_919) % pairs);
        let (previous_id, user_id) = (
            engine.user_id(from).expect("dense id").to_owned(),
            engine.user_id(from + 1).expect("dense id").to_owned(),
        );
        let alias = Event {
            user_id,
            timestamp: None,
            message_id: None,
            body: segmint_core::EventBody::Alias { previous_id },
        };
        let t = Instant::now();
        let report = engine.ingest(vec![Ok(alias)]).expect("alias");
        alias_us.push(t.elapsed().as_secs_f64() * 1e6);
        alias_changes += report.changes;
    }
    alias_us.sort_by(f64::total_cmp);

    let mut out = serde_json::json!({
        "threads": threads,
        "shards": shards,
        "audiences": audiences.len(),
        "hot_audiences": if hot == usize::MAX { audiences.len() } else { hot },
        "users": users,
        "events": total,
        "define_s": define_s,
        "ingest_s": ingest_s,
        "decode_events_per_s": decoded_total as f64 / decode_s,
        "advance_s": advance_s,
        "ingest_caller_cpu_s": ingest_caller_cpu_s,
        "advance_caller_cpu_s": advance_caller_cpu_s,
        "events_per_s": total as f64 / ingest_s,
        "events_per_s_with_time": total as f64 / (ingest_s + advance_s),
        "changes": changes_after_bulk,
        "changes_per_event": changes_after_bulk as f64 / total as f64,
        "rule_evaluations_per_event": work.rule_evaluations as f64 / total as f64,
        "atom_evaluations_per_event": work.atom_evaluations as f64 / total as f64,
        "timers_fired": work.timers_fired,
        "pending_timers": pending_timers,
        "latency_us_p50": percentile(&lat_us, 0.50),
        "latency_us_p99": percentile(&lat_us, 0.99),
        "latency_us_p999": percentile(&lat_us, 0.999),
        "latency_us_max": lat_us.last().copied().unwrap_or(0.0),
        "latency_samples": lat_us.len(),
        "latency_by_kind": latency_by_kind,
        "heap_bytes": heap,
        "heap_bytes_after_backfills": heap_after_backfills,
        // Removing the runs' audiences (after the first): the median.
        "remove_s": median(&remove_s),
        "heap_bytes_per_user": heap as f64 / users.max(1) as f64,
        "rss_bytes_per_user": rss as f64 / users.max(1) as f64,
        "backfill_s": backfill_median_s,
        "backfill_profiles_per_s": users as f64 / backfill_median_s,
        "backfill_profiles_per_s_best": users as f64 / backfill_best_s,
        "backfill_runs": backfills,
        "backfill_rule": rule(thirty_days),
        "backfill_size": size,
        "preview_s": preview_s,
        "preview_size": preview.size,
        "explain_us_p50": percentile(&explain_us, 0.50),
        "explain_us_p99": percentile(&explain_us, 0.99),
    });
    // (Apart: one macro call this long passes its recursion limit.)
    out["alias_samples"] = alias_us.len().into();
    out["alias_us_p50"] = percentile(&alias_us, 0.50).into();
    out["alias_us_p99"] = percentile(&alias_us, 0.99).into();
    out["alias_changes_per_call"] = (alias_changes as f64 / alias_us.len().max(1) as f64).into();
    let durability = storage.map(|st| {
        let last_seq = engine.last_seq();
        drop(engine);
        let log_bytes: u64 = std::fs::read_dir(&st.dir)
            .expect("data dir")
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        let t = Instant::now();
        let (mut engine, replay) = Engine::open(config.clone(), st.clone()).expect("recover");
        let replay_open_s = t.elapsed().as_secs_f64();
        assert_eq!(
            engine.last_seq(),
            last_seq,
            "recovery must reach the same seq"
        );
        let snap = engine.snapshot().expect("snapshot");
        drop(engine);
        let t = Instant::now();
        let (engine, loaded) = Engine::open(config.clone(), st.clone()).expect("load snapshot");
        let load_open_s = t.elapsed().as_secs_f64();
        assert_eq!(
            engine.last_seq(),
            last_seq,
            "the snapshot must hold the same seq"
        );
        drop(engine);
        let _ = std::fs::remove_dir_all(&st.dir);
        serde_json::json!({
            "fsync": fsync_name,
            "log_bytes": log_bytes,
            "replay_events": replay.events_replayed,
            "replay_s": replay.replay_seconds,
            "replay_events_per_s": replay.events_replayed as f64 / replay.replay_seconds,
            "recovery_open_s": replay_open_s,
            "snapshot_bytes": snap.bytes,
            "snapshot_write_s": snap.seconds,
            "snapshot_load_s": loaded.snapshot_seconds,
            "snapshot_open_s": load_open_s,
        })
    });
    out["durability"] = durability.unwrap_or(serde_json::Value::Null);
    println!("{out}");
}
