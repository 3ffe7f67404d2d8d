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

/// The whole change log as (seq, audience, user, entered, at).
fn logged(e: &Engine) -> Vec<(u64, String, String, bool, i64)> {
    e.changes(0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|c| {
            let (audience, user) = (c.audience.to_string(), c.user_id.to_string());
            (c.seq, audience, user, c.entered, c.at)
        })
        .collect()
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

/// A bound past the last instant never crosses, and does not hide the
/// crossings of the other atoms sharing its timer (their next instants are
/// found together, see `segmint_core::catalog::TimerLadder`).
#[test]
fn a_bound_past_the_last_instant_never_crosses() {
    let mut e = engine(1);
    e.define_audience("recent", r#"since("E") > 5s"#).unwrap();
    e.define_audience("forever", r#"since("E") < 9223372036854775807ms"#)
        .unwrap();
    let t0 = e.now();
    track(&mut e, "u", "E", "{}", t0);
    assert!(e.is_member("u", "forever").unwrap());
    assert!(!e.is_member("u", "recent").unwrap());
    e.advance(t0 + 10_000).unwrap();
    assert!(e.is_member("u", "recent").unwrap());
    assert!(e.is_member("u", "forever").unwrap());
    let entered: Vec<(String, i64)> = logged(&e)
        .into_iter()
        .map(|(_, audience, _, _, at)| (audience, at))
        .collect();
    assert_eq!(
        entered,
        [
            ("forever".to_string(), t0),
            ("recent".to_string(), t0 + 6_000)
        ]
    );
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

/// Thresholds on one time source share one timer per profile, at the
/// earliest of their next changes: each still flips at its own instant,
/// defined before or after the profile exists, and a later event or
/// trait moves the shared timer with it.
#[test]
fn thresholds_on_one_time_source_share_a_timer_and_flip_on_time() {
    for shards in [1, 3] {
        let mut e = engine(shards);
        let t0 = e.now();
        let created = segmint_core::time::format_timestamp(t0 - 5 * D);
        for (key, rule) in [
            ("new14", "since(trait.created_at) < 14d"),
            ("new30", "since(trait.created_at) < 30d"),
            ("mid", "since(trait.created_at) between 20d and 40d"),
            ("bought_recently", r#"since("Order Completed") <= 3d"#),
            (
                "bought_lately",
                r#"since("Order Completed") > 1d and since("Order Completed") < 10d"#,
            ),
        ] {
            e.define_audience(key, rule).unwrap();
        }
        let json = format!(
            r#"[{{"type":"identify","userId":"u","traits":{{"created_at":"{created}"}}}}]"#
        );
        assert!(e.ingest_json(json.as_bytes()).unwrap().errors.is_empty());
        track(&mut e, "u", "Order Completed", "{}", t0);
        // One timer for the four created_at atoms, one for the three
        // atoms of since("Order Completed").
        assert_eq!(e.pending_timers(), 2);
        // A rule on the same source defined later joins the shared timer.
        e.define_audience("new7", "since(trait.created_at) < 7d")
            .unwrap();
        assert_eq!(e.pending_timers(), 2);
        // A later purchase moves the purchase group later, to 1d after it.
        e.advance(t0 + H).unwrap();
        track(&mut e, "u", "Order Completed", "{}", t0 + H);
        e.advance(t0 + 60 * D).unwrap();
        let flips: Vec<(String, bool, i64)> = logged(&e)
            .into_iter()
            .filter(|c| c.4 > t0 + H)
            .map(|(_, aud, _, entered, at)| (aud, entered, at))
            .collect();
        let c = t0 - 5 * D;
        let p = t0 + H;
        // Passing a bound (`>`, `<=`, the end of `between`) is one
        // granule (the default second) after reaching it.
        let g = 1_000;
        let mut expected = vec![
            ("new7".to_owned(), false, c + 7 * D),
            ("new14".to_owned(), false, c + 14 * D),
            ("mid".to_owned(), true, c + 20 * D),
            ("new30".to_owned(), false, c + 30 * D),
            ("mid".to_owned(), false, c + 40 * D + g),
            ("bought_lately".to_owned(), true, p + D + g),
            ("bought_recently".to_owned(), false, p + 3 * D + g),
            ("bought_lately".to_owned(), false, p + 10 * D),
        ];
        expected.sort_by_key(|x| x.2);
        assert_eq!(flips, expected, "{shards} shards");
        assert_eq!(e.pending_timers(), 0);
    }
}

/// Thresholds on one windowed sum change when the window next lapses,
/// whatever their literal: they share one timer (later rules on the view
/// join it), and each still flips at its instant as the orders lapse.
#[test]
fn thresholds_on_one_view_share_a_timer_and_flip_on_time() {
    for shards in [1, 3] {
        let mut e = engine(shards);
        let t0 = e.now();
        for k in [50, 150, 250] {
            let rule = format!(r#"sum("Order Completed", revenue, 7d) > {k}"#);
            e.define_audience(&format!("spent{k}"), &rule).unwrap();
        }
        for day in 0..3 {
            e.advance(t0 + day * D).unwrap();
            track(
                &mut e,
                "u",
                "Order Completed",
                r#"{"revenue": 100}"#,
                t0 + day * D,
            );
        }
        assert_eq!(e.pending_timers(), 1, "{shards} shards");
        e.define_audience("spent10", r#"sum("Order Completed", revenue, 7d) > 10"#)
            .unwrap();
        assert_eq!(e.pending_timers(), 1, "{shards} shards");
        e.advance(t0 + 30 * D).unwrap();
        let exits: Vec<(String, i64)> = logged(&e)
            .into_iter()
            .filter(|c| !c.3)
            .map(|c| (c.1, c.4 - t0))
            .collect();
        // An entry stamped t lapses from a 7-day window at t + 7d; exits
        // at one instant are in definition order.
        let expected = vec![
            ("spent250".to_owned(), 7 * D),
            ("spent150".to_owned(), 8 * D),
            ("spent50".to_owned(), 9 * D),
            ("spent10".to_owned(), 9 * D),
        ];
        assert_eq!(exits, expected, "{shards} shards");
        assert_eq!(e.pending_timers(), 0, "{shards} shards");
    }
}

/// A timer stands for 64 atoms at most when they all test their source
/// against literal durations (a ladder; four otherwise, see the catalog's
/// tests): seventy thresholds on one source take two timers, and each
/// threshold still flips at its instant, also once the rule of the atom
/// whose id the timer has is removed.
#[test]
fn a_shared_timer_stands_for_sixty_four_ladder_atoms_at_most() {
    let mut e = engine(1);
    let t0 = e.now();
    for hours in 1..=70 {
        let rule = format!("since(trait.created_at) < {hours}h");
        e.define_audience(&format!("new{hours}"), &rule).unwrap();
    }
    let created = segmint_core::time::format_timestamp(t0);
    let json =
        format!(r#"[{{"type":"identify","userId":"u","traits":{{"created_at":"{created}"}}}}]"#);
    assert!(e.ingest_json(json.as_bytes()).unwrap().errors.is_empty());
    assert_eq!(e.pending_timers(), 2);
    // The rule of the first group's lead atom goes; its timer still
    // stands for the others.
    e.remove_audience("new1").unwrap();
    e.advance(t0 + 3 * D).unwrap();
    let left: Vec<(String, i64)> = logged(&e)
        .into_iter()
        .filter(|c| !c.3 && c.4 > t0)
        .map(|c| (c.1, c.4 - t0))
        .collect();
    let expected: Vec<(String, i64)> = (2..=70).map(|h| (format!("new{h}"), h * H)).collect();
    assert_eq!(left, expected);
    assert_eq!(e.pending_timers(), 0);
}

/// Audiences with one rule (a rule class) are queued through the class's
/// lead: the others enter and leave with it, in rank order among the other
/// audiences, by event and by time, whether defined before or after, and
/// after the lead is removed or leaves the class.
#[test]
fn copies_of_a_rule_move_with_its_lead_in_rank_order() {
    let mut e = engine(1);
    let t0 = e.now();
    e.define_audience("a", r#"did("Buy", 2h)"#).unwrap();
    e.define_audience("view", r#"did("View", 2h)"#).unwrap();
    e.define_audience("c", r#"did("Buy", 2h)"#).unwrap();
    e.define_audience("reads_c", r#"in_audience("c")"#).unwrap();
    let flips_since = |e: &Engine, seq: u64| -> Vec<(String, String, bool, i64)> {
        logged(e)
            .into_iter()
            .filter(|c| c.0 > seq)
            .map(|c| (c.1, c.2, c.3, c.4 - t0))
            .collect()
    };
    let flip = |aud: &str, user: &str, entered: bool, at: i64| {
        (aud.to_owned(), user.to_owned(), entered, at)
    };
    track(&mut e, "u", "Buy", "{}", t0);
    e.advance(t0 + 3 * H).unwrap();
    assert_eq!(
        flips_since(&e, 0),
        [
            flip("a", "u", true, 0),
            flip("c", "u", true, 0),
            flip("reads_c", "u", true, 0),
            flip("a", "u", false, 2 * H),
            flip("c", "u", false, 2 * H),
            flip("reads_c", "u", false, 2 * H),
        ]
    );
    // A copy defined later is backfilled, then moves with the others.
    let seq = e.last_seq();
    track(&mut e, "v", "Buy", "{}", t0 + 3 * H);
    e.define_audience("later", r#"did("Buy", 2h)"#).unwrap();
    assert!(e.is_member("v", "later").unwrap());
    // The lead goes: the next copy leads.
    e.remove_audience("a").unwrap();
    track(&mut e, "w", "Buy", "{}", t0 + 3 * H);
    // A copy that takes another rule leaves the class for the other one.
    e.define_audience("c", r#"did("View", 2h)"#).unwrap();
    track(&mut e, "x", "View", "{}", t0 + 3 * H);
    e.advance(t0 + 6 * H).unwrap();
    let at = 3 * H;
    let end = 5 * H;
    assert_eq!(
        flips_since(&e, seq),
        [
            flip("a", "v", true, at),
            flip("c", "v", true, at),
            flip("reads_c", "v", true, at),
            flip("later", "v", true, at),
            flip("a", "v", false, at),
            flip("c", "w", true, at),
            flip("reads_c", "w", true, at),
            flip("later", "w", true, at),
            flip("c", "v", false, at),
            flip("reads_c", "v", false, at),
            flip("c", "w", false, at),
            flip("reads_c", "w", false, at),
            flip("view", "x", true, at),
            flip("c", "x", true, at),
            flip("reads_c", "x", true, at),
            flip("later", "v", false, end),
            flip("later", "w", false, end),
            flip("view", "x", false, end),
            flip("c", "x", false, end),
            flip("reads_c", "x", false, end),
        ]
    );
}

/// A rule defined after a future-dated event (within the skew) sees it
/// when it becomes visible, though no rule of its own reads time: its
/// backfill sets the timer the event set for the rules before it. Without
/// it, a copy of a rule defined before could disagree with it.
#[test]
fn a_rule_defined_after_a_future_event_sees_it_become_visible() {
    let mut e = engine(1);
    let t0 = e.now();
    e.define_audience("day", r#"did("B", 1d)"#).unwrap();
    track(&mut e, "u", "B", "{}", t0 + 30_000);
    e.define_audience("ever", r#"did("B")"#).unwrap();
    assert!(!e.is_member("u", "ever").unwrap());
    e.advance(t0 + 60_000).unwrap();
    assert!(e.is_member("u", "ever").unwrap());
    let entered: Vec<(String, i64)> = logged(&e)
        .into_iter()
        .filter(|c| c.3)
        .map(|c| (c.1, c.4 - t0))
        .collect();
    assert_eq!(
        entered,
        [("day".to_owned(), 30_000), ("ever".to_owned(), 30_000)]
    );
}

/// A future-dated event reaches atoms that share a timer when it becomes
/// visible, and each leaves at its own instant after it.
#[test]
fn a_future_event_reaches_atoms_sharing_a_timer() {
    let mut e = engine(1);
    e.define_audience("hour", r#"since("Visit") < 1h"#).unwrap();
    e.define_audience("two_hours", r#"since("Visit") < 2h"#)
        .unwrap();
    let t0 = e.now();
    track(&mut e, "u", "Visit", "{}", t0 + 60_000);
    assert_eq!(e.pending_timers(), 1);
    assert!(!e.is_member("u", "hour").unwrap());
    e.advance(t0 + 3 * H).unwrap();
    let flips: Vec<(String, bool, i64)> = logged(&e)
        .into_iter()
        .map(|c| (c.1, c.3, c.4 - t0))
        .collect();
    let visible = 60_000;
    assert_eq!(
        flips,
        vec![
            ("hour".to_owned(), true, visible),
            ("two_hours".to_owned(), true, visible),
            ("hour".to_owned(), false, visible + H),
            ("two_hours".to_owned(), false, visible + 2 * H),
        ]
    );
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

/// A backfill skips the rules that no profile without events can satisfy
/// on such profiles, but not a replaced rule's members (they must leave),
/// nor the timers of atoms reading traits.
#[test]
fn backfill_over_profiles_without_events() {
    for shards in [1, 3] {
        let mut e = engine(shards);
        let t0 = 1_000 * D;
        let signup = segmint_core::time::format_timestamp(t0 - 2 * D);
        let identify = format!(
            r#"[{{"type":"identify","userId":"a","traits":{{"plan":"pro","created_at":"{signup}"}}}},
                {{"type":"identify","userId":"b","traits":{{"plan":"pro"}}}},
                {{"type":"identify","userId":"c","traits":{{"plan":"free"}}}}]"#
        );
        assert!(e
            .ingest_json(identify.as_bytes())
            .unwrap()
            .errors
            .is_empty());
        // (Events are kept only for states some rule reads.)
        assert_eq!(
            e.define_audience("buyers", r#"not did("Order Completed", 30d)"#)
                .unwrap(),
            3
        );
        track(&mut e, "b", "Order Completed", "{}", t0);
        assert_eq!(e.size("buyers").unwrap(), 2);
        assert_eq!(
            e.define_audience("pro", r#"trait.plan == "pro""#).unwrap(),
            2
        );
        // Now false on every profile without events: "a" leaves.
        assert_eq!(
            e.define_audience(
                "pro",
                r#"trait.plan == "pro" and did("Order Completed", 1d)"#
            )
            .unwrap(),
            1
        );
        assert!(!e.is_member("a", "pro").unwrap());
        assert!(e.is_member("b", "pro").unwrap());
        // A trait's duration still gets its timer on a profile without
        // events: "a" signed up two days ago and enters at three.
        assert_eq!(
            e.define_audience(
                "settled",
                r#"since(trait.created_at) >= 3d and not did("Order Completed", 1d)"#
            )
            .unwrap(),
            0
        );
        e.advance(t0 + D).unwrap();
        assert!(e.is_member("a", "settled").unwrap());
        // And the window of "pro" lapses for "b".
        assert!(!e.is_member("b", "pro").unwrap());
        assert!(!e.is_member("b", "settled").unwrap());
    }
}

/// A backfill over more profiles than it warms at once (some with orders,
/// some with views only, which the rule cannot take in without an order,
/// most without events, across shards) takes in whom the same rule defined
/// before the events holds and leaves as many timers pending: a recent sign-up
/// without events who orders after the backfill leaves "new_buyer" when
/// the sign-up ages, by a timer set on the profile without states. The
/// rules are defined before the events in one engine and after them in
/// another, so that no atom or timer of the late ones was there before.
#[test]
fn backfill_over_many_profiles_matches_a_rule_defined_before() {
    // "new_buyer" alone reads `created_at`: its backfill finds no timer of
    // the sign-up's age set.
    const RULES: [(&str, &str); 3] = [
        (
            "new_buyer",
            r#"since(trait.created_at) < 20d and did("Order Completed", 30d)"#,
        ),
        (
            "buyer",
            r#"trait.country == "US" and count("Order Completed", 30d) >= 2"#,
        ),
        (
            "signup",
            r#"since(trait.signed_up_at) < 20d and not did("Order Completed", 7d)"#,
        ),
    ];
    let t0 = 1_000 * D;
    let history = |e: &mut Engine| {
        // Both engines keep the events for 60 days (a rule defined later
        // reads what was kept), so that profiles hold states without
        // orders too.
        for event in ["Order Completed", "Product Viewed"] {
            let rule = format!(r#"did("{event}", 60d)"#);
            e.define_audience(&format!("kept {event}"), &rule).unwrap();
        }
        let mut batch = Vec::new();
        for u in 0..203 {
            let country = if u % 3 == 0 { "DE" } else { "US" };
            let signup = segmint_core::time::format_timestamp(t0 - (u % 25) * D);
            batch.push(format!(
                r#"{{"type":"identify","userId":"u{u}","traits":{{"country":"{country}","created_at":"{signup}","signed_up_at":"{signup}"}}}}"#
            ));
        }
        let json = format!("[{}]", batch.join(","));
        assert!(e.ingest_json(json.as_bytes()).unwrap().errors.is_empty());
        for u in (0..203).filter(|u| u % 5 == 0) {
            for k in 0..(u % 4) {
                let at = t0 - (u % 40) * D + k * H;
                track(e, &format!("u{u}"), "Order Completed", "{}", at);
            }
        }
        for u in (0..203).filter(|u| u % 3 == 1) {
            track(e, &format!("u{u}"), "Product Viewed", "{}", t0 - u * H);
        }
    };
    for shards in [1, 3] {
        let mut early = engine(shards);
        for (key, rule) in RULES {
            early.define_audience(key, rule).unwrap();
        }
        history(&mut early);
        let mut late = engine(shards);
        history(&mut late);
        for (key, rule) in RULES {
            late.define_audience(key, rule).unwrap();
        }
        // Replaced while it has members (looked up profile by profile),
        // then back.
        let wider = RULES[1].1.replace(">= 2", ">= 1");
        assert!(late.define_audience("buyer", &wider).unwrap() > early.size("buyer").unwrap());
        late.define_audience("buyer", RULES[1].1).unwrap();
        assert_eq!(
            late.pending_timers(),
            early.pending_timers(),
            "{shards} shards"
        );
        let members = |e: &Engine, key: &str| {
            let mut m = e.members(key).unwrap();
            m.sort();
            m
        };
        for (key, _) in RULES {
            assert_eq!(
                members(&late, key),
                members(&early, key),
                "{key}, {shards} shards"
            );
        }
        // First orders of profiles that had no events at the backfill.
        for e in [&mut early, &mut late] {
            for u in (0..203).filter(|u| u % 5 != 0 && u % 3 != 1 && u % 7 == 2) {
                track(e, &format!("u{u}"), "Order Completed", "{}", t0);
            }
        }
        for step in 0..6 {
            for (key, _) in RULES {
                let got = members(&late, key);
                assert_eq!(
                    got,
                    members(&early, key),
                    "{key}, {shards} shards, step {step}"
                );
                if step == 0 {
                    assert!(!got.is_empty(), "{key}");
                }
            }
            let next = t0 + (step + 1) * 5 * D;
            early.advance(next).unwrap();
            late.advance(next).unwrap();
        }
    }
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

/// Three "Product Viewed" for user `u`, a minute apart, the first 50
/// minutes before `t0` (so a 1-hour count drops to 2 at `t0 + 10 min`).
fn three_views_from_50_minutes_ago(e: &mut Engine, t0: i64) {
    for i in 0..3 {
        track(
            e,
            "u",
            "Product Viewed",
            "{}",
            t0 - 50 * 60_000 + i * 60_000,
        );
    }
}

#[test]
fn explain_shows_values_needs_and_next_change() {
    let mut e = engine(2);
    e.define_audience(
        "active",
        r#"count("Product Viewed", 1h) >= 3 and trait.plan == "pro""#,
    )
    .unwrap();
    e.ingest_json(br#"[{"type":"identify","userId":"u","traits":{"plan":"pro"}}]"#)
        .unwrap();
    let t0 = e.now();
    three_views_from_50_minutes_ago(&mut e, t0);
    let x = e.explain("u", "active").unwrap();
    assert!(x.member);
    let count = &x.tree.children[0];
    assert_eq!(count.holds, Some(true));
    assert_eq!(count.needs.as_deref(), Some(">= 3"));
    assert_eq!(count.children[0].expr, r#"count("Product Viewed", 1h)"#);
    assert_eq!(count.children[0].value, "3");
    // The first view lapses 10 minutes from now: the count drops to 2.
    assert_eq!(x.next_change, Some(t0 + 10 * 60_000));
    assert!(matches!(
        e.explain("nobody", "active"),
        Err(segmint_core::SegmintError::UnknownUser { .. })
    ));
}

#[test]
fn explain_expands_computed_traits() {
    let mut e = engine(2);
    e.define_computed_trait("views_1h", r#"count("Product Viewed", 1h)"#)
        .unwrap();
    e.define_audience("active", "computed.views_1h >= 2")
        .unwrap();
    let t0 = e.now();
    three_views_from_50_minutes_ago(&mut e, t0);
    let x = e.explain("u", "active").unwrap();
    assert!(x.member);
    let computed = &x.tree.children[0];
    assert_eq!(computed.expr, "computed.views_1h");
    assert_eq!(computed.value, "3");
    // The first view lapses in 10 minutes: the value drops to 2.
    assert_eq!(computed.next_change, Some(t0 + 10 * 60_000));
    assert_eq!(computed.children.len(), 1);
    assert_eq!(computed.children[0].expr, r#"count("Product Viewed", 1h)"#);
    assert_eq!(computed.children[0].value, "3");
    assert_eq!(x.tree.next_change, None);
    // The rule flips when the second view lapses, through the computed trait.
    assert_eq!(x.next_change, Some(t0 + 11 * 60_000));
    e.advance(t0 + 11 * 60_000 - 1_000).unwrap();
    assert!(e.is_member("u", "active").unwrap());
    e.advance(t0 + 11 * 60_000).unwrap();
    assert!(!e.is_member("u", "active").unwrap());
}

/// A preview counts whom the rule would hold, among buyers, a viewer who
/// never ordered and a profile known only by its traits: the first rule
/// cannot do without orders (neither is evaluated; debug builds check
/// the viewer's skip), the second is false without events only.
#[test]
fn preview_matches_an_actual_replace() {
    let mut e = engine(3);
    e.define_audience("big", r#"sum("Order Completed", revenue) > 100"#)
        .unwrap();
    e.define_audience("viewers", r#"did("Product Viewed")"#)
        .unwrap();
    let t0 = e.now();
    for (i, revenue) in [50, 150, 250, 90].iter().enumerate() {
        track(
            &mut e,
            &format!("u{i}"),
            "Order Completed",
            &format!(r#"{{"revenue": {revenue}}}"#),
            t0,
        );
    }
    track(&mut e, "viewer", "Product Viewed", "{}", t0);
    let identified = br#"{"type":"identify","userId":"known","traits":{"plan":"pro"}}"#;
    assert!(e.ingest_json(identified).unwrap().errors.is_empty());
    let last = e.last_seq();
    let p = e
        .preview(r#"sum("Order Completed", revenue) > 80"#, Some("big"), 10)
        .unwrap();
    assert_eq!((p.size, p.profiles), (3, 6));
    assert_eq!(p.entering, vec!["u3"]);
    assert!(p.exiting.is_empty());
    assert_eq!(e.last_seq(), last, "preview emits nothing");
    assert_eq!(
        e.rule("big").unwrap(),
        r#"sum("Order Completed", revenue) > 100"#
    );
    e.define_audience("big", r#"sum("Order Completed", revenue) > 80"#)
        .unwrap();
    let entered: Vec<String> = e
        .changes(last, 10)
        .unwrap()
        .iter()
        .map(|c| c.user_id.to_string())
        .collect();
    assert_eq!(entered, p.entering);
    // Over states the buyers and the viewer hold (a plain `did("Order
    // Completed")` would read a new state, which no profile holds yet).
    let either = e
        .preview(
            r#"sum("Order Completed", revenue) > 0 or did("Product Viewed")"#,
            None,
            10,
        )
        .unwrap();
    assert_eq!((either.size, either.profiles), (5, 6));
}

#[test]
fn overlap_and_profile() {
    let mut e = engine(2);
    e.define_audience("a", r#"did("X")"#).unwrap();
    e.define_audience("b", r#"did("Y")"#).unwrap();
    let t0 = e.now();
    track(&mut e, "u1", "X", "{}", t0);
    track(&mut e, "u1", "Y", "{}", t0);
    track(&mut e, "u2", "X", "{}", t0);
    let o = e.overlap(&["a", "b"]).unwrap();
    assert_eq!(
        (o.sizes.clone(), o.pairwise[0][1], o.all),
        (vec![2, 1], 1, 1)
    );
    let p = e.profile("u1").unwrap();
    assert_eq!(
        p.audiences,
        vec![("a".to_string(), t0), ("b".to_string(), t0)]
    );
    assert!(e.overlap(&["a", "nope"]).is_err());
}

#[test]
fn static_audiences_are_uploaded_lists_usable_in_rules() {
    let mut e = engine(2);
    let t0 = e.now();
    e.define_audience("x_seen", r#"did("X")"#).unwrap();
    track(&mut e, "u1", "X", "{}", t0);
    track(&mut e, "u2", "X", "{}", t0);
    assert_eq!(
        e.define_static_audience("vip_list", &["u1", "new_guy"])
            .unwrap(),
        2
    );
    e.define_audience("vip_buyers", r#"in_audience("vip_list") and did("X")"#)
        .unwrap();
    assert_eq!(e.members("vip_buyers").unwrap(), vec!["u1"]);
    // Replace the list: u1 leaves, u2 joins; the dependent rule follows.
    let seq = e.last_seq();
    assert_eq!(e.define_static_audience("vip_list", &["u2"]).unwrap(), 1);
    assert_eq!(e.members("vip_buyers").unwrap(), vec!["u2"]);
    let changes: Vec<(String, String, bool, Reason)> = e
        .changes(seq, 10)
        .unwrap()
        .iter()
        .map(|c| {
            (
                c.audience.to_string(),
                c.user_id.to_string(),
                c.entered,
                c.reason,
            )
        })
        .collect();
    assert!(changes.contains(&("vip_buyers".into(), "u1".into(), false, Reason::Definition)));
    assert!(changes.contains(&("vip_buyers".into(), "u2".into(), true, Reason::Definition)));
    // Events never change a static audience.
    track(&mut e, "new_guy", "X", "{}", t0);
    assert_eq!(e.members("vip_list").unwrap(), vec!["u2"]);
}

#[test]
fn member_for_a_static_list_counts_from_its_replacement() {
    // Found by a differential hunt: a user entering (or leaving) a static
    // audience when its list was replaced got no `member_for` timer, so a
    // rule reading it never moved with time.
    for shards in [1, 2] {
        let mut e = engine(shards);
        let t0 = e.now();
        track(&mut e, "old", "X", "{}", t0);
        e.define_static_audience("s", &["gone"]).unwrap();
        e.define_audience("fresh", r#"member_for("s") < 10m"#)
            .unwrap();
        e.define_audience("settled", r#"member_for("s") >= 1h"#)
            .unwrap();
        // An existing profile and a new one enter; one leaves.
        e.define_static_audience("s", &["old", "new"]).unwrap();
        let sorted = |mut ids: Vec<String>| {
            ids.sort();
            ids
        };
        assert_eq!(sorted(e.members("fresh").unwrap()), vec!["new", "old"]);
        e.advance(t0 + 10 * 60_000).unwrap();
        assert!(e.members("fresh").unwrap().is_empty(), "{shards} shards");
        e.advance(t0 + H).unwrap();
        assert_eq!(sorted(e.members("settled").unwrap()), vec!["new", "old"]);
        for key in ["fresh", "settled"] {
            let rule = e.rule(key).unwrap();
            let p = e.preview(&rule, Some(key), 10).unwrap();
            assert!(p.entering.is_empty() && p.exiting.is_empty(), "{key}");
        }
    }
}

#[test]
fn change_log_trims_the_oldest_and_keeps_numbering() {
    let config = EngineConfig {
        clock: Clock::Manual(1_000 * D),
        shards: 1,
        change_log_capacity: 3,
        ..Default::default()
    };
    let mut e = Engine::new(config).unwrap();
    e.define_audience("seen", r#"did("X")"#).unwrap();
    let t0 = e.now();
    for i in 0..5 {
        track(&mut e, &format!("u{i}"), "X", "{}", t0);
    }
    assert_eq!(e.last_seq(), 5);
    let kept: Vec<u64> = e.changes(2, 10).unwrap().iter().map(|c| c.seq).collect();
    assert_eq!(kept, vec![3, 4, 5]);
    assert_eq!(e.changes(3, 1).unwrap()[0].user_id.as_ref(), "u3");
    assert!(e.changes(0, 10).is_err(), "seqs 1 and 2 were dropped");
    assert!(e.changes(5, 10).unwrap().is_empty());
}

/// Audiences with the same rule are evaluated once per event and still get
/// one change each, in slot order, with the same memberships.
#[test]
fn duplicate_rules_evaluate_once_and_change_alike() {
    for shards in [1, 2] {
        let mut e = engine(shards);
        for key in ["r1", "r2", "r3"] {
            e.define_audience(key, r#"did("Order Completed", 7d)"#)
                .unwrap();
        }
        e.define_audience("other", r#"count("Order Completed", 7d) >= 2"#)
            .unwrap();
        let t0 = e.now();
        track(&mut e, "u1", "Order Completed", "{}", t0);
        let before = e.counters().rule_evaluations;
        track(&mut e, "u1", "Order Completed", "{}", t0);
        assert_eq!(
            e.counters().rule_evaluations - before,
            1,
            "only `other` can flip on the second order"
        );
        let before = e.counters().rule_evaluations;
        track(&mut e, "u2", "Order Completed", "{}", t0);
        assert_eq!(e.counters().rule_evaluations - before, 1, "one class");
        let entered: Vec<String> = e
            .changes(0, 100)
            .unwrap()
            .into_iter()
            .filter(|c| &*c.user_id == "u2")
            .map(|c| c.audience.to_string())
            .collect();
        assert_eq!(entered, ["r1", "r2", "r3"]);
        e.advance(t0 + 8 * D).unwrap();
        for key in ["r1", "r2", "r3"] {
            assert!(!e.is_member("u1", key).unwrap());
            assert_eq!(e.size(key).unwrap(), 0);
        }
    }
}

/// New profiles created by an identify with the same trait atom truths
/// share the outcome of the first one's evaluation: each still ends where
/// a fresh engine that sees only that user (under the final rules) puts
/// it, also when a rule is replaced midway (a new catalog generation, so
/// the later users' outcomes are not the old rule's) and for identifies
/// that delete.
#[test]
fn first_identifies_end_as_if_evaluated_alone() {
    let rules = [
        ("us", r#"trait.country == "US""#),
        (
            "rich",
            r#"trait.ltv > 300 or trait.plan in ["pro", "enterprise"]"#,
        ),
        (
            "new",
            r#"since(trait.created_at) < 14d and not did("Order Completed")"#,
        ),
        ("us_rich", r#"in_audience("us") and in_audience("rich")"#),
        (
            "not_rich",
            r#"not in_audience("rich") and exists(trait.plan)"#,
        ),
        ("settled", r#"member_for("us") >= 1d"#),
        (
            "quiet",
            r#"count("Email Opened", 7d) == 0 and trait.plan != "free""#,
        ),
        // Reads a membership and a trait's value: never replayed.
        ("flagged", r#"in_audience("us") == trait.flag"#),
    ];
    let countries = ["US", "FR", "DE"];
    let plans = ["free", "pro", "enterprise"];
    let flags = ["true", "\"s\"", "false", "1"];
    let identify = |user: &str, i: usize, t0: i64| {
        let created = segmint_core::time::format_timestamp(t0 - (i as i64 % 5) * 4 * D);
        let plan = if i.is_multiple_of(7) {
            "null".to_owned()
        } else {
            format!("\"{}\"", plans[i % 3])
        };
        // Half the users give a flag: their identifies are evaluated.
        let flag = if i.is_multiple_of(2) {
            format!(r#","flag":{}"#, flags[(i / 2) % 4])
        } else {
            String::new()
        };
        format!(
            r#"[{{"type":"identify","userId":"{user}","traits":{{"country":"{}","plan":{plan},"ltv":{},"created_at":"{created}"{flag}}}}}]"#,
            countries[i % 3],
            (i * 37) % 500
        )
    };
    let define = |e: &mut Engine, replaced: bool| {
        for (key, rule) in rules {
            e.define_audience(key, rule).unwrap();
        }
        if replaced {
            // The same atoms in another formula: only the generation tells.
            e.define_audience(
                "rich",
                r#"trait.ltv > 300 and trait.plan in ["pro", "enterprise"]"#,
            )
            .unwrap();
        }
    };
    for replaced in [false, true] {
        let mut shared = engine(1);
        define(&mut shared, false);
        let t0 = shared.now();
        let users: Vec<String> = (0..90).map(|i| format!("u{i}")).collect();
        for (i, user) in users.iter().enumerate() {
            if replaced && i == 45 {
                define(&mut shared, true);
            }
            shared
                .ingest_json(identify(user, i, t0).as_bytes())
                .unwrap();
        }
        for (i, user) in users.iter().enumerate() {
            let mut alone = engine(1);
            define(&mut alone, replaced);
            alone.ingest_json(identify(user, i, t0).as_bytes()).unwrap();
            assert_eq!(
                shared.audiences_of(user),
                alone.audiences_of(user),
                "{user}"
            );
        }
    }
}

/// A batch applies each user's events together (for the cache) and puts
/// the changes back in event order: the log equals that of the same
/// events sent one per call.
#[test]
fn a_batch_logs_its_changes_in_event_order() {
    let rules = [
        ("buyers", r#"did("Order Completed", 7d)"#),
        ("twice", r#"count("Order Completed", 7d) >= 2"#),
        ("us", r#"trait.country == "US""#),
        (
            "us_buyers",
            r#"in_audience("us") and in_audience("buyers")"#,
        ),
        ("ltv", r#"sum("Order Completed", revenue, 30d) > 10"#),
        ("spender", r#"computed.spent > 5"#),
    ];
    // More events than a batch applies on the calling thread, so that the
    // batch on several shards runs on the pool, one per call on the caller.
    let mut lines = Vec::new();
    for i in 0..150usize {
        let user = format!("u{}", (i * 7) % 9);
        lines.push(if i % 5 == 0 {
            let country = if i % 2 == 0 { "US" } else { "FR" };
            format!(r#"{{"type":"identify","userId":"{user}","traits":{{"country":"{country}"}}}}"#)
        } else {
            // Some a minute ahead of the clock (visible only later).
            let at = segmint_core::time::format_timestamp(1_000 * D + (i % 3) as i64 * 30_000);
            format!(
                r#"{{"type":"track","userId":"{user}","event":"Order Completed","timestamp":"{at}","properties":{{"revenue":{}}}}}"#,
                i % 4 * 3
            )
        });
    }
    let run = |batched: bool, shards: usize| {
        let mut e = engine(shards);
        e.define_computed_trait("spent", r#"sum("Order Completed", revenue, 7d)"#)
            .unwrap();
        for (key, rule) in rules {
            e.define_audience(key, rule).unwrap();
        }
        if batched {
            e.ingest_json(format!("[{}]", lines.join(",")).as_bytes())
                .unwrap();
        } else {
            for line in &lines {
                e.ingest_json(format!("[{line}]").as_bytes()).unwrap();
            }
        }
        e.advance(e.now() + 60_000).unwrap();
        logged(&e)
    };
    let one_by_one = run(false, 1);
    assert!(one_by_one.len() > 20);
    assert_eq!(run(false, 3), one_by_one);
    for shards in [1, 3] {
        assert_eq!(run(true, shards), one_by_one);
    }
}

/// One `advance` over a window fires each user's timers user by user (for
/// the cache) and logs the changes in order of instant, then user: the
/// log equals that of advancing the clock in small steps.
#[test]
fn one_advance_logs_as_small_steps_do() {
    let rules = [
        ("day", r#"did("Checkout Started", 1d)"#),
        (
            "abandoned",
            r#"since("Checkout Started") between 2h and 12h"#,
        ),
        ("twice", r#"count("Checkout Started", 6h) >= 2"#),
        (
            "day_not_twice",
            r#"in_audience("day") and not in_audience("twice")"#,
        ),
        ("settled", r#"member_for("day") >= 3h"#),
        ("busy", r#"computed.recent >= 2"#),
    ];
    let run = |steps: i64, shards: usize| {
        let mut e = engine(shards);
        e.define_computed_trait("recent", r#"count("Checkout Started", 4h)"#)
            .unwrap();
        for (key, rule) in rules {
            e.define_audience(key, rule).unwrap();
        }
        let t0 = e.now();
        for i in 0..40i64 {
            let user = format!("u{}", i % 11);
            e.advance(t0 + i * 37 * 60_000).unwrap();
            track(
                &mut e,
                &user,
                "Checkout Started",
                "{}",
                t0 + i * 37 * 60_000,
            );
        }
        let from = e.now();
        for step in 1..=steps {
            e.advance(from + 2 * D * step / steps).unwrap();
        }
        logged(&e)
    };
    let stepped = run(2 * 24 * 60, 1);
    assert!(stepped.len() > 100);
    for shards in [1, 3] {
        assert_eq!(run(1, shards), stepped);
    }
}

/// One event per call leaves the audience bitmaps behind the profiles
/// until enough changes gather; every read must see the changes anyway.
/// Each read is held to the members the change log adds up to.
#[test]
fn reads_between_one_event_calls_see_every_change() {
    use std::collections::{BTreeMap, BTreeSet};
    let mut e = engine(2);
    let t0 = e.now();
    let rules = [
        ("did_x", r#"did("X")"#),
        ("x_twice", r#"count("X") >= 2 and not did("Y")"#),
        ("no_y", r#"not did("Y")"#),
    ];
    for (key, rule) in rules {
        e.define_audience(key, rule).unwrap();
    }
    let mut from_log: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut seen = 0;
    let mut fold_log = |e: &Engine, from_log: &mut BTreeMap<String, BTreeSet<String>>| {
        for c in e.changes(seen, usize::MAX).unwrap() {
            let members = from_log.entry(c.audience.to_string()).or_default();
            if c.entered {
                members.insert(c.user_id.to_string());
            } else {
                members.remove(c.user_id.as_ref());
            }
            seen = c.seq;
        }
    };
    for i in 0..300u32 {
        let user = format!("u{}", (i * 7) % 23);
        let event = if i % 5 == 4 { "Y" } else { "X" };
        track(&mut e, &user, event, "{}", t0 + i64::from(i));
        fold_log(&e, &mut from_log);
        for (key, _) in rules {
            let want: Vec<String> = from_log.get(key).into_iter().flatten().cloned().collect();
            assert_eq!(e.members(key).unwrap(), want, "{key} after event {i}");
            assert_eq!(
                e.size(key).unwrap(),
                want.len() as u64,
                "{key} after event {i}"
            );
            assert_eq!(e.is_member(&user, key).unwrap(), want.contains(&user));
            // Fewer users than 64 are looked up one by one, more in the
            // bitmaps: the 23 users, then them three times over.
            let everyone: Vec<String> = (0..92).map(|k| format!("u{}", k % 23)).collect();
            for n in [23, 92] {
                let many = e
                    .is_member_many(everyone[..n].iter().map(String::as_str), key)
                    .unwrap();
                let wanted: Vec<bool> = everyone[..n].iter().map(|u| want.contains(u)).collect();
                assert_eq!(many, wanted, "{key} after event {i}");
            }
        }
        let mut of_user: Vec<String> = rules
            .iter()
            .filter(|(key, _)| from_log.get(*key).is_some_and(|m| m.contains(&user)))
            .map(|(key, _)| key.to_string())
            .collect();
        of_user.sort();
        assert_eq!(e.audiences_of(&user), of_user);
    }
    // A replaced rule and a removed audience start from the members as
    // they are, unflushed changes included.
    e.define_audience("did_x", r#"did("Y")"#).unwrap();
    fold_log(&e, &mut from_log);
    let want: Vec<String> = from_log["did_x"].iter().cloned().collect();
    assert_eq!(e.members("did_x").unwrap(), want);
    let before = e.size("no_y").unwrap();
    e.remove_audience("no_y").unwrap();
    fold_log(&e, &mut from_log);
    assert!(
        from_log["no_y"].is_empty(),
        "{before} members, not all exited"
    );
}
