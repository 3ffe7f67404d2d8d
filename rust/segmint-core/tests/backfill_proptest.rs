//! A backfilled (or replaced) rule ends with the memberships the same rule
//! reaches when defined before the events, at definition and as time goes
//! on (the backfill skips profiles without states where a rule cannot hold
//! there, and their timers where an atom reads only states, and profiles
//! lacking a state the rule cannot do without). Audience "k"
//! reads every event name for all time, so both engines keep the same
//! history.

use proptest::prelude::*;
use segmint_core::time::format_timestamp;
use segmint_core::{Clock, Engine, EngineConfig};

const H: i64 = 3_600_000;
const D: i64 = 24 * H;
const T0: i64 = 1_000 * D;
const USERS: usize = 6;

#[derive(Debug, Clone)]
enum Op {
    Identify(usize, Option<&'static str>, Option<i64>),
    Track(usize, &'static str, i64),
    Advance(i64),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![
            3 => (0..USERS, proptest::option::of(prop_oneof![Just("pro"), Just("free")]), proptest::option::of(0i64..5))
                .prop_map(|(u, p, n)| Op::Identify(u, p, n)),
            3 => (0..USERS, prop_oneof![Just("A"), Just("B")], 0i64..72).prop_map(|(u, e, h)| Op::Track(u, e, h)),
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
];

fn rule() -> impl Strategy<Value = String> {
    let leaf = (0..ATOMS.len(), any::<bool>()).prop_map(|(i, neg)| {
        if neg {
            format!("not ({})", ATOMS[i])
        } else {
            format!("({})", ATOMS[i])
        }
    });
    leaf.prop_recursive(2, 6, 3, |inner| {
        (inner.clone(), inner, any::<bool>(), any::<bool>()).prop_map(|(a, b, and, neg)| {
            let s = format!("({a} {} {b})", if and { "and" } else { "or" });
            if neg {
                format!("not {s}")
            } else {
                s
            }
        })
    })
}

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
        Op::Identify(u, plan, n) => {
            let mut traits = Vec::new();
            if let Some(p) = plan {
                traits.push(format!(r#""plan":"{p}""#));
            }
            if let Some(n) = n {
                traits.push(format!(r#""n":{n}"#));
            }
            format!(
                r#"[{{"type":"identify","userId":"u{u}","traits":{{{}}}}}]"#,
                traits.join(",")
            )
        }
        Op::Track(u, ev, h) => format!(
            r#"[{{"type":"track","userId":"u{u}","event":"{ev}","timestamp":"{}"}}]"#,
            format_timestamp(now - h * H)
        ),
        Op::Advance(h) => {
            e.advance(now + h * H).unwrap();
            return;
        }
    };
    let r = e.ingest_json(json.as_bytes()).unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
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
    fn late_definition_matches_early(target in rule(), old in proptest::option::of(rule()), ops in ops(), shards in 1usize..3) {
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
