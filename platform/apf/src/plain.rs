//! Guest RAM and residency without a CPU, as a backend keeps them: for
//! driving the engine off-line (its tests, its benchmarks, a replay).

use std::collections::HashSet;

use apflab_abi::addr::{Gpa, Pfn};
use apflab_abi::memory_map::RAM_BASE;
use apflab_hypervisor::{HypervisorError, Residency};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM and residency as a backend keeps them.
pub struct PlainMachine {
    /// Guest RAM.
    pub memory: GuestMemoryMmap,
    /// The pages a guest access would fault on.
    pub absent: HashSet<Gpa>,
    /// Pages made absent since the driver last looked.
    pub evicted: Vec<Gpa>,
}

impl PlainMachine {
    /// `ram` bytes of guest RAM at `RAM_BASE`, every page resident.
    pub fn new(ram: u64) -> Self {
        PlainMachine {
            memory: GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), ram as usize)])
                .expect("guest RAM can be allocated"),
            absent: HashSet::new(),
            evicted: Vec::new(),
        }
    }

    /// Word `w` of page `pfn`.
    pub fn word(&self, pfn: u64, w: u64) -> u64 {
        self.memory
            .read_obj(GuestAddress(Pfn(pfn).gpa().0 + w * 8))
            .expect("the page is in guest RAM")
    }

    /// Writes word `w` of page `pfn`.
    pub fn set_word(&self, pfn: u64, w: u64, v: u64) {
        self.memory
            .write_obj(v, GuestAddress(Pfn(pfn).gpa().0 + w * 8))
            .unwrap();
    }
}

impl Residency for PlainMachine {
    fn set_resident(&mut self, gpa: Gpa, resident: bool) -> Result<(), HypervisorError> {
        let page = gpa.page_base();
        if self.memory.read_obj::<u8>(GuestAddress(page.0)).is_err() {
            return Err(HypervisorError::OutsideRam(gpa.0));
        }
        if resident {
            self.absent.remove(&page);
        } else {
            // The content stays readable, as on both backends (the
            // write-back reads it after the guest's mapping is gone).
            if self.absent.insert(page) {
                self.evicted.push(page);
            }
        }
        Ok(())
    }

    fn is_resident(&self, gpa: Gpa) -> bool {
        !self.absent.contains(&gpa.page_base())
    }

    fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }
}
