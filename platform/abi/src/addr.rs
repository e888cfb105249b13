//! Address newtypes for the fault path: a guest physical address and the
//! 4 KiB page frame holding it.
//!
//! The VMM, the fault engine and the pager pass these instead of bare `u64`s
//! so that a frame number can never be used where an address is meant (the
//! two differ by [`PAGE_SHIFT`] and are easy to mix up).
//!
//! ```
//! use apflab_abi::addr::{Gpa, Pfn};
//!
//! let gpa = Gpa(0x4010_0123);
//! assert_eq!(gpa.pfn(), Pfn(0x40100));
//! assert_eq!(gpa.pfn().gpa(), Gpa(0x4010_0000));
//! assert_eq!(gpa.page_offset(), 0x123);
//! ```

use core::fmt;

use crate::memory_map::{PAGE_SHIFT, PAGE_SIZE};

/// A guest physical address (an IPA, in the Arm architecture's words).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gpa(pub u64);

/// A guest page frame number: a guest physical address shifted right by
/// [`PAGE_SHIFT`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pfn(pub u64);

impl Gpa {
    /// The frame holding this address.
    pub const fn pfn(self) -> Pfn {
        Pfn(self.0 >> PAGE_SHIFT)
    }

    /// The first address of the page holding this address.
    pub const fn page_base(self) -> Gpa {
        Gpa(self.0 & !(PAGE_SIZE - 1))
    }

    /// This address's offset in its page.
    pub const fn page_offset(self) -> u64 {
        self.0 & (PAGE_SIZE - 1)
    }
}

impl Pfn {
    /// The first guest physical address of this frame (saturates for frame
    /// numbers no 64-bit address can have, which are never valid).
    pub const fn gpa(self) -> Gpa {
        Gpa(self.0.saturating_mul(PAGE_SIZE))
    }
}

impl fmt::LowerHex for Gpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl fmt::LowerHex for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl fmt::Display for Gpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_and_address_round_trip() {
        for a in [0u64, 0xfff, 0x1000, 0x4000_0000, 0x4010_0fff] {
            let g = Gpa(a);
            assert_eq!(g.pfn().gpa(), g.page_base());
            assert_eq!(g.page_base().0 + g.page_offset(), a);
        }
        assert_eq!(Pfn(u64::MAX).gpa(), Gpa(u64::MAX));
    }
}
