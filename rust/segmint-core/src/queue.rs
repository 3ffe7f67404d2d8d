//! Small per-shard scratch structures of the evaluation hot path.

use crate::catalog::AtomId;

/// Rules waiting to be evaluated for one user, popped in rank order
/// (dependencies first): a bitset over ranks, so that queueing is O(1) and
/// nothing is allocated per event. Ranks are dense (`0..slots`).
#[derive(Debug, Clone, Default)]
pub struct RankQueue {
    words: Vec<u64>,
    /// No bit lies in a word below this one.
    low: usize,
    len: usize,
}

impl RankQueue {
    /// Queues `rank` (once).
    pub fn insert(&mut self, rank: u32) {
        let w = rank as usize / 64;
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let bit = 1u64 << (rank % 64);
        if self.words[w] & bit == 0 {
            self.words[w] |= bit;
            if self.len == 0 || w < self.low {
                self.low = w;
            }
            self.len += 1;
        }
    }

    /// Removes and returns the lowest queued rank.
    pub fn pop_first(&mut self) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        while self.words[self.low] == 0 {
            self.low += 1;
        }
        let word = &mut self.words[self.low];
        let bit = word.trailing_zeros();
        *word &= *word - 1;
        self.len -= 1;
        Some((self.low * 64) as u32 + bit)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Truths of atoms already evaluated for one user in one evaluation pass.
/// Rules share atoms, and a pass changes only memberships, so an atom that
/// reads no membership keeps its truth for the whole pass. Entries are
/// stamped with the pass; starting a pass forgets them all in O(1).
#[derive(Debug, Clone, Default)]
pub struct AtomMemo {
    pass: u32,
    /// `pass << 1 | truth`, by atom.
    stamps: Vec<u32>,
}

impl AtomMemo {
    /// Forgets every entry; makes room for `atoms` atoms.
    pub fn begin(&mut self, atoms: usize) {
        self.pass += 1;
        if self.pass >= 1 << 31 {
            self.stamps.fill(0);
            self.pass = 1;
        }
        if self.stamps.len() < atoms {
            self.stamps.resize(atoms, 0);
        }
    }

    /// The atom's truth if evaluated in this pass.
    pub fn get(&self, atom: AtomId) -> Option<bool> {
        let v = *self.stamps.get(atom as usize)?;
        (v >> 1 == self.pass).then_some(v & 1 == 1)
    }

    /// Records the atom's truth for this pass.
    pub fn set(&mut self, atom: AtomId, truth: bool) {
        if let Some(v) = self.stamps.get_mut(atom as usize) {
            *v = self.pass << 1 | truth as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        /// Interleaved inserts and pops give the same order as a BTreeSet.
        #[test]
        fn rank_queue_matches_btreeset(ops in proptest::collection::vec((any::<bool>(), 0u32..700), 0..300)) {
            let mut q = RankQueue::default();
            let mut model = BTreeSet::new();
            for (pop, rank) in ops {
                if pop {
                    prop_assert_eq!(q.pop_first(), model.pop_first());
                } else {
                    q.insert(rank);
                    model.insert(rank);
                }
                prop_assert_eq!(q.is_empty(), model.is_empty());
            }
            while let Some(r) = model.pop_first() {
                prop_assert_eq!(q.pop_first(), Some(r));
            }
            prop_assert_eq!(q.pop_first(), None);
        }
    }

    #[test]
    fn memo_forgets_on_begin() {
        let mut m = AtomMemo::default();
        m.begin(4);
        assert_eq!(m.get(2), None);
        m.set(2, true);
        m.set(3, false);
        assert_eq!(m.get(2), Some(true));
        assert_eq!(m.get(3), Some(false));
        m.begin(4);
        assert_eq!(m.get(2), None);
        assert_eq!(m.get(9), None, "out of range is unknown");
    }
}
