//! Per-user aggregation state: a time-ordered buffer of the entries that
//! windows can still see, and a summary of the entries that left it.
//!
//! One state serves every view over the same selector and property; a view
//! is a range of the buffer (found by binary search) plus, for all-time
//! views, the summary.

use std::borrow::Cow;

use hashbrown::HashMap;

use crate::catalog::{StateDef, WindowDef};
use crate::fold_cache::{FoldCache, FOLDS_KEPT_FROM};
use crate::rules::ast::AggFunc;
use crate::thin_box::ThinBox;
use crate::time::Millis;
use crate::value::{Value, ValueKey};

/// What is known of entries that left the buffer (all older than any
/// entry still in it). The values (first, last, histogram) are behind a
/// box of their own: most summarised states only count (132k of 801k
/// states on the full workload have a summary, nearly all without values),
/// and a summary is 64 bytes instead of 160.
#[derive(Debug, Clone, Default, PartialEq)]
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
    /// The rest, once an entry with a value was summarised.
    values: Option<Box<SummaryValues>>,
}

/// The parts of a [`Summary`] that only entries with values fill.
#[derive(Debug, Clone, Default, PartialEq)]
struct SummaryValues {
    /// Value of the earliest (first arrived on ties).
    first: Option<(Millis, Value)>,
    /// Value of the latest (last arrived on ties).
    last: Option<(Millis, Value)>,
    /// Value histogram, when an all-time view needs it.
    freq: Option<HashMap<ValueKey, u64>>,
}

/// A [`Summary`] as snapshots store it: every field in one record, as
/// before the values had a box of their own.
#[derive(serde::Serialize)]
struct SummaryRef<'a> {
    count: u64,
    latest: Option<Millis>,
    num_count: u64,
    sum: f64,
    min: f64,
    max: f64,
    first: Option<&'a (Millis, Value)>,
    last: Option<&'a (Millis, Value)>,
    freq: Option<&'a HashMap<ValueKey, u64>>,
}

/// A [`SummaryRef`] read back. (Tests write it too: it is the layout
/// from before the values had a box.)
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct SummaryOwned {
    count: u64,
    latest: Option<Millis>,
    num_count: u64,
    sum: f64,
    min: f64,
    max: f64,
    first: Option<(Millis, Value)>,
    last: Option<(Millis, Value)>,
    freq: Option<HashMap<ValueKey, u64>>,
}

impl serde::Serialize for Summary {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let stored = SummaryRef {
            count: self.count,
            latest: self.latest,
            num_count: self.num_count,
            sum: self.sum,
            min: self.min,
            max: self.max,
            first: self.first(),
            last: self.last(),
            freq: self.freq(),
        };
        serde::Serialize::serialize(&stored, s)
    }
}

impl<'de> serde::Deserialize<'de> for Summary {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let o: SummaryOwned = serde::Deserialize::deserialize(d)?;
        let values = SummaryValues {
            first: o.first,
            last: o.last,
            freq: o.freq,
        };
        let empty = values == SummaryValues::default();
        Ok(Summary {
            count: o.count,
            latest: o.latest,
            num_count: o.num_count,
            sum: o.sum,
            min: o.min,
            max: o.max,
            values: (!empty).then(|| Box::new(values)),
        })
    }
}

impl Summary {
    /// Value of the earliest summarised entry with one (first arrived on
    /// ties).
    pub fn first(&self) -> Option<&(Millis, Value)> {
        self.values.as_ref()?.first.as_ref()
    }

    /// Value of the latest summarised entry with one (last arrived on
    /// ties).
    pub fn last(&self) -> Option<&(Millis, Value)> {
        self.values.as_ref()?.last.as_ref()
    }

    /// Histogram of the summarised values, when an all-time view needs it.
    pub fn freq(&self) -> Option<&HashMap<ValueKey, u64>> {
        self.values.as_ref()?.freq.as_ref()
    }

    /// Approximate heap bytes, the summary itself included.
    fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Summary>()
            + self.values.as_ref().map_or(0, |values| {
                std::mem::size_of::<SummaryValues>()
                    + values
                        .freq
                        .as_ref()
                        .map_or(0, |f| f.capacity() * std::mem::size_of::<(ValueKey, u64)>())
            })
    }

    /// Adds what `other` summarises (another profile's, when an alias
    /// merges two): counts and sums add up, the extremes and the latest
    /// instant are the greater or smaller of both, the histograms add up.
    /// On equal instants, this summary's first value stays first and
    /// `other`'s last value becomes the last, as if `other`'s entries had
    /// arrived after these.
    fn merge(&mut self, other: &Summary) {
        self.count += other.count;
        self.latest = self.latest.max(other.latest);
        if other.num_count > 0 {
            if self.num_count == 0 {
                (self.min, self.max) = (other.min, other.max);
            } else {
                self.min = self.min.min(other.min);
                self.max = self.max.max(other.max);
            }
            self.num_count += other.num_count;
            self.sum += other.sum;
        }
        let Some(theirs) = other.values.as_deref() else {
            return;
        };
        let values = self.values.get_or_insert_with(Box::default);
        if let Some((t, v)) = &theirs.first {
            if values.first.as_ref().is_none_or(|(first, _)| t < first) {
                values.first = Some((*t, v.clone()));
            }
        }
        if let Some((t, v)) = &theirs.last {
            if values.last.as_ref().is_none_or(|(last, _)| t >= last) {
                values.last = Some((*t, v.clone()));
            }
        }
        if let Some(freq) = &theirs.freq {
            let ours = values.freq.get_or_insert_with(HashMap::new);
            for (key, n) in freq {
                *ours.entry(key.clone()).or_default() += n;
            }
        }
    }

    fn absorb(&mut self, t: Millis, v: Option<Value>, keep_freq: bool) {
        self.count += 1;
        self.latest = Some(self.latest.map_or(t, |l| l.max(t)));
        let Some(v) = v else { return };
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
        let values = self.values.get_or_insert_with(Box::default);
        if keep_freq {
            *values
                .freq
                .get_or_insert_with(HashMap::new)
                .entry(v.key())
                .or_default() += 1;
        }
        if values.first.as_ref().is_none_or(|(first, _)| t < *first) {
            values.first = Some((t, v.clone()));
        }
        if values.last.as_ref().is_none_or(|(last, _)| t >= *last) {
            values.last = Some((t, v));
        }
    }
}

/// The state of one user for one [`StateDef`]. The buffer is two
/// columns: instants, and values only once some entry has one, so a state
/// that only counts costs 8 bytes an entry.
///
/// Most states hold a single entry and neither values nor a summary (on
/// the benchmark workload, 64% of states hold one entry and 91% no
/// values), so the instants keep one entry inline (see [`Times`]) and the
/// values and the summary sit behind one optional box: 24 bytes a state
/// instead of 56, and no allocation for a state of one counted entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserState {
    /// Instants of the buffered entries, sorted; equal instants in arrival
    /// order.
    times: Times,
    /// Values and summary, for the states that have either (`None` while
    /// neither exists: never an empty box).
    extra: Option<Box<Extra>>,
}

