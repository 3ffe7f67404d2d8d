//! The audiences a profile is in, with their entry instants, in one
//! allocation.
//!
//! Most memberships of a profile share their entry instant: an identify
//! puts a new profile into all of its trait audiences at once. On the
//! benchmark workload a profile is in about seven audiences with 1.26
//! memberships entered at another instant on average. So the list keeps
//! one instant, the *common* one, and each membership as just its audience
//! slot; a membership entered at another instant is listed a second time,
//! with its instant, as an *exception*. As `Vec<Stamped>` the same
//! memberships took 12 bytes each plus growth slack and a 24-byte header.
//!
//! The list is kept in 16-bit units, and a slot takes one unit (a *narrow*
//! list: any catalog of fewer than 65,536 audience slots). Inserting a slot
//! of 2^16 or more rebuilds the list *wide*, two units a slot (low, high);
//! it stays wide until it is next rebuilt from its entries. Layout
//! (the box's length is the capacity):
//! `[slots ×2, exceptions ×2 (top bit: wide), common instant ×4, slot…,
//! (slot, instant ×4)…, spare…]`, slots ascending, exceptions ascending by
//! slot. An empty list allocates nothing.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::catalog::AudId;
use crate::profile::Stamped;
use crate::thin_box::ThinBox;
use crate::time::{instant_from_words, instant_words, Millis};

/// Units in front of the slots: their count, the exceptions' count (with
/// the wide flag) and the common instant.
const HEADER: usize = 8;
/// Units of an instant.
const INSTANT: usize = 4;
/// The flag, in the exceptions' count, of a list whose slots take two units.
const WIDE: u32 = 1 << 31;
/// The largest slot a narrow list holds.
const NARROW_MAX: AudId = u16::MAX as AudId;
/// From this many flips at once, [`AudienceList::apply_flips`] rebuilds the
/// list instead of editing it flip by flip.
const MERGED_FLIPS: usize = 4;

/// The membership flips of one pass (one event or one wake of one
/// profile) held back from the profile's list until the pass ends (see
/// [`AudienceList::apply_flips`]): the rest of the pass reads them here.
#[derive(Debug, Clone, Default)]
pub struct PassFlips {
    /// The flips, in the order made.
    list: Vec<(AudId, bool)>,
    /// Per audience slot, one bit: flipped in this pass.
    flipped: Vec<u64>,
    /// Per audience slot, one bit: a member after its flip.
    member: Vec<u64>,
    /// The pass's instant (entered audiences were entered then).
    at: Millis,
    /// The profile whose flips they are (its index in its shard).
    profile: usize,
}

/// The word of a per-slot bitset holding `aud`'s bit, and the bit.
fn bit_of(aud: AudId) -> (usize, u64) {
    (aud as usize / 64, 1 << (aud % 64))
}

impl PassFlips {
    /// Whether the pass has flipped nothing.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The flips, if they are `profile`'s (and there are any): a pass cut
    /// short by a caught panic leaves its flips to no other profile.
    #[inline]
    pub fn of(&self, profile: usize) -> Option<&PassFlips> {
        (!self.list.is_empty() && self.profile == profile).then_some(self)
    }

    /// The flips, in the order made.
    pub fn flips(&self) -> &[(AudId, bool)] {
        &self.list
    }

    /// Records that `profile` entered (`member`) or left `aud` at `at`.
    #[inline]
    pub fn push(&mut self, profile: usize, aud: AudId, member: bool, at: Millis) {
        debug_assert!(self.list.is_empty() || self.profile == profile);
        self.profile = profile;
        let (word, bit) = bit_of(aud);
        if self.flipped.len() <= word {
            self.flipped.resize(word + 1, 0);
            self.member.resize(word + 1, 0);
        }
        debug_assert!(
            self.flipped[word] & bit == 0,
            "audience {aud} flipped twice in a pass"
        );
        self.flipped[word] |= bit;
        if member {
            self.member[word] |= bit;
        }
        self.at = at;
        self.list.push((aud, member));
    }

    /// Whether the profile is in `aud` after its flip in this pass (`None`:
    /// not flipped in it; the list says).
    #[inline]
    pub fn member(&self, aud: AudId) -> Option<bool> {
        let (word, bit) = bit_of(aud);
        let flipped = self.flipped.get(word).is_some_and(|w| w & bit != 0);
        flipped.then(|| self.member[word] & bit != 0)
    }

    /// When the profile entered `aud`, after its flip in this pass (`None`:
    /// not flipped in it).
    #[inline]
    pub fn entered(&self, aud: AudId) -> Option<Option<Millis>> {
        self.member(aud).map(|member| member.then_some(self.at))
    }

    /// Applies the flips to `list` and forgets them.
    pub fn apply_to(&mut self, list: &mut AudienceList, scratch: &mut FlipScratch) {
        if self.list.is_empty() {
            return;
        }
        self.clear_bits();
        list.apply_flips(&mut self.list, self.at, scratch);
        self.list.clear();
    }

