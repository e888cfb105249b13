//! Pager speed: installing pages through userfaultfd against a plain memcpy
//! of the same pages (kvm path: `UFFDIO_COPY` into anonymous memory, and the
//! kvm backend's own layout, a write through the VMM's view of a memfd plus
//! `UFFDIO_CONTINUE` in the guest's); one fault served by the page-server
//! threads (the kvm `fault_path = "kernel"` path, with a host thread in the
//! vCPU's place); and the cost of one fault's decision and bookkeeping in
//! virtual time (emu path).
//!
//! `cargo bench -p apflab-benches --bench pager`

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use apflab_pager::uffd::{AnonMapping, RamMapping, SharedMapping, UffdPager, UffdRegion};
use apflab_pager::{
    Access, Begin, ByteSize, FaultEngine, FaultPlan, PagerConfig, Prepared, StoreConfig,
    VirtualPager,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const PAGE: usize = 4096;
/// Pages cycled through by the install benchmarks: 64 MiB, well past the
/// caches, so both sides write to memory rather than to L2.
const REGION_PAGES: usize = 16 * 1024;

/// Runs `per_page(offset)` `iters` times over the region's pages, calling
/// `reset()` untimed whenever the region is used up.
fn cycle(iters: u64, mut per_page: impl FnMut(usize), mut reset: impl FnMut()) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(REGION_PAGES as u64) as usize;
        let t = Instant::now();
        for k in 0..n {
            per_page(k * PAGE);
        }
        total += t.elapsed();
        left -= n as u64;
        reset();
    }
    total
}

fn install(c: &mut Criterion) {
    let mut g = c.benchmark_group("page_install_4k");
    g.throughput(Throughput::Bytes(PAGE as u64));
    let src = Box::new([0x5Au8; PAGE]);

    // Plain memcpy into already-populated memory.
    let dst = AnonMapping::new(REGION_PAGES * PAGE).unwrap();
    // SAFETY: the whole mapping is ours; populate it so the memcpy side
    // measures copying, not page faults.
    unsafe { std::ptr::write_bytes(dst.as_ptr(), 1, dst.len()) };
    g.bench_function("memcpy", |b| {
        b.iter_custom(|iters| {
            cycle(
                iters,
                |off| {
                    // SAFETY: `off` is a page inside `dst`; `src` is a page.
                    unsafe {
                        std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_ptr().add(off), PAGE)
                    };
                    black_box(off);
                },
                || {},
            )
        })
    });

    // Installs into a registered region whose pages are all absent.
    let mut bench_install = |name: &str, region: &UffdRegion| {
        region.discard(0, region.len()).unwrap();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                cycle(
                    iters,
                    |off| {
                        let installed = region.install(off, &src, false).unwrap();
                        debug_assert!(installed);
                    },
                    || region.discard(0, region.len()).unwrap(),
                )
            })
        });
    };

    // UFFDIO_COPY into private anonymous memory.
    let ram = AnonMapping::new(REGION_PAGES * PAGE).unwrap();
    // SAFETY: `ram` is a private anonymous mapping that outlives `region`
    // (declared before it, dropped after), and no other thread touches it.
    let region = unsafe { UffdRegion::register(ram.as_ptr(), ram.len()) }
        .expect("userfaultfd must be available (run as root)");
    bench_install("uffdio_copy", &region);
    drop(region);
    drop(ram);

    // The kvm backend's layout: the content goes through the VMM's view of
    // a memfd, then UFFDIO_CONTINUE maps the page in the guest's view.
    let shared = SharedMapping::new(REGION_PAGES * PAGE).unwrap();
    // SAFETY: both views map the same memfd pages and outlive `region`;
    // no other thread touches them.
    let region =
        unsafe { UffdRegion::register_shared(shared.guest_ptr(), shared.vmm_ptr(), shared.len()) }
            .expect("userfaultfd must be available (run as root)");
    bench_install("memfd_uffdio_continue", &region);
    g.finish();
    drop(region);
    drop(shared);
}

fn prepared(store: StoreConfig, limit_pages: u64) -> Prepared {
    let mut c = PagerConfig::with_store(store);
    c.resident_limit = Some(ByteSize(limit_pages * PAGE as u64));
    c.initially_resident = 1.0;
    c.latency = apflab_pager::LatencyConfig::Lognormal {
        median_us: 20.0,
        sigma: 0.5,
    };
    c.queue_depth = 4;
    c.bandwidth_bytes_per_sec = Some(10_000_000_000);
    Prepared::new(&c, 256 << 20, Path::new(".")).unwrap()
}

/// Managed pages of a 256 MiB guest, and the working set the benches sweep:
/// twice the resident limit, so every fault evicts and writes back.
const LIMIT: u64 = 8 * 1024;
const SWEEP: u64 = 2 * LIMIT;

