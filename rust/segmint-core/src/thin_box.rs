//! A boxed slice in one word, for the lists every profile holds.
//!
//! A `Box<[T]>` is a pointer and a length: 16 bytes in each of a million
//! profiles for each list. [`ThinBox`] keeps the length in the pointer's
//! unused high bits (through the `thin-slice` crate, on x86_64), so a list
//! of fewer than 65,535 elements costs 8 bytes inline and nothing more in
//! its allocation, where a `ThinVec` keeps 16 bytes of length and capacity
//! in front of its elements. (A longer list keeps its fat pointer in a
//! box of its own, 16 bytes more. On other targets a `ThinBox` is a plain
//! box, 16 bytes inline: the memory figures in the docs are for x86_64.)

use std::fmt;
use std::ops::{Deref, DerefMut};

use thin_slice::ThinBoxedSlice;

/// An owned slice in one word (see the module documentation). An empty
/// one allocates nothing.
pub struct ThinBox<T>(
    // Never an empty `ThinBoxedSlice`: the crate gives an empty slice a
    // pointer aligned only for bytes.
    Option<ThinBoxedSlice<T>>,
);

impl<T> ThinBox<T> {
    /// An empty slice.
    pub const fn new() -> ThinBox<T> {
        ThinBox(None)
    }

    /// The elements, as a slice.
    pub fn as_slice(&self) -> &[T] {
        match &self.0 {
            Some(elements) => elements,
            None => &[],
        }
    }

    /// The elements, as a mutable slice.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        match &mut self.0 {
            Some(elements) => elements,
            None => &mut [],
        }
    }

    /// The elements, as a vector (no copy).
    pub fn into_vec(self) -> Vec<T> {
        match self.0 {
            Some(elements) => Into::<Box<[T]>>::into(elements).into_vec(),
            None => Vec::new(),
        }
    }

    /// Inserts `value` at `i`, reallocating to the exact new length (the
    /// lists kept this way change far less often than they are read).
    pub fn insert(&mut self, i: usize, value: T) {
        assert!(i <= self.len(), "insertion index {i} past the end");
        self.edit(|elements| {
            elements.reserve_exact(1);
            elements.insert(i, value);
        });
    }

    /// Removes and returns the element at `i`, reallocating to the exact
    /// new length.
    pub fn remove(&mut self, i: usize) -> T {
        assert!(i < self.len(), "removal index {i} past the end");
        self.edit(|elements| elements.remove(i))
    }

    /// Drops the first `n` elements, reallocating to the exact new length.
    pub fn drop_front(&mut self, n: usize) {
        assert!(n <= self.len(), "{n} elements dropped from a shorter list");
        if n > 0 {
            self.edit(|elements| drop(elements.drain(..n)));
        }
    }

    /// Keeps the elements `keep` holds for, reallocating to the exact new
    /// length when any goes; returns how many went.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) -> usize {
        let gone = self.iter().filter(|e| !keep(e)).count();
        if gone > 0 {
            self.edit(|elements| elements.retain(|e| keep(e)));
        }
        gone
    }

    /// Edits the elements as a vector (no copy) and keeps the result at
    /// its exact length. Callers check their indices first: a panic inside
    /// would leave the list empty.
    fn edit<R>(&mut self, f: impl FnOnce(&mut Vec<T>) -> R) -> R {
        let mut elements = std::mem::take(self).into_vec();
        let result = f(&mut elements);
        *self = ThinBox::from(elements);
        result
    }

    /// Bytes of the allocation (and of the fat pointer's own box, for a
    /// list too long for the pointer's high bits).
    pub fn heap_bytes(&self) -> usize {
        let spilled = self
            .0
            .as_ref()
            .and_then(ThinBoxedSlice::spilled_storage)
            .map_or(0, |_| std::mem::size_of::<Box<[T]>>());
        std::mem::size_of_val(self.as_slice()) + spilled
    }
}

impl<T> Default for ThinBox<T> {
    fn default() -> ThinBox<T> {
        ThinBox::new()
    }
}

