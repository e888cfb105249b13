//! What the engine's tests share: a fake machine (real guest memory and a
//! set of absent pages, as a backend keeps them), pager configs, and a
//! policy with a fixed answer.

#![allow(dead_code)] // Each test file uses a part.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use apflab_abi::addr::{Gpa, Pfn};
use apflab_abi::memory_map::RAM_BASE;
use apflab_abi::policy::{
    Decision, FaultInfo, Initiation, NotPresentDelivery, Policy, ReadyDelivery, Sleep,
};
use apflab_pager::store::{FaultInjectingStore, SyntheticStore};
use apflab_pager::{PagerConfig, Prepared, VirtualPager};
use apflab_vmm::hypervisor::{HypervisorError, NotResidentFault, Residency};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const RAM: u64 = 64 << 20; // 8192 managed pages above the 32 MiB kernel part
pub const SEED: u64 = 0xfeed;

/// A `[pager]` section: synthetic pages, 10 µs per fetch, at most
/// `limit_pages` resident, `initially` of them resident at start.
pub fn config(limit_pages: Option<u64>, initially: f64) -> PagerConfig {
    let limit = limit_pages.map_or(String::new(), |p| {
        format!("resident_limit = \"{} KiB\"", p * 4)
    });
    let section = format!(
        "store = {{ kind = \"synthetic\", seed = {SEED} }}\n\
         latency = {{ model = \"constant\", us = 10.0 }}\n\
         initially_resident = {initially:?}\n{limit}"
    );
    toml::from_str(&section).expect("a valid [pager] section")
}

pub fn pager(c: &PagerConfig) -> VirtualPager {
    VirtualPager::new(Prepared::new(c, RAM, Path::new(".")).unwrap())
}

/// The managed page `k` pages from the start of the range.
pub fn managed(k: u64) -> u64 {
    let range = apflab_pager::ManagedRange::for_guest_ram(RAM).unwrap();
    range.first_pfn + k
}

/// A pager of `c` whose store can never read page `bad`.
pub fn pager_failing_on(c: &PagerConfig, bad: u64) -> VirtualPager {
    let store = FaultInjectingStore::new(SyntheticStore::new(SEED), 0, vec![bad]);
    let prepared = Prepared::new(c, RAM, Path::new("."));
    VirtualPager::new(prepared.unwrap().with_store(Arc::new(store)))
}

/// Guest RAM and residency as a backend keeps them.
pub struct FakeMachine {
    pub memory: GuestMemoryMmap,
    pub absent: HashSet<Gpa>,
    /// Pages made absent since the driver last looked.
    pub evicted: Vec<Gpa>,
}

impl FakeMachine {
    pub fn new() -> Self {
        FakeMachine {
            memory: GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), RAM as usize)])
                .unwrap(),
            absent: HashSet::new(),
            evicted: Vec::new(),
        }
    }

    pub fn word(&self, pfn: u64, w: u64) -> u64 {
        self.memory
            .read_obj(GuestAddress(Pfn(pfn).gpa().0 + w * 8))
            .unwrap()
    }

    pub fn set_word(&self, pfn: u64, w: u64, v: u64) {
        self.memory
            .write_obj(v, GuestAddress(Pfn(pfn).gpa().0 + w * 8))
            .unwrap();
    }
}

impl Residency for FakeMachine {
    fn set_resident(&mut self, gpa: Gpa, resident: bool) -> Result<(), HypervisorError> {
        let page = gpa.page_base();
        if !(RAM_BASE..RAM_BASE + RAM).contains(&page.0) {
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

/// A policy that answers with a fixed decision and counts its calls.
pub struct Fixed(pub Decision, pub Arc<std::sync::atomic::AtomicU32>);

impl Policy for Fixed {
    fn decide(&mut self, _: &FaultInfo) -> Decision {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0
    }
}

pub fn fault(gpa: Gpa, write: bool) -> NotResidentFault {
    NotResidentFault {
        gpa,
        write,
        fetch: false,
        pc: 0x4000_1000,
        va: 0x10_0000,
        el: 0,
    }
}

/// An async decision with a dedicated EC, ready as an interrupt, the given
/// initiation, reschedule, and `prefetch`.
pub fn rfcv2_like(initiation: Initiation, prefetch: u32) -> Decision {
    Decision::Async {
        not_present: NotPresentDelivery::DedicatedEc,
        ready: ReadyDelivery::Interrupt,
        initiation,
        sleep: Sleep::Reschedule,
        prefetch,
    }
}
