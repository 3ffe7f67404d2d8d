//! An alias re-evaluates only the rules reading what the merge changed
//! for the kept profile (the states that gained entries, the trait keys
//! that gained a value, the static audiences entered, the computed traits
//! that moved): after any stream of identifies, events, aliases, new lists
//! for the static audience and clock moves, every audience holds the
//! members a fresh evaluation of its rule finds (a preview replacing it
//! would move no one), at once and as time goes on (the merged entries'
//! timers). The rules read a timestamp trait through `since`, some read
//! the rule before them (chains as deep as the rules), and some are
//! copies of the rule before them (which share its memberships when it
//! reads none). In the end each user's logged changes of each audience
//! alternate and end at its members.

mod common;

use proptest::prelude::*;
use segmint_core::{Clock, Engine, EngineConfig};

use common::{H, T0};

const USERS: usize = 5;

#[derive(Debug, Clone)]
enum Op {
    Identify(usize, Option<&'static str>, Option<i64>),
    /// An identify setting the timestamp trait `t` to this many hours ago.
    Stamp(usize, i64),
    Track(usize, &'static str, i64),
    Advance(i64),
    Alias(usize, usize),
    /// The static audience's list replaced by the users of the mask.
    Upload(u8),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![
            3 => common::identify_args(USERS).prop_map(|(u, p, n)| Op::Identify(u, p, n)),
            1 => (0..USERS, 0i64..72).prop_map(|(u, h)| Op::Stamp(u, h)),
            // Some of them in the future (beyond now, within the skew).
            3 => common::track_args(USERS, -2..72).prop_map(|(u, e, h)| Op::Track(u, e, h)),
            1 => (1i64..60).prop_map(Op::Advance),
            2 => (0..USERS, 0..USERS).prop_map(|(from, to)| Op::Alias(from, to)),
            1 => any::<u8>().prop_map(Op::Upload),
        ],
        0..30,
    )
}

/// The atoms: those before [`READS_MEMBERSHIPS_FROM`] read no membership,
/// so a rule of those alone has a rule class, whose memberships its copies
/// share.
static ATOMS: [&str; 17] = [
    r#"trait.plan == "pro""#,
    r#"trait.n > 2"#,
    r#"not exists(trait.plan)"#,
    r#"did("A", 2d)"#,
    r#"did("B", 3d)"#,
    r#"count("A", 5d) >= 2"#,
    r#"since("B") > 1d"#,
    r#"count("A", since "B") >= 1"#,
    r#"computed.a_count >= 2"#,
    r#"count("A", 4d) == 0"#,
    r#"count("B") >= 2"#,
    r#"since(trait.t) < 1d"#,
    r#"since(trait.t) between 12h and 2d"#,
    r#"in_audience("p")"#,
    r#"in_audience("s")"#,
    r#"member_for("s") > 1d"#,
    r#"member_for("p") > 12h"#,
];
const READS_MEMBERSHIPS_FROM: usize = 13;

/// Rules for audiences `r0`, `r1`, ...: each rule after the first is
/// either fresh, fresh and reading the one before it (`in_audience`), or a
/// copy of the one before it. A fresh rule reads no membership half of
/// the time, so that its copies share its memberships.
fn rules() -> impl Strategy<Value = Vec<String>> {
    let fresh = prop_oneof![
        common::rule(&ATOMS),
        common::rule(&ATOMS[..READS_MEMBERSHIPS_FROM]),
    ];
    let link = prop_oneof![
        2 => Just(None),
        1 => Just(Some("and")),
        1 => Just(Some("or")),
        1 => Just(Some("copy")),
    ];
    proptest::collection::vec((fresh, link), 1..5).prop_map(|drawn| {
        let mut rules: Vec<String> = Vec::with_capacity(drawn.len());
        for (i, (fresh, link)) in drawn.into_iter().enumerate() {
            let rule = match (i.checked_sub(1), link) {
                (Some(before), Some("copy")) => rules[before].clone(),
                (Some(before), Some(op)) => format!(r#"{fresh} {op} in_audience("r{before}")"#),
                _ => fresh,
            };
            rules.push(rule);
        }
        rules
    })
}

fn engine(shards: usize, rules: &[String]) -> Engine {
    let mut e = Engine::new(EngineConfig {
        clock: Clock::Manual(T0),
        shards,
        threads: 1,
        future_skew: 3 * H,
        ..Default::default()
    })
    .unwrap();
    e.define_computed_trait("a_count", r#"count("A", 3d)"#)
        .unwrap();
    e.define_audience("p", r#"trait.plan == "pro""#).unwrap();
    e.define_static_audience("s", &["u0", "u3"]).unwrap();
    for (i, rule) in rules.iter().enumerate() {
        e.define_audience(&format!("r{i}"), rule).unwrap();
    }
    e
}

fn apply(e: &mut Engine, op: &Op) {
    let now = e.now();
    let json = match op {
        Op::Identify(u, plan, n) => common::identify(*u, *plan, *n),
        Op::Stamp(u, h) => common::stamp(*u, now, *h),
        Op::Track(u, ev, h) => common::track(*u, ev, now - h * H),
        Op::Advance(h) => {
            e.advance(now + h * H).unwrap();
            return;
        }
        Op::Upload(mask) => {
            let users: Vec<String> = (0..USERS)
                .filter(|u| mask & (1 << u) != 0)
                .map(|u| format!("u{u}"))
                .collect();
            let users: Vec<&str> = users.iter().map(String::as_str).collect();
            e.define_static_audience("s", &users).unwrap();
            return;
        }
        Op::Alias(from, to) => {
            format!(r#"[{{"type":"alias","previousId":"u{from}","userId":"u{to}"}}]"#)
        }
    };
    common::ingest(e, &json);
}

/// Every audience's members against a fresh evaluation of its rule.
fn assert_fresh(e: &Engine, rules: &[String], after: &str) {
    for (i, rule) in rules.iter().enumerate() {
        let key = format!("r{i}");
        let p = e.preview(rule, Some(&key), 100).unwrap();
        assert!(
            p.entering.is_empty() && p.exiting.is_empty(),
            "{key} = {rule} after {after}: would enter {:?}, exit {:?}",
            p.entering,
            p.exiting
        );
    }
}

/// The cases the proptest shrank to when parts of the merge were left
/// out (the rules of the trait keys gained, the timers of the merged
/// entries, the dependents of a static audience entered, the rules of a
/// computed trait that moved, the timers of the trait keys gained) or a
/// static list's `member_for` had no timer: kept as they are, since a
/// change to the strategies makes the saved seeds generate other cases.
#[test]
fn cases_that_caught_a_missing_part() {
    let cases: [(&str, &[Op]); 8] = [
        (
            r#"((count("A", 5d) >= 2) or (since(trait.t) < 1d))"#,
            &[Op::Stamp(0, 0), Op::Alias(0, 1)],
        ),
        (
            r#"((count("A", 5d) >= 2) or (since(trait.t) < 1d))"#,
            &[Op::Stamp(0, 1), Op::Alias(0, 1)],
        ),
        (
            r#"(trait.plan == "pro")"#,
            &[Op::Identify(0, Some("pro"), None), Op::Alias(0, 1)],
        ),
        (
            r#"(not (did("B", 3d)) or (did("A", 2d)))"#,
            &[
                Op::Track(0, "A", 0),
                Op::Advance(28),
                Op::Alias(0, 1),
                Op::Track(0, "B", 0),
            ],
        ),
        (
            r#"((count("A", since "B") >= 1) or (in_audience("s")))"#,
            &[Op::Alias(3, 1)],
        ),
        (
            r#"(((computed.a_count >= 2) or (trait.plan == "pro")) or (since("B") > 1d))"#,
            &[Op::Track(1, "A", 0), Op::Track(1, "A", 0), Op::Alias(1, 2)],
        ),
        (
            r#"(not (in_audience("p")) and (count("A", since "B") >= 1))"#,
            &[
                Op::Track(1, "B", 0),
                Op::Alias(3, 1),
                Op::Track(1, "A", -1),
                Op::Alias(1, 2),
            ],
        ),
        (
            r#"(not (in_audience("s")) or (member_for("s") > 1d))"#,
            &[Op::Upload(10)],
        ),
    ];
    for (rule, ops) in cases {
        for shards in [1, 2] {
            run(shards, &[rule.to_owned()], ops);
        }
    }
}

/// Applies `ops` to an engine with `rules`, checking every audience after
/// each, then as time goes on (the merged entries' windows lapse and
/// bases age).
fn run(shards: usize, rules: &[String], ops: &[Op]) {
    let mut e = engine(shards, rules);
    for (i, op) in ops.iter().enumerate() {
        apply(&mut e, op);
        assert_fresh(&e, rules, &format!("op {i}: {op:?}"));
    }
    for _ in 0..4 {
        let now = e.now();
        e.advance(now + 20 * H).unwrap();
        assert_fresh(&e, rules, "a later advance");
    }
    assert_log_agrees(&e, rules.len());
}

/// Each user's changes of each audience alternate, an entry first, and
/// the users whose last change entered are the audience's members.
fn assert_log_agrees(e: &Engine, rules: usize) {
    let mut last: std::collections::BTreeMap<(String, String), bool> = Default::default();
    for change in e.changes(0, usize::MAX).unwrap() {
        if change.computed.is_some() {
            continue;
        }
        let key = (change.audience.to_string(), change.user_id.to_string());
        let before = last.insert(key.clone(), change.entered).unwrap_or(false);
        assert_ne!(
            before, change.entered,
            "{key:?}: {change:?} repeats the change before it"
        );
    }
    let audiences = ["p".to_owned(), "s".to_owned()]
        .into_iter()
        .chain((0..rules).map(|i| format!("r{i}")));
    for audience in audiences {
        let logged: Vec<String> = last
            .iter()
            .filter(|((a, _), &member)| *a == audience && member)
            .map(|((_, user), _)| user.clone())
            .collect();
        let mut members = e.members(&audience).unwrap();
        members.sort();
        assert_eq!(
            logged, members,
            "{audience}: the log's members against the audience's"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(200)))]
    #[test]
    fn merges_leave_every_rule_as_a_fresh_evaluation_finds_it(
        rules in rules(),
        ops in ops(),
        shards in 1usize..3,
    ) {
        run(shards, &rules, &ops);
    }
}
