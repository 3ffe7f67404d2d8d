//! The shards' changes of one call, merged into the log's order in
//! parallel.
//!
//! Each shard's changes come out nearly always sorted by their key
//! (`order`, then the user) and are sorted (stably) where they are not; a
//! user lives in one shard, so the log's order is a k-way merge of the
//! shards' runs. One thread sorting the runs and packing every change for
//! the log was part of ingest's serial step, which bounds how far it
//! scales with cores; instead the key space is cut at splitters sampled from the runs,
//! and each part (the slice of every run between two splitters) is merged
//! and packed on its own thread. The log then appends the parts in order,
//! a copy of 16 bytes per change. An engine of one shard packs its changes
//! in log order where they lie instead ([`pack_in_order`]), with no copy
//! into order first.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rayon::prelude::*;

use crate::changelog::PackedRun;
use crate::shard::{Order, ShardChange};

/// The sort key of a change in the log.
type Key = (Order, u32);

fn key(c: &ShardChange) -> Key {
    (c.order, c.uid)
}

/// Fewest changes worth a part of their own.
const MIN_PART: usize = 16 * 1024;
/// Keys sampled per run and part wanted, on average (a run's share of the
/// samples follows its share of the changes).
const SAMPLES_PER_PART: usize = 8;

/// Sorts a shard's changes by key if they are not sorted already (stable:
/// a shard's changes with one key keep the order they were made in).
pub(crate) fn sort_run(run: &mut [ShardChange]) {
    if !run.is_sorted_by_key(key) {
        run.sort_by_key(key);
    }
}

/// Packs one shard's changes, given in log order as `slices`, into one
/// part, if their keys ascend (true, `parts` holding that part); false,
/// with nothing packed, if they do not (then the caller sorts them, see
/// [`sort_run`], and merges them as one run). Either way the log gets
/// what the merge of the sorted run would give it.
pub(crate) fn pack_in_order<'a>(
    slices: impl Iterator<Item = &'a [ShardChange]>,
    parts: &mut Vec<PackedRun>,
) -> bool {
    parts.resize_with(1, PackedRun::default);
    let part = &mut parts[0];
    part.clear();
    let mut last: Option<Key> = None;
    for slice in slices {
        let (Some(first), Some(end)) = (slice.first(), slice.last()) else {
            continue;
        };
        if last.is_some_and(|last| key(first) < last) || !slice.is_sorted_by_key(key) {
            part.clear();
            return false;
        }
        last = Some(key(end));
        part.extend(slice);
    }
    true
}

/// Merges `runs` (each sorted by key, see [`sort_run`]) into `parts`, in
/// order: appending the parts one after the other gives the changes in key
/// order, ties in run order. Up to `want` parts, each merged on its own
/// thread of the current rayon pool.
pub(crate) fn merge_runs(runs: &[&[ShardChange]], parts: &mut Vec<PackedRun>, want: usize) {
    merge_runs_with(runs, parts, want, MIN_PART);
}

/// [`merge_runs`] with parts of at least `min_part` changes.
fn merge_runs_with(
    runs: &[&[ShardChange]],
    parts: &mut Vec<PackedRun>,
    want: usize,
    min_part: usize,
) {
    let total: usize = runs.iter().map(|r| r.len()).sum();
    let splitters = splitters(runs, total, want.min(total / min_part).max(1));
    // bounds[r][j]..bounds[r][j + 1] is run r's share of part j: the keys
    // between splitters j - 1 (included) and j (excluded).
    let bounds: Vec<Vec<usize>> = runs
        .iter()
        .map(|run| {
            let mut b = Vec::with_capacity(splitters.len() + 2);
            b.push(0);
            b.extend(
                splitters
                    .iter()
                    .map(|s| run.partition_point(|c| key(c) < *s)),
            );
            b.push(run.len());
            b
        })
        .collect();
    parts.resize_with(splitters.len() + 1, PackedRun::default);
    let merge_part = |j: usize, part: &mut PackedRun| {
        part.clear();
        let slices: Vec<&[ShardChange]> = runs
            .iter()
            .zip(&bounds)
            .map(|(run, b)| &run[b[j]..b[j + 1]])
            .filter(|s| !s.is_empty())
            .collect();
        merge_slices(&slices, part);
    };
    if parts.len() == 1 {
        merge_part(0, &mut parts[0]);
    } else {
        parts
            .par_iter_mut()
            .enumerate()
            .for_each(|(j, part)| merge_part(j, part));
    }
}

/// Up to `parts - 1` distinct keys, ascending, that cut the runs' `total`
/// keys into about equal parts (sampled evenly within each run, a run's
/// share of the samples following its size).
fn splitters(runs: &[&[ShardChange]], total: usize, parts: usize) -> Vec<Key> {
    if parts <= 1 {
        return Vec::new();
    }
    let per_run = parts * SAMPLES_PER_PART;
    let mut samples: Vec<Key> = Vec::new();
    for run in runs {
        // A run's share of the samples follows its share of the changes.
        let n = (per_run * runs.len() * run.len() / total.max(1)).min(run.len());
        samples.extend((0..n).map(|i| key(&run[i * run.len() / n])));
    }
    samples.sort_unstable();
    let mut out: Vec<Key> = (1..parts)
        .filter_map(|i| samples.get(i * samples.len() / parts).copied())
        .collect();
    out.dedup();
    out
}