    /// Forgets the flips without applying them (those of a pass a caught
    /// panic cut short: they are not the next profile's).
    pub fn discard(&mut self) {
        if !self.list.is_empty() {
            self.clear_bits();
            self.list.clear();
        }
    }

    fn clear_bits(&mut self) {
        for &(aud, _) in &self.list {
            let (word, bit) = bit_of(aud);
            self.flipped[word] &= !bit;
            self.member[word] &= !bit;
        }
    }
}

/// Working room of [`AudienceList::apply_flips`], kept between calls.
#[derive(Debug, Clone, Default)]
pub struct FlipScratch {
    /// The flips that change the list, as narrow slots.
    edits: Vec<(u16, bool)>,
    /// The slots of a list being merged.
    slots: Vec<u16>,
    /// The exceptions of a list being merged.
    exceptions: Vec<u16>,
    /// The memberships of a list being rebuilt.
    entries: Vec<Stamped>,
}

/// A profile's audiences (slots, ascending) and when it entered each.
#[derive(Clone, Default)]
pub struct AudienceList {
    units: ThinBox<u16>,
}

/// An instant as four units.
fn instant_units(at: Millis) -> [u16; INSTANT] {
    let [low, high] = instant_words(at);
    [
        low as u16,
        (low >> 16) as u16,
        high as u16,
        (high >> 16) as u16,
    ]
}

/// The instant of [`instant_units`].
fn instant_from_units(units: &[u16]) -> Millis {
    instant_from_words(word(units), word(&units[2..]))
}

impl AudienceList {
    /// A list of `entries`, sorted by slot without repeats; the most
    /// frequent instant becomes the common one.
    pub fn from_sorted(entries: &[Stamped]) -> AudienceList {
        let wide = entries.last().is_some_and(|e| e.id > NARROW_MAX);
        AudienceList::build(entries, wide)
    }

    /// [`AudienceList::from_sorted`] with the width chosen.
    fn build(entries: &[Stamped], wide: bool) -> AudienceList {
        match most_frequent_instant(entries) {
            Some(common) => AudienceList::build_around(entries, wide, common),
            None => AudienceList::default(),
        }
    }

    /// [`AudienceList::build`] with the common instant chosen (one of the
    /// entries' instants).
    fn build_around(entries: &[Stamped], wide: bool, common: Millis) -> AudienceList {
        debug_assert!(entries.windows(2).all(|w| w[0].id < w[1].id));
        debug_assert!(entries.iter().any(|e| e.at() == common));
        let width = if wide { 2 } else { 1 };
        let exceptions = entries.iter().filter(|e| e.at() != common).count();
        let shape = Shape {
            len: entries.len(),
            exceptions,
            width,
        };
        let mut units = vec![0; shape.used()];
        set_word(&mut units, 0, shape.len as u32);
        set_exceptions(&mut units, shape);
        units[4..HEADER].copy_from_slice(&instant_units(common));
        for (k, entry) in entries.iter().enumerate() {
            set_slot(&mut units, HEADER + width * k, width, entry.id);
        }
        let others = entries.iter().filter(|e| e.at() != common);
        for (k, entry) in others.enumerate() {
            let at = shape.exceptions_start() + (width + INSTANT) * k;
            set_slot(&mut units, at, width, entry.id);
            units[at + width..at + width + INSTANT].copy_from_slice(&instant_units(entry.at()));
        }
        AudienceList {
            units: ThinBox::from(units),
        }
    }

