//! Durability: a durable engine, reopened at random points (with and without
//! snapshots), must be indistinguishable from an in-memory engine fed the
//! same operations.

use std::path::Path;

use segmint_core::time::{format_timestamp, format_utc_seconds};
use segmint_core::{Clock, Engine, EngineConfig, FsyncPolicy, SegmintError, StorageConfig};

const H: i64 = 3_600_000;
const D: i64 = 24 * H;
const START: i64 = 1_000 * D;

fn config() -> EngineConfig {
    EngineConfig {
        clock: Clock::Manual(START),
        shards: 3,
        threads: 2,
        ..Default::default()
    }
}

fn storage(dir: &Path, snapshot_log_bytes: u64) -> StorageConfig {
    StorageConfig {
        dir: dir.to_path_buf(),
        fsync: FsyncPolicy::Never,
        snapshot_log_bytes,
    }
}

/// A small deterministic generator (no extra dependency for tests).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

const RULES: &[(&str, &str)] = &[
    (
        "cart_abandoners",
        r#"since("Checkout Started") between 2h and 24h and count("Order Completed", since "Checkout Started") == 0"#,
    ),
    (
        "vip",
        r#"trait.ltv > 300 or sum("Order Completed", revenue, 30d) >= 200"#,
    ),
    (
        "viewers",
        r#"count("Product Viewed" where category == "shoes", 2h) >= 2"#,
    ),
    (
        "loyal_vip",
        r#"in_audience("vip") and member_for("vip") >= 3h"#,
    ),
    (
        "pro_de",
        r#"trait.plan == "pro" and trait.country in ["DE", "FR"]"#,
    ),
    ("big_spenders", r#"computed.revenue_6h >= 150"#),
    // A timestamp trait (packed as its seconds), and a copy of a rule
    // (sharing its memberships).
    ("new_signups", r#"since(trait.created_at) < 6h"#),
    (
        "vip_again",
        r#"trait.ltv > 300 or sum("Order Completed", revenue, 30d) >= 200"#,
    ),
];

/// Computed traits of the history: (key, expression).
const COMPUTED: &[(&str, &str)] = &[
    ("revenue_6h", r#"sum("Order Completed", revenue, 6h)"#),
    ("categories", r#"unique("Product Viewed", category)"#),
];

/// One operation of a generated history.
#[derive(Debug, Clone)]
enum Op {
    Batch(String),
    Advance(i64),
    Define(usize),
    Static(Vec<String>),
    Remove(usize),
    Computed(usize),
    RemoveComputed(usize),
}

fn history(seed: u64, len: usize) -> Vec<Op> {
    let mut rng = Lcg(seed);
    let mut now = START;
    let mut ops = vec![
        Op::Computed(0),
        Op::Define(0),
        Op::Define(1),
        Op::Define(2),
        Op::Define(5),
    ];
    let names = ["Checkout Started", "Order Completed", "Product Viewed"];
    for _ in 0..len {
        match rng.next(10) {
            0..=5 => {
                let mut items = Vec::new();
                for _ in 0..1 + rng.next(6) {
                    let user = format!("u{}", rng.next(12));
                    let ts = format_timestamp(now - rng.next(3) as i64 * H / 2);
                    let mid = if rng.next(4) == 0 {
                        format!(r#","messageId":"m{}""#, rng.next(20))
                    } else {
                        String::new()
                    };
                    let kind = rng.next(12);
                    if kind < 3 {
                        let plan = ["pro", "free"][rng.next(2) as usize];
                        let country = ["DE", "US", "FR"][rng.next(3) as usize];
                        let ltv = rng.next(500);
                        let created =
                            format_utc_seconds((now - rng.next(12) as i64 * H) / 1_000).unwrap();
                        items.push(format!(
                            r#"{{"type":"identify","userId":"{user}","traits":{{"plan":"{plan}","country":"{country}","ltv":{ltv},"created_at":"{created}"}}{mid}}}"#
                        ));
                    } else if kind == 3 {
                        let previous = format!("u{}", rng.next(12));
                        items.push(format!(
                            r#"{{"type":"alias","previousId":"{previous}","userId":"{user}"{mid}}}"#
                        ));
                    } else {
                        let name = names[rng.next(3) as usize];
                        let cat = ["shoes", "hats"][rng.next(2) as usize];
                        let rev = rng.next(150);
                        items.push(format!(
                            r#"{{"type":"track","userId":"{user}","event":"{name}","timestamp":"{ts}","properties":{{"category":"{cat}","revenue":{rev}}}{mid}}}"#
                        ));
                    }
                }
                ops.push(Op::Batch(format!("[{}]", items.join(","))));
            }
            6 | 7 => {
                now += rng.next(4) as i64 * H + rng.next(60) as i64 * 60_000;
                ops.push(Op::Advance(now));
            }
            8 => ops.push(Op::Define(rng.next(RULES.len() as u64) as usize)),
            _ => {
                let pick = rng.next(6);
                if pick == 0 {
                    ops.push(Op::Computed(rng.next(COMPUTED.len() as u64) as usize));
                } else if pick == 1 {
                    ops.push(Op::RemoveComputed(rng.next(COMPUTED.len() as u64) as usize));
                } else if rng.next(2) == 0 {
                    ops.push(Op::Static(
                        (0..rng.next(5))
                            .map(|_| format!("u{}", rng.next(15)))
                            .collect(),
                    ));
                } else {
                    ops.push(Op::Remove(rng.next(RULES.len() as u64) as usize));
                }
            }
        }
    }
    ops
}

fn run(e: &mut Engine, op: &Op) {
    match op {
        Op::Batch(json) => {
            e.ingest_json(json.as_bytes()).unwrap();
        }
        Op::Advance(to) => {
            e.advance(*to).unwrap();
        }
        Op::Define(i) => {
            // Only a rule that references a removed audience may fail (the
            // same way in both engines).
            if let Err(err) = e.define_audience(RULES[*i].0, RULES[*i].1) {
                assert!(
                    matches!(
                        err,
                        SegmintError::RuleType(_)
                            | SegmintError::UnknownAudience { .. }
                            | SegmintError::UnknownComputedTrait { .. }
                    ),
                    "{err}"
                );
            }
        }
        Op::Static(ids) => {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            e.define_static_audience("uploaded", &ids).unwrap();
        }
        Op::Remove(i) => {
            let _ = e.remove_audience(RULES[*i].0);
        }
        Op::Computed(i) => {
            e.define_computed_trait(COMPUTED[*i].0, COMPUTED[*i].1)
                .unwrap();
        }
        Op::RemoveComputed(i) => {
            // In use by a rule, or not defined: the same error in both engines.
            let _ = e.remove_computed_trait(COMPUTED[*i].0);
        }
    }
}

/// Everything observable, as text (so a mismatch prints readably).
fn digest(e: &Engine) -> String {
    let mut out = format!(
        "now={} last_seq={} timers={}\n",
        e.now(),
        e.last_seq(),
        e.pending_timers()
    );
    for key in e.audiences() {
        out += &format!("{key} = {}:", e.rule(&key).unwrap());
        for m in e.members(&key).unwrap() {
            out += &format!(" {m}@{:?}", e.entered_at(&m, &key).unwrap());
        }
        out += "\n";
    }
    for uid in 0..e.user_count() as u32 {
        let id = e.user_id(uid).unwrap();
        out += &format!("{id} {:?}\n", e.traits(id));
        for (key, _, _) in e.computed_traits() {
            out += &format!("  {key} = {:?}\n", e.computed_value(id, &key).unwrap());
        }
    }
    for c in e.changes(0, usize::MAX).unwrap() {
        out += &format!("{c:?}\n");
    }
    out
}

fn check_history(seed: u64, snapshot_log_bytes: u64) {
    let dir = tempfile::tempdir().unwrap();
    let ops = history(seed, 120);
    let mut reference = Engine::new(config()).unwrap();
    let mut durable = Engine::open(config(), storage(dir.path(), snapshot_log_bytes))
        .unwrap()
        .0;
    let mut rng = Lcg(seed ^ 0xabcdef);
    for (i, op) in ops.iter().enumerate() {
        run(&mut reference, op);
        run(&mut durable, op);
        match rng.next(12) {
            0 => {
                durable.snapshot().unwrap();
            }
            1 | 2 => {
                drop(durable);
                durable = Engine::open(config(), storage(dir.path(), snapshot_log_bytes))
                    .unwrap()
                    .0;
                assert_eq!(
                    digest(&durable),
                    digest(&reference),
                    "seed {seed}, after op {i}"
                );
            }
            _ => {}
        }
    }
    drop(durable);
    let durable = Engine::open(config(), storage(dir.path(), snapshot_log_bytes))
        .unwrap()
        .0;
    assert_eq!(
        digest(&durable),
        digest(&reference),
        "seed {seed}, at the end"
    );
}

#[test]
fn reopened_engine_equals_one_fed_the_same_operations() {
    for seed in 1..=6 {
        check_history(seed, 0);
    }
}

#[test]
fn automatic_snapshots_by_log_size_keep_the_state() {
    for seed in 7..=9 {
        check_history(seed, 4_000);
    }
}

/// A log that starts with definitions (made before any profile existed)
/// replays them as one catalog built at once, and what follows one by one:
/// reopened, the engine equals one fed the same operations, then and after
/// more events.
#[test]
fn definitions_made_before_any_profile_replay_together() {
    let dir = tempfile::tempdir().unwrap();
    let mut ops = vec![Op::Computed(0), Op::Computed(1)];
    for i in 0..40 {
        ops.push(Op::Define(i % RULES.len()));
        match i % 7 {
            3 => ops.push(Op::Remove((i * 5) % RULES.len())),
            5 => ops.push(Op::Advance(START + i as i64 * 60_000)),
            6 => ops.push(Op::RemoveComputed(1)),
            _ => {}
        }
    }
    // The generated history's clock moves, after the definitions' own.
    let later: Vec<Op> = history(11, 60)
        .into_iter()
        .map(|op| match op {
            Op::Advance(to) => Op::Advance(to + D),
            op => op,
        })
        .collect();
    let mut reference = Engine::new(config()).unwrap();
    let mut durable = Engine::open(config(), storage(dir.path(), 0)).unwrap().0;
    for op in &ops {
        run(&mut reference, op);
        run(&mut durable, op);
    }
    drop(durable);
    let (mut durable, info) = Engine::open(config(), storage(dir.path(), 0)).unwrap();
    assert_eq!(info.snapshot_generation, 0);
    assert!(info.records_replayed > 40, "{info:?}");
    assert_eq!(digest(&durable), digest(&reference));
    for op in &later {
        run(&mut reference, op);
        run(&mut durable, op);
    }
    assert_eq!(digest(&durable), digest(&reference));
    // Reopened again: the held definitions, then the rest one by one.
    drop(durable);
    let durable = Engine::open(config(), storage(dir.path(), 0)).unwrap().0;
    assert_eq!(digest(&durable), digest(&reference));
}

/// Copies share their lead's members even before any profile exists (a
/// snapshot keeps that): a replacement held in recovery ends the sharing
/// before the next event, as the same definition made live does.
#[test]
fn held_definitions_end_the_sharing_of_a_snapshot_without_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let rule = RULES[2].1;
    let mut reference = Engine::new(config()).unwrap();
    {
        let mut e = Engine::open(config(), storage(dir.path(), 0)).unwrap().0;
        for e in [&mut e, &mut reference] {
            e.define_audience("a", rule).unwrap();
            e.define_audience("b", rule).unwrap();
            e.define_static_audience("nobody", &[]).unwrap();
        }
        e.close().unwrap();
    }
    // u1 qualifies for b's new rule, not for a's.
    let batch = Op::Batch(format!(
        r#"[{{"type":"track","userId":"u1","event":"Order Completed","timestamp":"{}","properties":{{"revenue":250}}}}]"#,
        format_timestamp(START)
    ));
    {
        let mut e = Engine::open(config(), storage(dir.path(), 0)).unwrap().0;
        for e in [&mut e, &mut reference] {
            e.define_audience("b", RULES[1].1).unwrap();
            run(e, &batch);
        }
    }
    let durable = Engine::open(config(), storage(dir.path(), 0)).unwrap().0;
    assert_eq!(digest(&durable), digest(&reference));
    assert!(!durable.is_member("u1", "a").unwrap());
    assert!(durable.is_member("u1", "b").unwrap());
}

/// Copies defined before any profile (one by one and two at once), then an
/// event dated before their definition: recovered from the log alone, the
/// engine logs and reports what the one that defined them live does. (Held
/// copies share from the start of time, live ones from their definition;
/// entries are stamped at the clock, so the two agree.)
#[test]
fn held_copies_enter_as_copies_defined_live() {
    let dir = tempfile::tempdir().unwrap();
    let mut reference = Engine::new(config()).unwrap();
    let late = Op::Batch(format!(
        r#"[{{"type":"track","userId":"u1","event":"Order Completed","timestamp":"{}","properties":{{"revenue":250}}}}]"#,
        format_timestamp(START - 3 * H)
    ));
    {
        let mut e = Engine::open(config(), storage(dir.path(), 0)).unwrap().0;
        for e in [&mut e, &mut reference] {
            e.define_audience("a", RULES[1].1).unwrap();
            e.advance(START + H).unwrap();
            e.define_audience("b", RULES[1].1).unwrap();
            e.define_audiences(&[("c", RULES[1].1), ("d", RULES[1].1)])
                .unwrap();
        }
    }
    let mut durable = Engine::open(config(), storage(dir.path(), 0)).unwrap().0;
    assert_eq!(digest(&durable), digest(&reference));
    for e in [&mut durable, &mut reference] {
        run(e, &late);
    }
    assert_eq!(digest(&durable), digest(&reference));
}

/// Reopened with a smaller `change_log_capacity`, the snapshot's change log
/// keeps its newest changes, at once.
#[test]
fn a_smaller_change_log_capacity_keeps_the_newest_changes_of_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let last = {
        let mut e = Engine::open(config(), storage(dir.path(), 0)).unwrap().0;
        e.define_audience("viewers", RULES[2].1).unwrap();
        for i in 0..20 {
            run(
                &mut e,
                &Op::Batch(format!(
                    r#"[{{"type":"track","userId":"u{i}","event":"Product Viewed","properties":{{"category":"shoes"}}}},
                    {{"type":"track","userId":"u{i}","event":"Product Viewed","properties":{{"category":"shoes"}}}}]"#
                )),
            );
        }
        e.close().unwrap();
        e.last_seq()
    };
    assert_eq!(last, 20);
    let small = EngineConfig {
        change_log_capacity: 5,
        ..config()
    };
    let e = Engine::open(small, storage(dir.path(), 0)).unwrap().0;
    assert!(e.changes(0, 100).is_err());
    let seqs: Vec<u64> = e.changes(15, 100).unwrap().iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [16, 17, 18, 19, 20]);
    assert!(e.change_log_bytes() <= (1 << 16) * 16 + 4096);
}

/// Refused settings are refused before the data directory is made.
#[test]
fn a_refused_setting_leaves_no_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let bad = EngineConfig {
        change_log_capacity: 0,
        ..config()
    };
    let Err(err) = Engine::open(bad, storage(&data, 0)) else {
        panic!("a change log of no changes was accepted");
    };
    assert!(matches!(err, SegmintError::InvalidArgument { .. }), "{err}");
    assert!(!data.exists());
}

