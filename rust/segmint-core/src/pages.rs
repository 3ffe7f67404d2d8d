//! A list with one entry per user, kept in fixed pages rather than one
//! block.
//!
//! A shard's profile headers are the one list that grows with every new
//! user. As one `Vec` it doubles: the room left over could be nearly half
//! of it, and each growth copies every header while the old and new
//! blocks are both held (twice the memory, and a pause of milliseconds on
//! the event that caused it). In pages of [`PAGE`] entries, at most one
//! page has room, and nothing is ever copied.

/// Bits of an index that select the entry within its page.
const PAGE_BITS: u32 = 12;

/// Entries per page (4096: 256 KiB of 64-byte profile headers).
pub const PAGE: usize = 1 << PAGE_BITS;

/// The smallest capacity of the first page, which grows by doubling up to
/// [`PAGE`] so that a small engine (many shards, few users) stays small.
const FIRST_PAGE_MIN: usize = 8;

/// A list of entries in pages of [`PAGE`]; every page but the last is
/// full.
#[derive(Clone, PartialEq)]
pub struct Pages<T> {
    pages: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Pages<T> {
    fn default() -> Self {
        Pages {
            pages: Vec::new(),
            len: 0,
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Pages<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T> Pages<T> {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entry `index`, if there is one.
    #[inline]
    pub fn get(&self, index: usize) -> Option<&T> {
        self.pages.get(index >> PAGE_BITS)?.get(index & (PAGE - 1))
    }

    /// Entry `index`, mutably, if there is one.
    #[inline]
    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.pages
            .get_mut(index >> PAGE_BITS)?
            .get_mut(index & (PAGE - 1))
    }

    /// Appends `entry`.
    pub fn push(&mut self, entry: T) {
        let page = match self.pages.last_mut() {
            Some(page) if page.len() < PAGE => page,
            _ => {
                // A page after the first is allocated whole: it is filled
                // by users arriving, not by a guess.
                let capacity = if self.pages.is_empty() {
                    FIRST_PAGE_MIN
                } else {
                    PAGE
                };
                self.pages.push(Vec::with_capacity(capacity));
                self.pages.last_mut().expect("a page was just pushed")
            }
        };
        if page.len() == page.capacity() {
            // Only the first page can be short of room: doubled, to a page.
            let target = (page.capacity() * 2).clamp(FIRST_PAGE_MIN, PAGE);
            page.reserve_exact(target - page.len());
        }
        page.push(entry);
        self.len += 1;
    }

    /// Extends the list to `len` entries made by `fill` (nothing when it
    /// is already as long).
    pub fn extend_to(&mut self, len: usize, mut fill: impl FnMut() -> T) {
        while self.len < len {
            self.push(fill());
        }
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.pages.iter().flatten()
    }

    /// The entries in order, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> + '_ {
        self.pages.iter_mut().flatten()
    }

    /// Bytes held for entries (used or not) and for the page table; the
    /// entries' own heap is theirs to count.
    pub fn heap_bytes(&self) -> usize {
        let entries: usize = self.pages.iter().map(Vec::capacity).sum();
        entries * std::mem::size_of::<T>() + self.pages.capacity() * std::mem::size_of::<Vec<T>>()
    }
}

impl<T> FromIterator<T> for Pages<T> {
    fn from_iter<I: IntoIterator<Item = T>>(entries: I) -> Self {
        let mut pages = Pages::default();
        entries.into_iter().for_each(|entry| pages.push(entry));
        pages
    }
}

impl<T> std::ops::Index<usize> for Pages<T> {
    type Output = T;

    #[inline]
    fn index(&self, index: usize) -> &T {
        &self.pages[index >> PAGE_BITS][index & (PAGE - 1)]
    }
}

impl<T> std::ops::IndexMut<usize> for Pages<T> {
    #[inline]
    fn index_mut(&mut self, index: usize) -> &mut T {
        &mut self.pages[index >> PAGE_BITS][index & (PAGE - 1)]
    }
}

/// Stored as the plain sequence of entries (the bytes of a `Vec`), so that
/// the pages are no part of any format (a snapshot encodes a shard's
/// profiles in place, without a copy).
impl<T: serde::Serialize> serde::Serialize for Pages<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.len))?;
        for entry in self.iter() {
            seq.serialize_element(entry)?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pages_fill_before_the_next_and_the_first_grows_by_doubling() {
        let mut pages: Pages<u32> = Pages::default();
        pages.push(0);
        assert_eq!(pages.pages[0].capacity(), FIRST_PAGE_MIN);
        pages.extend_to(PAGE + 1, || 1);
        assert_eq!(pages.pages.len(), 2);
        assert_eq!(pages.pages[0].capacity(), PAGE);
        assert_eq!(pages.pages[1].capacity(), PAGE);
        assert_eq!(pages.len(), PAGE + 1);
        assert_eq!(pages[0], 0);
        assert_eq!(pages[PAGE], 1);
        assert_eq!(pages.get(PAGE + 1), None);
    }

    #[test]
    fn stored_as_the_plain_sequence() {
        let entries: Vec<u64> = (0..(PAGE as u64 + 7)).collect();
        let pages: Pages<u64> = entries.iter().copied().collect();
        assert_eq!(
            postcard::to_allocvec(&pages).unwrap(),
            postcard::to_allocvec(&entries).unwrap()
        );
    }

    proptest! {
        /// The same entries, in the same places, as a `Vec`.
        #[test]
        fn behaves_as_a_vec(
            lengths in prop::collection::vec(0usize..3 * PAGE, 1..5),
            probes in prop::collection::vec(0usize..4 * PAGE, 0..40),
        ) {
            let (mut pages, mut list) = (Pages::default(), Vec::new());
            for len in lengths {
                let mut next = list.len();
                pages.extend_to(len, || { next += 1; next });
                if list.len() < len {
                    let start = list.len();
                    list.extend(start + 1..=len);
                }
                prop_assert_eq!(pages.len(), list.len());
                for &i in &probes {
                    prop_assert_eq!(pages.get(i), list.get(i));
                    prop_assert_eq!(pages.get_mut(i), list.get_mut(i));
                    if i < list.len() {
                        prop_assert_eq!(pages[i], list[i]);
                    }
                }
                prop_assert!(pages.iter().eq(list.iter()));
                // At most one page has room.
                let room = pages.pages.iter().filter(|p| p.len() < p.capacity()).count();
                prop_assert!(room <= 1);
            }
        }
    }
}