/// A state's instants: one inline, more in a box of the exact length. 16
/// bytes, where a `SmallVec` with one inline took 24 and its spilled
/// lists kept room to grow: a state takes an entry per event of its kind,
/// far less often than it is read, and the 8 bytes and the room were 8
/// bytes a user on the full benchmark workload.
#[derive(Debug, Clone)]
enum Times {
    /// One instant.
    One(Millis),
    /// None, or two and more.
    Many(ThinBox<Millis>),
}

/// Compared as the instants, whichever way they are kept.
impl PartialEq for Times {
    fn eq(&self, other: &Times) -> bool {
        self[..] == other[..]
    }
}

impl Default for Times {
    fn default() -> Times {
        Times::Many(ThinBox::new())
    }
}

impl std::ops::Deref for Times {
    type Target = [Millis];

    fn deref(&self) -> &[Millis] {
        match self {
            Times::One(t) => std::slice::from_ref(t),
            Times::Many(times) => times,
        }
    }
}

impl From<Vec<Millis>> for Times {
    fn from(times: Vec<Millis>) -> Times {
        match times[..] {
            [t] => Times::One(t),
            _ => Times::Many(ThinBox::from(times)),
        }
    }
}

impl Times {
    /// Inserts `t` at `at`.
    fn insert(&mut self, at: usize, t: Millis) {
        match self {
            Times::Many(times) if times.is_empty() => *self = Times::One(t),
            Times::Many(times) => times.insert(at, t),
            Times::One(one) => {
                let mut both = vec![*one; 2];
                both[at] = t;
                *self = Times::Many(ThinBox::from(both));
            }
        }
    }

    /// Drops the first `cut` instants.
    fn drop_front(&mut self, cut: usize) {
        match self.len() - cut {
            0 => *self = Times::default(),
            1 => *self = Times::One(self[cut]),
            // The rest moves to the front and the box shrinks in place.
            _ => {
                if let Times::Many(times) = self {
                    times.drop_front(cut);
                }
            }
        }
    }

    /// Bytes of the box.
    fn heap_bytes(&self) -> usize {
        match self {
            Times::One(_) => 0,
            Times::Many(times) => times.heap_bytes(),
        }
    }
}

/// The parts of a [`UserState`] that few states have.
#[derive(Debug, Clone, Default, PartialEq)]
struct Extra {
    /// The buffered entries' values, parallel to the instants; empty while
    /// no entry has one.
    values: Column,
    /// Entries that left the buffer, when the state needs them.
    summary: Option<Box<Summary>>,
}

impl Extra {
    /// Whether it holds nothing (and can be dropped).
    fn is_empty(&self) -> bool {
        self.summary.is_none()
            && matches!(self.values.plain(), Column::Nums(nums) if nums.is_empty())
    }
}

/// A state as snapshots store it (the format from before the instants
/// were kept inline): instants, the list of optional values, summary.
#[derive(serde::Serialize)]
struct StoredRef<'a> {
    times: &'a [Millis],
    #[serde(serialize_with = "column_as_values::serialize_ref")]
    values: &'a Column,
    summary: Option<&'a Summary>,
}

/// [`StoredRef`], read back.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct Stored {
    times: Vec<Millis>,
    #[serde(with = "column_as_values")]
    values: Column,
    summary: Option<Box<Summary>>,
}

/// The values of a state without any.
static NO_VALUES: Column = Column::Nums(Vec::new());

impl serde::Serialize for UserState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        StoredRef {
            times: &self.times,
            values: self.values(),
            summary: self.summary(),
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for UserState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let stored = Stored::deserialize(d)?;
        let mut values = stored.values;
        values.parallel_to(stored.times.len());
        let extra = Extra {
            values,
            summary: stored.summary,
        };
        Ok(UserState {
            times: Times::from(stored.times),
            extra: (!extra.is_empty()).then(|| Box::new(extra)),
        })
    }
}

/// The values of a state's buffered entries. Most states with a property
/// hold numbers (`revenue`): those are kept as plain `f64`, 8 bytes each
/// instead of 24, and `sum`/`avg`/`min`/`max` fold them without a test per
/// entry. The first entry without a number (a string value, or one without
/// a value beside entries with one) turns the column into general values.
/// A state of [`FOLDS_KEPT_FROM`] or more entries keeps its column boxed
/// with the folds of its long windows ([`Column::Kept`]).
#[derive(Debug, Clone)]
enum Column {
    /// Every buffered entry's number; empty while no entry has a value.
    Nums(Vec<f64>),
    /// Values of any kind, `None` where an entry has none (rare: boxed, so
    /// that the column stays 24 bytes).
    // The extra allocation is the point: a `Vec` here would make every
    // state's column 32 bytes, for a case few states ever reach.
    #[allow(clippy::box_collection)]
    Mixed(Box<Vec<Option<Value>>>),
    /// A long column (never itself `Kept`) with its kept folds (see
    /// [`crate::fold_cache`]): boxed, so that neither the column nor the
    /// state's extra part grows for the states that are not long.
    Kept(Box<KeptColumn>),
}

/// A long column and the folds of its windows.
#[derive(Debug, Clone)]
struct KeptColumn {
    values: Column,
    folds: FoldCache,
}

/// Equal values, kept the same way (numbers or general values): the kept
/// folds are a cache.
impl PartialEq for Column {
    fn eq(&self, other: &Column) -> bool {
        match (self.plain(), other.plain()) {
            (Column::Nums(a), Column::Nums(b)) => a == b,
            (Column::Mixed(a), Column::Mixed(b)) => a == b,
            _ => false,
        }
    }
}

impl Default for Column {
    fn default() -> Self {
        Column::Nums(Vec::new())
    }
}

impl Column {
    /// A column from optional values: numbers when all are numbers.
    fn from_values(values: Vec<Option<Value>>) -> Column {
        let nums: Option<Vec<f64>> = values.iter().map(|v| v.as_ref()?.as_num()).collect();
        match nums {
            Some(nums) => Column::Nums(nums),
            None => Column::Mixed(Box::new(values)),
        }
    }

    /// The column itself, out of its box when kept with folds.
    fn plain(&self) -> &Column {
        match self {
            Column::Kept(kept) => &kept.values,
            plain => plain,
        }
    }

    /// Pads a column of values shorter than its `len` instants with none,
    /// as the next insert would: a snapshot never holds one, but is not
    /// trusted (a window reaching past the end would read no value at all,
    /// and an eviction past it would fail).
    fn parallel_to(&mut self, len: usize) {
        let short: Option<Vec<Option<Value>>> = match self {
            Column::Nums(nums) if !nums.is_empty() && nums.len() < len => {
                Some(nums.iter().map(|&n| Some(Value::Num(n))).collect())
            }
            Column::Mixed(values) if values.len() < len => Some(std::mem::take(values.as_mut())),
            _ => None,
        };
        if let Some(mut values) = short {
            values.resize(len, None);
            *self = Column::Mixed(Box::new(values));
        }
    }

    /// The kept folds, if the column is long.
    fn folds(&self) -> Option<&FoldCache> {
        match self {
            Column::Kept(kept) => Some(&kept.folds),
            _ => None,
        }
    }

    /// Keeps folds with the column while it holds values for `len` or more
    /// entries ([`FOLDS_KEPT_FROM`]), and only then.
    fn keep_folds_at(&mut self, len: usize) {
        let long = len >= FOLDS_KEPT_FROM;
        match self {
            Column::Kept(kept) if !long => *self = std::mem::take(&mut kept.values),
            Column::Nums(nums) if long && !nums.is_empty() => self.box_with_folds(),
            Column::Mixed(_) if long => self.box_with_folds(),
            _ => {}
        }
    }

