//! What the engine's tests share: a fake machine (real guest memory and a
//! set of absent pages, as a backend keeps them), pager configs, and a
//! policy with a fixed answer.

#![allow(dead_code)] // Each test file uses a part.

use std::path::Path;
use std::sync::Arc;

use apflab_abi::addr::Gpa;
use apflab_abi::policy::{
    Decision, FaultInfo, Initiation, NotPresentDelivery, Policy, ReadyDelivery, Sleep,
};
use apflab_hypervisor::arch::pstate;
use apflab_hypervisor::{NotResidentFault, PageAccess};
use apflab_pager::store::{FaultInjectingStore, SyntheticStore};
use apflab_pager::{PagerConfig, Prepared, VirtualPager};

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

/// The engine's off-line machine, under the name the tests use.
pub type FakeMachine = apflab_apf::plain::PlainMachine;

/// A policy that answers with a fixed decision and counts its calls.
pub struct Fixed(pub Decision, pub Arc<std::sync::atomic::AtomicU32>);

impl Policy for Fixed {
    fn decide(&mut self, _: &FaultInfo) -> Decision {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0
    }
}

/// A data access to `gpa` from a user task (EL0t, IRQs unmasked).
pub fn fault(gpa: Gpa, write: bool) -> NotResidentFault {
    let access = if write {
        PageAccess::Write
    } else {
        PageAccess::Read
    };
    NotResidentFault::new(gpa, access, 0x4000_1000, 0x10_0000, pstate::EL0T)
}

/// An async decision with a dedicated EC, ready as an interrupt, the given
/// initiation, and reschedule.
pub fn rfcv2_like(initiation: Initiation) -> Decision {
    Decision::Async {
        not_present: NotPresentDelivery::DedicatedEc,
        ready: ReadyDelivery::Interrupt,
        initiation,
        sleep: Sleep::Reschedule,
    }
}
