//! The virtual-time pager's own decisions: initial residency, joins and
//! frame waits, queueing, store retries and failures. How those decisions
//! are applied to guest memory (evict, write back, complete, install) is
//! tested with the engine that applies them, in `platform/apf/tests`.

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
    let mut p = VirtualPager::new(prepared);
    let err = p.fault(bad, Access::Read, 0).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&format!("guest page {bad:#x}")), "{msg}");
    assert!(msg.contains("injected media error"), "{msg}");
    assert!(!p.is_resident(bad));
    assert_eq!(p.frames_in_use(), 0, "no frame is held for the failed page");
    assert_eq!(p.metrics().evictions, 0);
    // And asking for its content is refused rather than zero-filled.
    let mut page = [0u8; 4096];
    assert!(p.complete(bad, &mut page).is_err());
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
