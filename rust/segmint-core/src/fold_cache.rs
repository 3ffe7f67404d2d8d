//! Aggregates of a state's long windows, kept from one event to the next.
//!
//! A `sum`, `avg`, `min`, `max`, `distinct`, `most_frequent` or `unique`
//! over a window is a walk over its entries, and the pass's memo of view
//! values lives for one event at one instant. A heavy user's order walked
//! every order of the last 365 days several times (four `sum(revenue)`
//! windows, a `min`, an `avg`):
//! the cost of an event grew with the user's history. A state holding
//! many entries keeps its last folds in a [`FoldCache`], each with the
//! range of entries it folded. A window over the same range (of the same
//! entries) has the same value; one whose range grew at its end by entries
//! appended since folds only those, exactly as the walk would (see
//! [`crate::state::aggregate_appended`]). Any other range is folded afresh.
//! Inserting and evicting entries keep the kept ranges naming the same
//! entries, or drop them ([`FoldCache::inserted`], [`FoldCache::evicted`]).

use std::ops::Range;
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

use crate::rules::ast::AggFunc;
use crate::value::Value;

/// A state keeps folds once it holds this many entries, and only of
/// windows this long: a shorter walk costs less than the lookup.
pub const FOLDS_KEPT_FROM: usize = 64;

/// Folds one state keeps: the windows of one property are few (a heavy
/// buyer's `revenue` had six on the benchmark workload).
const FOLDS_KEPT: usize = 8;

/// One kept fold.
#[derive(Debug, Clone)]
struct Fold {
    func: AggFunc,
    /// The entries it folded, by position in the state.
    range: Range<usize>,
    /// Whether it folded the summary of evicted entries first.
    with_summary: bool,
    value: Option<Value>,
}

#[derive(Debug, Default)]
struct Folds {
    kept: Vec<Fold>,
    /// The slot the next new fold replaces once all are taken.
    next: usize,
}

/// The folds a state keeps (see the module documentation). Reading takes
/// `&self` (views are computed through shared references); a lock held
/// elsewhere (another thread reading the same profile) makes the reader
/// fold afresh rather than wait. Walks run outside the lock, and a lock
/// poisoned by a panic elsewhere is still used: a fold is only ever
/// replaced whole.
#[derive(Debug, Default)]
pub struct FoldCache(Mutex<Folds>);

/// A copy starts empty: what a cache holds is never part of a state's value.
impl Clone for FoldCache {
    fn clone(&self) -> FoldCache {
        FoldCache::default()
    }
}

/// Whether a fold of `func` is a walk worth keeping (`count`, `did`,
/// `first` and `last` are read off the ends).
fn worth_keeping(func: AggFunc) -> bool {
    !matches!(
        func,
        AggFunc::Count | AggFunc::Did | AggFunc::First | AggFunc::Last
    )
}

impl FoldCache {
    /// `func` over the entries `range` (after the summary, with
    /// `with_summary`): a kept fold of the same range; a kept fold of a
    /// range from the same start carried over each entry since by `carry`
    /// (`None`: it cannot be carried); else `fold` of the range, then kept.
    pub fn fold(
        &self,
        func: AggFunc,
        range: Range<usize>,
        with_summary: bool,
        fold: impl FnOnce(Range<usize>) -> Option<Value>,
        carry: impl Fn(&Option<Value>, usize) -> Option<Option<Value>>,
    ) -> Option<Value> {
        if range.len() < FOLDS_KEPT_FROM || !worth_keeping(func) {
            return fold(range);
        }
        // The fold of the same function from the same start, if kept.
        let start = range.start;
        let same_start = |folds: &Folds| {
            folds.kept.iter().position(|f| {
                f.func == func && f.with_summary == with_summary && f.range.start == start
            })
        };
        {
            let Some(mut folds) = self.try_lock() else {
                return fold(range);
            };
            if let Some(i) = same_start(&folds) {
                let kept = &mut folds.kept[i];
                if kept.range.end == range.end {
                    return kept.value.clone();
                }
                if kept.range.end < range.end {
                    let carried = (kept.range.end..range.end)
                        .try_fold(kept.value.clone(), |value, at| carry(&value, at));
                    if let Some(value) = carried {
                        *kept = Fold {
                            range: start..range.end,
                            value: value.clone(),
                            ..*kept
                        };
                        return value;
                    }
                }
            }
        }
        let value = fold(range.clone());
        if let Some(mut folds) = self.try_lock() {
            let fresh = Fold {
                func,
                range,
                with_summary,
                value: value.clone(),
            };
            match same_start(&folds) {
                Some(i) => folds.kept[i] = fresh,
                None if folds.kept.len() < FOLDS_KEPT => folds.kept.push(fresh),
                None => {
                    let slot = folds.next % FOLDS_KEPT;
                    folds.kept[slot] = fresh;
                    folds.next = slot + 1;
                }
            }
        }
        value
    }

