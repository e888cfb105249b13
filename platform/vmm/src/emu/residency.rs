//! Per-page residency on the emu backend.
//!
//! Mechanism (EMU-NOTES compares four): guest RAM stays one big mapping in
//! every engine and an absent page is `mem_protect`ed to no access, so the
//! guest's access fires the protection hook with the physical address and
//! the instruction does not execute. This keeps guest speed unchanged for
//! resident memory (unlike a memory hook on every access); its cost is per
//! change (~65 us at ~2,000 absent pages) and grows with the number of
//! distinct protected ranges. The choice is private to this module.

use apflab_abi::memory_map::{PAGE_SIZE, RAM_BASE};
use vm_memory::GuestMemoryMmap;

use super::EmuVcpu;
use crate::hypervisor::{HypervisorError, Residency};

/// Residency of guest RAM pages across all engines of a VM.
pub struct EmuResidency {
    memory: GuestMemoryMmap,
    ram_size: u64,
    /// One bit per page: set = absent.
    absent: Vec<u64>,
    absent_count: u64,
}

impl EmuResidency {
    /// Everything resident.
    pub fn new(memory: GuestMemoryMmap, ram_size: u64) -> Self {
        let pages = ram_size.div_ceil(PAGE_SIZE);
        EmuResidency {
            memory,
            ram_size,
            absent: vec![0; pages.div_ceil(64) as usize],
            absent_count: 0,
        }
    }

    fn page_index(&self, ipa: u64) -> Result<usize, HypervisorError> {
        if ipa < RAM_BASE || ipa - RAM_BASE >= self.ram_size {
            return Err(HypervisorError::OutsideRam(ipa));
        }
        Ok(((ipa - RAM_BASE) / PAGE_SIZE) as usize)
    }

    /// Pages currently absent.
    pub fn absent_pages(&self) -> u64 {
        self.absent_count
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
    fn set_resident(&mut self, ipa: u64, resident: bool) -> Result<(), HypervisorError> {
        let i = self.res.page_index(ipa)?;
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        let was_absent = self.res.absent[word] & bit != 0;
        if was_absent != resident {
            return Ok(());
        }
        let page = ipa & !(PAGE_SIZE - 1);
        for v in self.vcpus.iter_mut() {
            v.protect(page, resident)?;
        }
        if resident {
            self.res.absent[word] &= !bit;
            self.res.absent_count -= 1;
        } else {
            self.res.absent[word] |= bit;
            self.res.absent_count += 1;
        }
        Ok(())
    }

    fn is_resident(&self, ipa: u64) -> bool {
        match self.res.page_index(ipa) {
            Ok(i) => self.res.absent[i / 64] & (1 << (i % 64)) == 0,
            Err(_) => false,
        }
    }

    fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.res.memory
    }
}
