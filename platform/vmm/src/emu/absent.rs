//! The bitmap of withheld guest RAM pages that every engine's TLB fill
//! reads (see [`super::residency`] for why a bitmap).

use std::cell::{Cell, RefCell};

use apflab_abi::memory_map::{PAGE_SIZE, RAM_BASE};

/// Which guest RAM pages are absent: one bit per page, written through
/// [`EmuResidency`] and read by every engine's TLB-fill hook.
pub(crate) struct AbsentPages {
    ram_size: u64,
    bits: RefCell<Vec<u64>>,
    pub(super) count: Cell<u64>,
}

impl AbsentPages {
    /// Everything resident.
    pub(crate) fn new(ram_size: u64) -> Self {
        let pages = ram_size.div_ceil(PAGE_SIZE);
        AbsentPages {
            ram_size,
            bits: RefCell::new(vec![0; pages.div_ceil(64) as usize]),
            count: Cell::new(0),
        }
    }

    pub(super) fn page_index(&self, ipa: u64) -> Option<usize> {
        (RAM_BASE..RAM_BASE + self.ram_size)
            .contains(&ipa)
            .then(|| ((ipa - RAM_BASE) / PAGE_SIZE) as usize)
    }

    /// Whether the RAM page holding `ipa` is absent (false outside RAM).
    pub(crate) fn is_absent(&self, ipa: u64) -> bool {
        self.page_index(ipa)
            .is_some_and(|i| self.bits.borrow()[i / 64] & (1 << (i % 64)) != 0)
    }

    /// Marks page `i` absent or resident; whether that changed anything.
    /// The bitmap, a bit per page (set: absent), for a snapshot.
    pub(crate) fn words(&self) -> Vec<u64> {
        self.bits.borrow().clone()
    }

    /// Makes the bitmap `words` (from [`AbsentPages::words`] of as much
    /// RAM); false if it is not of this size.
    pub(crate) fn load(&self, words: &[u64]) -> bool {
        let mut bits = self.bits.borrow_mut();
        if words.len() != bits.len() {
            return false;
        }
        bits.copy_from_slice(words);
        self.count
            .set(words.iter().map(|w| u64::from(w.count_ones())).sum());
        true
    }

    pub(super) fn set(&self, i: usize, absent: bool) -> bool {
        let mut bits = self.bits.borrow_mut();
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if (bits[word] & bit != 0) == absent {
            return false;
        }
        bits[word] ^= bit;
        let n = self.count.get();
        self.count.set(if absent { n + 1 } else { n - 1 });
        true
    }
}