    /// Moves the column into a box with no folds kept yet.
    fn box_with_folds(&mut self) {
        let values = std::mem::take(self);
        *self = Column::Kept(Box::new(KeptColumn {
            values,
            folds: FoldCache::default(),
        }));
    }

    /// Number of values kept (0 while no entry has one).
    #[cfg(test)]
    fn len(&self) -> usize {
        match self {
            Column::Nums(nums) => nums.len(),
            Column::Mixed(values) => values.len(),
            Column::Kept(kept) => kept.values.len(),
        }
    }

    /// The values of entries `range` (empty when no entry has one).
    fn slice(&self, range: std::ops::Range<usize>) -> ColumnSlice<'_> {
        match self {
            Column::Nums(nums) => ColumnSlice::Nums(nums.get(range).unwrap_or(&[])),
            Column::Mixed(values) => ColumnSlice::Mixed(values.get(range).unwrap_or(&[])),
            Column::Kept(kept) => kept.values.slice(range),
        }
    }

    /// The value of entry `at`, if it has one.
    fn value(&self, at: usize) -> Option<Cow<'_, Value>> {
        match self {
            Column::Nums(nums) => nums.get(at).map(|&n| Cow::Owned(Value::Num(n))),
            Column::Mixed(values) => values.get(at)?.as_ref().map(Cow::Borrowed),
            Column::Kept(kept) => kept.values.value(at),
        }
    }

    /// Inserts the value of a new entry at `at`, `len` being the number of
    /// entries before it.
    fn insert(&mut self, at: usize, len: usize, value: Option<Value>) {
        if let Column::Kept(kept) = self {
            kept.values.insert(at, len, value);
            kept.folds.inserted(at);
            return;
        }
        if let Column::Nums(nums) = self {
            match &value {
                // No entry has a value: nothing to keep.
                None if nums.is_empty() => return,
                Some(Value::Num(n)) if nums.len() == len => {
                    crate::profile::grow_one(nums);
                    nums.insert(at, *n);
                    return;
                }
                // The entries before the first value had none: padded below.
                _ => {
                    let values = nums.iter().map(|&n| Some(Value::Num(n))).collect();
                    *self = Column::Mixed(Box::new(values));
                }
            }
        }
        if let Column::Mixed(values) = self {
            // Parallel to the instants (entries before the first value had
            // none; a snapshot that says otherwise is repaired, not trusted).
            values.resize(len, None);
            crate::profile::grow_one(values.as_mut());
            values.insert(at, value);
        }
    }

    /// The summary changed other than by an eviction: the kept folds that
    /// took it in are dropped (see [`FoldCache::summary_changed`]).
    fn summary_changed(&mut self) {
        if let Column::Kept(kept) = self {
            kept.folds.summary_changed();
        }
    }

    /// Removes the values of the first `cut` entries, handing each to `take`.
    fn drain_front(&mut self, cut: usize, mut take: impl FnMut(Option<Value>)) {
        match self {
            Column::Kept(kept) => {
                kept.values.drain_front(cut, take);
                kept.folds.evicted(cut);
            }
            Column::Nums(nums) if nums.is_empty() => (0..cut).for_each(|_| take(None)),
            Column::Nums(nums) => nums.drain(..cut).for_each(|n| take(Some(Value::Num(n)))),
            Column::Mixed(values) => {
                // Parallel to the instants; were it shorter, the rest had none.
                let kept = cut.min(values.len());
                values.drain(..kept).for_each(&mut take);
                (kept..cut).for_each(|_| take(None));
                // Emptied: back to the column of a state without values.
                if values.is_empty() {
                    *self = Column::default();
                }
            }
        }
    }

    /// Approximate heap bytes.
    fn heap_bytes(&self) -> usize {
        match self {
            Column::Kept(kept) => {
                std::mem::size_of::<KeptColumn>()
                    + kept.values.heap_bytes()
                    + kept.folds.heap_bytes()
            }
            Column::Nums(nums) => nums.capacity() * std::mem::size_of::<f64>(),
            Column::Mixed(values) => {
                std::mem::size_of::<Vec<Option<Value>>>()
                    + values.capacity() * std::mem::size_of::<Option<Value>>()
                    + values
                        .iter()
                        .flatten()
                        .map(Value::unshared_heap_bytes)
                        .sum::<usize>()
            }
        }
    }
}

/// Snapshots store a column as the list of optional values it stands for,
/// so their format does not depend on how the column is kept.
mod column_as_values {
    use super::{Column, Value};

    pub fn serialize_ref<S: serde::Serializer>(column: &&Column, s: S) -> Result<S::Ok, S::Error> {
        serialize(column, s)
    }

