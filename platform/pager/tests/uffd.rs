//! The userfaultfd page server on a real mapping of this host: threads
//! touch guest RAM pages that are missing and must see the store's content.
//! Every scenario runs on both layouts of guest RAM: a private anonymous
//! mapping (UFFDIO_COPY) and a memfd mapped twice (UFFDIO_CONTINUE), the
//! kvm backend's.
#![cfg(target_os = "linux")]

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use apflab_abi::boot::WORKLOAD_REGION_OFFSET;
use apflab_abi::pattern::synthetic_word;
use apflab_pager::store::{FaultInjectingStore, SyntheticStore};
use apflab_pager::uffd::{AnonMapping, RamMapping, SharedMapping, UffdPager};
use apflab_pager::{ByteSize, LatencyConfig, PagerConfig, Prepared, StoreConfig};

const RAM: usize = 40 << 20; // 8 MiB (2048 pages) above the kernel part
const SEED: u64 = 77;

fn config() -> PagerConfig {
    let mut c = PagerConfig::with_store(StoreConfig::Synthetic { seed: SEED });
    c.initially_resident = 0.0;
    c.queue_depth = 4;
    c
}

#[derive(Clone, Copy, Debug)]
enum Layout {
    Anonymous,
    SharedFile,
}

/// Runs a scenario once per layout, as two tests.
macro_rules! on_both_layouts {
    ($scenario:ident) => {
        mod $scenario {
            #[test]
            fn anonymous() {
                super::$scenario(super::Layout::Anonymous);
            }
            #[test]
            fn shared_file() {
                super::$scenario(super::Layout::SharedFile);
            }
        }
    };
}

enum Ram {
    Anonymous(AnonMapping),
    SharedFile(SharedMapping),
}

impl Ram {
    fn new(layout: Layout) -> Self {
        match layout {
            Layout::Anonymous => Ram::Anonymous(AnonMapping::new(RAM).unwrap()),
            Layout::SharedFile => Ram::SharedFile(SharedMapping::new(RAM).unwrap()),
        }
    }

    /// The view the guest (the touching threads) uses.
    fn as_ptr(&self) -> *mut u8 {
        match self {
            Ram::Anonymous(m) => m.as_ptr(),
            Ram::SharedFile(m) => m.guest_ptr(),
        }
    }

    fn mapping(&self) -> RamMapping {
        match self {
            Ram::Anonymous(m) => RamMapping::Anonymous {
                addr: m.as_ptr(),
                len: m.len(),
            },
            Ram::SharedFile(m) => m.ram(),
        }
    }
}

/// Guest RAM plus the pager serving it.
struct Guest {
    // Field order: the pager (and its threads) go before the mapping.
    pager: UffdPager,
    ram: Arc<Ram>,
}

impl Guest {
    fn new(layout: Layout, c: &PagerConfig) -> Self {
        Self::with_prepared(
            layout,
            Prepared::new(c, RAM as u64, Path::new(".")).unwrap(),
        )
    }

    fn with_prepared(layout: Layout, p: Prepared) -> Self {
        let ram = Arc::new(Ram::new(layout));
        // SAFETY: `ram` maps RAM bytes of its layout and outlives the pager
        // (dropped after it); threads touching it are joined before the
        // guest is dropped.
        let pager = unsafe { UffdPager::start(p, ram.mapping()) }
            .expect("userfaultfd must be available (run as root)");
        Guest { pager, ram }
    }

    fn first_pfn(&self) -> u64 {
        self.pager.range().first_pfn
    }
}

/// Address of word `w` of managed page `k` (as a usize, to cross threads).
fn word_addr(ram: &Ram, k: usize, w: usize) -> usize {
    ram.as_ptr() as usize + WORKLOAD_REGION_OFFSET as usize + k * 4096 + w * 8
}

fn read_word(addr: usize) -> u64 {
    // SAFETY: `addr` is an aligned word inside the live guest RAM mapping;
    // a missing page blocks until the pager installs it.
    unsafe { std::ptr::read_volatile(addr as *const u64) }
}

