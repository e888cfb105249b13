//! Which managed pages are resident, and which one leaves when a fetched
//! page needs a frame.
//!
//! Pages are indexed 0..n within the [`crate::ManagedRange`]. A page is
//! `Absent`, `InFlight` (a fetch holds a frame for it) or `Resident`. The
//! frames in use (in flight + resident) never exceed the limit: a fetch that
//! finds no free frame evicts a resident page, and when every frame is held
//! by a fetch in flight there is nothing to evict and the caller must wait.

use std::collections::VecDeque;

use crate::config::EvictionPolicy;

/// Residency of one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageState {
    /// In the store only.
    Absent,
    /// Being fetched; holds a frame.
    InFlight,
    /// In guest memory.
    Resident,
}

const STATE_MASK: u8 = 0b11;
const ABSENT: u8 = 0;
const IN_FLIGHT: u8 = 1;
const RESIDENT: u8 = 2;
/// Touched since the CLOCK hand last passed.
const ACCESSED: u8 = 1 << 2;
/// Written since installed (meaningful with hinted dirty tracking).
const DIRTY: u8 = 1 << 3;
/// Evicted at least once (a later fetch is a refault).
const EVICTED_BEFORE: u8 = 1 << 4;

/// A page chosen to leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Victim {
    /// Page index.
    pub index: usize,
    /// Whether it was marked dirty.
    pub dirty: bool,
}

/// Per-page residency and the eviction policy's state.
#[derive(Clone, Debug)]
pub struct Residency {
    flags: Vec<u8>,
    limit: usize,
    used: usize,
    resident: usize,
    high_water: usize,
    policy: EvictionPolicy,
    clock_hand: usize,
    fifo: VecDeque<u32>,
}

impl Residency {
    /// `pages` managed pages, at most `limit` frames (clamped to `pages`).
    pub fn new(pages: usize, limit: usize, policy: EvictionPolicy) -> Self {
        Residency {
            flags: vec![ABSENT; pages],
            limit: limit.min(pages),
            used: 0,
            resident: 0,
            high_water: 0,
            policy,
            clock_hand: 0,
            fifo: VecDeque::new(),
        }
    }

    /// Number of managed pages.
    pub fn pages(&self) -> usize {
        self.flags.len()
    }

    /// Frame limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Frames in use (resident + in flight).
    pub fn used(&self) -> usize {
        self.used
    }

    /// Resident pages.
    pub fn resident(&self) -> usize {
        self.resident
    }

    /// Most frames ever in use at once.
    pub fn high_water(&self) -> usize {
        self.high_water
    }

    /// State of page `i`.
    #[inline]
    pub fn state(&self, i: usize) -> PageState {
        match self.flags[i] & STATE_MASK {
            IN_FLIGHT => PageState::InFlight,
            RESIDENT => PageState::Resident,
            _ => PageState::Absent,
        }
    }

    /// Whether page `i` was evicted before.
    #[inline]
    pub fn evicted_before(&self, i: usize) -> bool {
        self.flags[i] & EVICTED_BEFORE != 0
    }

    /// Takes a frame for fetching absent page `i`. Returns the victim that
    /// gave up its frame (now `Absent`), or `Err(())` if every frame is held
    /// by a fetch in flight.
    pub fn begin_fetch(&mut self, i: usize) -> Result<Option<Victim>, NoFrame> {
        debug_assert_eq!(self.state(i), PageState::Absent);
        let victim = if self.used < self.limit {
            self.used += 1;
            self.high_water = self.high_water.max(self.used);
            None
        } else {
            let v = self.pick_victim().ok_or(NoFrame)?;
            let dirty = self.flags[v] & DIRTY != 0;
            self.flags[v] = ABSENT | EVICTED_BEFORE;
            self.resident -= 1;
            Some(Victim { index: v, dirty })
        };
        self.flags[i] = (self.flags[i] & EVICTED_BEFORE) | IN_FLIGHT;
        Ok(victim)
    }

    /// Page `i`'s fetch is done: it is resident, accessed, and dirty if
    /// `dirty`.
    pub fn install(&mut self, i: usize, dirty: bool) {
        debug_assert_eq!(self.state(i), PageState::InFlight);
        self.flags[i] =
            (self.flags[i] & EVICTED_BEFORE) | RESIDENT | ACCESSED | if dirty { DIRTY } else { 0 };
        self.resident += 1;
        if self.policy == EvictionPolicy::Fifo {
            self.fifo.push_back(i as u32);
        }
    }

    /// Makes absent page `i` resident without a fetch (boot-time
    /// population); false if no frame is free.
    pub fn populate(&mut self, i: usize) -> bool {
        if self.state(i) != PageState::Absent || self.used >= self.limit {
            return false;
        }
        self.used += 1;
        self.high_water = self.high_water.max(self.used);
        self.flags[i] = IN_FLIGHT;
        self.install(i, false);
        true
    }

