//! Data structures of the hot path: the per-shard scratch of evaluation
//! and the change log's storage.

use std::collections::VecDeque;

use crate::catalog::AtomId;

/// Entries per chunk of a [`ChunkedDeque`] (1 MiB of 16-byte change-log entries).
const CHUNK: usize = 1 << 16;

/// A FIFO sequence stored in fixed-size chunks: appending never moves what
/// is stored (a `VecDeque` doubling at 10 M entries copies 320 MB while the
/// engine lock is held), and dropping from the front frees whole chunks.
#[derive(Debug, Clone)]
pub struct ChunkedDeque<T> {
    chunks: VecDeque<Vec<T>>,
    /// Entries already dropped from the front chunk.
    head: usize,
    len: usize,
}

impl<T> Default for ChunkedDeque<T> {
    fn default() -> Self {
        ChunkedDeque {
            chunks: VecDeque::new(),
            head: 0,
            len: 0,
        }
    }
}

impl<T> ChunkedDeque<T> {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends at the back.
    pub fn push_back(&mut self, value: T) {
        if self.chunks.back().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push_back(Vec::with_capacity(CHUNK));
        }
        if let Some(last) = self.chunks.back_mut() {
            last.push(value);
        }
        self.len += 1;
    }

    /// Drops the `n` oldest entries (all of them if fewer).
    pub fn drop_front(&mut self, n: usize) {
        let mut n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let live = front.len() - self.head;
            if n >= live {
                self.chunks.pop_front();
                self.head = 0;
                n -= live;
            } else {
                self.head += n;
                n = 0;
            }
        }
        if self.len == 0 {
            self.chunks.clear();
            self.head = 0;
        }
    }

    /// The entries with positions in `start..end` (clamped), oldest first.
    pub fn range(&self, start: usize, end: usize) -> impl Iterator<Item = &T> + '_ {
        let end = end.min(self.len);
        let start = start.min(end);
        let first = self.head + start;
        let (chunk, offset) = (first / CHUNK, first % CHUNK);
        self.chunks
            .range(chunk.min(self.chunks.len())..)
            .enumerate()
            .flat_map(move |(i, c)| &c[if i == 0 { offset } else { 0 }..])
            .take(end - start)
    }

    /// Every entry, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.range(0, self.len)
    }
}

impl<T> FromIterator<T> for ChunkedDeque<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut d = ChunkedDeque::default();
        for x in iter {
            d.push_back(x);
        }
        d
    }
}

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

    proptest! {
        /// Pushes, front drops and ranges agree with a VecDeque, across
        /// chunk boundaries.
        #[test]
        fn chunked_deque_matches_vecdeque(
            ops in proptest::collection::vec((0u8..3, 0usize..(3 * CHUNK)), 0..12),
        ) {
            let mut d = ChunkedDeque::default();
            let mut model = VecDeque::new();
            let mut next = 0u64;
            for (op, n) in ops {
                match op {
                    0 => for _ in 0..n {
                        d.push_back(next);
                        model.push_back(next);
                        next += 1;
                    },
                    1 => {
                        d.drop_front(n);
                        model.drain(..n.min(model.len()));
                    }
                    _ => {
                        let (a, b) = (n % (model.len() + 1), n % (model.len() + 2));
                        let got: Vec<u64> = d.range(a, b).copied().collect();
                        let end = b.min(model.len()).max(a.min(model.len()));
                        let want: Vec<u64> = model.range(a.min(end)..end).copied().collect();
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(d.len(), model.len());
                prop_assert!(d.iter().copied().eq(model.iter().copied()));
            }
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
