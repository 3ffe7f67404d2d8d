//! Property tests for windows, count thresholds and timers: the engine's
//! memberships and the exact instants of its time-based changes equal a
//! brute-force evaluation at every second.

mod common;

use proptest::prelude::*;
use segmint_core::time::format_timestamp;
use segmint_core::{Clock, Engine, EngineConfig, Reason};

const S: i64 = 1_000;
const T0: i64 = 1_000_000 * S;

#[derive(Debug, Clone)]
enum Op {
    /// Track "E" at now + offset seconds (offset may be negative: late).
    Track(i64),
    /// Move the clock forward by this many seconds.
    Advance(i64),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![3 => (-30i64..5).prop_map(Op::Track), 2 => (1i64..40).prop_map(Op::Advance)],
        1..25,
    )
}

#[derive(Debug, Clone, Copy)]
enum Rule {
    CountAtLeast {
        window: i64,
        k: u32,
    },
    CountBelow {
        window: i64,
        k: u32,
    },
    SinceBetween {
        lo: i64,
        hi: i64,
    },
    /// `since("E") OP c`, OP one of `<`, `<=`, `>`, `>=`, `==`, `!=`.
    SinceCmp {
        op: &'static str,
        c: i64,
    },
    /// `member_for("seen") OP c`, `seen` being `did("E")`.
    MemberFor {
        op: &'static str,
        c: i64,
    },
}

/// `x OP y` for one of [`OPS`].
fn compare(op: &str, x: i64, y: i64) -> bool {
    match op {
        "<" => x < y,
        "<=" => x <= y,
        ">" => x > y,
        ">=" => x >= y,
        "==" => x == y,
        _ => x != y,
    }
}

const OPS: [&str; 6] = ["<", "<=", ">", ">=", "==", "!="];

impl Rule {
    fn text(self) -> String {
        match self {
            Rule::CountAtLeast { window, k } => format!(r#"count("E", {window}s) >= {k}"#),
            Rule::CountBelow { window, k } => {
                format!(r#"did("E") and count("E", {window}s) < {k}"#)
            }
            Rule::SinceBetween { lo, hi } => format!(r#"since("E") between {lo}s and {hi}s"#),
            Rule::SinceCmp { op, c } => format!(r#"since("E") {op} {c}s"#),
            Rule::MemberFor { op, c } => format!(r#"member_for("seen") {op} {c}s"#),
        }
    }

    /// Brute force over the raw events: (instant, when it was sent).
    fn holds(self, sent: &[(i64, i64)], now: i64) -> bool {
        let events: Vec<i64> = sent.iter().map(|&(t, _)| t).collect();
        let events = &events[..];
        let visible = events.iter().filter(|&&t| t <= now);
        match self {
            Rule::CountAtLeast { window, k } => {
                visible.filter(|&&t| t > now - window * S).count() >= k as usize
            }
            Rule::CountBelow { window, k } => {
                let any = events.iter().any(|&t| t <= now);
                any && events
                    .iter()
                    .filter(|&&t| t <= now && t > now - window * S)
                    .count()
                    < k as usize
            }
            Rule::SinceBetween { lo, hi } => visible
                .max()
                .is_some_and(|&t| (lo * S..=hi * S).contains(&(now - t))),
            Rule::SinceCmp { op, c } => visible.max().is_some_and(|&t| compare(op, now - t, c * S)),
            // In `seen` from the first instant an event was visible: its
            // own, or when it was sent if late.
            Rule::MemberFor { op, c } => sent
                .iter()
                .map(|&(t, at)| t.max(at))
                .filter(|&entered| entered <= now)
                .min()
                .is_some_and(|entered| compare(op, now - entered, c * S)),
        }
    }
}

fn rules() -> impl Strategy<Value = Rule> {
    prop_oneof![
        (1i64..30, 1u32..4).prop_map(|(window, k)| Rule::CountAtLeast { window, k }),
        (1i64..30, 1u32..4).prop_map(|(window, k)| Rule::CountBelow { window, k }),
        (0i64..20, 0i64..20).prop_map(|(a, b)| Rule::SinceBetween {
            lo: a.min(b),
            hi: a.max(b)
        }),
        (0usize..OPS.len(), 0i64..20).prop_map(|(op, c)| Rule::SinceCmp { op: OPS[op], c }),
        (0usize..OPS.len(), 0i64..20).prop_map(|(op, c)| Rule::MemberFor { op: OPS[op], c }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(300)))]

    /// Several rules at once: those testing `since("E")`, and those testing
    /// `member_for("seen")`, share timers (and their next instants are found
    /// together, see `segmint_core::catalog::TimerLadder`).
    #[test]
    fn time_based_changes_happen_at_the_exact_instant(
        rules in proptest::collection::vec(rules(), 1..5),
        ops in ops(),
        shards in 1usize..3,
    ) {
        let config = EngineConfig { clock: Clock::Manual(T0), shards, threads: 1, ..Default::default() };
        let mut engine = Engine::new(config).unwrap();
        engine.define_audience("seen", r#"did("E")"#).unwrap();
        let keys: Vec<String> = (0..rules.len()).map(|i| format!("a{i}")).collect();
        for (key, rule) in keys.iter().zip(&rules) {
            engine.define_audience(key, &rule.text()).unwrap();
        }
        let mut events: Vec<(i64, i64)> = Vec::new();
        // Per audience: its expected changes, and membership now.
        let mut expected: Vec<Vec<(i64, bool)>> = vec![Vec::new(); rules.len()];
        let mut member = vec![false; rules.len()];
        let mut note = |at: i64, events: &[(i64, i64)], member: &mut [bool]| {
            for (i, rule) in rules.iter().enumerate() {
                let holds = rule.holds(events, at);
                if holds != member[i] {
                    expected[i].push((at, holds));
                    member[i] = holds;
                }
            }
        };
        for op in ops {
            let now = engine.now();
            match op {
                Op::Track(offset) => {
                    let t = now + offset * S;
                    let json = format!(r#"[{{"userId":"u","event":"E","timestamp":"{}"}}]"#, format_timestamp(t));
                    let report = engine.ingest_json(json.as_bytes()).unwrap();
                    if report.errors.is_empty() {
                        events.push((t, now));
                    }
                    // An event changes membership at `now`, where the brute force looks too.
                    note(now, &events, &mut member);
                }
                Op::Advance(secs) => {
                    for step in 1..=secs {
                        note(now + step * S, &events, &mut member);
                    }
                    engine.advance(now + secs * S).unwrap();
                }
            }
            for (i, key) in keys.iter().enumerate() {
                prop_assert_eq!(engine.is_member("u", key).unwrap(), member[i], "{} after {:?} at {}", key, op, engine.now());
            }
        }
        let changes = engine.changes(0, 10_000).unwrap();
        for (i, key) in keys.iter().enumerate() {
            let got: Vec<(i64, bool)> = changes
                .iter()
                .filter(|c| &*c.audience == key.as_str())
                .map(|c| (c.at, c.entered))
                .collect();
            prop_assert_eq!(&got, &expected[i], "{}", key);
        }
        for c in &changes {
            prop_assert!(matches!(c.reason, Reason::Event | Reason::Time));
        }
    }
}