    /// The units, read once per operation (each read of the box decodes
    /// its pointer), with the counts and the width.
    #[inline]
    fn view(&self) -> View<'_> {
        View::of(&self.units)
    }

    /// The counts and the width.
    fn shape(&self) -> Shape {
        self.view().shape
    }

    /// How many audiences.
    pub fn len(&self) -> usize {
        self.shape().len
    }

    /// Whether the profile is in no audience.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The audience slots, ascending.
    #[inline]
    pub fn slots(&self) -> Slots<'_> {
        self.view().slots()
    }

    /// Whether the profile is in `aud`.
    #[inline]
    pub fn contains(&self, aud: AudId) -> bool {
        self.slots().position(aud).is_ok()
    }

    /// When the profile entered `aud`, if it is in it.
    pub fn entered(&self, aud: AudId) -> Option<Millis> {
        let view = self.view();
        view.slots().position(aud).ok()?;
        let exceptions = view.exceptions();
        Some(match exceptions.position(aud) {
            Ok(k) => exceptions.instant(k),
            Err(_) => view.common(),
        })
    }

    /// The memberships with their entry instants, by slot.
    pub fn iter(&self) -> impl Iterator<Item = Stamped> + '_ {
        let view = self.view();
        let shape = view.shape;
        let common = match shape.len {
            0 => 0,
            _ => view.common(),
        };
        let exceptions = view.exceptions();
        let mut next = 0;
        view.slots().iter().map(move |aud| {
            if next < shape.exceptions && exceptions.slot(next) == aud {
                next += 1;
                Stamped::new(aud, exceptions.instant(next - 1))
            } else {
                Stamped::new(aud, common)
            }
        })
    }

    /// Makes room for `additional` more memberships at the common instant
    /// in one allocation (a new profile enters a dozen audiences at once).
    pub fn reserve(&mut self, additional: usize) {
        let shape = self.shape();
        self.grow_to(shape.used().max(HEADER) + shape.width * additional, 0);
    }

    /// Adds `aud`, entered at `at`; false if the profile already is in it.
    pub fn insert(&mut self, aud: AudId, at: Millis) -> bool {
        let mut view = self.view();
        if view.shape.len == 0 {
            let wide = aud > NARROW_MAX;
            let width = if wide { 2 } else { 1 };
            self.grow_to(HEADER + width, 0);
            let units = self.units.as_mut_slice();
            set_word(units, 0, 1);
            set_word(units, 2, if wide { WIDE } else { 0 });
            units[4..HEADER].copy_from_slice(&instant_units(at));
            set_slot(units, HEADER, width, aud);
            return true;
        }
        let position = match view.slots().position(aud) {
            Ok(_) => return false,
            Err(position) => position,
        };
        if aud > NARROW_MAX && view.shape.width == 1 {
            // A slot past 2^16: every slot of the list takes two units now.
            let entries: Vec<Stamped> = self.iter().collect();
            *self = AudienceList::build(&entries, true);
            view = self.view();
        }
        let mut shape = view.shape;
        let width = shape.width;
        // The exception's place, found before the slots move.
        let exception = (at != view.common()).then(|| view.exceptions().position(aud).unwrap_err());
        let used = shape.used();
        let exception_units = width + INSTANT;
        let needed = used + width + exception.map_or(0, |_| exception_units);
        if view.units.len() < needed {
            self.regrow(needed + shape.spare());
        }
        // One slice for the edits: each read of the box decodes its pointer.
        let units = self.units.as_mut_slice();
        let at_slot = HEADER + width * position;
        units.copy_within(at_slot..used, at_slot + width);
        set_slot(units, at_slot, width, aud);
        shape.len += 1;
        set_word(units, 0, shape.len as u32);
        if let Some(k) = exception {
            let start = shape.exceptions_start() + exception_units * k;
            units.copy_within(start..used + width, start + exception_units);
            set_slot(units, start, width, aud);
            units[start + width..start + exception_units].copy_from_slice(&instant_units(at));
            shape.exceptions += 1;
            set_exceptions(units, shape);
            if shape.exceptions * 2 > shape.len && self.outnumbers_common(at) {
                // An event that moves a profile into dozens of audiences
                // at once enters them all at its instant: rebuilt, the
                // list takes the most frequent instant (that one, or one
                // more frequent still) as the common one, and stops
                // copying six units per membership on every later insert.
                let entries: Vec<Stamped> = self.iter().collect();
                *self = AudienceList::from_sorted(&entries);
            }
        }
        true
    }

    /// Enters (at `at`) or leaves the audience of each of `flips`, as
    /// [`AudienceList::insert`] and [`AudienceList::remove`] would one by
    /// one; `flips` name each audience once and are sorted here. From
    /// [`MERGED_FLIPS`] on, the list is rebuilt once, merged with them,
    /// where each insert would search and shift the list (an order puts a
    /// frequent buyer into or out of a hundred audiences at once).
    /// `scratch` is working room, kept by the caller between calls.
    pub fn apply_flips(
        &mut self,
        flips: &mut [(AudId, bool)],
        at: Millis,
        scratch: &mut FlipScratch,
    ) {
        if flips.len() < MERGED_FLIPS {
            for &(aud, member) in flips.iter() {
                match member {
                    true => self.insert(aud, at),
                    false => self.remove(aud),
                };
            }
            return;
        }
        flips.sort_unstable_by_key(|&(aud, _)| aud);
        debug_assert!(flips.windows(2).all(|w| w[0].0 < w[1].0));
        if !self.merge_narrow(flips, at, scratch) {
            self.rebuild_with(flips, at, &mut scratch.entries);
        }
    }

    /// [`AudienceList::apply_flips`]'s merge, unit by unit, for a narrow
    /// list that keeps its common instant: one walk over the slots and one
    /// over the exceptions, into `scratch`, then one exact allocation.
    /// False, with nothing changed, for any other case (see
    /// [`AudienceList::rebuild_with`]).
    fn merge_narrow(
        &mut self,
        flips: &[(AudId, bool)],
        at: Millis,
        scratch: &mut FlipScratch,
    ) -> bool {
        let view = self.view();
        let shape = view.shape;
        if shape.len == 0 || shape.width != 1 || flips.last().is_some_and(|f| f.0 > NARROW_MAX) {
            return false;
        }
        let common = view.common();
        let slots = &view.units[HEADER..HEADER + shape.len];
        let FlipScratch {
            edits,
            slots: merged,
            exceptions: merged_exceptions,
            ..
        } = scratch;
        // The slots, merged with the flips; the flips that change something.
        edits.clear();
        merged.clear();
        merged.reserve(shape.len + flips.len());
        let mut next = 0;
        for &(aud, member) in flips {
            let unit = aud as u16;
            while let Some(&slot) = slots.get(next).filter(|&&slot| slot < unit) {
                merged.push(slot);
                next += 1;
            }
            let present = slots.get(next) == Some(&unit);
            match (member, present) {
                (true, false) => merged.push(unit),
                (false, true) => next += 1,
                // Kept as it is (copied with the next run), or absent.
                _ => continue,
            }
            edits.push((unit, member));
        }
        merged.extend_from_slice(&slots[next..]);
        // The exceptions, less those left, with the entries at `at` unless
        // it is the common instant.
        let exceptions = view.units[shape.exceptions_start()..shape.used()]
            .as_chunks::<{ 1 + INSTANT }>()
            .0;
        let instant = instant_units(at);
        merged_exceptions.clear();
        let mut next = 0;
        let mut entered_aside = 0;
        for &(unit, member) in edits.iter() {
            while let Some(exception) = exceptions.get(next).filter(|e| e[0] < unit) {
                merged_exceptions.extend_from_slice(exception);
                next += 1;
            }
            match member {
                true if at != common => {
                    merged_exceptions.push(unit);
                    merged_exceptions.extend_from_slice(&instant);
                    entered_aside += 1;
                }
                true => {}
                false => next += usize::from(exceptions.get(next).is_some_and(|e| e[0] == unit)),
            }
        }
        merged_exceptions.extend_from_slice(exceptions[next..].as_flattened());
        let len = merged.len();
        let exception_count = merged_exceptions.len() / (1 + INSTANT);
        let at_common = len - exception_count;
        // Those at `at` now: the new ones and any kept from before.
        let at_now = match entered_aside {
            0 => 0,
            _ => merged_exceptions
                .as_chunks::<{ 1 + INSTANT }>()
                .0
                .iter()
                .filter(|e| e[1..] == instant)
                .count(),
        };
        // None left at the common instant, or more at `at` than at it (as
        // `insert` does): the common instant is chosen again.
        if at_common == 0 || at_now > at_common {
            return false;
        }
        let mut units = Vec::with_capacity(HEADER + len + merged_exceptions.len());
        units.extend_from_slice(&view.units[..HEADER]);
        set_word(&mut units, 0, len as u32);
        let shape = Shape {
            len,
            exceptions: exception_count,
            width: 1,
        };
        set_exceptions(&mut units, shape);
        units.extend_from_slice(merged);
        units.extend_from_slice(merged_exceptions);
        self.units = ThinBox::from(units);
        true
    }

    /// [`AudienceList::apply_flips`] by a rebuild from the entries, the
    /// common instant chosen again where needed: it stays unless more
    /// memberships are at `at` (as `insert` does), or none is left at it.
    fn rebuild_with(&mut self, flips: &[(AudId, bool)], at: Millis, entries: &mut Vec<Stamped>) {
        entries.clear();
        let mut edits = flips.iter().copied().peekable();
        for entry in self.iter() {
            while let Some((aud, member)) = edits.next_if(|&(aud, _)| aud < entry.id) {
                if member {
                    entries.push(Stamped::new(aud, at));
                }
            }
            // A membership kept, or (`insert` leaving it) entered again.
            if edits.next_if(|&(aud, _)| aud == entry.id) != Some((entry.id, false)) {
                entries.push(entry);
            }
        }
        entries.extend(
            edits
                .filter(|&(_, member)| member)
                .map(|(aud, _)| Stamped::new(aud, at)),
        );
        let view = self.view();
        let common = (view.shape.len > 0).then(|| view.common());
        let (mut at_common, mut at_now) = (0, 0);
        for entry in entries.iter() {
            at_common += usize::from(Some(entry.at()) == common);
            at_now += usize::from(entry.at() == at);
        }
        // Rebuilt from its entries: wide only if a slot needs it.
        let wide = entries.last().is_some_and(|e| e.id > NARROW_MAX);
        *self = match (common, at_common >= at_now) {
            (Some(common), true) if at_common > 0 => {
                AudienceList::build_around(entries, wide, common)
            }
            _ if at_now > 0 => AudienceList::build_around(entries, wide, at),
            _ => AudienceList::build(entries, wide),
        };
    }

    /// Whether more memberships were entered at `at` (an exception's
    /// instant) than at the common instant.
    fn outnumbers_common(&self, at: Millis) -> bool {
        let view = self.view();
        let at_common = view.shape.len - view.shape.exceptions;
        let exceptions = view.exceptions();
        let at_instant = (0..view.shape.exceptions)
            .filter(|&k| exceptions.instant(k) == at)
            .count();
        at_instant > at_common
    }

    /// Removes `aud`; false if the profile was not in it.
    pub fn remove(&mut self, aud: AudId) -> bool {
        let view = self.view();
        let mut shape = view.shape;
        let Ok(position) = view.slots().position(aud) else {
            return false;
        };
        // Most lists have no exception: no search then.
        let exception = match shape.exceptions {
            0 => None,
            _ => view.exceptions().position(aud).ok(),
        };
        let width = shape.width;
        let exception_units = width + INSTANT;
        let mut used = shape.used();
        let units = self.units.as_mut_slice();
        if let Some(k) = exception {
            let start = shape.exceptions_start() + exception_units * k;
            units.copy_within(start + exception_units..used, start);
            shape.exceptions -= 1;
            set_exceptions(units, shape);
            used -= exception_units;
        }
        let at_slot = HEADER + width * position;
        units.copy_within(at_slot + width..used, at_slot);
        shape.len -= 1;
        set_word(units, 0, shape.len as u32);
        used -= width;
        let room = units.len() - used;
        if shape.len == 0 {
            self.units = ThinBox::new();
        } else if shape.len == shape.exceptions {
            // No member is left at the common instant: choose it again, so
            // that the list does not keep every instant twice.
            let entries: Vec<Stamped> = self.iter().collect();
            *self = AudienceList::from_sorted(&entries);
        } else if room > 2 * (shape.spare() + exception_units) {
            // Gives memory back once well over the room growth leaves, but
            // not for one exception coming and going: a membership toggling
            // at its own instants would reallocate at every step.
            self.regrow(used + shape.spare());
        }
        true
    }

    /// Gives back the room left (at the end of an event: a new profile
    /// enters a dozen audiences of empty profiles at once and leaves most
    /// of them at its first event).
    pub fn trim(&mut self) {
        let used = self.used();
        if used == 0 {
            self.units = ThinBox::new();
        } else if self.units.len() > used {
            self.regrow(used);
        }
    }

    /// The first unit (0 when empty), read to bring the list into the
    /// cache ahead of its use (see [`crate::profile::UserData::warm_states`]).
    pub fn first_unit(&self) -> u16 {
        self.units.first().copied().unwrap_or(0)
    }

    /// Heap bytes.
    pub fn heap_bytes(&self) -> usize {
        self.units.heap_bytes()
    }

    /// Units in use (none for an empty list, whatever its room).
    fn used(&self) -> usize {
        self.shape().used()
    }

    /// Grows the box to at least `needed` units, with `spare` more, when it
    /// is shorter.
    #[inline]
    fn grow_to(&mut self, needed: usize, spare: usize) {
        if self.units.len() < needed {
            self.regrow(needed + spare);
        }
    }

    /// Reallocates the box to `len` units (new ones zero, none in use cut).
    #[cold]
    fn regrow(&mut self, len: usize) {
        debug_assert!(len >= self.used());
        let mut units = std::mem::take(&mut self.units).into_vec();
        units.reserve_exact(len.saturating_sub(units.len()));
        units.resize(len, 0);
        self.units = ThinBox::from(units);
    }
}