fn emu_fault(c: &mut Criterion) {
    let mut g = c.benchmark_group("emu_fault");
    g.throughput(Throughput::Elements(1));

    // The decision and bookkeeping alone: residency, CLOCK, latency draw,
    // fetch timeline, write-back accounting, metrics.
    let p = prepared(StoreConfig::Zero {}, LIMIT);
    let mut engine = FaultEngine::new(&p);
    let first = engine.range().first_pfn;
    let (mut k, mut now) = (0u64, 0u64);
    g.bench_function("decision", |b| {
        b.iter(|| {
            let pfn = first + k % SWEEP;
            k += 1;
            now += 1_000;
            match engine.begin(pfn, now).unwrap() {
                Begin::Fetch { evicted } => {
                    if let Some(e) = evicted {
                        engine.written_back(e.pfn, now).unwrap();
                    }
                    let lat = engine.sample_latency();
                    let ready = engine.schedule(pfn, now, 1, lat);
                    engine.complete(pfn, Access::Read).unwrap();
                    black_box(ready);
                }
                other => {
                    black_box(other);
                }
            }
        })
    });

    // The whole emu path with content: store read, staging, copy into the
    // guest page, write-back of the victim.
    for (name, store) in [
        ("with_zero_store", StoreConfig::Zero {}),
        ("with_synthetic_store", StoreConfig::Synthetic { seed: 1 }),
    ] {
        let mut pager = VirtualPager::new(prepared(store, LIMIT));
        let first = pager.range().first_pfn;
        let mut guest_page = Box::new([0u8; PAGE]);
        let (mut k, mut now) = (0u64, 0u64);
        g.bench_function(name, |b| {
            b.iter(|| {
                let pfn = first + k % SWEEP;
                k += 1;
                now += 1_000;
                if let FaultPlan::Fetch { evicted, .. } =
                    pager.fault(pfn, Access::Read, now).unwrap()
                {
                    if let Some(e) = evicted {
                        pager.write_back(e.pfn, &guest_page[..], now).unwrap();
                    }
                    pager.complete(pfn, &mut guest_page[..]).unwrap();
                }
            })
        });
    }
    g.finish();
}

/// Guest RAM of the page-server benchmark: the managed part is what the
/// toucher sweeps.
const SERVED_RAM: usize = 64 << 20;

fn served_fault(c: &mut Criterion) {
    let mut g = c.benchmark_group("page_server_fault");
    g.throughput(Throughput::Elements(1));
    for (name, layout, poll_us) in [
        ("anonymous", "anonymous", 0),
        ("shared_file", "shared_file", 0),
        ("shared_file_server_poll_100us", "shared_file", 100),
    ] {
        // Zero modeled latency: what is measured is the mechanism (fault
        // message, reader and server threads, engine, store read, install,
        // wake-up), with the resident limit forcing an eviction and a
        // write-back on every fault of the sweep.
        let mut config = PagerConfig::with_store(StoreConfig::Synthetic { seed: 1 });
        config.initially_resident = 0.0;
        config.resident_limit = Some(ByteSize(1 << 20));
        config.fault_path = apflab_pager::FaultPath::Kernel;
        config.server_poll_us = poll_us;
        let p = Prepared::new(&config, SERVED_RAM as u64, Path::new(".")).unwrap();
        let pages = p.range.pages as usize;
        let managed = apflab_abi::boot::WORKLOAD_REGION_OFFSET as usize;
        let (anon, shared);
        let (ram, touch_base) = match layout {
            "anonymous" => {
                anon = AnonMapping::new(SERVED_RAM).unwrap();
                let m = RamMapping::Anonymous {
                    addr: anon.as_ptr(),
                    len: anon.len(),
                };
                (m, anon.as_ptr() as usize)
            }
            _ => {
                shared = SharedMapping::new(SERVED_RAM).unwrap();
                (shared.ram(), shared.guest_ptr() as usize)
            }
        };
        // SAFETY: the mapping outlives the pager (dropped at the end of
        // this iteration, after it), and only this thread touches it.
        let pager = unsafe { UffdPager::start(p, ram) }
            .expect("userfaultfd must be available (run as root)");
        let mut k = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                let addr = touch_base + managed + (k % pages) * PAGE;
                k += 1;
                // SAFETY: a word of a managed page of the live mapping; the
                // read blocks until the page server installs the page.
                black_box(unsafe { std::ptr::read_volatile(addr as *const u64) })
            })
        });
        let m = pager.finish();
        assert_eq!(m.fetches, k as u64, "every touch of the sweep faulted");
    }

    // The bare mechanism on the same host: one thread answering each
    // missing-page fault with UFFDIO_COPY of a fixed page, nothing else.
    let ram = AnonMapping::new(SERVED_RAM).unwrap();
    let uffd = std::sync::Arc::new(
        userfaultfd::UffdBuilder::new()
            .close_on_exec(true)
            .user_mode_only(false)
            .create()
            .expect("userfaultfd must be available (run as root)"),
    );
    uffd.register(ram.as_ptr().cast(), ram.len()).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handler = {
        let (uffd, stop) = (uffd.clone(), stop.clone());
        std::thread::spawn(move || {
            let page = Box::new([0x5Au8; PAGE]);
            loop {
                let Ok(Some(userfaultfd::Event::Pagefault { addr, .. })) = uffd.read_event() else {
                    continue;
                };
                let dst = (addr as usize & !(PAGE - 1)) as *mut std::ffi::c_void;
                // SAFETY: `dst` is a missing page of the registered mapping,
                // `page` a 4 KiB source.
                let _ = unsafe { uffd.copy(page.as_ptr().cast(), dst, PAGE, true) };
                if stop.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
            }
        })
    };
    let base = ram.as_ptr() as usize;
    let touch = |off: usize| {
        // SAFETY: a word of the live mapping; the read blocks until the
        // handler installs the page.
        black_box(unsafe { std::ptr::read_volatile((base + off) as *const u64) });
    };
    let discard = || {
        // SAFETY: drops the pages of the mapping this function owns; they
        // fault again through the userfaultfd.
        let r = unsafe { libc::madvise(ram.as_ptr().cast(), ram.len(), libc::MADV_DONTNEED) };
        assert_eq!(r, 0);
    };
    g.bench_function("minimal_handler", |b| {
        b.iter_custom(|iters| cycle(iters, touch, discard))
    });
    // One more fault lets the handler see the stop.
    discard();
    stop.store(true, std::sync::atomic::Ordering::Release);
    touch(0);
    handler.join().unwrap();
    uffd.unregister(ram.as_ptr().cast(), ram.len()).unwrap();
    g.finish();
}

criterion_group!(benches, install, served_fault, emu_fault);
criterion_main!(benches);
