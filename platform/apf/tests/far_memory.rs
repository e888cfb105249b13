//! The engine's page side and the engine's synchronous path, driven the
//! way a backend drives them, over a fake machine (see `common`). The
//! one-vCPU driver scribbles over every page evicted once its fault is
//! served (the host reuses the frame), so a refault can only see the right
//! bytes if the store delivered them.

mod common;

use std::path::Path;
use std::sync::Arc;

use apflab_abi::addr::Pfn;
use apflab_abi::memory_map::PAGE_SIZE;
use apflab_abi::pattern::synthetic_word;
use apflab_abi::policy::{Decision, Initiation};
use apflab_apf::{ApfConfig, ApfError, Engine, FarMemory, Fetch};
use apflab_hypervisor::Residency;
use apflab_hypervisor::{Action, FaultHook, HookFailure};
use apflab_pager::store::SyntheticStore;
use apflab_pager::{Access, LatencyConfig, Prepared, VirtualPager};
use common::{FakeMachine, Fixed, RAM, SEED, config, fault, managed, pager, pager_failing_on};
use vm_memory::{Bytes, GuestAddress};

/// One vCPU that stalls on every fault (the sync baseline), in virtual
/// time, with the page side doing the work.
struct OneVcpu {
    far: FarMemory,
    machine: FakeMachine,
    now: u64,
    max_frames_seen: usize,
}

impl OneVcpu {
    fn boot(pager: VirtualPager) -> Self {
        let mut v = OneVcpu {
            far: FarMemory::new(pager),
            machine: FakeMachine::new(RAM),
            now: 0,
            max_frames_seen: 0,
        };
        v.far.init(&mut v.machine).unwrap();
        v
    }

    /// Makes `pfn` present, stalling the vCPU.
    fn touch(&mut self, pfn: u64, access: Access) -> Result<(), ApfError> {
        self.now += 100; // some guest work between accesses
        let gpa = Pfn(pfn).gpa();
        if self.machine.is_resident(gpa) {
            return Ok(());
        }
        self.machine.evicted.clear();
        let fetch = self.far.fault(gpa, access, self.now, &mut self.machine)?;
        for evicted in std::mem::take(&mut self.machine.evicted) {
            // The host reuses the frame: what stays behind is garbage.
            self.machine
                .memory
                .write_slice(&[0xEE; PAGE_SIZE as usize], GuestAddress(evicted.0))
                .unwrap();
        }
        match fetch {
            Fetch::Mapped => {}
            Fetch::DueAt(t) => {
                self.max_frames_seen = self.max_frames_seen.max(self.far.pager().frames_in_use());
                assert!(t > self.now);
                self.far.record_stall(0, t - self.now);
                self.now = t;
                self.far.complete_due(gpa, self.now, &mut self.machine)?;
            }
        }
        assert!(self.machine.is_resident(gpa), "retry finds {gpa} resident");
        Ok(())
    }
}

#[test]
fn post_copy_init_marks_every_managed_page_absent() {
    let v = OneVcpu::boot(pager(&config(None, 0.0)));
    let range = v.far.pager().range();
    assert_eq!(v.machine.absent.len() as u64, range.pages);
    assert!(
        v.machine.is_resident(Pfn(range.first_pfn - 1).gpa()),
        "kernel memory stays"
    );
}