/// Writes `word` at unit `i` (low, high).
fn set_word(units: &mut [u16], i: usize, word: u32) {
    units[i..i + 2].copy_from_slice(&[word as u16, (word >> 16) as u16]);
}

/// Writes slot `aud` at unit `i`, `width` units long.
fn set_slot(units: &mut [u16], i: usize, width: usize, aud: AudId) {
    match width {
        2 => set_word(units, i, aud),
        _ => units[i] = aud as u16,
    }
}

/// Writes the exceptions' count, with the width's flag.
fn set_exceptions(units: &mut [u16], shape: Shape) {
    let wide = if shape.width == 2 { WIDE } else { 0 };
    set_word(units, 2, shape.exceptions as u32 | wide);
}

/// A list's units and their [`Shape`].
#[derive(Clone, Copy)]
struct View<'a> {
    units: &'a [u16],
    shape: Shape,
}

impl<'a> View<'a> {
    /// Reads the header of `units`.
    #[inline]
    fn of(units: &'a [u16]) -> View<'a> {
        let shape = match units.first_chunk::<4>() {
            None => Shape {
                len: 0,
                exceptions: 0,
                width: 1,
            },
            Some(header) => {
                let exceptions = word(&header[2..]);
                Shape {
                    len: word(header) as usize,
                    exceptions: (exceptions & !WIDE) as usize,
                    width: if exceptions & WIDE != 0 { 2 } else { 1 },
                }
            }
        };
        View { units, shape }
    }

    /// The audience slots, ascending.
    #[inline]
    fn slots(self) -> Slots<'a> {
        match self.shape.len {
            0 => Slots {
                units: &[],
                wide: false,
            },
            n => Slots {
                units: &self.units[HEADER..HEADER + self.shape.width * n],
                wide: self.shape.width == 2,
            },
        }
    }

