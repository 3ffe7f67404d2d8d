//! End-to-end tests of the engine through its public API.

use segmint_core::{Clock, Engine, EngineConfig, Reason};

const H: i64 = 3_600_000;
const D: i64 = 24 * H;

fn engine(shards: usize) -> Engine {
    Engine::new(EngineConfig {
        clock: Clock::Manual(1_000 * D),
        shards,
        threads: shards,
        ..Default::default()
    })
    .unwrap()
}

fn track(e: &mut Engine, user: &str, event: &str, props: &str, at: i64) {
    let ts = segmint_core::time::format_timestamp(at);
    let json = format!(
        r#"[{{"type":"track","userId":"{user}","event":"{event}","properties":{props},"timestamp":"{ts}"}}]"#
    );
    let report = e.ingest_json(json.as_bytes()).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

#[test]
fn cart_abandoner_enters_when_time_passes() {
    for shards in [1, 3] {
        let mut e = engine(shards);
        e.define_audience(
            "cart_abandoners",
            r#"since("Checkout Started") between 2h and 24h and count("Order Completed", since "Checkout Started") == 0"#,
        )
        .unwrap();
        let t0 = e.now();
        track(&mut e, "u1", "Checkout Started", "{}", t0);
        track(&mut e, "u2", "Checkout Started", "{}", t0);
        e.advance(t0 + H).unwrap();
        track(&mut e, "u2", "Order Completed", "{}", t0 + H);
        assert!(!e.is_member("u1", "cart_abandoners").unwrap());
        e.advance(t0 + 3 * H).unwrap();
        assert!(e.is_member("u1", "cart_abandoners").unwrap());
        assert!(!e.is_member("u2", "cart_abandoners").unwrap());
        e.advance(t0 + 2 * D).unwrap();
        assert!(!e.is_member("u1", "cart_abandoners").unwrap());
        let changes = e.changes(0, 100).unwrap();
        assert_eq!(changes.len(), 2);
        assert_eq!(
            (changes[0].entered, changes[0].at, changes[0].reason),
            (true, t0 + 2 * H, Reason::Time)
        );
        assert_eq!(
            (changes[1].entered, changes[1].at),
            (false, t0 + 24 * H + 1000)
        );
    }
}

#[test]
fn count_thresholds_and_windows() {
    let mut e = engine(2);
    e.define_audience("active", r#"count("Product Viewed", 1h) >= 3"#)
        .unwrap();
    e.define_audience(
        "viewer",
        r#"did("Product Viewed", 1h) and not in_audience("active")"#,
    )
    .unwrap();
    let t0 = e.now();
    for i in 0..3 {
        track(
            &mut e,
            "u",
            "Product Viewed",
            "{}",
            t0 - 30 * 60_000 + i * 60_000,
        );
    }
    assert!(e.is_member("u", "active").unwrap());
    assert!(!e.is_member("u", "viewer").unwrap());
    e.advance(t0 + 31 * 60_000).unwrap();
    assert!(
        !e.is_member("u", "active").unwrap(),
        "first view lapsed at t0+30m"
    );
    assert!(e.is_member("u", "viewer").unwrap());
    let exit = e
        .changes(0, 100)
        .unwrap()
        .into_iter()
        .find(|c| c.audience.as_ref() == "active" && !c.entered)
        .unwrap();
    assert_eq!(exit.at, t0 + 30 * 60_000);
}

#[test]
fn vip_sum_and_late_events() {
    let mut e = engine(1);
    e.define_audience("vip", r#"sum("Order Completed", revenue, 365d) > 300"#)
        .unwrap();
    let t0 = e.now();
    track(
        &mut e,
        "u",
        "Order Completed",
        r#"{"revenue": 200}"#,
        t0 - 100 * D,
    );
    assert!(!e.is_member("u", "vip").unwrap());
    track(
        &mut e,
        "u",
        "Order Completed",
        r#"{"revenue": 150}"#,
        t0 - 10 * D,
    );
    assert!(e.is_member("u", "vip").unwrap());
    e.advance(t0 + 265 * D).unwrap();
    assert!(!e.is_member("u", "vip").unwrap());
    let last = e.changes(0, 10).unwrap().pop().unwrap();
    assert_eq!(last.at, t0 + 265 * D);
}

#[test]
fn future_events_become_visible() {
    let mut e = engine(1);
    e.define_audience("buyer", r#"did("Order Completed")"#)
        .unwrap();
    let t0 = e.now();
    track(&mut e, "u", "Order Completed", "{}", t0 + 60_000);
    assert!(!e.is_member("u", "buyer").unwrap());
    e.advance(t0 + 120_000).unwrap();
    assert!(e.is_member("u", "buyer").unwrap());
    assert_eq!(e.changes(0, 10).unwrap()[0].at, t0 + 60_000);
    let too_far = format!(
        r#"[{{"userId":"u","event":"X","timestamp":"{}"}}]"#,
        segmint_core::time::format_timestamp(e.now() + 3_600_000)
    );
    let report = e.ingest_json(too_far.as_bytes()).unwrap();
    assert_eq!(report.errors.len(), 1);
}

#[test]
fn traits_and_backfill() {
    let mut e = engine(2);
    let report = e
        .ingest_json(br#"[{"type":"identify","userId":"a","traits":{"country":"US","plan":"pro","address":{"city":"Paris"}}},
                         {"type":"identify","userId":"b","traits":{"country":"FR"}}]"#)
        .unwrap();
    assert!(report.errors.is_empty());
    assert_eq!(
        e.define_audience(
            "us",
            r#"trait.country == "US" and trait.plan in ["pro", "enterprise"]"#
        )
        .unwrap(),
        1
    );
    assert_eq!(
        e.define_audience("paris", r#"trait.address.city == "Paris""#)
            .unwrap(),
        1
    );
    e.ingest_json(br#"[{"type":"identify","userId":"a","traits":{"address":null}}]"#)
        .unwrap();
    assert!(!e.is_member("a", "paris").unwrap());
    let reasons: Vec<Reason> = e.changes(0, 10).unwrap().iter().map(|c| c.reason).collect();
    assert_eq!(
        reasons,
        vec![Reason::Definition, Reason::Definition, Reason::Event]
    );
}

#[test]
fn cycles_and_in_use() {
    let mut e = engine(1);
    e.define_audience("a", "trait.x == 1").unwrap();
    e.define_audience("b", r#"in_audience("a")"#).unwrap();
    let err = e.define_audience("a", r#"in_audience("b")"#).unwrap_err();
    assert!(err.to_string().contains("a -> b -> a"), "{err}");
    assert!(matches!(
        e.remove_audience("a"),
        Err(segmint_core::SegmintError::InUse { .. })
    ));
    assert_eq!(e.rule("a").unwrap(), "trait.x == 1");
}

#[test]
fn message_ids_are_applied_once() {
    let mut e = engine(1);
    e.define_audience("twice", r#"count("X") >= 2"#).unwrap();
    let batch = br#"[{"userId":"u","event":"X","messageId":"m1"},{"userId":"u","event":"X","messageId":"m1"}]"#;
    let r = e.ingest_json(batch).unwrap();
    assert_eq!((r.accepted, r.duplicates), (2, 1));
    assert!(!e.is_member("u", "twice").unwrap());
}