    /// The backend saw page `i` accessed (CLOCK's referenced bit).
    #[inline]
    pub fn note_access(&mut self, i: usize) {
        if self.flags[i] & STATE_MASK == RESIDENT {
            self.flags[i] |= ACCESSED;
        }
    }

    /// The backend saw page `i` written.
    #[inline]
    pub fn mark_dirty(&mut self, i: usize) {
        if self.flags[i] & STATE_MASK == RESIDENT {
            self.flags[i] |= DIRTY | ACCESSED;
        }
    }

    fn pick_victim(&mut self) -> Option<usize> {
        if self.resident == 0 {
            return None;
        }
        match self.policy {
            EvictionPolicy::Clock => {
                let n = self.flags.len();
                // Two sweeps suffice: the first clears every accessed bit.
                for _ in 0..2 * n {
                    let i = self.clock_hand;
                    self.clock_hand = if i + 1 == n { 0 } else { i + 1 };
                    let f = &mut self.flags[i];
                    if *f & STATE_MASK != RESIDENT {
                        continue;
                    }
                    if *f & ACCESSED != 0 {
                        *f &= !ACCESSED;
                        continue;
                    }
                    return Some(i);
                }
                None
            }
            EvictionPolicy::Fifo => {
                // Entries are pushed on install and popped on eviction, so
                // the front is resident; skip defensively all the same.
                while let Some(i) = self.fifo.pop_front() {
                    if self.flags[i as usize] & STATE_MASK == RESIDENT {
                        return Some(i as usize);
                    }
                }
                None
            }
        }
    }
}

/// Every frame is held by a fetch in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoFrame;

#[cfg(test)]
mod tests {
    use super::*;

    fn fetch(r: &mut Residency, i: usize) -> Option<usize> {
        let v = r.begin_fetch(i).unwrap().map(|v| v.index);
        r.install(i, false);
        v
    }

    #[test]
    fn limit_is_never_exceeded() {
        let mut r = Residency::new(100, 10, EvictionPolicy::Clock);
        for k in 0..1000usize {
            let i = (k * 37 + k / 7) % 100;
            if r.state(i) == PageState::Absent {
                fetch(&mut r, i);
            } else {
                r.note_access(i);
            }
            assert!(r.used() <= 10);
            assert_eq!(
                r.used(),
                (0..100)
                    .filter(|&j| r.state(j) != PageState::Absent)
                    .count()
            );
        }
        assert_eq!(r.high_water(), 10);
    }

    #[test]
    fn clock_gives_accessed_pages_a_second_chance() {
        let mut r = Residency::new(8, 4, EvictionPolicy::Clock);
        for i in 0..4 {
            fetch(&mut r, i);
        }
        // All four were accessed on install: the hand clears 0..3 and comes
        // back to 0.
        assert_eq!(fetch(&mut r, 4), Some(0));
        // Page 1 is touched again: it survives, 2 goes.
        r.note_access(1);
        assert_eq!(fetch(&mut r, 5), Some(2));
        assert_eq!(fetch(&mut r, 6), Some(3));
        assert_eq!(r.state(1), PageState::Resident);
        assert!(r.evicted_before(0) && !r.evicted_before(1));
    }

    #[test]
    fn fifo_evicts_in_install_order() {
        let mut r = Residency::new(8, 3, EvictionPolicy::Fifo);
        for i in [5, 2, 7] {
            fetch(&mut r, i);
        }
        r.note_access(5);
        assert_eq!(fetch(&mut r, 0), Some(5));
        assert_eq!(fetch(&mut r, 1), Some(2));
        assert_eq!(fetch(&mut r, 5), Some(7));
    }

    #[test]
    fn in_flight_pages_are_never_victims() {
        let mut r = Residency::new(8, 2, EvictionPolicy::Clock);
        assert_eq!(r.begin_fetch(0), Ok(None));
        assert_eq!(r.begin_fetch(1), Ok(None));
        assert_eq!(r.begin_fetch(2), Err(NoFrame));
        r.install(0, true);
        let v = r.begin_fetch(2).unwrap().unwrap();
        assert_eq!(
            v,
            Victim {
                index: 0,
                dirty: true
            }
        );
        assert_eq!(r.state(1), PageState::InFlight);
    }

    #[test]
    fn populate_respects_the_limit() {
        let mut r = Residency::new(8, 3, EvictionPolicy::Clock);
        assert!((0..8).filter(|&i| r.populate(i)).count() == 3);
        assert!(!r.populate(0), "already resident");
        assert_eq!(r.resident(), 3);
    }
}