/// Appends the k-way merge of `slices` (each sorted by key) to `part`; on
/// equal keys the earlier slice goes first.
fn merge_slices(slices: &[&[ShardChange]], part: &mut PackedRun) {
    match slices {
        [] => {}
        [only] => part.extend(only),
        _ => {
            let mut next = vec![0usize; slices.len()];
            let mut heap: BinaryHeap<Reverse<(Key, usize)>> = slices
                .iter()
                .enumerate()
                .map(|(r, s)| Reverse((key(&s[0]), r)))
                .collect();
            while let Some(Reverse((_, r))) = heap.pop() {
                let slice = slices[r];
                // Take from this slice while it stays ahead of every other
                // (an event's changes are one user's, so they come in runs).
                let bound = heap.peek().map(|Reverse(top)| *top);
                let mut i = next[r];
                loop {
                    part.push(&slice[i]);
                    i += 1;
                    match slice.get(i) {
                        Some(c) if bound.is_none_or(|b| (key(c), r) < b) => {}
                        Some(c) => {
                            heap.push(Reverse((key(c), r)));
                            break;
                        }
                        None => break,
                    }
                }
                next[r] = i;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changelog::{ChangeLog, LoggedChange};
    use crate::shard::{ChangeKind, Reason};
    use proptest::prelude::*;

    fn change(order: (i64, u64, u64), uid: u32, aud: u32) -> ShardChange {
        ShardChange {
            order: Order::new(order.0, order.1, order.2),
            uid,
            kind: if aud % 7 == 6 {
                ChangeKind::computed(aud, None, Some(crate::value::Value::Num(1.0)))
            } else {
                ChangeKind::Membership {
                    aud,
                    entered: aud.is_multiple_of(2),
                }
            },
            at: order.0,
            reason: Reason::Event,
        }
    }

    fn logged(c: &ShardChange) -> LoggedChange {
        LoggedChange {
            uid: c.uid,
            kind: c.kind.clone(),
            at: c.at,
            reason: c.reason,
        }
    }

    proptest! {
        /// A packed order sorts as its three parts do.
        #[test]
        fn order_sorts_as_its_parts(
            a in (any::<i64>(), 0u64..1 << 32, 0u64..1 << 32),
            b in (any::<i64>(), 0u64..1 << 32, 0u64..1 << 32),
        ) {
            let (x, y) = (Order::new(a.0, a.1, a.2), Order::new(b.0, b.1, b.2));
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
        }

        /// Merged into any number of parts and appended to a log, the runs
        /// give what a stable sort of their concatenation gives.
        #[test]
        fn merge_equals_stable_sort(
            shards in 1usize..6,
            changes in proptest::collection::vec((0i64..40, 0u64..3, 0u32..30, 0u32..20), 0..400),
            want in 1usize..9,
        ) {
            // A user lives in shard uid % shards, as in the engine.
            let mut runs: Vec<Vec<ShardChange>> = vec![Vec::new(); shards];
            for (counter, &(index, phase, uid, aud)) in changes.iter().enumerate() {
                runs[uid as usize % shards].push(change((index, phase, counter as u64 % 4), uid, aud));
            }
            for run in &mut runs {
                sort_run(run);
            }
            let mut want_log: Vec<ShardChange> = runs.concat();
            want_log.sort_by_key(key);

            let slices: Vec<&[ShardChange]> = runs.iter().map(Vec::as_slice).collect();
            let mut parts = Vec::new();
            // Small parts, so that several are made.
            merge_runs_with(&slices, &mut parts, want, 1);
            let mut log = ChangeLog::default();
            log.push(logged(&change((0, 0, 0), 0, 6)));
            for part in &mut parts {
                log.append(part);
            }
            let got: Vec<LoggedChange> = log.iter().skip(1).collect();
            let expected: Vec<LoggedChange> = want_log.iter().map(logged).collect();
            prop_assert_eq!(got, expected);
        }

        /// One shard's changes cut into slices anywhere are packed as the
        /// merge of the sorted run packs them when their keys ascend, and
        /// refused, with nothing packed, when they do not.
        #[test]
        fn packed_in_order_as_merged_or_refused(
            changes in proptest::collection::vec((0i64..40, 0u64..3, 0u32..30, 0u32..20), 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..8),
            sorted in any::<bool>(),
        ) {
            let mut run: Vec<ShardChange> = changes
                .iter()
                .enumerate()
                .map(|(counter, &(index, phase, uid, aud))| {
                    change((index, phase, counter as u64 % 4), uid, aud)
                })
                .collect();
            if sorted {
                sort_run(&mut run);
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(run.len())).collect();
            cuts.push(0);
            cuts.push(run.len());
            cuts.sort_unstable();
            let slices = cuts.windows(2).map(|w| &run[w[0]..w[1]]);
            let mut parts = vec![PackedRun::default(), PackedRun::default()];
            let packed = pack_in_order(slices, &mut parts);
            prop_assert_eq!(packed, run.is_sorted_by_key(key));
            prop_assert_eq!(parts.len(), 1);
            if !packed {
                prop_assert_eq!(parts[0].len(), 0);
                return Ok(());
            }
            let mut merged = Vec::new();
            merge_runs_with(&[&run], &mut merged, 1, 1);
            let mut log = ChangeLog::default();
            let mut want_log = ChangeLog::default();
            log.append(&mut parts[0]);
            for part in &mut merged {
                want_log.append(part);
            }
            prop_assert_eq!(log.iter().collect::<Vec<_>>(), want_log.iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn splitters_are_ascending_and_distinct() {
        let run: Vec<ShardChange> = (0..1000).map(|i| change((i / 10, 0, 0), 1, 0)).collect();
        let s = splitters(&[&run], run.len(), 8);
        assert!(!s.is_empty() && s.len() < 8);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
    }
}