    /// The exceptions, `(slot, instant)` each.
    fn exceptions(self) -> Exceptions<'a> {
        let units = match self.shape.exceptions {
            0 => &[],
            _ => &self.units[self.shape.exceptions_start()..self.shape.used()],
        };
        Exceptions {
            units,
            width: self.shape.width,
        }
    }

    /// The common instant (of a non-empty list).
    fn common(self) -> Millis {
        instant_from_units(&self.units[4..HEADER])
    }
}

/// A list's counts and units per slot.
#[derive(Debug, Clone, Copy)]
struct Shape {
    len: usize,
    exceptions: usize,
    width: usize,
}

impl Shape {
    fn exceptions_start(self) -> usize {
        HEADER + self.width * self.len
    }

    /// Units in use: none for an empty list (the room a reserve left is
    /// not in use).
    fn used(self) -> usize {
        match self.len {
            0 => 0,
            n => HEADER + self.width * n + (self.width + INSTANT) * self.exceptions,
        }
    }

    /// The room growth leaves, in units: a quarter of the slots, one at
    /// least.
    fn spare(self) -> usize {
        (self.len / 4 + 1) * self.width
    }
}

/// A list's audience slots, ascending: one unit each, or two (low, high)
/// in a wide list.
#[derive(Clone, Copy)]
pub struct Slots<'a> {
    units: &'a [u16],
    wide: bool,
}

