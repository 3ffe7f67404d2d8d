//! What the proptests send: one-event JSON batches for user `u{N}`, and
//! how many cases they run. (Each test crate uses a part of it.)
#![allow(dead_code)]

use proptest::prelude::*;
use segmint_core::time::{format_timestamp, format_utc_seconds, Millis};
use segmint_core::Engine;

/// An hour, in milliseconds.
pub const H: Millis = 3_600_000;
/// A day.
pub const D: Millis = 24 * H;
/// Where the engines' manual clocks start.
pub const T0: Millis = 1_000 * D;

/// An identify of `u{user}` setting `plan` and `n` where given.
pub fn identify(user: usize, plan: Option<&str>, n: Option<i64>) -> String {
    let mut traits = Vec::new();
    if let Some(p) = plan {
        traits.push(format!(r#""plan":"{p}""#));
    }
    if let Some(n) = n {
        traits.push(format!(r#""n":{n}"#));
    }
    format!(
        r#"[{{"type":"identify","userId":"u{user}","traits":{{{}}}}}]"#,
        traits.join(",")
    )
}

/// An identify of `u{user}` setting the timestamp trait `t` to `hours_ago`
/// hours before `now`: in whole seconds for an odd count (which profiles
/// keep packed as their seconds), else with milliseconds (kept as text).
pub fn stamp(user: usize, now: Millis, hours_ago: i64) -> String {
    let at = now - hours_ago * H;
    let at = match hours_ago % 2 {
        1 => format_utc_seconds(at.div_euclid(1_000)).map_or_else(String::new, |s| s.to_string()),
        _ => format_timestamp(at),
    };
    format!(r#"[{{"type":"identify","userId":"u{user}","traits":{{"t":"{at}"}}}}]"#)
}

/// A track of `event` by `u{user}` at `at`.
pub fn track(user: usize, event: &str, at: Millis) -> String {
    format!(
        r#"[{{"type":"track","userId":"u{user}","event":"{event}","timestamp":"{}"}}]"#,
        format_timestamp(at)
    )
}

/// Cases a proptest runs: `PROPTEST_CASES` when set, else `default`
/// (`ProptestConfig::with_cases` on its own ignores the variable).
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Ingests `json`, which must be accepted whole.
pub fn ingest(e: &mut Engine, json: &str) {
    let r = e.ingest_json(json.as_bytes()).unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
}

/// An identify's arguments: one of `users`, a plan or none, an `n` or none.
pub fn identify_args(
    users: usize,
) -> impl Strategy<Value = (usize, Option<&'static str>, Option<i64>)> {
    let plan = proptest::option::of(prop_oneof![Just("pro"), Just("free")]);
    (0..users, plan, proptest::option::of(0i64..5))
}

/// A track's arguments: one of `users`, event "A" or "B", and how many
/// hours before now (negative: in the future).
pub fn track_args(
    users: usize,
    hours_ago: std::ops::Range<i64>,
) -> impl Strategy<Value = (usize, &'static str, i64)> {
    (0..users, prop_oneof![Just("A"), Just("B")], hours_ago)
}

/// Rules over `atoms`: each atom or its negation, joined by `and` and
/// `or` up to two levels deep, some of them negated.
pub fn rule(atoms: &'static [&'static str]) -> impl Strategy<Value = String> {
    let leaf = (0..atoms.len(), any::<bool>()).prop_map(move |(i, neg)| {
        if neg {
            format!("not ({})", atoms[i])
        } else {
            format!("({})", atoms[i])
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