impl<T> From<Box<[T]>> for ThinBox<T> {
    fn from(elements: Box<[T]>) -> ThinBox<T> {
        if elements.is_empty() {
            return ThinBox::new();
        }
        // The crate keeps the length in bits 48 and up and sign-extends bit
        // 47: an address from the lower half of a 47-bit space, as user
        // space has on x86_64 unless a program maps memory higher on
        // purpose. Checked once per allocation, before the box is handed
        // over (a pointer it cannot hold would be freed wrong).
        #[cfg(target_arch = "x86_64")]
        assert!(
            (elements.as_ptr() as usize) >> 47 == 0,
            "a list allocated above 2^47 cannot be kept in one word"
        );
        ThinBox(Some(elements.into()))
    }
}

impl<T> From<Vec<T>> for ThinBox<T> {
    /// The vector's elements, its spare capacity given back.
    fn from(elements: Vec<T>) -> ThinBox<T> {
        ThinBox::from(elements.into_boxed_slice())
    }
}

impl<T> Deref for ThinBox<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T> DerefMut for ThinBox<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.as_mut_slice()
    }
}

// Through the slices, not the crate's own impls (its `clone` makes a
// mutable slice from a shared borrow).
impl<T: Clone> Clone for ThinBox<T> {
    fn clone(&self) -> ThinBox<T> {
        ThinBox::from(self.as_slice().to_vec())
    }
}

impl<T: PartialEq> PartialEq for ThinBox<T> {
    fn eq(&self, other: &ThinBox<T>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Eq> Eq for ThinBox<T> {}

impl<T: fmt::Debug> fmt::Debug for ThinBox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_slice(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_word_inline() {
        #[cfg(target_arch = "x86_64")]
        assert_eq!(std::mem::size_of::<ThinBox<u16>>(), 8);
        assert!(std::mem::size_of::<ThinBox<u16>>() <= std::mem::size_of::<Box<[u16]>>());
    }

    #[test]
    fn empty_allocates_nothing_and_reads_empty() {
        let mut empty: ThinBox<[u32; 3]> = ThinBox::from(Vec::new());
        assert!(empty.is_empty());
        assert_eq!(empty.as_mut_slice(), &mut [] as &mut [[u32; 3]]);
        assert_eq!(empty.heap_bytes(), 0);
        assert_eq!(empty.clone(), ThinBox::new());
        assert!(empty.into_vec().is_empty());
    }

    #[test]
    fn a_long_slice_keeps_its_length() {
        // Past the 16 bits the pointer holds: the crate keeps it apart.
        let long: Vec<u16> = (0..70_000u32).map(|i| i as u16).collect();
        let mut thin = ThinBox::from(long.clone());
        assert_eq!(thin.len(), 70_000);
        thin[69_999] = 7;
        assert_eq!(thin[69_999], 7);
        assert_eq!(&thin[..69_999], &long[..69_999]);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(thin.heap_bytes(), 140_016);
        thin.drop_front(69_990);
        assert_eq!((thin.len(), thin[9]), (10, 7));
        assert_eq!(thin.heap_bytes(), 20);
    }

    proptest! {
        #[test]
        fn holds_what_a_boxed_slice_holds(
            elements in proptest::collection::vec(any::<[u32; 3]>(), 0..40),
            writes in proptest::collection::vec((any::<usize>(), any::<[u32; 3]>()), 0..12),
        ) {
            let mut list = elements.clone();
            let mut thin = ThinBox::from(elements);
            for (i, value) in writes {
                // Writes in place, inserts and removals, by the low bits.
                match i % 3 {
                    0 if !list.is_empty() => {
                        let at = i / 3 % list.len();
                        list[at] = value;
                        thin[at] = value;
                    }
                    1 => {
                        let at = i / 3 % (list.len() + 1);
                        list.insert(at, value);
                        thin.insert(at, value);
                    }
                    2 if !list.is_empty() => {
                        let at = i / 3 % list.len();
                        prop_assert_eq!(thin.remove(at), list.remove(at));
                    }
                    _ => {}
                }
                prop_assert_eq!(thin.as_slice(), &list[..]);
                prop_assert_eq!(thin.heap_bytes(), list.len() * 12);
            }
            let copy = thin.clone();
            prop_assert_eq!(&copy, &thin);
            prop_assert_eq!(thin.into_vec(), list);
        }
    }
}
