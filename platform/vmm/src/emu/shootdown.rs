//! TLB maintenance that other vCPUs must see.
//!
//! A TLBI for the Inner or Outer Shareable domain (`TLBI VAE1IS`,
//! `TLBI VMALLE1IS`, their range and OS forms) invalidates the entries of
//! every PE in the domain: that is how a kernel on several CPUs changes a
//! mapping (break-before-make, then `TLBI ...IS; DSB ISH`). Each vCPU of
//! this backend has an engine of its own, and an engine's TLBI reaches only
//! its own TLB. So a broadcast TLBI counts a shootdown here, and every other
//! engine drops its whole TLB before it next runs. That is at least what the
//! architecture asks (more entries go than the TLBI named, which is always
//! allowed), and it is in time: the engines take turns on one thread, so no
//! other vCPU runs between the TLBI and its completing DSB.

use std::cell::Cell;

/// The count of broadcast TLB invalidations the vCPUs of one VM made.
#[derive(Debug, Default)]
pub(crate) struct Shootdowns {
    made: Cell<u64>,
}

impl Shootdowns {
    /// Counts one broadcast TLBI; returns the new count, which the vCPU
    /// that made it has already seen (its engine carried it out).
    pub(super) fn broadcast(&self) -> u64 {
        let n = self.made.get() + 1;
        self.made.set(n);
        n
    }

    /// The count so far.
    pub(super) fn made(&self) -> u64 {
        self.made.get()
    }

    /// Sets how many were made (a snapshot's count).
    pub(super) fn set_made(&self, n: u64) {
        self.made.set(n);
    }
}

/// Whether the system instruction (op0 = 1) with `crn` and `crm` is a TLBI
/// for a shareable domain: CRn 8 with CRm 0b0001 (OS), 0b0010 (range IS),
/// 0b0011 (IS) or 0b0101 (range OS). CRm 0b0110 and 0b0111 are the local
/// forms.
pub(super) fn is_broadcast_tlbi(crn: u32, crm: u32) -> bool {
    crn == 8 && matches!(crm, 0b0001 | 0b0010 | 0b0011 | 0b0101)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shareable_tlbis_broadcast_and_local_ones_do_not() {
        // tlbi vmalle1is (CRm 3), tlbi vae1os (CRm 1), tlbi rvae1is (CRm 2),
        // tlbi rvae1os (CRm 5).
        for crm in [3, 1, 2, 5] {
            assert!(is_broadcast_tlbi(8, crm), "CRm {crm}");
        }
        // tlbi vmalle1 (CRm 7), tlbi rvae1 (CRm 6); ic iallu (CRn 7).
        assert!(!is_broadcast_tlbi(8, 7));
        assert!(!is_broadcast_tlbi(8, 6));
        assert!(!is_broadcast_tlbi(7, 5));
    }

    #[test]
    fn each_broadcast_is_counted_once() {
        let s = Shootdowns::default();
        assert_eq!(s.made(), 0);
        assert_eq!(s.broadcast(), 1);
        assert_eq!(s.broadcast(), 2);
        assert_eq!(s.made(), 2);
    }
}
