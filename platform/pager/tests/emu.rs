//! The virtual-time pager driven the way the emu backend drives it: a
//! guest memory array, a workload touching pages, evictions unmapped and
//! written back, fetches completed when virtual time reaches them.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use apflab_abi::pattern::synthetic_word;
use apflab_pager::store::{FaultInjectingStore, SyntheticStore};
use apflab_pager::{
    Access, ByteSize, FaultPlan, LatencyConfig, PagerConfig, PagerError, Prepared, StoreConfig,
    VirtualPager,
};

const RAM: u64 = 64 << 20; // 8192 managed pages above the 32 MiB kernel part
const SEED: u64 = 0xfeed;

fn config(limit_pages: Option<u64>, initially: f64) -> PagerConfig {
    let mut c = PagerConfig::with_store(StoreConfig::Synthetic { seed: SEED });
    c.resident_limit = limit_pages.map(|p| ByteSize(p * 4096));
    c.initially_resident = initially;
    c.latency = LatencyConfig::Constant { us: 10.0 };
    c
}

fn pager(c: &PagerConfig) -> VirtualPager {
    VirtualPager::new(Prepared::new(c, RAM, Path::new(".")).unwrap())
}

/// A minimal stand-in for the emu backend: guest memory of the managed
/// range, a presence set, one vCPU that stalls on every fault (the sync
/// baseline), virtual time.
struct MiniVmm {
    pager: VirtualPager,
    mem: Vec<[u8; 4096]>,
    present: HashSet<u64>,
    now: u64,
    max_frames_seen: usize,
}

impl MiniVmm {
    fn boot(pager: VirtualPager) -> Self {
        let range = pager.range();
        let mut vmm = MiniVmm {
            mem: vec![[0; 4096]; range.pages as usize],
            present: HashSet::new(),
            now: 0,
            max_frames_seen: 0,
            pager,
        };
        for pfn in vmm.pager.initially_resident() {
            let i = (pfn - range.first_pfn) as usize;
            vmm.pager.read_initial(pfn, &mut vmm.mem[i]).unwrap();
            vmm.present.insert(pfn);
        }
        vmm
    }

    fn idx(&self, pfn: u64) -> usize {
        (pfn - self.pager.range().first_pfn) as usize
    }

    /// Makes `pfn` present, stalling the vCPU (sync baseline).
    fn touch(&mut self, pfn: u64, access: Access) -> Result<(), PagerError> {
        self.now += 100; // some guest work between accesses
        if self.present.contains(&pfn) {
            self.pager.note_access(pfn);
            return Ok(());
        }
        match self.pager.fault(pfn, access, self.now)? {
            FaultPlan::Fetch {
                ready_at_ns,
                evicted,
            } => {
                if let Some(e) = evicted {
                    assert!(self.present.remove(&e.pfn), "evicted a page not present");
                    let i = self.idx(e.pfn);
                    if e.write_back {
                        let data = self.mem[i];
                        self.pager.write_back(e.pfn, &data, self.now)?;
                    }
                    self.mem[i] = [0xEE; 4096]; // the frame is reused
                }
                self.max_frames_seen = self.max_frames_seen.max(self.pager.frames_in_use());
                assert!(ready_at_ns > self.now);
                self.pager.record_stall(0, ready_at_ns - self.now);
                self.now = ready_at_ns;
                let i = self.idx(pfn);
                let mut page = [0u8; 4096];
                self.pager.complete(pfn, &mut page)?;
                self.mem[i] = page;
                self.present.insert(pfn);
                Ok(())
            }
            FaultPlan::Resident => {
                self.present.insert(pfn);
                Ok(())
            }
            FaultPlan::Joined { .. } | FaultPlan::NoFrame { .. } => {
                unreachable!("one vCPU never joins or waits")
            }
        }
    }

    fn word(&self, pfn: u64, w: usize) -> u64 {
        let p = &self.mem[self.idx(pfn)];
        u64::from_le_bytes(p[w * 8..w * 8 + 8].try_into().unwrap())
    }