    pub fn serialize<S: serde::Serializer>(column: &Column, s: S) -> Result<S::Ok, S::Error> {
        match column {
            Column::Nums(nums) => s.collect_seq(nums.iter().map(|&n| Some(Value::Num(n)))),
            Column::Mixed(values) => s.collect_seq(values.iter()),
            Column::Kept(kept) => serialize(&kept.values, s),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Column, D::Error> {
        let values: Vec<Option<Value>> = serde::Deserialize::deserialize(d)?;
        Ok(Column::from_values(values))
    }
}

/// The values of a run of entries.
#[derive(Debug, Clone, Copy)]
enum ColumnSlice<'a> {
    Nums(&'a [f64]),
    Mixed(&'a [Option<Value>]),
}

/// A run of buffered entries (a window's view of the buffer).
#[derive(Debug, Clone, Copy)]
pub struct Entries<'a> {
    /// Their instants.
    pub times: &'a [Millis],
    /// Their values: parallel to `times`, or empty when none has one.
    values: ColumnSlice<'a>,
}

impl<'a> Entries<'a> {
    /// No entries.
    pub const EMPTY: Entries<'static> = Entries {
        times: &[],
        values: ColumnSlice::Nums(&[]),
    };

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.times.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    /// Folds the numeric values, in order.
    pub fn fold_numbers<B>(&self, init: B, step: impl FnMut(B, f64) -> B) -> B {
        match self.values {
            ColumnSlice::Nums(nums) => nums.iter().copied().fold(init, step),
            ColumnSlice::Mixed(values) => values
                .iter()
                .filter_map(|v| v.as_ref()?.as_num())
                .fold(init, step),
        }
    }

    /// How many numeric values there are, when that needs no walk (a
    /// column of numbers).
    pub fn number_count(&self) -> Option<u64> {
        match self.values {
            ColumnSlice::Nums(nums) => Some(nums.len() as u64),
            ColumnSlice::Mixed(_) => None,
        }
    }

    /// How many numeric values there are and their sum, folded in order
    /// from `init`: a sum's rounding depends on its order, which is that of
    /// the reference (oldest first).
    pub fn sum_numbers(&self, init: f64) -> (u64, f64) {
        match self.values {
            ColumnSlice::Nums(nums) => (nums.len() as u64, nums.iter().fold(init, |a, x| a + x)),
            ColumnSlice::Mixed(_) => self.fold_numbers((0, init), |(n, a), x| (n + 1, a + x)),
        }
    }

    /// How many numeric values there are and the least (`GREATEST`: the
    /// greatest) of them and `init`, `init` when none. Unlike a sum, the
    /// result does not depend on the order: a column of eight or more
    /// numbers is folded in four lanes, which compile to vector compares. A NaN never wins
    /// (as with `f64::min`), and zeros of either sign may come out either
    /// way (the caller writes `0`).
    pub fn extreme_number<const GREATEST: bool>(&self, init: f64) -> (u64, f64) {
        let nums = match self.values {
            ColumnSlice::Nums(nums) if !init.is_nan() => nums,
            // (A NaN to start from gives way to the first number.)
            _ => {
                let exact = |a: f64, x: f64| if GREATEST { a.max(x) } else { a.min(x) };
                return self.fold_numbers((0, init), |(n, a), x| (n + 1, exact(a, x)));
            }
        };
        #[inline(always)]
        fn pick<const GREATEST: bool>(a: f64, x: f64) -> f64 {
            let wins = if GREATEST { x > a } else { x < a };
            if wins {
                x
            } else {
                a
            }
        }
        if nums.len() < 8 {
            // Too few for the lanes to pay for their setup.
            return (
                nums.len() as u64,
                nums.iter().copied().fold(init, pick::<GREATEST>),
            );
        }
        let mut chunks = nums.chunks_exact(4);
        let mut lanes = [init; 4];
        for chunk in &mut chunks {
            for i in 0..4 {
                lanes[i] = pick::<GREATEST>(lanes[i], chunk[i]);
            }
        }
        let rest = chunks.remainder().iter().copied();
        let folded = lanes.into_iter().chain(rest).fold(init, pick::<GREATEST>);
        (nums.len() as u64, folded)
    }

    /// The entries with a value, in order, with their instants.
    pub fn valued(&self) -> impl DoubleEndedIterator<Item = (Millis, Cow<'a, Value>)> + 'a {
        let times = self.times;
        let (nums, values): (&[f64], &[Option<Value>]) = match self.values {
            ColumnSlice::Nums(nums) => (nums, &[]),
            ColumnSlice::Mixed(values) => (&[], values),
        };
        let nums = nums
            .iter()
            .enumerate()
            .map(move |(i, &n)| (times[i], Cow::Owned(Value::Num(n))));
        let values = values
            .iter()
            .enumerate()
            .filter_map(move |(i, v)| v.as_ref().map(|v| (times[i], Cow::Borrowed(v))));
        nums.chain(values)
    }
}

impl UserState {
    /// Adds an entry after any entry with the same instant (arrival order).
    pub fn insert(&mut self, t: Millis, v: Option<Value>) {
        let at = self.times.partition_point(|&e| e <= t);
        // Without a value, and none before it, there is nothing to keep.
        if v.is_some() || self.extra.is_some() {
            let extra = self.extra.get_or_insert_with(Default::default);
            extra.values.insert(at, self.times.len(), v);
            extra.values.keep_folds_at(self.times.len() + 1);
        }
        self.times.insert(at, t);
    }

    /// `func` over the entries `range` (see [`window_bounds`]), after the
    /// summary with `with_summary`: [`aggregate`], through the state's kept
    /// folds when it has them.
    pub fn fold(
        &self,
        func: AggFunc,
        range: std::ops::Range<usize>,
        with_summary: bool,
    ) -> Option<Value> {
        let fresh = |range| aggregate(func, self.entries(range), self.summary(), with_summary);
        match self.values().folds() {
            Some(folds) => folds.fold(func, range, with_summary, fresh, |before, at| {
                aggregate_appended(func, before, self.values().value(at).as_deref())
            }),
            None => fresh(range),
        }
    }

    /// The earliest buffered instant (0 when none), read to bring the
    /// instants into the cache ahead of their use (see
    /// [`crate::profile::UserData::warm_states`]).
    pub fn first_instant(&self) -> Millis {
        self.times.first().copied().unwrap_or(0)
    }

    /// The summary of the entries that left the buffer, if any did and the
    /// state needs them.
    pub fn summary(&self) -> Option<&Summary> {
        self.extra.as_ref()?.summary.as_deref()
    }

    /// The values' column (empty when no entry has a value).
    fn values(&self) -> &Column {
        self.extra.as_ref().map_or(&NO_VALUES, |e| &e.values)
    }

    /// Buffered entries `range`.
    pub fn entries(&self, range: std::ops::Range<usize>) -> Entries<'_> {
        Entries {
            times: &self.times[range.clone()],
            values: self.values().slice(range),
        }
    }

    /// The latest visible instant, if any. (A late event can sit in the
    /// buffer older than entries already summarised, so both are consulted.)
    pub fn latest(&self, now: Millis) -> Option<Millis> {
        let times = &self.times[..];
        let buffered = visible_end(times, now).checked_sub(1).map(|i| times[i]);
        let summarised = self.summary().and_then(|s| s.latest);
        buffered.max(summarised)
    }

    /// Whether an entry at `t` (at or before `now`) follows every visible
    /// entry: none lies in `(t, now]`.
    pub fn follows_visible(&self, t: Millis, now: Millis) -> bool {
        let times = &self.times[..];
        let end = visible_end(times, now);
        end == 0 || times[end - 1] <= t
    }

    /// The earliest entry still in the future (`t > now`).
    pub fn next_visible(&self, now: Millis) -> Option<Millis> {
        let times = &self.times[..];
        times.get(visible_end(times, now)).copied()
    }

    /// Moves out of the buffer every entry at or before `horizon`.
    pub fn evict(&mut self, horizon: Millis, def: &StateDef) {
        let cut = self.times.partition_point(|&e| e <= horizon);
        if cut == 0 {
            return;
        }
        let mut times = self.times[..cut].iter().copied();
        if def.archive {
            let extra = self.extra.get_or_insert_with(Default::default);
            let summary = extra.summary.get_or_insert_with(Default::default);
            extra.values.drain_front(cut, |v| {
                let t = times.next().expect("one instant per entry");
                summary.absorb(t, v, def.archive_freq);
            });
        } else if let Some(extra) = &mut self.extra {
            extra.values.drain_front(cut, drop);
        }
        self.times.drop_front(cut);
        if let Some(extra) = &mut self.extra {
            extra.values.keep_folds_at(self.times.len());
        }
        if self.extra.as_ref().is_some_and(|e| e.is_empty()) {
            self.extra = None;
        }
    }

    /// Adds `other`, the same state of another profile (an alias merging
    /// two), as if its entries had arrived after these: both are first
    /// evicted at `horizon` (as after an event; so no buffered entry of
    /// either is as old as a summarised one of the other, and equal
    /// instants order the same in buffer and summary), then its buffered
    /// entries go in among these by instant, each after these at its
    /// instant, and its summary adds to this one's.
    pub fn merge(&mut self, mut other: UserState, horizon: Millis, def: &StateDef) {
        self.evict(horizon, def);
        other.evict(horizon, def);
        for (i, &t) in other.times.iter().enumerate() {
            self.insert(t, other.values().value(i).map(Cow::into_owned));
        }
        if let Some(theirs) = other.summary() {
            let extra = self.extra.get_or_insert_with(Default::default);
            match &mut extra.summary {
                Some(ours) => ours.merge(theirs),
                None => extra.summary = Some(Box::new(theirs.clone())),
            }
            // Folds over all time took the summary in as it was.
            extra.values.summary_changed();
        }
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.times.is_empty() && self.summary().is_none()
    }

    /// Approximate heap bytes.
    pub fn heap_bytes(&self) -> usize {
        self.times.heap_bytes()
            + self.extra.as_ref().map_or(0, |extra| {
                std::mem::size_of::<Extra>()
                    + extra.values.heap_bytes()
                    + extra
                        .summary
                        .as_ref()
                        .map_or(0, |summary| summary.heap_bytes())
            })
    }
}

/// The slice of entries a window covers at `now` and whether the summary
/// counts too. `anchor` is the latest visible instant of the `since` state.
pub fn window_range(
    state: &UserState,
    window: WindowDef,
    now: Millis,
    anchor: Option<Millis>,
) -> Option<(Entries<'_>, bool)> {
    window_bounds(state, window, now, anchor).map(|(range, with)| (state.entries(range), with))
}

/// [`window_range`] as the positions of the entries.
pub fn window_bounds(
    state: &UserState,
    window: WindowDef,
    now: Millis,
    anchor: Option<Millis>,
) -> Option<(std::ops::Range<usize>, bool)> {
    // The instants read once: each read of a boxed list decodes its pointer.
    let times = &state.times[..];
    let end = visible_end(times, now);
    let after = |bound: Millis| times.partition_point(|&e| e <= bound).min(end);
    match window {
        WindowDef::All => Some((0..end, true)),
        WindowDef::Last(w) => Some((after(now - w)..end, false)),
        WindowDef::Since(_) => Some((after(anchor?)..end, false)),
    }
}

/// Number of `times` (sorted) at or before `now`.
fn visible_end(times: &[Millis], now: Millis) -> usize {
    // Future-dated entries are rare: most often the whole buffer is visible.
    if times.last().is_none_or(|&last| last <= now) {
        return times.len();
    }
    times.partition_point(|&e| e <= now)
}

/// A min or max of zero as `+0.0`: which zero `f64::min` returns among
/// equal ones is unspecified (and a vectorised fold picks its own), so the
/// sign would depend on how the entries were folded.
fn unsigned_zero(x: f64) -> f64 {
    if x == 0.0 {
        0.0
    } else {
        x
    }
}

/// The aggregate after one entry (`value`) was appended after every entry
/// it folded, from the aggregate `before`; None where that cannot be told
/// from `before` alone. Exact: a sum adds the new number last, as
/// [`aggregate`]'s fold then does, and a min or max is the min or max
/// of the two (zero unsigned, as in [`aggregate`]), so the result is the
/// one [`aggregate`] gives, to the bit (but for the sign of a NaN, which
/// Rust leaves unspecified; no comparison reads it).
pub fn aggregate_appended(
    func: AggFunc,
    before: &Option<Value>,
    value: Option<&Value>,
) -> Option<Option<Value>> {
    let number = value.and_then(Value::as_num);
    let folded = |start: f64, step: fn(f64, f64) -> f64| -> Option<Option<Value>> {
        Some(match (before, number) {
            // A value that is not a number is not folded.
            (_, None) => before.clone(),
            (None, Some(x)) => Some(Value::Num(step(start, x))),
            (Some(Value::Num(acc)), Some(x)) => Some(Value::Num(step(*acc, x))),
            (Some(_), Some(_)) => return None,
        })
    };
    match func {
        AggFunc::Count | AggFunc::Did => match before {
            Some(Value::Num(n)) => Some(Some(Value::Num(n + 1.0))),
            _ => None,
        },
        // The fold's starting values when no entry had a number.
        AggFunc::Sum => folded(0.0, |a, x| a + x),
        AggFunc::Min => folded(f64::INFINITY, |a, x| unsigned_zero(a.min(x))),
        AggFunc::Max => folded(f64::NEG_INFINITY, |a, x| unsigned_zero(a.max(x))),
        _ => None,
    }
}

/// The summary whose numbers a window's `sum`/`avg`/`min`/`max` folds
/// first: only `with_summary` (a window over the whole history), and only
/// when it summarised a number.
pub fn numeric_summary(summary: Option<&Summary>, with_summary: bool) -> Option<&Summary> {
    summary.filter(|s| with_summary && s.num_count > 0)
}

/// Computes an aggregate over a window's entries (and the summary when
/// `with_summary`). `count` and `distinct` are never null.
pub fn aggregate(
    func: AggFunc,
    entries: Entries<'_>,
    summary: Option<&Summary>,
    with_summary: bool,
) -> Option<Value> {
    let summary = if with_summary { summary } else { None };
    match func {
        AggFunc::Count | AggFunc::Did => Some(Value::Num(
            (entries.len() as u64 + summary.map_or(0, |s| s.count)) as f64,
        )),
        // One fold per function, each over the values alone: the windows of
        // heavy users hold hundreds of entries, walked at every evaluation.
        AggFunc::Sum | AggFunc::Avg | AggFunc::Min | AggFunc::Max => {
            let kept = numeric_summary(summary, with_summary);
            let (n, folded) = match func {
                AggFunc::Sum | AggFunc::Avg => entries.sum_numbers(kept.map_or(0.0, |s| s.sum)),
                AggFunc::Min => {
                    entries.extreme_number::<false>(kept.map_or(f64::INFINITY, |s| s.min))
                }
                _ => entries.extreme_number::<true>(kept.map_or(f64::NEG_INFINITY, |s| s.max)),
            };
            let n = n + kept.map_or(0, |s| s.num_count);
            let value = match func {
                AggFunc::Avg => folded / n as f64,
                AggFunc::Min | AggFunc::Max => unsigned_zero(folded),
                _ => folded,
            };
            (n > 0).then_some(Value::Num(value))
        }
        AggFunc::Distinct | AggFunc::MostFrequent | AggFunc::Unique => {
            let mut freq: HashMap<ValueKey, u64> =
                summary.and_then(|s| s.freq().cloned()).unwrap_or_default();
            for (_, v) in entries.valued() {
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
                            Value::Str(s) => std::sync::Arc::from(s.as_str()),
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
            let buffered = entries.valued().next().map(|(t, v)| (t, v.into_owned()));
            match (summary.and_then(|s| s.first().cloned()), buffered) {
                (Some(s), Some(b)) => Some(if b.0 < s.0 { b.1 } else { s.1 }),
                (s, b) => s.or(b).map(|(_, v)| v),
            }
        }
        AggFunc::Last => {
            let buffered = entries
                .valued()
                .next_back()
                .map(|(t, v)| (t, v.into_owned()));
            match (summary.and_then(|s| s.last().cloned()), buffered) {
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

    #[test]
    fn summaries_box_their_values_and_keep_the_snapshot_layout() {
        let mut counted = Summary::default();
        counted.absorb(5, None, false);
        counted.absorb(3, None, false);
        assert!(counted.values.is_none());
        assert_eq!(counted.heap_bytes(), std::mem::size_of::<Summary>());
        assert!(std::mem::size_of::<Summary>() <= 64);
        let mut valued = counted.clone();
        valued.absorb(7, Some(Value::Num(2.5)), true);
        valued.absorb(1, Some(Value::Str("a".into())), true);
        assert_eq!(valued.first(), Some(&(1, Value::Str("a".into()))));
        assert_eq!(valued.last(), Some(&(7, Value::Num(2.5))));
        assert_eq!(valued.freq().map(HashMap::len), Some(2));
        for summary in [counted, valued] {
            // The layout snapshots held while a summary kept its values
            // inline, field by field.
            let old = SummaryOwned {
                count: summary.count,
                latest: summary.latest,
                num_count: summary.num_count,
                sum: summary.sum,
                min: summary.min,
                max: summary.max,
                first: summary.first().cloned(),
                last: summary.last().cloned(),
                freq: summary.freq().cloned(),
            };
            let bytes = postcard::to_allocvec(&summary).unwrap();
            assert_eq!(bytes, postcard::to_allocvec(&old).unwrap());
            let back: Summary = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, summary);
        }
    }

    /// A kept value for the carried-aggregate proptest: numbers with
    /// fractions (whose sums round), zeros of both signs, and strings.
    fn appended_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            4 => (-500i64..500).prop_map(|n| Value::Num(n as f64 / 10.0)),
            1 => proptest::sample::select(vec![0.0, -0.0, 1.0, -1.0]).prop_map(Value::Num),
            1 => "[ab]".prop_map(|s| Value::Str(s.as_str().into())),
        ]
    }

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
        aggregate(AggFunc::Count, entries, s.summary(), all)
            .unwrap()
            .as_num()
            .unwrap()
    }

    /// One instant stays inline; a second moves both into a box of two,
    /// which grows and shrinks by the entry, and one left goes back inline.
    #[test]
    fn instants_move_between_inline_and_boxed() {
        let mut times = Times::default();
        assert_eq!((&times[..], times.heap_bytes()), (&[][..], 0));
        times.insert(0, 30);
        assert!(matches!(times, Times::One(30)));
        times.insert(0, 10);
        assert_eq!((&times[..], times.heap_bytes()), (&[10, 30][..], 16));
        times.insert(1, 20);
        assert_eq!((&times[..], times.heap_bytes()), (&[10, 20, 30][..], 24));
        times.drop_front(0);
        assert_eq!(&times[..], &[10, 20, 30]);
        times.drop_front(1);
        assert_eq!((&times[..], times.heap_bytes()), (&[20, 30][..], 16));
        times.drop_front(1);
        assert!(matches!(times, Times::One(30)));
        times.insert(1, 40);
        times.drop_front(2);
        assert_eq!((&times[..], times.heap_bytes()), (&[][..], 0));
        assert!(matches!(Times::from(vec![5]), Times::One(5)));
        assert_eq!(Times::One(5), Times::Many(ThinBox::from(vec![5])));
        assert_eq!(&Times::from(vec![5, 6])[..], &[5, 6]);
    }

    /// The layout the module's figures assume (x86_64, where a `ThinBox`
    /// is one word).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn a_state_is_24_bytes_and_one_counted_entry_allocates_nothing() {
        assert_eq!(std::mem::size_of::<UserState>(), 24);
        // The kept folds are boxed in a variant: neither part grows.
        assert_eq!(std::mem::size_of::<Column>(), 24);
        assert_eq!(std::mem::size_of::<Extra>(), 32);
        let mut s = UserState::default();
        s.insert(5, None);
        assert_eq!(s.heap_bytes(), 0);
        s.insert(6, None);
        assert_eq!(s.heap_bytes(), 16);
        s.evict(5, &def(10, false));
        assert_eq!((s.heap_bytes(), &s.times[..]), (0, &[6][..]));
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
        let mut s = UserState::default();
        for (i, v) in ["b", "a", "b", "a", "c"].iter().enumerate() {
            s.insert(i as i64, Some(Value::Str((*v).into())));
        }
        let (entries, _) = window_range(&s, WindowDef::Last(100), 10, None).unwrap();
        assert_eq!(
            aggregate(AggFunc::MostFrequent, entries, None, false),
            Some(Value::Str("a".into()))
        );
    }