    /// The folds, unless another reader holds them.
    fn try_lock(&self) -> Option<MutexGuard<'_, Folds>> {
        match self.0.try_lock() {
            Ok(folds) => Some(folds),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn folds_mut(&mut self) -> &mut Folds {
        self.0.get_mut().unwrap_or_else(PoisonError::into_inner)
    }

    /// An entry was inserted at position `at`: a fold of entries after it
    /// now names them one further on; one whose entries surround it no
    /// longer stands for any window and is dropped, as is one after the
    /// summary that the entry precedes (such a window starts at the first
    /// entry: moved on, it would stand for none, and come back wrong after
    /// an eviction). (One ending at `at` stays: the new entry follows it,
    /// and is carried when read.)
    pub fn inserted(&mut self, at: usize) {
        self.folds_mut().kept.retain_mut(|f| {
            if at <= f.range.start {
                f.range = f.range.start + 1..f.range.end + 1;
                return !f.with_summary;
            }
            at >= f.range.end
        });
    }

    /// The first `cut` entries were evicted: a fold of later entries now
    /// names them `cut` earlier; one over evicted entries, or after the
    /// summary (which took them in), is dropped.
    pub fn evicted(&mut self, cut: usize) {
        self.folds_mut().kept.retain_mut(|f| {
            let stays = !f.with_summary && f.range.start >= cut;
            if stays {
                f.range = f.range.start - cut..f.range.end - cut;
            }
            stays
        });
    }

    /// The summary changed other than by an eviction (an alias merged
    /// another profile's into it): a fold after the summary is dropped.
    pub fn summary_changed(&mut self) {
        self.folds_mut().kept.retain(|f| !f.with_summary);
    }

    /// Approximate heap bytes of the kept folds.
    pub fn heap_bytes(&self) -> usize {
        self.try_lock().map_or(0, |folds| {
            folds.kept.capacity() * std::mem::size_of::<Fold>()
                + folds
                    .kept
                    .iter()
                    .flat_map(|f| &f.value)
                    .map(Value::unshared_heap_bytes)
                    .sum::<usize>()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum_of(values: &[f64]) -> impl Fn(Range<usize>) -> Option<Value> + '_ {
        |r: Range<usize>| Some(Value::Num(values[r].iter().sum()))
    }

    /// A window read again over the same entries is not folded again; one
    /// grown at its end folds only the new entries.
    #[test]
    fn a_kept_fold_is_reused_and_carried_over_appended_entries() {
        let values: Vec<f64> = (0..200).map(f64::from).collect();
        let cache = FoldCache::default();
        let folded = std::cell::Cell::new(0);
        let counting = |r: Range<usize>| {
            folded.set(folded.get() + 1);
            sum_of(&values)(r)
        };
        let carried = std::cell::Cell::new(0);
        let carry = |v: &Option<Value>, at: usize| {
            carried.set(carried.get() + 1);
            Some(Some(Value::Num(v.as_ref()?.as_num()? + values[at])))
        };
        let value = cache.fold(AggFunc::Sum, 10..150, false, counting, carry);
        assert_eq!(value, sum_of(&values)(10..150));
        let again = cache.fold(AggFunc::Sum, 10..150, false, counting, carry);
        assert_eq!((again, folded.get(), carried.get()), (value, 1, 0));
        let grown = cache.fold(AggFunc::Sum, 10..153, false, counting, carry);
        assert_eq!(grown, sum_of(&values)(10..153));
        assert_eq!((folded.get(), carried.get()), (1, 3));
        // Another start, another function, the summary: folded afresh.
        cache.fold(AggFunc::Sum, 11..153, false, counting, carry);
        cache.fold(AggFunc::Max, 10..153, false, counting, carry);
        cache.fold(AggFunc::Sum, 10..153, true, counting, carry);
        assert_eq!(folded.get(), 4);
        // Short windows and cheap functions are never kept.
        cache.fold(AggFunc::Sum, 0..10, false, counting, carry);
        cache.fold(AggFunc::Count, 0..100, false, counting, carry);
        cache.fold(AggFunc::Count, 0..100, false, counting, carry);
        assert_eq!(folded.get(), 7);
    }

    #[test]
    fn insertion_and_eviction_keep_ranges_on_their_entries() {
        let values: Vec<f64> = (0..300).map(f64::from).collect();
        let mut cache = FoldCache::default();
        let never = |_: Range<usize>| -> Option<Value> { panic!("folded afresh") };
        let no_carry = |_: &Option<Value>, _: usize| None;
        for r in [100..200, 150..250] {
            cache.fold(AggFunc::Sum, r.clone(), false, sum_of(&values), no_carry);
        }
        cache.fold(AggFunc::Sum, 0..200, true, sum_of(&values), no_carry);
        // Before both: both move.
        cache.inserted(100);
        let v = cache.fold(AggFunc::Sum, 101..201, false, never, no_carry);
        assert_eq!(v, sum_of(&values)(100..200));
        // Whether reading `range` folds it afresh (rather than reusing).
        let afresh = |cache: &FoldCache, range: Range<usize>, with_summary: bool| {
            let folded = std::cell::Cell::new(false);
            let fold = |r: Range<usize>| {
                folded.set(true);
                sum_of(&values)(r)
            };
            cache.fold(AggFunc::Sum, range, with_summary, fold, no_carry);
            folded.get()
        };
        // Inside the second only: it is dropped, the first stays.
        cache.inserted(210);
        assert!(!afresh(&cache, 101..201, false));
        assert!(afresh(&cache, 151..252, false));
        // Evicting before the first moves it back; the summary's is gone.
        cache.evicted(50);
        assert!(!afresh(&cache, 51..151, false));
        assert!(afresh(&cache, 0..150, true));
        // Evicting into the first drops it; the later one moves back.
        cache.evicted(52);
        cache.fold(AggFunc::Sum, 49..150, false, never, no_carry);
        assert_eq!(cache.folds_mut().kept.len(), 1);
    }
}
