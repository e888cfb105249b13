//! Far memory for apflab: where non-resident guest pages live and what
//! fetching them costs.
//!
//! The pager models the host side of a page fault on memory the host does
//! not have: a backing [`store`] (zeros, a guest memory image for the
//! post-copy / snapshot case, or synthetic pages the guest verifies byte by
//! byte), a [`latency`] model (constant, uniform, log-normal or measured
//! samples, plus bandwidth and a queue depth so queueing shows up), and a
//! [`residency`] limit with eviction (the swap / memcg case), all configured
//! by the `[pager]` section ([`PagerConfig`]).
//!
//! # Using it from a backend
//!
//! Build once per run with [`Prepared::new`] (a [`ConfigError`] names the
//! key and value: exit 2), then drive one half:
//!
//! ```
//! use apflab_pager::{Access, FaultPlan, PagerConfig, Prepared, VirtualPager};
//!
//! let config: PagerConfig = toml::from_str(r#"
//!     store = { kind = "synthetic", seed = 7 }
//!     latency = { model = "constant", us = 20.0 }
//!     resident_limit = "1 MiB"
//!     initially_resident = 0.0
//! "#)?;
//! let prepared = Prepared::new(&config, 64 << 20, std::path::Path::new("."))?;
//! let mut pager = VirtualPager::new(prepared);
//! let pfn = pager.range().first_pfn;
//! let mut guest_page = [0u8; 4096];
//! match pager.fault(pfn, Access::Read, 1_000)? {
//!     FaultPlan::Fetch { ready_at_ns, evicted } => {
//!         assert_eq!((ready_at_ns, evicted), (21_000, None));
//!         // ... at virtual time 21 µs:
//!         pager.complete(pfn, &mut guest_page)?;
//!     }
//!     other => unreachable!("{other:?}"),
//! }
//! assert!(pager.is_resident(pfn));
//! assert_eq!(pager.metrics().fetches, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Only the workload region ([`ManagedRange`]: guest physical
//! `RAM_BASE + WORKLOAD_REGION_OFFSET` to the end of RAM) is managed; kernel
//! memory below it is always resident.
//!
//! **emu (virtual time)**, [`VirtualPager`]:
//! 1. `let mut pager = VirtualPager::new(prepared);` Before the guest runs,
//!    fill each page of `pager.initially_resident()` with
//!    `pager.read_initial(pfn, page)` and mark every other managed page
//!    absent (an access to it must exit to the VMM).
//! 2. On an access to an absent page at virtual time `now`:
//!    `pager.fault(pfn, Access::Read | Access::Write, now)?` returns a
//!    [`FaultPlan`]:
//!    - `Fetch { ready_at_ns, evicted }`: unmap `evicted.pfn` now; if
//!      `evicted.write_back`, pass its current bytes to
//!      `pager.write_back(pfn, bytes, now)`. At `ready_at_ns` call
//!      `pager.complete(pfn, guest_page)` (copies the content), map the
//!      page and resume the waiters. The policy decides meanwhile whether
//!      the vCPU stalls (sync) or the guest is told "not present" (async).
//!    - `Joined { ready_at_ns }`: another fault's fetch brings the page in
//!      then; wait for it.
//!    - `Resident`: the mapping was stale; map it, no delay.
//!    - `NoFrame { retry_at_ns }`: all frames are held by fetches in flight;
//!      call `fault` again then.
//!
//!    An `Err(PagerError)` (store failed after the configured retries) must
//!    stop the VM: it names the guest page, and nothing was installed.
//! 3. Optional hints: `note_access(pfn)` (CLOCK's referenced bit),
//!    `mark_dirty(pfn)` (with `dirty_tracking = "hinted"`);
//!    `record_stall(vcpu, ns)` for the per-vCPU stall metric.
//! 4. `pager.metrics()` ([`PagerMetrics`], `Serialize`) goes into the
//!    results JSON under `pager`.
//!
//! The same half serves the kvm backend's `fault_path = "vmm"`, with host
//! time in place of virtual time: the fault exits to the VMM, which stalls
//! the vCPU until `ready_at_ns`.
//!
//! **kvm, `fault_path = "kernel"` (real time)**, [`uffd::UffdPager`]
//! (Linux): hand it the host
//! mapping of guest RAM ([`uffd::RamMapping`]; the part above the workload
//! offset is registered with userfaultfd). Absent pages are unmapped, so a
//! vCPU (or any thread) touching one blocks in the kernel; the pager's
//! page-server threads apply the latency model as real delays and install
//! the page: `UFFDIO_COPY` into a private anonymous mapping, or, for the
//! kvm backend's memfd guest RAM, a write through the VMM's view and
//! `UFFDIO_CONTINUE` in the guest's. Eviction is `MADV_DONTNEED`, so the
//! next touch faults again. `register_vcpu_thread(vcpu, tid)` attributes
//! stall time to vCPUs.
//!
//! All decisions (which page, which victim, when ready) are made by the
//! shared [`FaultEngine`], so every backend and fault path makes the same
//! ones for the same config, seed and order of faults.

pub mod config;
pub mod emu;
pub mod engine;
pub mod latency;
pub mod metrics;
pub mod residency;
pub mod store;
#[cfg(target_os = "linux")]
pub mod uffd;

pub use config::{
    ArmedAt, ByteSize, ByteSizeError, ConfigError, DirtyTracking, EvictionPolicy, FaultPath,
    InjectErrors, LatencyConfig, ManagedRange, PagerConfig, StoreConfig,
};
pub use emu::{FaultPlan, VirtualPager};
pub use engine::{Access, Begin, Eviction, FaultEngine, PagerError, Prepared};
pub use metrics::{BootPointArming, LatencySummary, PagerMetrics};
pub use store::{Store, StoreError, StoreFault};