    /// A snapshot whose values stop short of its instants (never written,
    /// but not trusted) reads as if the rest had none, and evicts past them.
    #[test]
    fn a_short_column_from_a_snapshot_is_padded() {
        let stored = Stored {
            times: vec![1, 2, 3],
            values: Column::Nums(vec![5.0]),
            summary: None,
        };
        let mut s: UserState =
            postcard::from_bytes(&postcard::to_allocvec(&stored).unwrap()).unwrap();
        assert_eq!(s.values().len(), 3);
        let (range, with) = window_bounds(&s, WindowDef::All, 10, None).unwrap();
        assert_eq!(s.fold(AggFunc::Sum, range, with), Some(Value::Num(5.0)));
        s.evict(2, &def(10, true));
        assert_eq!(s.summary().map(|summary| summary.sum), Some(5.0));
    }

    /// A late entry before every kept one, then evicted on its own: the
    /// whole history's fold (after the summary, which took the entry in)
    /// is folded afresh, not the one kept before the entry came.
    #[test]
    fn a_late_entry_evicted_alone_reaches_the_whole_history_fold() {
        let mut s = UserState::default();
        for t in 0..100 {
            s.insert(1_000 + t, Some(Value::Num(1.0)));
        }
        let whole = |s: &UserState| {
            let (range, with) = window_bounds(s, WindowDef::All, 2_000, None).unwrap();
            s.fold(AggFunc::Sum, range, with)
        };
        assert_eq!(whole(&s), Some(Value::Num(100.0)));
        s.insert(5, Some(Value::Num(50.0)));
        assert_eq!(whole(&s), Some(Value::Num(150.0)));
        s.evict(900, &def(1_000, true));
        assert_eq!(s.summary().map(|summary| summary.count), Some(1));
        assert_eq!(whole(&s), Some(Value::Num(150.0)));
    }