fn write_word(addr: usize, v: u64) {
    // SAFETY: as in `read_word`.
    unsafe { std::ptr::write_volatile(addr as *mut u64, v) }
}

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Pages of the managed region mapped in the guest's view, from
/// /proc/self/pagemap (bit 63: present). mincore would not do: it reports
/// the memfd's page cache, not the mapping.
fn resident_pages(ram: &Ram) -> usize {
    use std::io::{Read, Seek, SeekFrom};
    let first = ram.as_ptr() as u64 + WORKLOAD_REGION_OFFSET;
    let pages = (RAM - WORKLOAD_REGION_OFFSET as usize) / 4096;
    let mut f = std::fs::File::open("/proc/self/pagemap").unwrap();
    f.seek(SeekFrom::Start(first / 4096 * 8)).unwrap();
    let mut entries = vec![0u8; pages * 8];
    f.read_exact(&mut entries).unwrap();
    let (entries, _) = entries.as_chunks::<8>();
    entries
        .iter()
        .filter(|e| u64::from_le_bytes(**e) >> 63 == 1)
        .count()
}

fn missing_pages_are_served_with_store_content(layout: Layout) {
    let g = Guest::new(layout, &config());
    assert_eq!(
        resident_pages(&g.ram),
        0,
        "post-copy start: nothing resident"
    );
    let first = g.first_pfn();
    let ram = g.ram.clone();
    let (tx, rx) = mpsc::channel();
    let toucher = std::thread::spawn(move || {
        tx.send(gettid()).unwrap();
        let mut bad = 0;
        for k in (0..2048).step_by(7) {
            for w in [0, 1, 255, 511] {
                if read_word(word_addr(&ram, k, w)) != synthetic_word(SEED, first + k as u64, 0, w)
                {
                    bad += 1;
                }
            }
        }
        bad
    });
    g.pager.register_vcpu_thread(3, rx.recv().unwrap());
    assert_eq!(toucher.join().unwrap(), 0);
    let m = g.pager.metrics();
    assert_eq!(m.fetches, 2048usize.div_ceil(7) as u64);
    assert_eq!(m.evictions, 0);
    assert_eq!(resident_pages(&g.ram), m.fetches as usize);
    assert_eq!(m.stalled_ns.len(), 4);
    assert!(m.stalled_ns[3] > 0, "stall attributed to vCPU 3: {m:?}");
    assert!(g.pager.failure().is_none());
}

fn busy_polling_servers_serve_every_page_with_its_content(layout: Layout) {
    let mut c = config();
    c.fault_path = apflab_pager::FaultPath::Kernel;
    c.server_poll_us = 200;
    c.resident_limit = Some(ByteSize(32 * 4096));
    let g = Guest::new(layout, &c);
    let first = g.first_pfn();
    let ram = g.ram.clone();
    let bad = std::thread::spawn(move || {
        (0..2)
            .flat_map(|_| 0..300)
            .filter(|&k| {
                read_word(word_addr(&ram, k, 3)) != synthetic_word(SEED, first + k as u64, 0, 3)
            })
            .count()
    })
    .join()
    .unwrap();
    assert_eq!(bad, 0);
    let m = g.pager.metrics();
    assert_eq!(m.fetches, 600);
    assert_eq!(m.refaults, 300);
}

fn initially_resident_pages_are_present_with_content(layout: Layout) {
    let mut c = config();
    c.initially_resident = 0.5;
    let g = Guest::new(layout, &c);
    assert_eq!(resident_pages(&g.ram), 1024);
    let first = g.first_pfn();
    let k = (0..2048u64)
        .find(|&k| g.pager.is_resident(first + k))
        .unwrap() as usize;
    // Reading a present page from this very thread cannot block.
    assert_eq!(
        read_word(word_addr(&g.ram, k, 9)),
        synthetic_word(SEED, first + k as u64, 0, 9)
    );
    assert_eq!(g.pager.metrics().fetches, 0);
}