#[test]
fn far_memory_armed_at_the_boot_point_keeps_what_the_boot_wrote() {
    let mut c = config(Some(64), 0.0);
    c.armed_at = apflab_pager::ArmedAt::BootPoint;
    let mut v = OneVcpu::boot(pager(&c));
    let range = v.far.pager().range();
    let (written, untouched) = (range.first_pfn + 5, range.first_pfn + 6);
    // The boot sees the store's pages, withheld nowhere.
    assert!(v.machine.absent.is_empty());
    assert_eq!(
        v.machine.word(untouched, 3),
        synthetic_word(SEED, untouched, 0, 3)
    );
    v.machine.set_word(written, 3, 0xB007);

    v.far.arm_at_boot_point(7_000, &mut v.machine).unwrap();
    assert_eq!(v.machine.absent.len() as u64, range.pages);
    let arming = v.far.metrics().boot_point.expect("armed at the boot point");
    assert_eq!(arming.at_ns, Some(7_000));
    assert_eq!(arming.pages_withheld, range.pages);
    assert_eq!(arming.pages_stored, 1, "only the page the boot changed");

    // The workload faults both back in: the boot's write survives, the
    // untouched page is the store's; and setting up is no pager traffic.
    v.machine.set_word(written, 3, 0xEEEE);
    v.touch(written, Access::Read).unwrap();
    v.touch(untouched, Access::Read).unwrap();
    assert_eq!(v.machine.word(written, 3), 0xB007);
    assert_eq!(
        v.machine.word(untouched, 3),
        synthetic_word(SEED, untouched, 0, 3)
    );
    let m = v.far.metrics();
    assert_eq!((m.fetches, m.write_backs), (2, 0));
}

#[test]
fn far_memory_armed_at_power_on_ignores_the_boot_point() {
    let mut v = OneVcpu::boot(pager(&config(None, 0.0)));
    let absent = v.machine.absent.len();
    v.far.arm_at_boot_point(7_000, &mut v.machine).unwrap();
    assert_eq!(v.machine.absent.len(), absent);
    assert_eq!(v.far.metrics().boot_point, None);
}

#[test]
fn initially_resident_pages_hold_the_store_content() {
    let v = OneVcpu::boot(pager(&config(None, 0.25)));
    let resident = v.far.pager().initially_resident();
    assert_eq!(resident.len(), 2048);
    for &pfn in resident.iter().step_by(97) {
        assert!(v.machine.is_resident(Pfn(pfn).gpa()));
        assert_eq!(v.machine.word(pfn, 3), synthetic_word(SEED, pfn, 0, 3));
    }
}

#[test]
fn working_set_twice_the_limit_runs_with_intact_content() {
    // The swap/memcg case: 1024 pages touched, 512 may be resident; the
    // guest writes a marker into each page on the first pass and checks
    // the pattern plus its marker on every later pass.
    let limit = 512;
    let mut v = OneVcpu::boot(pager(&config(Some(limit), 0.0)));
    let first = v.far.pager().range().first_pfn;
    let pages: Vec<u64> = (0..1024).map(|k| first + k).collect();
    let mut mismatches = 0;
    for pass in 0..3u64 {
        for &pfn in &pages {
            let write = pass == 0;
            v.touch(pfn, if write { Access::Write } else { Access::Read })
                .unwrap();
            // Word 0 carries the guest's marker; words 1.. are the pattern.
            mismatches += (1..512)
                .filter(|&w| v.machine.word(pfn, w) != synthetic_word(SEED, pfn, 0, w as usize))
                .count();
            if write {
                v.machine.set_word(pfn, 0, pfn ^ 0xA5A5);
            } else if v.machine.word(pfn, 0) != pfn ^ 0xA5A5 {
                mismatches += 1;
            }
        }
    }
    assert_eq!(mismatches, 0);
    let m = v.far.metrics();
    assert!(v.max_frames_seen <= limit as usize);
    assert_eq!(m.resident_high_water_pages, limit);
    assert_eq!(
        m.fetches,
        3 * 1024,
        "sequential sweeps over 2x the limit always miss"
    );
    assert_eq!(m.refaults, 2 * 1024);
    assert_eq!(m.evictions, 3 * 1024 - limit);
    assert_eq!(
        m.write_backs, m.evictions,
        "conservative tracking writes back every victim"
    );
    assert_eq!(m.bytes_moved, (m.fetches + m.write_backs) * 4096);
    // Constant 10 µs, one fault at a time: every fetch is 10 µs (the
    // percentiles are within the histogram's 0.1%).
    assert!(
        m.fetch_latency.p50_ns.abs_diff(10_000) <= 10,
        "{:?}",
        m.fetch_latency
    );
    assert_eq!(m.fetch_latency.max_ns, 10_000);
    assert_eq!(m.stalled_ns, [3 * 1024 * 10_000]);
    // Exactly the limit is mapped at the end.
    assert_eq!(
        v.machine.absent.len() as u64,
        v.far.pager().range().pages - limit
    );
}