impl<'a> Slots<'a> {
    /// How many.
    pub fn len(&self) -> usize {
        match self.wide {
            true => self.units.len() / 2,
            false => self.units.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// The `k`-th slot.
    #[inline]
    pub fn get(&self, k: usize) -> Option<AudId> {
        match self.wide {
            true => {
                let at = k.checked_mul(2)?;
                Some(word(self.units.get(at..at.checked_add(2)?)?))
            }
            false => self.units.get(k).map(|&unit| AudId::from(unit)),
        }
    }

    /// The slots as they are stored, one unit each, when the list is
    /// narrow (every slot below 2^16).
    #[inline]
    pub fn narrow(&self) -> Option<&'a [u16]> {
        (!self.wide).then_some(self.units)
    }

    /// The slots in order.
    pub fn iter(self) -> impl Iterator<Item = AudId> + Clone + 'a {
        let width = self.width();
        (0..self.len()).map(move |k| slot_at(self.units, width * k, width))
    }

    fn width(&self) -> usize {
        if self.wide {
            2
        } else {
            1
        }
    }

    /// Where `aud` is (or would go).
    fn position(&self, aud: AudId) -> Result<usize, usize> {
        match (self.wide, u16::try_from(aud)) {
            (false, Ok(unit)) => self.units.binary_search(&unit),
            // Past every slot of a narrow list.
            (false, Err(_)) => Err(self.units.len()),
            (true, _) => search(self.len(), |k| slot_at(self.units, 2 * k, 2), aud),
        }
    }
}

/// A list's exceptions: slot (one unit or two) and instant (four units)
/// each, ascending by slot.
struct Exceptions<'a> {
    units: &'a [u16],
    width: usize,
}

impl Exceptions<'_> {
    fn slot(&self, k: usize) -> AudId {
        slot_at(self.units, (self.width + INSTANT) * k, self.width)
    }

    fn instant(&self, k: usize) -> Millis {
        let at = (self.width + INSTANT) * k + self.width;
        instant_from_units(&self.units[at..at + INSTANT])
    }

    /// Where `aud` is (or would go).
    fn position(&self, aud: AudId) -> Result<usize, usize> {
        search(
            self.units.len() / (self.width + INSTANT),
            |k| self.slot(k),
            aud,
        )
    }
}

/// The slot at unit `at`, `width` units long.
#[inline]
fn slot_at(units: &[u16], at: usize, width: usize) -> AudId {
    match width {
        2 => word(&units[at..]),
        _ => AudId::from(units[at]),
    }
}

/// The 32-bit value of two units (low, high).
#[inline]
fn word(units: &[u16]) -> u32 {
    u32::from(units[0]) | (u32::from(units[1]) << 16)
}

/// Binary search of `aud` among `n` ascending slots, `slot(k)` the k-th.
fn search(n: usize, slot: impl Fn(usize) -> AudId, aud: AudId) -> Result<usize, usize> {
    let (mut low, mut high) = (0, n);
    while low < high {
        let middle = (low + high) / 2;
        match slot(middle).cmp(&aud) {
            std::cmp::Ordering::Less => low = middle + 1,
            std::cmp::Ordering::Equal => return Ok(middle),
            std::cmp::Ordering::Greater => high = middle,
        }
    }
    Err(low)
}

