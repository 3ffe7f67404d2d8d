//! A backfilled (or replaced) rule ends with the memberships the same rule
//! reaches when defined before the events, at definition and as time goes
//! on (the backfill skips profiles without states where a rule cannot hold
//! there, and their timers where an atom reads only states, and profiles
//! lacking a state the rule cannot do without), including rules reading a
//! timestamp trait through `since`. Audience "k"
//! reads every event name for all time, so both engines keep the same
//! history.

mod common;

use proptest::prelude::*;
use segmint_core::{Clock, Engine, EngineConfig};

use common::{D, H, T0};

const USERS: usize = 6;

#[derive(Debug, Clone)]
enum Op {
    Identify(usize, Option<&'static str>, Option<i64>),
    /// An identify setting the timestamp trait `t` to this many hours ago.
    Stamp(usize, i64),
    Track(usize, &'static str, i64),
    Advance(i64),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![
            3 => common::identify_args(USERS).prop_map(|(u, p, n)| Op::Identify(u, p, n)),
            1 => (0..USERS, 0i64..72).prop_map(|(u, h)| Op::Stamp(u, h)),
            3 => common::track_args(USERS, 0..72).prop_map(|(u, e, h)| Op::Track(u, e, h)),
            1 => (1i64..60).prop_map(Op::Advance),
        ],
        0..25,
    )
}

const ATOMS: &[&str] = &[
    r#"trait.plan == "pro""#,
    r#"trait.n > 2"#,
    r#"exists(trait.plan)"#,
    r#"did("A", 2d)"#,
    r#"did("B", 3d)"#,
    r#"count("A", 5d) >= 2"#,
    r#"since("B") > 1d"#,
    r#"in_audience("p")"#,
    r#"in_audience("k")"#,
    r#"count("A", 4d) == 0"#,
    r#"member_for("p") > 1d"#,
    r#"since("A") between 1d and 2d"#,
    r#"since(trait.t) < 1d"#,
    r#"since(trait.t) between 12h and 2d"#,
];

fn engine(shards: usize) -> Engine {
    let mut e = Engine::new(EngineConfig {
        clock: Clock::Manual(T0),
        shards,
        threads: 1,
        ..Default::default()
    })
    .unwrap();
    e.define_audience(
        "k",
        r#"count("A", 10d) >= 100 or count("B", 10d) >= 100 or did("A") or did("B")"#,
    )
    .unwrap();
    e.define_audience("p", r#"trait.plan == "pro""#).unwrap();
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
    };
    common::ingest(e, &json);
}

fn members(e: &Engine, key: &str) -> Vec<bool> {
    (0..USERS)
        .map(|u| {
            let id = format!("u{u}");
            let m = e.is_member(&id, key).unwrap_or(false);
            assert_eq!(
                m,
                e.entered_at(&id, key).unwrap().is_some(),
                "list vs bitmap of {id}"
            );
            m
        })
        .collect()
}

proptest! {
    #[test]
    fn late_definition_matches_early(target in common::rule(ATOMS), old in proptest::option::of(common::rule(ATOMS)), ops in ops(), shards in 1usize..3) {
        let mut early = engine(shards);
        early.define_audience("t", &target).unwrap();
        let mut late = engine(shards);
        if let Some(old) = &old {
            late.define_audience("t", old).unwrap();
        }
        for op in &ops {
            apply(&mut early, op);
            apply(&mut late, op);
        }
        late.define_audience("t", &target).unwrap();
        prop_assert_eq!(members(&early, "t"), members(&late, "t"), "at definition");
        let base = early.now();
        for step in [H, 12 * H, D, 3 * D, 6 * D] {
            let to = base + step;
            early.advance(to).unwrap();
            late.advance(to).unwrap();
            prop_assert_eq!(members(&early, "t"), members(&late, "t"), "after {}", step);
        }
    }
}
