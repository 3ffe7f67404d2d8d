//! Per-user aggregation state: a time-ordered buffer of the entries that
//! windows can still see, and a summary of the entries that left it.
//!
//! One state serves every view over the same selector and property; a view
//! is a range of the buffer (found by binary search) plus, for all-time
//! views, the summary.

use hashbrown::HashMap;

use crate::catalog::{StateDef, WindowDef};
use crate::rules::ast::AggFunc;
use crate::time::Millis;
use crate::value::{Value, ValueKey};

/// One kept event: its instant and the kept property value (none when the
/// state only counts).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// Event time.
    pub t: Millis,
    /// The property value, for states that keep one.
    pub v: Option<Value>,
}

/// What is known of entries that left the buffer (all older than any
/// entry still in it).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// How many.
    pub count: u64,
    /// The latest instant among them.
    pub latest: Option<Millis>,
    /// How many had a numeric value.
    pub num_count: u64,
    /// Sum of numeric values.
    pub sum: f64,
    /// Smallest numeric value.
    pub min: f64,
    /// Largest numeric value.
    pub max: f64,
    /// Value of the earliest (first arrived on ties).
    pub first: Option<(Millis, Value)>,
    /// Value of the latest (last arrived on ties).
    pub last: Option<(Millis, Value)>,
    /// Value histogram, when an all-time view needs it.
    pub freq: Option<HashMap<ValueKey, u64>>,
}

impl Summary {
    fn absorb(&mut self, e: Entry, keep_freq: bool) {
        self.count += 1;
        self.latest = Some(self.latest.map_or(e.t, |l| l.max(e.t)));
        let Some(v) = e.v else { return };
        if let Some(n) = v.as_num() {
            if self.num_count == 0 {
                self.min = n;
                self.max = n;
            } else {
                self.min = self.min.min(n);
                self.max = self.max.max(n);
            }
            self.num_count += 1;
            self.sum += n;
        }
        if keep_freq {
            *self
                .freq
                .get_or_insert_with(HashMap::new)
                .entry(v.key())
                .or_default() += 1;
        }
        if self.first.as_ref().is_none_or(|(t, _)| e.t < *t) {
            self.first = Some((e.t, v.clone()));
        }
        if self.last.as_ref().is_none_or(|(t, _)| e.t >= *t) {
            self.last = Some((e.t, v));
        }
    }
}

/// The state of one user for one [`StateDef`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UserState {
    /// Entries sorted by time; equal times in arrival order.
    pub buffer: Vec<Entry>,
    /// Entries that left the buffer, when the state needs them.
    pub summary: Option<Box<Summary>>,
}

impl UserState {
    /// Adds an entry after any entry with the same instant (arrival order).
    pub fn insert(&mut self, t: Millis, v: Option<Value>) {
        let at = self.buffer.partition_point(|e| e.t <= t);
        crate::profile::grow_one(&mut self.buffer);
        self.buffer.insert(at, Entry { t, v });
    }

    /// Number of buffered entries with `t <= now`.
    fn visible_end(&self, now: Millis) -> usize {
        self.buffer.partition_point(|e| e.t <= now)
    }

    /// The latest visible instant, if any. (A late event can sit in the
    /// buffer older than entries already summarised, so both are consulted.)
    pub fn latest(&self, now: Millis) -> Option<Millis> {
        let end = self.visible_end(now);
        let buffered = end.checked_sub(1).map(|i| self.buffer[i].t);
        let summarised = self.summary.as_ref().and_then(|s| s.latest);
        buffered.max(summarised)
    }

    /// The earliest entry still in the future (`t > now`).
    pub fn next_visible(&self, now: Millis) -> Option<Millis> {
        self.buffer.get(self.visible_end(now)).map(|e| e.t)
    }

    /// Moves out of the buffer every entry at or before `horizon`.
    pub fn evict(&mut self, horizon: Millis, def: &StateDef) {
        let cut = self.buffer.partition_point(|e| e.t <= horizon);
        if cut == 0 {
            return;
        }
        if def.archive {
            let summary = self.summary.get_or_insert_with(Default::default);
            for e in self.buffer.drain(..cut) {
                summary.absorb(e, def.archive_freq);
            }
        } else {
            self.buffer.drain(..cut);
        }
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty() && self.summary.is_none()
    }
}