#[test]
fn write_back_then_refault_returns_the_written_data() {
    let store = Arc::new(SyntheticStore::new(SEED));
    let prepared = Prepared::new(&config(Some(1), 0.0), RAM, Path::new("."))
        .unwrap()
        .with_store(store.clone());
    let mut v = OneVcpu::boot(VirtualPager::new(prepared));
    let a = v.far.pager().range().first_pfn + 10;
    let b = a + 1;
    v.touch(a, Access::Write).unwrap();
    assert!((0..512).all(|w| v.machine.word(a, w) == synthetic_word(SEED, a, 0, w as usize)));
    // The guest rewrites the page with the pattern's next version.
    for w in 0..512 {
        v.machine
            .set_word(a, w, synthetic_word(SEED, a, 1, w as usize));
    }
    v.touch(b, Access::Read).unwrap(); // evicts a (limit 1 page)
    assert!(!v.machine.is_resident(Pfn(a).gpa()));
    assert_eq!(
        v.machine.word(a, 0),
        0xEEEE_EEEE_EEEE_EEEE,
        "the frame was reused"
    );
    assert_eq!(store.version(a), 1);
    assert_eq!(store.version(b), 0);
    v.touch(a, Access::Read).unwrap(); // refault
    assert!((0..512).all(|w| v.machine.word(a, w) == synthetic_word(SEED, a, 1, w as usize)));
    assert_eq!(v.far.metrics().refaults, 1);
}

#[test]
fn permanent_error_names_the_page_and_installs_nothing() {
    let mut c = config(Some(1), 0.0);
    c.retries = 2;
    let bad = managed(7);
    let mut v = OneVcpu::boot(pager_failing_on(&c, bad));
    v.touch(bad - 1, Access::Read).unwrap();
    let msg = v.touch(bad, Access::Read).unwrap_err().to_string();
    assert!(msg.contains(&format!("guest page {bad:#x}")), "{msg}");
    assert!(
        msg.contains(&format!("guest physical {:#x}", bad * 4096)),
        "{msg}"
    );
    assert!(msg.contains("injected media error"), "{msg}");
    // Nothing was evicted or installed for the failed page.
    assert!(!v.machine.is_resident(Pfn(bad).gpa()));
    assert!(v.machine.is_resident(Pfn(bad - 1).gpa()));
    assert!(!v.far.pager().is_resident(bad));
    assert_eq!(v.far.metrics().evictions, 0);
}

#[test]
fn same_seed_same_run() {
    let run = |seed: u64| {
        let mut c = config(Some(64), 0.1);
        c.latency = LatencyConfig::Lognormal {
            median_us: 20.0,
            sigma: 0.7,
        };
        c.queue_depth = 2;
        c.seed = seed;
        let mut v = OneVcpu::boot(pager(&c));
        let first = v.far.pager().range().first_pfn;
        for k in 0..2000u64 {
            v.touch(first + (k * 7919) % 500, Access::Read).unwrap();
        }
        (v.now, format!("{:?}", v.far.metrics()))
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5).0, run(6).0);
}

#[test]
fn an_absent_page_outside_the_managed_range_is_refused() {
    let mut v = OneVcpu::boot(pager(&config(None, 0.0)));
    let kernel = Pfn(v.far.pager().range().first_pfn - 1).gpa();
    let e = v
        .far
        .fault(kernel, Access::Read, 0, &mut v.machine)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("guest page {kernel:#x} is absent but outside the pager's range")
    );
}