    fn set_word(&mut self, pfn: u64, w: usize, v: u64) {
        let i = self.idx(pfn);
        self.mem[i][w * 8..w * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
}

fn verify_pattern(vmm: &MiniVmm, pfn: u64) -> u64 {
    (0..512)
        .filter(|&w| vmm.word(pfn, w) != synthetic_word(SEED, pfn, 0, w))
        .count() as u64
}

#[test]
fn post_copy_start_has_nothing_resident() {
    let p = pager(&config(None, 0.0));
    assert!(p.initially_resident().is_empty());
    assert_eq!(p.metrics().initially_resident_pages, 0);
    assert_eq!(p.frames_in_use(), 0);
    let first = p.range().first_pfn;
    assert!(!p.is_resident(first));
}

#[test]
fn initial_residency_is_a_seeded_fraction_capped_by_the_limit() {
    let a = pager(&config(None, 0.25)).initially_resident();
    assert_eq!(a.len(), 2048);
    assert_eq!(a, pager(&config(None, 0.25)).initially_resident());
    let mut other = config(None, 0.25);
    other.seed = 99;
    assert_ne!(a, pager(&other).initially_resident());
    assert_eq!(
        pager(&config(Some(100), 1.0)).initially_resident().len(),
        100
    );
}

#[test]
fn working_set_twice_the_limit_runs_with_intact_content() {
    // The swap/memcg case: 1024 pages touched, 512 may be resident; the
    // guest writes a marker into each page on the first pass and checks
    // the pattern plus its marker on every later pass.
    let limit = 512;
    let mut vmm = MiniVmm::boot(pager(&config(Some(limit), 0.0)));
    let first = vmm.pager.range().first_pfn;
    let pages: Vec<u64> = (0..1024).map(|k| first + k).collect();
    let mut mismatches = 0;
    for pass in 0..3u64 {
        for &pfn in &pages {
            let write = pass == 0;
            vmm.touch(pfn, if write { Access::Write } else { Access::Read })
                .unwrap();
            // Word 0 carries the guest's marker; words 1.. are the pattern.
            mismatches += (1..512)
                .filter(|&w| vmm.word(pfn, w) != synthetic_word(SEED, pfn, 0, w))
                .count();
            if write {
                vmm.set_word(pfn, 0, pfn ^ 0xA5A5);
            } else if vmm.word(pfn, 0) != pfn ^ 0xA5A5 {
                mismatches += 1;
            }
        }
    }
    assert_eq!(mismatches, 0);
    let m = vmm.pager.metrics();
    assert!(vmm.max_frames_seen <= limit as usize);
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
}

#[test]
fn write_back_then_refault_returns_the_written_data() {
    let store = Arc::new(SyntheticStore::new(SEED));
    let prepared = Prepared::new(&config(Some(1), 0.0), RAM, Path::new("."))
        .unwrap()
        .with_store(store.clone());
    let mut vmm = MiniVmm::boot(VirtualPager::new(prepared));
    let a = vmm.pager.range().first_pfn + 10;
    let b = a + 1;
    vmm.touch(a, Access::Write).unwrap();
    assert_eq!(verify_pattern(&vmm, a), 0);
    // The guest rewrites the page with the pattern's next version.
    for w in 0..512 {
        vmm.set_word(a, w, synthetic_word(SEED, a, 1, w));
    }
    vmm.touch(b, Access::Read).unwrap(); // evicts a (limit 1 page)
    assert!(!vmm.present.contains(&a));
    assert_eq!(store.version(a), 1);
    assert_eq!(store.version(b), 0);
    vmm.touch(a, Access::Read).unwrap(); // refault
    assert!((0..512).all(|w| vmm.word(a, w) == synthetic_word(SEED, a, 1, w)));
    assert_eq!(vmm.pager.metrics().refaults, 1);
}

#[test]
fn hinted_tracking_writes_back_only_dirty_pages() {
    let mut c = config(Some(2), 0.0);
    c.dirty_tracking = apflab_pager::DirtyTracking::Hinted;
    c.eviction = apflab_pager::EvictionPolicy::Fifo;
    let mut p = pager(&c);
    let f = p.range().first_pfn;
    let mut page = [0u8; 4096];
    for (k, access) in [(0, Access::Write), (1, Access::Read)] {
        assert!(matches!(
            p.fault(f + k, access, 0).unwrap(),
            FaultPlan::Fetch { evicted: None, .. }
        ));
        p.complete(f + k, &mut page).unwrap();
    }
    let FaultPlan::Fetch {
        evicted: Some(e), ..
    } = p.fault(f + 2, Access::Read, 0).unwrap()
    else {
        panic!("expected an eviction")
    };
    assert_eq!((e.pfn, e.write_back), (f, true));
    p.write_back(e.pfn, &page, 0).unwrap();
    p.complete(f + 2, &mut page).unwrap();
    let FaultPlan::Fetch {
        evicted: Some(e), ..
    } = p.fault(f + 3, Access::Read, 0).unwrap()
    else {
        panic!("expected an eviction")
    };
    assert_eq!(
        (e.pfn, e.write_back),
        (f + 1, false),
        "clean page is dropped"
    );
    // A write-back nobody asked for is a protocol error, not silent.
    assert!(matches!(
        p.write_back(f + 1, &page, 0),
        Err(PagerError::Protocol { .. })
    ));
}

#[test]
fn faults_join_fetches_in_flight_and_wait_for_frames() {
    let mut c = config(Some(1), 0.0);
    c.latency = LatencyConfig::Constant { us: 5.0 };
    let mut p = pager(&c);
    let f = p.range().first_pfn;
    let FaultPlan::Fetch { ready_at_ns, .. } = p.fault(f, Access::Read, 1_000).unwrap() else {
        panic!()
    };
    assert_eq!(ready_at_ns, 6_000);
    // A second vCPU touches the same page: no second fetch.
    assert_eq!(
        p.fault(f, Access::Write, 2_000).unwrap(),
        FaultPlan::Joined { ready_at_ns: 6_000 }
    );
    // Another page: the only frame is in flight.
    assert_eq!(
        p.fault(f + 1, Access::Read, 2_000).unwrap(),
        FaultPlan::NoFrame { retry_at_ns: 6_000 }
    );
    let mut page = [0u8; 4096];
    p.complete(f, &mut page).unwrap();
    assert_eq!(
        p.fault(f, Access::Read, 6_000).unwrap(),
        FaultPlan::Resident
    );
    let m = p.metrics();
    assert_eq!(
        (m.fetches, m.joined_in_flight, m.no_frame_waits, m.spurious),
        (1, 1, 1, 1)
    );
    // Completing twice is refused.
    assert!(p.complete(f, &mut page).is_err());
}

#[test]
fn simultaneous_faults_queue_beyond_the_queue_depth() {
    let mut c = config(None, 0.0);
    c.queue_depth = 2;
    c.bandwidth_bytes_per_sec = Some(4096 * 1_000_000); // 1 µs per page
    let mut p = pager(&c);
    let f = p.range().first_pfn;
    let ready: Vec<u64> = (0..5)
        .map(|k| match p.fault(f + k, Access::Read, 0).unwrap() {
            FaultPlan::Fetch { ready_at_ns, .. } => ready_at_ns,
            other => panic!("{other:?}"),
        })
        .collect();
    // Two slots: latencies overlap in pairs, transfers serialise on the
    // link (10 µs latency + 1 µs transfer each).
    assert_eq!(ready, [11_000, 12_000, 22_000, 23_000, 33_000]);
    let l = p.metrics().fetch_latency;
    assert_eq!(l.max_ns, 33_000);
    assert!(l.p50_ns.abs_diff(22_000) <= 22, "{l:?}");
}

#[test]
fn transient_errors_are_retried_and_cost_latency() {
    let store = Arc::new(FaultInjectingStore::new(
        SyntheticStore::new(SEED),
        2,
        vec![],
    ));
    let mut c = config(None, 0.0);
    c.queue_depth = 4; // the two fetches overlap
    let prepared = Prepared::new(&c, RAM, Path::new("."))
        .unwrap()
        .with_store(store);
    let mut p = VirtualPager::new(prepared);
    let f = p.range().first_pfn;
    // Read #1 succeeds, read #2 fails and #3 succeeds: the second fetch
    // pays two latencies.
    let r1 = p.fault(f, Access::Read, 0).unwrap();
    let r2 = p.fault(f + 1, Access::Read, 0).unwrap();
    assert!(
        matches!(
            r1,
            FaultPlan::Fetch {
                ready_at_ns: 10_000,
                ..
            }
        ),
        "{r1:?}"
    );
    assert!(
        matches!(
            r2,
            FaultPlan::Fetch {
                ready_at_ns: 20_000,
                ..
            }
        ),
        "{r2:?}"
    );
    let mut page = [0u8; 4096];
    p.complete(f + 1, &mut page).unwrap();
    let expect: Vec<u8> = (0..512)
        .flat_map(|w| synthetic_word(SEED, f + 1, 0, w).to_le_bytes())
        .collect();
    assert_eq!(&page[..], &expect[..]);
    assert_eq!(p.metrics().store_retries, 1);
}

#[test]
fn permanent_error_names_the_page_and_installs_nothing() {
    let mut c = config(Some(1), 0.0);
    c.retries = 2;
    let bad = apflab_pager::ManagedRange::for_guest_ram(RAM)
        .unwrap()
        .first_pfn
        + 7;
    let store = Arc::new(FaultInjectingStore::new(
        SyntheticStore::new(SEED),
        0,
        vec![bad],
    ));
    let prepared = Prepared::new(&c, RAM, Path::new("."))
        .unwrap()
        .with_store(store);
    let mut vmm = MiniVmm::boot(VirtualPager::new(prepared));
    vmm.touch(bad - 1, Access::Read).unwrap();
    let err = vmm.touch(bad, Access::Read).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&format!("guest page {bad:#x}")), "{msg}");
    assert!(
        msg.contains(&format!("guest physical {:#x}", bad * 4096)),
        "{msg}"
    );
    assert!(msg.contains("injected media error"), "{msg}");
    // Nothing was evicted or installed for the failed page.
    assert!(!vmm.present.contains(&bad));
    assert!(vmm.present.contains(&(bad - 1)));
    assert!(!vmm.pager.is_resident(bad));
    assert_eq!(vmm.pager.metrics().evictions, 0);
    // And asking for its content is refused rather than zero-filled.
    let mut page = [0u8; 4096];
    assert!(vmm.pager.complete(bad, &mut page).is_err());
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
        let mut vmm = MiniVmm::boot(pager(&c));
        let first = vmm.pager.range().first_pfn;
        for k in 0..2000u64 {
            vmm.touch(first + (k * 7919) % 500, Access::Read).unwrap();
        }
        (
            vmm.now,
            serde_json::to_string(&vmm.pager.metrics()).unwrap(),
        )
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5).0, run(6).0);
}

#[test]
fn unmanaged_pages_are_refused() {
    let mut p = pager(&config(None, 0.0));
    let kernel_pfn = p.range().first_pfn - 1;
    let e = p.fault(kernel_pfn, Access::Read, 0).unwrap_err();
    assert!(e.to_string().contains("not managed"), "{e}");
}

#[test]
fn file_and_samples_errors_name_the_key() {
    let mut c = config(None, 0.0);
    c.store = StoreConfig::File {
        path: "missing.img".into(),
    };
    let e = Prepared::new(&c, RAM, Path::new("/tmp/nowhere"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with("pager.store.path = \"/tmp/nowhere/missing.img\""),
        "{e}"
    );
    let short = tempfile::NamedTempFile::new().unwrap();
    short.as_file().set_len(RAM / 2).unwrap();
    c.store = StoreConfig::File {
        path: short.path().to_owned(),
    };
    let e = Prepared::new(&c, RAM, Path::new("."))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("shorter than guest RAM (67108864 bytes)"), "{e}");
    short.as_file().set_len(RAM).unwrap();
    assert!(Prepared::new(&c, RAM, Path::new(".")).is_ok());
}