/// The instant most entries share (the earliest of equals), if any.
fn most_frequent_instant(entries: &[Stamped]) -> Option<Millis> {
    let mut instants: Vec<Millis> = entries.iter().map(|e| e.at()).collect();
    instants.sort_unstable();
    let mut best: Option<(usize, Millis)> = None;
    for run in instants.chunk_by(|a, b| a == b) {
        if best.is_none_or(|(count, _)| run.len() > count) {
            best = Some((run.len(), run[0]));
        }
    }
    best.map(|(_, at)| at)
}

impl PartialEq for AudienceList {
    /// Equal memberships and instants, whatever the common instant and
    /// the spare room.
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl fmt::Debug for AudienceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|s| (s.id, s.at())))
            .finish()
    }
}

/// Serialized as the list of [`Stamped`] it stands for, as the `Vec` it
/// replaced was: snapshots keep their bytes.
impl Serialize for AudienceList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for AudienceList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut entries = Vec::<Stamped>::deserialize(deserializer)?;
        if !entries.windows(2).all(|w| w[0].id < w[1].id) {
            entries.sort_by_key(|e| e.id);
            entries.dedup_by_key(|e| e.id);
        }
        Ok(AudienceList::from_sorted(&entries))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(AudId, Millis),
        Remove(AudId),
    }

    /// Few slots, so that inserts collide; now and then one past 2^16,
    /// which makes the list wide.
    fn slot() -> impl Strategy<Value = AudId> {
        prop_oneof![8 => 0u32..24, 1 => 70_000u32..70_003]
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few instants, so that exceptions appear and the common instant is
        // left behind.
        prop_oneof![
            (
                slot(),
                prop_oneof![
                    Just(5i64),
                    Just(-1),
                    0i64..4,
                    Just(i64::MIN),
                    Just(i64::MAX)
                ]
            )
                .prop_map(|(aud, at)| Op::Insert(aud, at)),
            slot().prop_map(Op::Remove),
        ]
    }

    fn check(list: &AudienceList, model: &BTreeMap<AudId, Millis>) {
        let expected: Vec<Stamped> = model.iter().map(|(&a, &t)| Stamped::new(a, t)).collect();
        assert_eq!(list.iter().collect::<Vec<_>>(), expected);
        assert_eq!(list.len(), model.len());
        assert_eq!(list.is_empty(), model.is_empty());
        assert_eq!(
            list.slots().iter().collect::<Vec<_>>(),
            model.keys().copied().collect::<Vec<_>>()
        );
        for aud in (0..26).chain(69_999..70_004) {
            assert_eq!(list.contains(aud), model.contains_key(&aud));
            assert_eq!(list.entered(aud), model.get(&aud).copied());
        }
        assert!(list.used() <= list.units.len());
        // Never more room than twice what growth leaves, plus an exception
        // (and a slot's second unit, had it been narrow).
        let shape = list.shape();
        let exception = shape.width + INSTANT;
        assert!(list.units.len() - list.used() <= 2 * (shape.spare() + exception) + exception + 1);
        // Wide only when a slot needs it, or one did.
        if model.keys().any(|&a| a > NARROW_MAX) {
            assert_eq!(shape.width, 2);
        }
        // Exceptions exist only beside members at the common instant.
        if !list.is_empty() {
            assert!(list.shape().exceptions < list.len());
        }
        assert_eq!(list, &AudienceList::from_sorted(&expected));
    }

    proptest! {
        /// Against a map from slot to instant, after every step.
        #[test]
        fn behaves_as_a_sorted_map(ops in proptest::collection::vec(op(), 0..80)) {
            let mut list = AudienceList::default();
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(aud, at) => {
                        let fresh = !model.contains_key(&aud);
                        if fresh {
                            model.insert(aud, at);
                        }
                        prop_assert_eq!(list.insert(aud, at), fresh);
                    }
                    Op::Remove(aud) => {
                        prop_assert_eq!(list.remove(aud), model.remove(&aud).is_some());
                    }
                }
                check(&list, &model);
            }
        }

        /// Flips applied together leave the list as the same flips one by
        /// one: the map holds what `insert` and `remove` would leave.
        #[test]
        fn flips_at_once_behave_as_one_by_one(
            steps in proptest::collection::vec(
                (proptest::collection::btree_map(slot(), any::<bool>(), 0..12), 0i64..4),
                0..30,
            )
        ) {
            let mut list = AudienceList::default();
            let mut model = BTreeMap::new();
            let mut scratch = FlipScratch::default();
            for (flips, at) in steps {
                for (&aud, &member) in &flips {
                    match member {
                        true => {
                            model.entry(aud).or_insert(at);
                        }
                        false => {
                            model.remove(&aud);
                        }
                    }
                }
                // In another order than the slots'.
                let mut flips: Vec<(AudId, bool)> = flips.into_iter().rev().collect();
                list.apply_flips(&mut flips, at, &mut scratch);
                check(&list, &model);
            }
        }

        /// Serialized as the list of `Stamped` it stands for, byte for byte.
        #[test]
        fn serializes_as_the_stamped_list(entries in proptest::collection::btree_map(prop_oneof![0u32..1000, 65_530u32..65_540], 0i64..3, 0..30)) {
            let stamped: Vec<Stamped> = entries.iter().map(|(&a, &t)| Stamped::new(a, t)).collect();
            let list = AudienceList::from_sorted(&stamped);
            let bytes = postcard::to_allocvec(&list).unwrap();
            prop_assert_eq!(&bytes, &postcard::to_allocvec(&stamped).unwrap());
            let back: AudienceList = postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!(back, list);
        }
    }

    /// What a pass reads of its held-back flips, and what it leaves.
    #[test]
    fn pass_flips_stand_in_for_the_list_until_applied() {
        let mut list = AudienceList::from_sorted(&[Stamped::new(3, 100), Stamped::new(70, 100)]);
        let mut flips = PassFlips::default();
        let mut scratch = FlipScratch::default();
        flips.push(0, 70, false, 500);
        flips.push(0, 200, true, 500);
        assert_eq!(flips.member(70), Some(false));
        assert_eq!(flips.entered(200), Some(Some(500)));
        assert_eq!(flips.entered(70), Some(None));
        // Not flipped in the pass: the list says.
        assert_eq!(flips.member(3), None);
        assert_eq!(flips.member(10_000), None);
        flips.apply_to(&mut list, &mut scratch);
        assert!(flips.is_empty());
        assert_eq!(flips.member(200), None);
        let entries: Vec<(AudId, Millis)> = list.iter().map(|s| (s.id, s.at())).collect();
        assert_eq!(entries, [(3, 100), (200, 500)]);
        // A pass cut short leaves nothing for the next one.
        flips.push(0, 3, false, 900);
        assert!(flips.of(1).is_none());
        assert!(flips.of(0).is_some());
        flips.discard();
        assert!(flips.is_empty());
        assert_eq!(flips.member(3), None);
        flips.apply_to(&mut list, &mut scratch);
        assert!(list.contains(3));
    }

    #[test]
    fn slots_past_the_end_are_none() {
        for slots in [[3, 9], [70_000, 70_001]] {
            let entries: Vec<Stamped> = slots.iter().map(|&a| Stamped::new(a, 0)).collect();
            let list = AudienceList::from_sorted(&entries);
            let view = list.slots();
            assert_eq!((view.get(0), view.get(1)), (Some(slots[0]), Some(slots[1])));
            assert_eq!(view.get(2), None);
            assert_eq!(view.get(1 << 63), None);
        }
    }

    #[test]
    fn shares_the_common_instant() {
        let mut list = AudienceList::default();
        for aud in [7, 3, 9, 1] {
            assert!(list.insert(aud, 1_000));
        }
        assert!(list.insert(5, 2_000));
        // Header, five slots and one exception in use (growth left room).
        assert_eq!(list.used(), HEADER + 5 + 1 + INSTANT);
        assert!(list.units.len() > list.used());
        assert_eq!(list.entered(5), Some(2_000));
        assert_eq!(list.entered(9), Some(1_000));
        let mut trimmed = list.clone();
        trimmed.reserve(12);
        trimmed.trim();
        assert_eq!(trimmed.heap_bytes(), list.used() * 2);
        assert_eq!(trimmed, list);
        for aud in [7, 3, 9, 1] {
            assert!(list.remove(aud));
        }
        // The exception became the common instant.
        assert_eq!(list.shape().exceptions, 0);
        assert_eq!(list.entered(5), Some(2_000));
        assert!(list.remove(5));
        assert_eq!(list.heap_bytes(), 0);
    }

    /// An event that enters a profile into more audiences than it was in
    /// makes its instant the common one: the older memberships become the
    /// exceptions, not the new ones.
    #[test]
    fn the_instant_of_most_memberships_becomes_the_common_one() {
        let mut list = AudienceList::default();
        for aud in 0..10 {
            list.insert(aud * 10, 1_000);
        }
        for aud in 0..30 {
            list.insert(aud * 10 + 5, 2_000);
        }
        assert_eq!(list.len(), 40);
        assert_eq!(list.view().common(), 2_000);
        assert_eq!(list.shape().exceptions, 10);
        for aud in 0..10 {
            assert_eq!(list.entered(aud * 10), Some(1_000));
            assert_eq!(list.entered(aud * 10 + 5), Some(2_000));
        }
        // Memberships at scattered instants keep the common one.
        let mut scattered = AudienceList::default();
        for aud in 0..20 {
            scattered.insert(aud, 1_000 + Millis::from(aud > 4) * Millis::from(aud));
        }
        assert_eq!(scattered.view().common(), 1_000);
        assert_eq!(scattered.shape().exceptions, 15);
    }
}