#[test]
fn the_engine_stalls_each_vcpu_until_its_page_is_in_and_counts_the_stall() {
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let policy = Fixed(Decision::Sync, calls.clone());
    let mut c = config(None, 0.0);
    c.queue_depth = 2; // the two fetches overlap
    let mut engine = Engine::new(2, pager(&c), Box::new(policy), ApfConfig::OFF);
    let mut m = FakeMachine::new(RAM);
    engine.init(&mut m).unwrap();
    let first = engine.pager_metrics();
    assert_eq!(first.fetches, 0);
    let a = Pfn(managed(0)).gpa();
    let b = Pfn(a.pfn().0 + 1).gpa();
    // Both vCPUs fault at 1 µs; vCPU 1 on another page.
    assert_eq!(
        engine.on_not_resident(0, &fault(a, false), 1_000, &mut m),
        Action::StallUntil(11_000)
    );
    assert_eq!(
        engine.on_not_resident(1, &fault(b, true), 1_000, &mut m),
        Action::StallUntil(11_000)
    );
    assert!(!m.is_resident(a));
    // vCPU 0's wait ends late (its clock ran past the fetch): the stall is
    // what it really waited.
    assert_eq!(engine.on_wait_end(0, 12_500, &mut m), Action::Retry);
    assert!(m.is_resident(a), "installed before the retry");
    assert_eq!(m.word(a.pfn().0, 5), synthetic_word(SEED, a.pfn().0, 0, 5));
    assert!(!m.is_resident(b));
    assert_eq!(engine.on_wait_end(1, 11_000, &mut m), Action::Retry);
    assert!(m.is_resident(b));
    let metrics = engine.metrics();
    assert_eq!(metrics.stalled_ns, [11_500, 10_000]);
    assert_eq!((metrics.faults, metrics.sync_faults), (2, 2));
    assert_eq!(engine.pager_metrics().stalled_ns, [11_500, 10_000]);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn an_async_decision_before_the_guest_enabled_async_pf_is_served_sync() {
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let policy = Fixed(common::rfcv2_like(Initiation::Host), calls);
    let mut engine = Engine::new(
        1,
        pager(&config(None, 0.0)),
        Box::new(policy),
        ApfConfig::all(64),
    );
    let mut m = FakeMachine::new(RAM);
    engine.init(&mut m).unwrap();
    let a = Pfn(managed(0)).gpa();
    assert_eq!(
        engine.on_not_resident(0, &fault(a, false), 0, &mut m),
        Action::StallUntil(10_000)
    );
    let metrics = engine.metrics();
    assert_eq!(metrics.fallbacks["not_enabled"], 1);
    assert_eq!((metrics.sync_faults, metrics.async_faults), (1, 0));
}

#[test]
fn a_store_failure_fails_the_run_naming_the_page() {
    let mut c = config(None, 0.0);
    c.retries = 0;
    let bad = managed(3);
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let sync = Fixed(Decision::Sync, calls);
    let mut engine = Engine::new(1, pager_failing_on(&c, bad), Box::new(sync), ApfConfig::OFF);
    let mut m = FakeMachine::new(RAM);
    engine.init(&mut m).unwrap();
    let gpa = Pfn(bad).gpa();
    let Action::Fail(failure) = engine.on_not_resident(0, &fault(gpa, false), 0, &mut m) else {
        panic!("a permanent store error must fail the run")
    };
    assert!(
        matches!(failure, HookFailure::Unavailable { gpa: g, .. } if g == gpa),
        "{failure:?}"
    );
    let msg = failure.to_string();
    assert!(
        msg.starts_with(&format!("page {gpa:#x} unavailable: ")),
        "{msg}"
    );
    assert!(msg.contains("injected media error"), "{msg}");
    assert!(!m.is_resident(gpa));
}
