//! The message ids seen within the deduplication window: an event whose
//! `messageId` was seen less than the window ago is a retry and is dropped.
//!
//! Old ids are swept when the set has doubled since the last sweep (and
//! holds at least 1,024), so it holds at most about twice the ids that were
//! still in the window at the last sweep, at an amortised cost of one pass
//! per doubling.

use std::sync::Arc;

use hashbrown::hash_map::EntryRef;
use hashbrown::HashMap;

use crate::time::Millis;

/// The fewest ids the set holds before its first sweep.
const FIRST_SWEEP: usize = 1024;

/// The size at which a set of `len` ids (just swept or restored) is swept
/// next: when it has doubled.
fn next_sweep(len: usize) -> usize {
    (2 * len).max(FIRST_SWEEP)
}

/// Message ids with the instant each was last accepted.
#[derive(Debug, Clone)]
pub struct SeenMessages {
    seen: HashMap<Arc<str>, Millis>,
    /// The size at which the next sweep runs.
    sweep_at: usize,
}

impl Default for SeenMessages {
    fn default() -> Self {
        Self {
            seen: HashMap::new(),
            sweep_at: FIRST_SWEEP,
        }
    }
}

impl SeenMessages {
    /// Accepts `id` at `now` unless it was accepted after `cutoff` (then
    /// the event is a retry: false, and its instant stays). An id still in
    /// the set may have been accepted before the cutoff (sweeps are
    /// amortised): then it is new again. One lookup, and an allocation
    /// only for a new id.
    pub fn accept(&mut self, id: &str, now: Millis, cutoff: Millis) -> bool {
        match self.seen.entry_ref(id) {
            EntryRef::Occupied(mut seen) if *seen.get() <= cutoff => {
                seen.insert(now);
                true
            }
            EntryRef::Occupied(_) => false,
            EntryRef::Vacant(vacant) => {
                vacant.insert(now);
                true
            }
        }
    }

    /// Forgets the ids accepted at or before `cutoff` once the set has
    /// doubled since the last sweep.
    pub fn expire(&mut self, cutoff: Millis) {
        if self.seen.len() >= self.sweep_at {
            self.seen.retain(|_, &mut seen| seen > cutoff);
            self.sweep_at = next_sweep(self.seen.len());
        }
    }

    /// Number of ids held (some may be past the window).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The ids with their instants, in no particular order (snapshots).
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, Millis)> {
        self.seen.iter().map(|(id, &t)| (id, t))
    }

    /// Heap bytes: the table and the ids' text.
    pub fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(Arc<str>, Millis)>() + 1;
        // An Arc<str> is its two counts and the text in one allocation.
        let text: usize = self.seen.keys().map(|id| 16 + id.len()).sum();
        self.seen.capacity() * entry + text
    }
}

impl FromIterator<(Arc<str>, Millis)> for SeenMessages {
    fn from_iter<I: IntoIterator<Item = (Arc<str>, Millis)>>(iter: I) -> Self {
        let seen: HashMap<Arc<str>, Millis> = iter.into_iter().collect();
        let sweep_at = next_sweep(seen.len());
        Self { seen, sweep_at }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::SECOND;

    #[test]
    fn a_retry_inside_the_window_is_a_duplicate_and_outside_it_is_not() {
        let mut seen = SeenMessages::default();
        assert!(seen.accept("m1", 100 * SECOND, 0));
        // A retry inside the window: refused, and the window does not move.
        assert!(!seen.accept("m1", 120 * SECOND, 50 * SECOND));
        assert!(!seen.accept("m1", 150 * SECOND, 99 * SECOND));
        // Past it: accepted again, and the window starts over.
        assert!(seen.accept("m1", 200 * SECOND, 100 * SECOND));
        assert!(!seen.accept("m1", 210 * SECOND, 150 * SECOND));
        assert!(seen.accept("m2", 210 * SECOND, 150 * SECOND));
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn the_set_stays_within_about_two_windows_of_ids() {
        // One id per second for a day, with a window of one minute, swept
        // (as the engine does) after each batch of 37: the set never holds
        // more than the first sweep's size and a batch.
        let window = 60 * SECOND;
        let mut seen = SeenMessages::default();
        let mut most = 0;
        for i in 0..86_400i64 {
            let now = i * SECOND;
            assert!(seen.accept(&format!("m{i}"), now, now - window));
            if i % 37 == 36 {
                seen.expire(now - window);
            }
            most = most.max(seen.len());
        }
        assert!(most <= FIRST_SWEEP + 37, "held {most} ids");
        assert!(seen.heap_bytes() > 0);
    }

    #[test]
    fn a_restored_set_keeps_its_ids() {
        let restored: SeenMessages = [(Arc::from("a"), 5), (Arc::from("b"), 7)]
            .into_iter()
            .collect();
        assert!(!restored.clone().accept("a", 9, 4));
        assert!(restored.clone().accept("b", 9, 7));
        let mut ids: Vec<_> = restored.iter().map(|(id, t)| (id.to_string(), t)).collect();
        ids.sort();
        assert_eq!(ids, vec![("a".into(), 5), ("b".into(), 7)]);
    }
}