/// A snapshot keeps the definitions that removed computed traits: reopened,
/// the removal is installed as a computed trait's, not read as an
/// audience's slot (which panicked when there were fewer audiences).
#[test]
fn a_removed_computed_trait_is_reopened_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut e, _) = Engine::open(config(), storage(dir.path(), 0)).unwrap();
        e.define_computed_trait("first", r#"count("A")"#).unwrap();
        e.define_computed_trait("spend", r#"sum("A", v)"#).unwrap();
        e.remove_computed_trait("spend").unwrap();
        e.define_audience("a", r#"did("A")"#).unwrap();
        e.snapshot().unwrap();
    }
    let (mut e, _) = Engine::open(config(), storage(dir.path(), 0)).unwrap();
    e.ingest_json(br#"[{"type":"track","userId":"u","event":"A","properties":{"v":2}}]"#)
        .unwrap();
    assert!(e.is_member("u", "a").unwrap());
    let keys: Vec<String> = e.computed_traits().into_iter().map(|c| c.0).collect();
    assert_eq!(keys, ["first"]);
    e.define_computed_trait("spend", r#"sum("A", v)"#).unwrap();
}

#[test]
fn retried_message_ids_are_applied_once_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let batch = br#"[{"type":"track","userId":"a","event":"Order Completed","messageId":"m1","properties":{"revenue":250}}]"#;
    {
        let (mut e, _) = Engine::open(config(), storage(dir.path(), 0)).unwrap();
        e.define_audience("vip", RULES[1].1).unwrap();
        e.ingest_json(batch).unwrap();
        e.snapshot().unwrap();
    }
    let (mut e, _) = Engine::open(config(), storage(dir.path(), 0)).unwrap();
    let report = e.ingest_json(batch).unwrap();
    assert_eq!(report.duplicates, 1);
    assert!(e.is_member("a", "vip").unwrap());
    let report = e
        .ingest_json(br#"[{"type":"track","userId":"a","event":"Order Completed","messageId":"m2","properties":{"revenue":1}}]"#)
        .unwrap();
    assert_eq!(report.duplicates, 0);
}

#[test]
fn a_format_3_snapshot_of_an_earlier_build_is_read() {
    // tests/fixtures/format3: written by 07bef84 (snapshot format 3, its
    // message ids as text) with this file's config(), "vip" defined and
    // one batch: a's order of 250 ("m1"), b's identify with an ltv of 500
    // (a UUID messageId) and c's with 5 ("m3").
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format3");
    let dir = tempfile::tempdir().unwrap();
    for name in ["snapshot-000000000002.snap", "wal-000000000002.log"] {
        std::fs::copy(fixture.join(name), dir.path().join(name)).unwrap();
    }
    let retries = br#"[{"type":"track","userId":"a","event":"Order Completed","messageId":"m1","properties":{"revenue":250}},
        {"type":"identify","userId":"b","traits":{"ltv":500},"messageId":"6ba7b810-9dad-11d1-80b4-00c04fd430c8"},
        {"type":"identify","userId":"c","traits":{"ltv":5},"messageId":"m3"}]"#;
    let (mut e, info) = Engine::open(config(), storage(dir.path(), 0)).unwrap();
    assert_eq!(info.snapshot_generation, 2);
    let members: Vec<bool> = ["a", "b", "c"]
        .iter()
        .map(|u| e.is_member(u, "vip").unwrap())
        .collect();
    assert_eq!(members, [true, true, false]);
    // Its ids, now fingerprints, are still taken for retries.
    assert_eq!(e.ingest_json(retries).unwrap().duplicates, 3);
    let fresh = br#"[{"type":"identify","userId":"c","traits":{"ltv":900},"messageId":"m4"}]"#;
    assert_eq!(e.ingest_json(fresh).unwrap().duplicates, 0);
    // The next snapshot is this build's format (5), with the same ids.
    let generation = e.snapshot().unwrap().generation;
    drop(e);
    let snap = dir.path().join(format!("snapshot-{generation:012}.snap"));
    assert_eq!(&std::fs::read(&snap).unwrap()[..8], b"SEGMSNP5");
    let (mut e, _) = Engine::open(config(), storage(dir.path(), 0)).unwrap();
    assert_eq!(e.ingest_json(retries).unwrap().duplicates, 3);
    assert_eq!(e.ingest_json(fresh).unwrap().duplicates, 1);
    assert!(e.is_member("c", "vip").unwrap());
}

/// Logs the definition of "vip" and `users` batches of one identify each
/// (user `u{i}` with an ltv of 100 × i), then closes the engine.
fn log_vip_and_identifies(dir: &Path, users: usize) {
    let (mut e, _) = Engine::open(config(), storage(dir, 0)).unwrap();
    e.define_audience("vip", RULES[1].1).unwrap();
    for i in 0..users {
        let json = format!(
            r#"[{{"type":"identify","userId":"u{i}","traits":{{"ltv":{}}}}}]"#,
            100 * i
        );
        e.ingest_json(json.as_bytes()).unwrap();
    }
}

#[test]
fn a_torn_tail_is_cut_and_damage_elsewhere_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    log_vip_and_identifies(dir.path(), 5);
    let log = dir.path().join("wal-000000000001.log");
    let full = std::fs::read(&log).unwrap();
    // A crash mid-write: half of the last record is missing.
    std::fs::write(&log, &full[..full.len() - 20]).unwrap();
    let (e, info) = Engine::open(config(), storage(dir.path(), 0)).unwrap();
    assert!(info.torn_bytes > 0);
    // The cut record was u4's identify (ltv 400), the only vip.
    assert!(e.members("vip").unwrap().is_empty());
    assert_eq!(e.user_count(), 4);
    drop(e);
    // A flipped byte inside the first record is corruption, not a torn tail.
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[30] ^= 0x10;
    std::fs::write(&log, &bytes).unwrap();
    match Engine::open(config(), storage(dir.path(), 0)) {
        Err(SegmintError::Corrupt { path, offset, .. }) => {
            assert!(path.ends_with("wal-000000000001.log"), "{path}");
            assert_eq!(offset, 16);
        }
        other => panic!("expected a corrupt-data error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_record_that_does_not_decode_stops_start_up_at_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    log_vip_and_identifies(dir.path(), 6);
    let log = dir.path().join("wal-000000000001.log");
    let mut bytes = std::fs::read(&log).unwrap();
    // Frames after the 16-byte header: length, CRC-32C of length and
    // payload, payload. The fourth record's payload is replaced by bytes
    // that pass the checksum but are no record: the decoder (a thread of
    // its own, ahead of the replay) must stop there, not at a later one.
    let mut at = 16;
    let mut offsets = Vec::new();
    while at < bytes.len() {
        offsets.push(at);
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 8 + len;
    }
    assert_eq!(offsets.len(), 7, "one define and six batches");
    // The sixth too: the first bad record is the one reported.
    for bad in [offsets[3], offsets[5]] {
        let len = u32::from_le_bytes(bytes[bad..bad + 4].try_into().unwrap());
        let payload = vec![0xff; len as usize];
        let crc = crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), &payload);
        bytes[bad + 4..bad + 8].copy_from_slice(&crc.to_le_bytes());
        bytes[bad + 8..bad + 8 + len as usize].copy_from_slice(&payload);
    }
    let bad = offsets[3];
    std::fs::write(&log, &bytes).unwrap();
    match Engine::open(config(), storage(dir.path(), 0)) {
        Err(SegmintError::Corrupt {
            path,
            offset,
            message,
        }) => {
            assert!(path.ends_with("wal-000000000001.log"), "{path}");
            assert_eq!(offset, bad as u64);
            assert!(message.contains("does not decode"), "{message}");
        }
        other => panic!("expected a corrupt-data error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_corrupt_snapshot_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut e, _) = Engine::open(config(), storage(dir.path(), 0)).unwrap();
        e.define_audience("vip", RULES[1].1).unwrap();
        e.ingest_json(br#"[{"type":"identify","userId":"a","traits":{"ltv":500}}]"#)
            .unwrap();
        e.snapshot().unwrap();
    }
    let snap = dir.path().join("snapshot-000000000002.snap");
    let mut bytes = std::fs::read(&snap).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&snap, &bytes).unwrap();
    let err = Engine::open(config(), storage(dir.path(), 0))
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, SegmintError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("snapshot-000000000002.snap"),
        "{err}"
    );
}

#[test]
fn a_second_engine_cannot_open_a_directory_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let (_e, _) = Engine::open(config(), storage(dir.path(), 0)).unwrap();
    let err = Engine::open(config(), storage(dir.path(), 0))
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
}

#[test]
fn changes_wait_for_the_fsync_when_it_is_deferred() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = storage(dir.path(), 0);
    cfg.fsync = FsyncPolicy::Always;
    let (mut e, _) = Engine::open(config(), cfg).unwrap();
    e.define_audience("vip", RULES[1].1).unwrap();
    e.defer_sync(true);
    let report = e
        .ingest_json(br#"[{"type":"identify","userId":"a","traits":{"ltv":500}}]"#)
        .unwrap();
    assert_eq!(report.last_seq, 1);
    assert!(e.changes(0, 10).unwrap().is_empty());
    e.sync_handle()
        .unwrap()
        .sync_to(report.wal_position)
        .unwrap();
    assert_eq!(e.changes(0, 10).unwrap().len(), 1);
}