/// The slice of entries a window covers at `now` and whether the summary
/// counts too. `anchor` is the latest visible instant of the `since` state.
pub fn window_range(
    state: &UserState,
    window: WindowDef,
    now: Millis,
    anchor: Option<Millis>,
) -> Option<(&[Entry], bool)> {
    let end = state.visible_end(now);
    match window {
        WindowDef::All => Some((&state.buffer[..end], true)),
        WindowDef::Last(w) => {
            let start = state.buffer.partition_point(|e| e.t <= now - w);
            Some((&state.buffer[start.min(end)..end], false))
        }
        WindowDef::Since(_) => {
            let anchor = anchor?;
            let start = state.buffer.partition_point(|e| e.t <= anchor);
            Some((&state.buffer[start.min(end)..end], false))
        }
    }
}

/// Computes an aggregate over a window's entries (and the summary when
/// `with_summary`). `count` and `distinct` are never null.
pub fn aggregate(
    func: AggFunc,
    entries: &[Entry],
    summary: Option<&Summary>,
    with_summary: bool,
) -> Option<Value> {
    let summary = if with_summary { summary } else { None };
    match func {
        AggFunc::Count | AggFunc::Did => Some(Value::Num(
            (entries.len() as u64 + summary.map_or(0, |s| s.count)) as f64,
        )),
        AggFunc::Sum | AggFunc::Avg | AggFunc::Min | AggFunc::Max => {
            let (mut n, mut sum, mut min, mut max) =
                (0u64, 0.0f64, f64::INFINITY, f64::NEG_INFINITY);
            if let Some(s) = summary.filter(|s| s.num_count > 0) {
                n = s.num_count;
                sum = s.sum;
                min = s.min;
                max = s.max;
            }
            for x in entries
                .iter()
                .filter_map(|e| e.v.as_ref().and_then(Value::as_num))
            {
                n += 1;
                sum += x;
                min = min.min(x);
                max = max.max(x);
            }
            if n == 0 {
                return None;
            }
            Some(Value::Num(match func {
                AggFunc::Sum => sum,
                AggFunc::Avg => sum / n as f64,
                AggFunc::Min => min,
                _ => max,
            }))
        }
        AggFunc::Distinct | AggFunc::MostFrequent | AggFunc::Unique => {
            let mut freq: HashMap<ValueKey, u64> =
                summary.and_then(|s| s.freq.clone()).unwrap_or_default();
            for v in entries.iter().filter_map(|e| e.v.as_ref()) {
                *freq.entry(v.key()).or_default() += 1;
            }
            match func {
                AggFunc::Distinct => Some(Value::Num(freq.len() as f64)),
                AggFunc::MostFrequent => freq
                    .into_iter()
                    .map(|(k, n)| (k.value(), n))
                    .max_by(|(va, na), (vb, nb)| na.cmp(nb).then_with(|| vb.total_cmp(va)))
                    .map(|(v, _)| v),
                _ => {
                    let mut values: Vec<Value> = freq.into_keys().map(|k| k.value()).collect();
                    values.sort_by(|a, b| a.total_cmp(b));
                    let strings = values
                        .iter()
                        .map(|v| match v {
                            Value::Str(s) => s.clone(),
                            other => render(other).into(),
                        })
                        .collect::<Vec<_>>();
                    Some(Value::List(strings.into()))
                }
            }
        }
        // A late event can be buffered while older than summarised entries:
        // compare instants. On equal instants the summarised entry arrived
        // first (it was evicted before the buffered one came).
        AggFunc::First => {
            let buffered = entries.iter().find_map(|e| e.v.clone().map(|v| (e.t, v)));
            match (summary.and_then(|s| s.first.clone()), buffered) {
                (Some(s), Some(b)) => Some(if b.0 < s.0 { b.1 } else { s.1 }),
                (s, b) => s.or(b).map(|(_, v)| v),
            }
        }
        AggFunc::Last => {
            let buffered = entries
                .iter()
                .rev()
                .find_map(|e| e.v.clone().map(|v| (e.t, v)));
            match (summary.and_then(|s| s.last.clone()), buffered) {
                (Some(s), Some(b)) => Some(if s.0 > b.0 { s.1 } else { b.1 }),
                (s, b) => s.or(b).map(|(_, v)| v),
            }
        }
    }
}

