//! Experiment config text (`apflab run CONFIG`) through the parser and its
//! validation. A config that loads must also be one the VMM accepts, whose
//! device tree builds and whose far memory serves pages: anything else
//! would fail only when the run starts (a failed run instead of an error
//! at load) or, worse, give results computed from a wrapped clock.

#![no_main]

use std::path::Path;

use apflab::Config;
use apflab_abi::memory_map::PAGE_SIZE;
use apflab_pager::{Access, FaultPlan, PagerConfig, Prepared, VirtualPager};
use apflab_vmm::fdt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The reader refuses non-UTF-8 before the parser sees it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Relative paths (kernel, samples, store, policy files) resolve
    // beside the committed configs, as for `apflab run configs/X.toml`.
    let base_dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs"));
    let Ok(config) = Config::from_text("fuzz.toml", text, base_dir) else {
        return;
    };
    let vm = config.vm_config(false);
    if let Err(e) = vm.validate() {
        panic!("a config that loads is refused by the VMM: {e}");
    }
    let chosen = fdt::Chosen {
        bootargs: &vm.bootargs,
        initrd: None,
    };
    if let Err(e) = fdt::build(vm.vcpus, vm.memory_mib << 20, &chosen) {
        panic!("a config that loads gives no device tree: {e}");
    }
    if let Some(pager) = &config.pager
        && vm.memory_mib <= MAX_SERVED_MIB
    {
        serve_pages(pager, vm.memory_mib << 20, base_dir);
    }
});

/// The largest guest whose far memory is tried (a larger one only costs
/// the fuzzer time and memory).
const MAX_SERVED_MIB: u64 = 256;

/// Faults the first pages of the far memory `pager` describes in, each
/// when the previous one is due, reading and (every third) writing, as
/// the emu backend does: every fetch is due no earlier than it was asked
/// for (a latency, bandwidth or cost the config accepts never wraps the
/// clock), and every page the pager fetched it also completes.
fn serve_pages(pager: &PagerConfig, ram_bytes: u64, base_dir: &Path) {
    let prepared = match Prepared::new(pager, ram_bytes, base_dir) {
        Ok(p) => p,
        Err(e) => panic!("a [pager] section that loads does not prepare: {e}"),
    };
    let mut pager = VirtualPager::new(prepared);
    let range = pager.range();
    let mut page = vec![0u8; PAGE_SIZE as usize];
    let mut now = 0u64;
    for k in 0..range.pages.min(64) {
        let pfn = range.first_pfn + k;
        let access = if k % 3 == 2 {
            Access::Write
        } else {
            Access::Read
        };
        match pager.fault(pfn, access, now) {
            Ok(FaultPlan::Fetch {
                ready_at_ns,
                evicted,
            }) => {
                assert!(
                    ready_at_ns >= now,
                    "page {pfn:#x} due at {ready_at_ns} < {now}"
                );
                if let Some(ev) = evicted
                    && ev.write_back
                {
                    let written = pager.write_back(ev.pfn, &page, now);
                    assert!(written.is_ok(), "{written:?}");
                }
                now = ready_at_ns;
                let done = pager.complete(pfn, &mut page);
                assert!(done.is_ok(), "page {pfn:#x}: {done:?}");
                if access == Access::Write {
                    pager.mark_dirty(pfn);
                }
            }
            Ok(FaultPlan::Joined { ready_at_ns })
            | Ok(FaultPlan::NoFrame {
                retry_at_ns: ready_at_ns,
            }) => {
                assert!(
                    ready_at_ns >= now,
                    "page {pfn:#x} due at {ready_at_ns} < {now}"
                );
            }
            Ok(FaultPlan::Resident) => {}
            // A permanent store error the config injects.
            Err(_) => {}
        }
    }
}