fn eviction_keeps_the_limit_and_written_data_survives(layout: Layout) {
    let mut c = config();
    c.resident_limit = Some(ByteSize(64 * 4096));
    let g = Guest::new(layout, &c);
    if cfg!(target_arch = "x86_64") {
        // uffd-wp on anonymous memory has been in x86 kernels since 5.7; the
        // shared file layout needs none.
        assert!(g.pager.evicts_safely());
    }
    let first = g.first_pfn();
    let ram = g.ram.clone();
    let toucher = std::thread::spawn(move || {
        let mut bad = 0;
        for pass in 0..3u64 {
            for k in 0..256 {
                let marker = word_addr(&ram, k, 0);
                if pass == 0 {
                    write_word(marker, 0xC0FFEE ^ k as u64);
                } else if read_word(marker) != 0xC0FFEE ^ k as u64 {
                    bad += 1;
                }
                if read_word(word_addr(&ram, k, 100))
                    != synthetic_word(SEED, first + k as u64, 0, 100)
                {
                    bad += 1;
                }
            }
        }
        bad
    });
    assert_eq!(toucher.join().unwrap(), 0);
    let m = g.pager.metrics();
    assert!(resident_pages(&g.ram) <= 64);
    assert_eq!(m.resident_high_water_pages, 64);
    assert_eq!(m.fetches, 3 * 256);
    assert_eq!(m.evictions, 3 * 256 - 64);
    assert_eq!(m.write_backs, m.evictions);
    assert_eq!(m.refaults, 2 * 256);
}

fn concurrent_touches_of_the_same_pages_fetch_each_once(layout: Layout) {
    let g = Guest::new(layout, &config());
    let first = g.first_pfn();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let ram = g.ram.clone();
            std::thread::spawn(move || {
                (0..200)
                    .map(|i| (i * 13 + t * 50) % 200)
                    .filter(|&k| {
                        read_word(word_addr(&ram, k, 5))
                            != synthetic_word(SEED, first + k as u64, 0, 5)
                    })
                    .count()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 0);
    }
    assert_eq!(g.pager.metrics().fetches, 200);
}

fn latency_is_applied_as_real_delay(layout: Layout) {
    let mut c = config();
    c.latency = LatencyConfig::Constant { us: 3_000.0 };
    c.queue_depth = 1;
    let g = Guest::new(layout, &c);
    let ram = g.ram.clone();
    let took = std::thread::spawn(move || {
        let t = Instant::now();
        read_word(word_addr(&ram, 0, 0));
        read_word(word_addr(&ram, 1, 0));
        t.elapsed()
    })
    .join()
    .unwrap();
    assert!(took >= Duration::from_millis(6), "{took:?}");
    let l = g.pager.metrics().fetch_latency;
    assert_eq!(l.count, 2);
    assert!(l.p50_ns >= 3_000_000 && l.p50_ns < 3_010_000, "{l:?}");
}

fn permanent_store_error_names_the_page_and_never_fills_zeros(layout: Layout) {
    let mut c = config();
    c.retries = 1;
    let first = apflab_pager::ManagedRange::for_guest_ram(RAM as u64)
        .unwrap()
        .first_pfn;
    let bad = first + 5;
    let store = Arc::new(FaultInjectingStore::new(
        SyntheticStore::new(SEED),
        0,
        vec![bad],
    ));
    let p = Prepared::new(&c, RAM as u64, Path::new("."))
        .unwrap()
        .with_store(store);
    let g = Guest::with_prepared(layout, p);
    let ram = g.ram.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let v = read_word(word_addr(&ram, 5, 0));
        let _ = tx.send(v);
    });
    let err = g
        .pager
        .wait_failure(Duration::from_secs(10))
        .expect("the failure is reported");
    let msg = err.to_string();
    assert!(msg.contains(&format!("guest page {bad:#x}")), "{msg}");
    assert!(msg.contains("injected media error"), "{msg}");
    // The toucher is still blocked: it got neither zeros nor anything else.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    assert!(!g.pager.is_resident(bad));
    // Dropping the pager would close the userfaultfd and let the blocked
    // thread read a zero page; a VMM stops its vCPUs first. This test
    // cannot stop that thread, so the guest is leaked until process exit.
    std::mem::forget(g);
}

on_both_layouts!(missing_pages_are_served_with_store_content);
on_both_layouts!(initially_resident_pages_are_present_with_content);
on_both_layouts!(eviction_keeps_the_limit_and_written_data_survives);
on_both_layouts!(concurrent_touches_of_the_same_pages_fetch_each_once);
on_both_layouts!(latency_is_applied_as_real_delay);
on_both_layouts!(permanent_store_error_names_the_page_and_never_fills_zeros);
on_both_layouts!(busy_polling_servers_serve_every_page_with_its_content);
