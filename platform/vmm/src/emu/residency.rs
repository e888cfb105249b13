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

use std::rc::Rc;

use apflab_abi::addr::Gpa;
use vm_memory::GuestMemoryMmap;

use super::absent::AbsentPages;
use super::virtual_time_vcpu::VirtualTimeVcpu;
use apflab_hypervisor::{HypervisorError, Residency};

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

    /// The bitmap of absent pages (a snapshot's).
    pub(crate) fn absent_words(&self) -> Vec<u64> {
        self.absent.words()
    }

    /// Makes the pages `words` says absent (from
    /// [`EmuResidency::absent_words`] of as much RAM) the absent ones;
    /// false if the bitmap is not of this RAM's size.
    pub(crate) fn load_absent(&mut self, words: &[u64]) -> bool {
        self.absent.load(words)
    }

    /// A [`Residency`] handle that applies changes to `vcpus`' engines.
    pub(crate) fn with<'a, V: VirtualTimeVcpu>(
        &'a mut self,
        vcpus: &'a mut [V],
    ) -> ResidencyHandle<'a, V> {
        ResidencyHandle { res: self, vcpus }
    }
}

/// [`Residency`] over the engines of an emu VM.
pub(crate) struct ResidencyHandle<'a, V> {
    res: &'a mut EmuResidency,
    vcpus: &'a mut [V],
}

impl<V: VirtualTimeVcpu> Residency for ResidencyHandle<'_, V> {
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