    proptest! {
        /// Counting through buffer + summary equals counting the raw list,
        /// whatever the eviction horizons, as long as windows stay inside the
        /// retention.
        #[test]
        fn eviction_preserves_views(
            times in proptest::collection::vec(0i64..100, 1..60),
            values in proptest::collection::vec(proptest::option::of(-5i64..5), 60),
            horizon in 0i64..100,
            w in 1i64..50,
        ) {
            let now = 150;
            let d = def(w, true);
            let mut s = UserState::default();
            for (i, &t) in times.iter().enumerate() {
                s.insert(t, values[i].map(|v| Value::Num(v as f64)));
            }
            prop_assert!(s.values().len() == 0 || s.values().len() == s.times.len());
            // What was inserted, in time order (a stable sort keeps arrival
            // order on equal instants), so insertion is checked too.
            let mut raw: Vec<(Millis, Option<Value>)> = times.iter().enumerate()
                .map(|(i, &t)| (t, values[i].map(|v| Value::Num(v as f64))))
                .collect();
            raw.sort_by_key(|e| e.0);
            s.evict(horizon.min(now - w), &d);
            let all = count(&s, WindowDef::All, now);
            prop_assert_eq!(all, raw.len() as f64);
            let win = count(&s, WindowDef::Last(w), now);
            prop_assert_eq!(win, raw.iter().filter(|e| e.0 > now - w && e.0 <= now).count() as f64);
            let (entries, with) = window_range(&s, WindowDef::All, now, None).unwrap();
            // Entries without a value (the event lacked the property) count
            // but take no part in sum, first and last.
            let sum = aggregate(AggFunc::Sum, entries, s.summary(), with).and_then(|v| v.as_num());
            let numbers: Vec<f64> = raw.iter().filter_map(|e| e.1.as_ref().and_then(Value::as_num)).collect();
            prop_assert_eq!(sum, (!numbers.is_empty()).then(|| numbers.iter().sum::<f64>()));
            let last = aggregate(AggFunc::Last, entries, s.summary(), with);
            prop_assert_eq!(last, raw.iter().rev().find_map(|e| e.1.clone()));
            let first = aggregate(AggFunc::First, entries, s.summary(), with);
            prop_assert_eq!(first, raw.iter().find_map(|e| e.1.clone()));
        }

        /// A long state whose folds over all time are kept reads another
        /// profile's summary once merged (and its entries in the middle).
        #[test]
        fn a_merged_summary_reaches_the_kept_folds(
            theirs in proptest::collection::vec((0i64..200, 1i64..5), 1..10),
            extra_at in 60i64..200,
        ) {
            let d = def(1_000, true);
            let mut ours = UserState::default();
            for t in 100..100 + FOLDS_KEPT_FROM as i64 + 6 {
                ours.insert(t, Some(Value::Num(1.0)));
            }
            let whole = |s: &UserState, len: usize| s.fold(AggFunc::Sum, 0..len, true);
            let n = ours.times.len();
            prop_assert_eq!(whole(&ours, n), Some(Value::Num(n as f64)));
            prop_assert!(ours.values().folds().is_some());
            let mut other = UserState::default();
            for &(t, v) in &theirs {
                other.insert(t, Some(Value::Num(v as f64)));
            }
            other.insert(extra_at, Some(Value::Num(100.0)));
            // Theirs up to 99 summarised; nothing of ours leaves its buffer.
            other.evict(99, &d);
            ours.merge(other, 99, &d);
            let total = n as f64 + 100.0 + theirs.iter().map(|&(_, v)| v as f64).sum::<f64>();
            prop_assert_eq!(whole(&ours, ours.times.len()), Some(Value::Num(total)));
        }

        /// Two profiles' states of one selector merged (an alias), each
        /// evicted before at its own horizon, read as one state fed both
        /// lists would: the second's entries after the first's at equal
        /// instants, the summaries added up, whatever was summarised where.
        #[test]
        fn merged_states_read_as_one_fed_both(
            ours in proptest::collection::vec((0i64..100, proptest::option::of(-5i64..5)), 0..30),
            theirs in proptest::collection::vec((0i64..100, proptest::option::of(-5i64..5)), 0..30),
            our_horizon in 0i64..100,
            their_horizon in 0i64..100,
            w in 1i64..50,
        ) {
            let now = 150;
            let d = def(w, true);
            let fed = |entries: &[(i64, Option<i64>)], horizon: i64| {
                let mut s = UserState::default();
                for &(t, v) in entries {
                    s.insert(t, v.map(|v| Value::Num(v as f64)));
                }
                s.evict(horizon.min(now - w), &d);
                s
            };
            let mut merged = fed(&ours, our_horizon);
            // Evicted as after an event: at the later of the horizons.
            let horizon = our_horizon.max(their_horizon).min(now - w);
            merged.merge(fed(&theirs, their_horizon), horizon, &d);
            let mut raw: Vec<(Millis, Option<Value>)> = ours.iter().chain(&theirs)
                .map(|&(t, v)| (t, v.map(|v| Value::Num(v as f64))))
                .collect();
            raw.sort_by_key(|e| e.0);
            prop_assert_eq!(count(&merged, WindowDef::All, now), raw.len() as f64);
            let in_window = raw.iter().filter(|e| e.0 > now - w && e.0 <= now).count();
            prop_assert_eq!(count(&merged, WindowDef::Last(w), now), in_window as f64);
            let (entries, with) = window_range(&merged, WindowDef::All, now, None).unwrap();
            let numbers: Vec<f64> = raw.iter().filter_map(|e| e.1.as_ref().and_then(Value::as_num)).collect();
            let of = |func| aggregate(func, entries, merged.summary(), with);
            prop_assert_eq!(of(AggFunc::Sum).and_then(|v| v.as_num()), (!numbers.is_empty()).then(|| numbers.iter().sum::<f64>()));
            prop_assert_eq!(of(AggFunc::Min).and_then(|v| v.as_num()), numbers.iter().copied().reduce(f64::min));
            prop_assert_eq!(of(AggFunc::Max).and_then(|v| v.as_num()), numbers.iter().copied().reduce(f64::max));
            prop_assert_eq!(of(AggFunc::First), raw.iter().find_map(|e| e.1.clone()));
            prop_assert_eq!(of(AggFunc::Last), raw.iter().rev().find_map(|e| e.1.clone()));
            prop_assert_eq!(merged.latest(now), raw.last().map(|e| e.0));
        }

        /// An aggregate carried over an entry appended after every other
        /// ([`aggregate_appended`]) is, to the bit, the one computed
        /// afresh, with a summary or without, numbers with fractions (whose
        /// sums round), zeros of both signs, strings and missing values
        /// among them.
        #[test]
        fn appended_aggregates_equal_fresh_ones(
            entries in proptest::collection::vec(
                (0i64..100, proptest::option::of(appended_value())),
                0..30,
            ),
            last in proptest::option::of(appended_value()),
            horizon in 0i64..100,
            w in 1i64..150,
        ) {
            let now = 150;
            let d = def(w.min(100), true);
            let mut s = UserState::default();
            for (t, v) in &entries {
                s.insert(*t, v.clone());
            }
            s.evict(horizon, &d);
            let funcs = [AggFunc::Count, AggFunc::Did, AggFunc::Sum, AggFunc::Min, AggFunc::Max];
            let pairs: Vec<(WindowDef, AggFunc)> = [WindowDef::All, WindowDef::Last(w)]
                .into_iter()
                .flat_map(|window| funcs.map(|func| (window, func)))
                .collect();
            let fresh = |s: &UserState, window, func| {
                let (entries, with) = window_range(s, window, now, None).unwrap();
                aggregate(func, entries, s.summary(), with)
            };
            let before: Vec<Option<Value>> =
                pairs.iter().map(|&(window, func)| fresh(&s, window, func)).collect();
            // After every entry, inside both windows.
            s.insert(now, last.clone());
            for (&(window, func), before) in pairs.iter().zip(&before) {
                let carried = aggregate_appended(func, before, last.as_ref());
                prop_assert!(carried.is_some(), "{:?} over {:?}", func, window);
                let bits = |v: &Option<Value>| v.as_ref().map(|v| match v {
                    Value::Num(n) => n.to_bits().to_string(),
                    other => format!("{other:?}"),
                });
                prop_assert_eq!(bits(&carried.unwrap()), bits(&fresh(&s, window, func)));
            }
        }

        /// A min or max folded in lanes ([`Entries::extreme_number`]) is
        /// the sequential `f64::min`/`f64::max` fold's, zeros written as
        /// `0`: over windows long and short, with NaNs and zeros of both
        /// signs among the numbers, and from a summary's extreme (a NaN
        /// one included).
        #[test]
        fn extremes_in_lanes_equal_the_sequential_fold(
            numbers in proptest::collection::vec(prop_oneof![
                6 => (-500i64..500).prop_map(|n| n as f64 / 10.0),
                1 => proptest::sample::select(vec![0.0, -0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY]),
            ], 0..40),
            init in prop_oneof![
                Just(None),
                (-500i64..500).prop_map(|n| Some(n as f64 / 10.0)),
                Just(Some(f64::NAN)),
            ],
        ) {
            let times: Vec<Millis> = (0..numbers.len() as Millis).collect();
            let entries = Entries { times: &times, values: ColumnSlice::Nums(&numbers) };
            let bits = |x: f64| if x == 0.0 { 0.0f64.to_bits() } else { x.to_bits() };
            for greatest in [false, true] {
                let start = init.unwrap_or(if greatest { f64::NEG_INFINITY } else { f64::INFINITY });
                let sequential = numbers.iter().fold(start, |a, &x| if greatest { a.max(x) } else { a.min(x) });
                let (n, lanes) = if greatest {
                    entries.extreme_number::<true>(start)
                } else {
                    entries.extreme_number::<false>(start)
                };
                prop_assert_eq!(n, numbers.len() as u64);
                prop_assert_eq!(bits(lanes), bits(sequential), "greatest {} of {:?} from {}", greatest, numbers, start);
            }
        }

        /// The value column keeps numbers as numbers until a string or a
        /// missing value arrives, and then everything as it was inserted:
        /// aggregates, eviction and a snapshot round trip see the same
        /// values either way.
        #[test]
        fn value_column_keeps_what_was_inserted(
            entries in proptest::collection::vec(
                (0i64..100, proptest::option::of(prop_oneof![
                    4 => (-5i64..5).prop_map(|n| Value::Num(n as f64)),
                    1 => "[ab]".prop_map(|s| Value::Str(s.as_str().into())),
                ])),
                0..40,
            ),
            horizon in 0i64..100,
        ) {
            let (now, w) = (150, 60);
            let mut s = UserState::default();
            for (t, v) in &entries {
                s.insert(*t, v.clone());
            }
            let mut raw = entries.clone();
            raw.sort_by_key(|e| e.0);
            let plain_numbers = raw.iter().all(|e| matches!(e.1, Some(Value::Num(_))));
            prop_assert_eq!(matches!(s.values().plain(), Column::Nums(_)), plain_numbers || raw.iter().all(|e| e.1.is_none()));
            let json = serde_json::to_string(&s).unwrap();
            prop_assert_eq!(&serde_json::from_str::<UserState>(&json).unwrap(), &s);
            // Snapshots keep the format of the three plain fields.
            let plain = Stored {
                times: s.times.to_vec(),
                values: s.values().clone(),
                summary: s.summary().cloned().map(Box::new),
            };
            prop_assert_eq!(postcard::to_allocvec(&s).unwrap(), postcard::to_allocvec(&plain).unwrap());
            s.evict(horizon.min(now - w), &def(w, true));
            let plain = Stored {
                times: s.times.to_vec(),
                values: s.values().clone(),
                summary: s.summary().cloned().map(Box::new),
            };
            let bytes = postcard::to_allocvec(&s).unwrap();
            prop_assert_eq!(&bytes, &postcard::to_allocvec(&plain).unwrap());
            // Read back, it holds the same (a column of numbers that once
            // held a string may come back as plain numbers).
            let back: UserState = postcard::from_bytes(&bytes).unwrap();
            let valued = |state: &UserState| -> Vec<(Millis, Value)> {
                state.entries(0..state.times.len()).valued().map(|(t, v)| (t, v.into_owned())).collect()
            };
            prop_assert_eq!(&back.times[..], &s.times[..]);
            prop_assert_eq!(valued(&back), valued(&s));
            prop_assert_eq!(back.summary(), s.summary());
            let (kept, with) = window_range(&s, WindowDef::All, now, None).unwrap();
            let numbers: Vec<f64> = raw.iter().filter_map(|e| e.1.as_ref()?.as_num()).collect();
            let sum = aggregate(AggFunc::Sum, kept, s.summary(), with).and_then(|v| v.as_num());
            prop_assert_eq!(sum, (!numbers.is_empty()).then(|| numbers.iter().sum::<f64>()));
            let max = aggregate(AggFunc::Max, kept, s.summary(), with).and_then(|v| v.as_num());
            prop_assert_eq!(max, numbers.iter().copied().reduce(f64::max));
            let last = aggregate(AggFunc::Last, kept, s.summary(), with);
            prop_assert_eq!(last, raw.iter().rev().find_map(|e| e.1.clone()));
            let distinct = aggregate(AggFunc::Distinct, kept, s.summary(), with);
            let mut seen: Vec<String> = raw.iter().filter_map(|e| e.1.as_ref().map(|v| format!("{v:?}"))).collect();
            seen.sort();
            seen.dedup();
            prop_assert_eq!(distinct, Some(Value::Num(seen.len() as f64)));
        }

        /// A state's kept folds give what a fresh walk gives, to the bit,
        /// whatever entries were inserted (late, future, appended) and
        /// evicted between the reads.
        #[test]
        fn kept_folds_equal_fresh_walks(
            first in proptest::collection::vec((0i64..300, proptest::option::of(appended_value())), 50..140),
            steps in proptest::collection::vec(prop_oneof![
                4 => (0i64..400, proptest::option::of(appended_value())).prop_map(|(t, v)| (0u8, t, 0i64, v)),
                1 => (0i64..200, proptest::bool::ANY).prop_map(|(h, archive)| (1u8, h, i64::from(archive), None)),
                6 => (0i64..450, 0i64..420).prop_map(|(now, w)| (2u8, now, w, None)),
            ], 1..60),
        ) {
            let funcs = [AggFunc::Sum, AggFunc::Avg, AggFunc::Min, AggFunc::Max, AggFunc::Distinct, AggFunc::MostFrequent, AggFunc::Unique, AggFunc::Count];
            let mut s = UserState::default();
            for (t, v) in first {
                s.insert(t, v);
            }
            let bits = |v: &Option<Value>| v.as_ref().map(|v| match v {
                Value::Num(n) => n.to_bits().to_string(),
                other => format!("{other:?}"),
            });
            for (kind, a, b, v) in steps {
                // An extra part is never kept empty.
                prop_assert!(s.extra.as_ref().is_none_or(|e| !e.is_empty()));
                match kind {
                    0 => s.insert(a, v),
                    1 => s.evict(a, &def(1, b == 1)),
                    _ => {
                        let windows = [WindowDef::All, WindowDef::Last(b.max(1)), WindowDef::Since(0)];
                        for window in windows {
                            for func in funcs {
                                let anchor = Some(b.min(a));
                                let Some((range, with)) = window_bounds(&s, window, a, anchor) else { continue };
                                let fresh = aggregate(func, s.entries(range.clone()), s.summary(), with);
                                // Twice: the second read finds what the first kept.
                                for _ in 0..2 {
                                    let kept = s.fold(func, range.clone(), with);
                                    prop_assert_eq!(bits(&kept), bits(&fresh), "{:?} {:?} {:?}", func, window, range);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
