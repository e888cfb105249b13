//! Per-page residency on the emu backend.
//!
//! Mechanism: the engines run with a virtual
//! TLB whose fills this backend makes itself (the guest's stage-1 walk,
//! then a look-up in the bitmap of absent pages). An access to an absent
//! page fails its TLB fill before the instruction has any effect, and the
//! vCPU exits with the page's address. Making a page absent flushes the
//! engines' TLBs; making it resident is a bit flip. Unlike protecting pages
//! in the engine's memory map (whose cost grows with every distinct
//! protected range and made runs with thousands of absent pages crawl),
//! the cost per change stays constant, and resident memory runs at full
//! speed once its translation is cached.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use apflab_abi::memory_map::{PAGE_SIZE, RAM_BASE};
use vm_memory::GuestMemoryMmap;

use super::EmuVcpu;
use apflab_abi::addr::Gpa;

use crate::hypervisor::{HypervisorError, Residency};

/// Which guest RAM pages are absent: one bit per page, written through
/// [`EmuResidency`] and read by every engine's TLB-fill hook.
pub(crate) struct AbsentPages {
    ram_size: u64,
    bits: RefCell<Vec<u64>>,
    count: Cell<u64>,
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

    fn page_index(&self, ipa: u64) -> Option<usize> {
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
    fn set(&self, i: usize, absent: bool) -> bool {
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

/// Residency of guest RAM pages across all engines of a VM.
pub struct EmuResidency {
    memory: GuestMemoryMmap,
    absent: Rc<AbsentPages>,
}

impl EmuResidency {
    pub(crate) fn new(memory: GuestMemoryMmap, absent: Rc<AbsentPages>) -> Self {
        EmuResidency { memory, absent }
    }

    /// Pages currently absent.
    pub fn absent_pages(&self) -> u64 {
        self.absent.count.get()
    }

    /// A [`Residency`] handle that applies changes to `vcpus`' engines.
    pub fn with<'a>(&'a mut self, vcpus: &'a mut [EmuVcpu]) -> ResidencyHandle<'a> {
        ResidencyHandle { res: self, vcpus }
    }
}

/// [`Residency`] over the engines of an emu VM.
pub struct ResidencyHandle<'a> {
    res: &'a mut EmuResidency,
    vcpus: &'a mut [EmuVcpu],
}

impl Residency for ResidencyHandle<'_> {
    fn set_resident(&mut self, gpa: Gpa, resident: bool) -> Result<(), HypervisorError> {
        let ipa = gpa.0;
        let i = self
            .res
            .absent
            .page_index(ipa)
            .ok_or(HypervisorError::OutsideRam(ipa))?;
        if self.res.absent.set(i, !resident) && !resident {
            // Translations cached while the page was resident must go.
            for v in self.vcpus.iter_mut() {
                v.flush_tlb()?;
            }
        }
        Ok(())
    }

    fn is_resident(&self, gpa: Gpa) -> bool {
        let ipa = gpa.0;
        self.res.absent.page_index(ipa).is_some() && !self.res.absent.is_absent(ipa)
    }

    fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.res.memory
    }
}