/// A value as text (for `unique` lists of non-strings and for explain).
pub fn render(v: &Value) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::Num(n) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", *n as i64),
        Value::Num(n) => n.to_string(),
        Value::Str(s) => format!("{s:?}"),
        Value::List(l) => format!("{:?}", l.iter().map(|s| s.as_ref()).collect::<Vec<_>>()),
        Value::Dur(d) => crate::time::format_duration(*d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn def(retention: Millis, archive: bool) -> StateDef {
        StateDef {
            event: "E".into(),
            filter: None,
            property: None,
            retention,
            since_anchors: vec![],
            archive,
            archive_freq: archive,
        }
    }

    fn count(s: &UserState, w: WindowDef, now: Millis) -> f64 {
        let (entries, all) = window_range(s, w, now, None).unwrap();
        aggregate(AggFunc::Count, entries, s.summary.as_deref(), all)
            .unwrap()
            .as_num()
            .unwrap()
    }

    #[test]
    fn window_is_half_open_on_the_left() {
        let mut s = UserState::default();
        for t in [1000, 2000, 3000] {
            s.insert(t, None);
        }
        assert_eq!(count(&s, WindowDef::Last(1000), 3000), 1.0);
        assert_eq!(count(&s, WindowDef::Last(1001), 3000), 2.0);
        assert_eq!(
            count(&s, WindowDef::Last(10_000), 2500),
            2.0,
            "future entries are not visible"
        );
    }

    #[test]
    fn most_frequent_ties_go_to_smallest() {
        let entries: Vec<Entry> = ["b", "a", "b", "a", "c"]
            .iter()
            .enumerate()
            .map(|(i, v)| Entry {
                t: i as i64,
                v: Some(Value::Str((*v).into())),
            })
            .collect();
        assert_eq!(
            aggregate(AggFunc::MostFrequent, &entries, None, false),
            Some(Value::Str("a".into()))
        );
    }

    proptest! {
        /// Counting through buffer + summary equals counting the raw list,
        /// whatever the eviction horizons, as long as windows stay inside the
        /// retention.
        #[test]
        fn eviction_preserves_views(
            times in proptest::collection::vec(0i64..100, 1..60),
            values in proptest::collection::vec(-5i64..5, 60),
            horizon in 0i64..100,
            w in 1i64..50,
        ) {
            let now = 150;
            let d = def(w, true);
            let mut s = UserState::default();
            for (i, &t) in times.iter().enumerate() {
                s.insert(t, Some(Value::Num(values[i] as f64)));
            }
            let raw = s.buffer.clone();
            s.evict(horizon.min(now - w), &d);
            let all = count(&s, WindowDef::All, now);
            prop_assert_eq!(all, raw.len() as f64);
            let win = count(&s, WindowDef::Last(w), now);
            prop_assert_eq!(win, raw.iter().filter(|e| e.t > now - w && e.t <= now).count() as f64);
            let (entries, with) = window_range(&s, WindowDef::All, now, None).unwrap();
            let sum = aggregate(AggFunc::Sum, entries, s.summary.as_deref(), with).unwrap().as_num().unwrap();
            prop_assert_eq!(sum, raw.iter().map(|e| e.v.as_ref().unwrap().as_num().unwrap()).sum::<f64>());
            let last = aggregate(AggFunc::Last, entries, s.summary.as_deref(), with);
            prop_assert_eq!(last, raw.last().and_then(|e| e.v.clone()));
            let first = aggregate(AggFunc::First, entries, s.summary.as_deref(), with);
            prop_assert_eq!(first, raw.first().and_then(|e| e.v.clone()));
        }
    }
}
