//! The workloads: which EL0 tasks a configuration starts and the EL0 code
//! they run (the kernel side of `kv` is [`crate::kv`]).
//!
//! EL0 code (the `*_task` functions and what they call) lives in the kernel
//! image but may only touch its parameter block, its stack, the workload
//! window and read-only data, and only enters the kernel through
//! [`crate::uapi`].

use crate::config::{Config, Pattern, Reader, Verify};
use crate::metrics::metric;
use crate::sched::{self, Placement, TaskParams};
use crate::uapi::{self as user, NO_MORE_REQUESTS};
use crate::{apf_abuse, checksum, kv, mmu};
use apflab_abi::boot::{
    KEY_MIB, WORKLOAD_CPU, WORKLOAD_KV, WORKLOAD_MEMTOUCH, WORKLOAD_MIXED, WORKLOAD_VA,
};
use apflab_abi::memory_map::{PAGE_SHIFT, PAGE_SIZE};
use apflab_abi::pattern::{WORDS_PER_PAGE, splitmix64, synthetic_word};

/// `memtouch` mode flag: pages in random order.
const MEMTOUCH_RANDOM: u64 = 1 << 0;
/// `memtouch` mode flag: the kernel reads the pages (a checksum system
/// call) instead of the task.
const MEMTOUCH_KERNEL_READS: u64 = 1 << 1;

/// Starts the configured workload's tasks (boot CPU, before the scheduler).
pub fn spawn(config: &Config) {
    let region = mmu::workload_phys();
    let region_pages = (region.end - region.start) >> PAGE_SHIFT;
    let pages = config.mib << (20 - PAGE_SHIFT);
    if matches!(
        config.workload,
        WORKLOAD_MEMTOUCH | WORKLOAD_MIXED | WORKLOAD_KV
    ) && pages > region_pages
    {
        panic!(
            "bad bootarg {KEY_MIB}={}: the workload region holds only {} MiB",
            config.mib,
            region_pages >> (20 - PAGE_SHIFT)
        );
    }
    let memtouch = |first_page: u64, count: u64| -> TaskParams {
        [
            WORKLOAD_VA + (first_page << PAGE_SHIFT),
            count,
            region.start + (first_page << PAGE_SHIFT),
            config.passes,
            if config.pattern == Pattern::Random {
                MEMTOUCH_RANDOM
            } else {
                0
            } | if config.reader == Reader::Kernel {
                MEMTOUCH_KERNEL_READS
            } else {
                0
            },
            (config.verify == Verify::Store) as u64,
            config.seed ^ splitmix64(first_page),
            config.store_seed,
        ]
    };
    let cpu_params = [config.ops, 0, 0, 0, 0, 0, 0, 0];
    match config.workload {
        WORKLOAD_CPU => {
            for _ in 0..config.tasks {
                sched::spawn(cpu_task, cpu_params, Placement::Spread);
            }
        }
        WORKLOAD_MEMTOUCH => {
            // The working set is split evenly; the last task takes the rest.
            let tasks = u64::from(config.tasks).min(pages);
            let share = pages / tasks;
            for i in 0..tasks {
                let count = if i == tasks - 1 {
                    pages - share * i
                } else {
                    share
                };
                sched::spawn(memtouch_task, memtouch(share * i, count), Placement::Spread);
            }
        }
        WORKLOAD_MIXED => {
            // Both on one CPU: the cpu task can run while memtouch waits.
            sched::spawn(cpu_task, cpu_params, Placement::Pinned(0));
            sched::spawn(memtouch_task, memtouch(0, pages), Placement::Pinned(0));
        }
        WORKLOAD_KV => {
            kv::start(0, config.requests, config.interval_us, config.seed);
            // Several servers on the CPU the requests arrive on, each owning
            // an even share of the working set (the last takes the rest),
            // as shards of one store: a request goes to whichever server
            // asks first and touches a page of that server's share.
            let tasks = u64::from(config.tasks).min(pages);
            let share = pages / tasks;
            for i in 0..tasks {
                let count = if i == tasks - 1 {
                    pages - share * i
                } else {
                    share
                };
                let params = [
                    WORKLOAD_VA,
                    share * i,
                    region.start,
                    count,
                    config.seed,
                    0,
                    0,
                    0,
                ];
                sched::spawn(kv_task, params, Placement::Pinned(0));
            }
        }
        other => unreachable!("workload id {other} passed config parsing"),
    }
    if config.apf_abuse {
        sched::spawn(apf_abuse::task, [0; 8], Placement::Spread);
    }
}

// ---------------------------------------------------------------------------
// EL0 code
// ---------------------------------------------------------------------------

/// The EL0 tasks' deterministic pseudo-random numbers.
type Rng = apflab_guest_core::XorShift64Star;

/// `cpu`: params[0] loop operations, then report them.
extern "C" fn cpu_task(params: *const TaskParams) -> ! {
    // SAFETY: the kernel wrote the block at the top of this task's stack.
    let p = unsafe { params.read() };
    let mut x = 0x1234_5678u64;
    let mut done = 0u64;
    while done < p[0] {
        // black_box keeps one real dependent operation per iteration.
        x = core::hint::black_box(x.wrapping_mul(0x5851_F42D_4C95_7F2D).wrapping_add(done));
        done += 1;
    }
    user::report(metric::CPU_OPS, done);
    user::write("cpu task done\n");
    user::exit()
}

/// Checks one page at `va` against `expected(word)`; returns mismatches.
fn verify_page(va: u64, expected: impl Fn(usize) -> u64) -> u64 {
    verify_words(va, 0, expected)
}

/// Checks words `first..` of the page at `va` against `expected(word)`;
/// returns mismatches.
fn verify_words(va: u64, first: usize, expected: impl Fn(usize) -> u64) -> u64 {
    let page = va as *const u64;
    let mut bad = 0;
    for w in first..WORDS_PER_PAGE {
        // SAFETY: `va` is a page of this task's share of the workload
        // window, mapped for EL0.
        let v = unsafe { page.add(w).read_volatile() };
        bad += (v != expected(w)) as u64;
    }
    bad
}

/// Has the kernel checksum the page at `va` and compares it with the
/// checksum of `expected(word)`; returns 1 if they differ (or the call
/// failed), else 0.
fn verify_page_in_kernel(va: u64, expected: impl Fn(usize) -> u64) -> u64 {
    let want = (0..WORDS_PER_PAGE).fold(checksum::INITIAL, |acc, w| {
        checksum::fold(acc, w, expected(w))
    });
    (user::checksum(va, PAGE_SIZE) != checksum::finish(want) as i64) as u64
}

/// Fills one page at `va` with `value(word)`.
fn fill_page(va: u64, value: impl Fn(usize) -> u64) {
    let page = va as *mut u64;
    for w in 0..WORDS_PER_PAGE {
        // SAFETY: as in `verify_page`.
        unsafe { page.add(w).write_volatile(value(w)) };
    }
}

/// `memtouch`: params = [va, pages, phys, passes, mode, store, seed,
/// store_seed], mode holding `MEMTOUCH_*` flags. Each pass verifies `pages`
/// pages (in order, or drawn at random); in self mode it first writes every
/// page with that pass's pattern, in store mode it checks the store's
/// synthetic content. With kernel reads a page is checked by its checksum,
/// and a mismatch counts the page.
extern "C" fn memtouch_task(params: *const TaskParams) -> ! {
    // SAFETY: the kernel wrote the block at the top of this task's stack.
    let [va, pages, phys, passes, mode, store, seed, store_seed] = unsafe { params.read() };
    let random = mode & MEMTOUCH_RANDOM != 0;
    let kernel_reads = mode & MEMTOUCH_KERNEL_READS != 0;
    let mut rng = Rng::new(seed);
    let pfn_of = |i: u64| (phys >> PAGE_SHIFT) + i;
    for pass in 0..passes {
        // Version 0 is the store's content; self-written passes use 1, 2, ...
        let version = (pass + 1) as u32;
        if store == 0 {
            for i in 0..pages {
                fill_page(va + i * PAGE_SIZE, |w| {
                    synthetic_word(seed, pfn_of(i), version, w)
                });
            }
        }
        let mut mismatches = 0;
        for n in 0..pages {
            let i = if random { rng.below(pages) } else { n };
            let page_va = va + i * PAGE_SIZE;
            let store_word = |w| synthetic_word(store_seed, pfn_of(i), 0, w);
            let own_word = |w| synthetic_word(seed, pfn_of(i), version, w);
            mismatches += match (store != 0, kernel_reads) {
                (true, false) => verify_page(page_va, store_word),
                (false, false) => verify_page(page_va, own_word),
                (true, true) => verify_page_in_kernel(page_va, store_word),
                (false, true) => verify_page_in_kernel(page_va, own_word),
            };
        }
        user::report(metric::PAGES_VERIFIED, pages);
        user::report(metric::MISMATCHES, mismatches);
    }
    user::write("memtouch task done\n");
    user::exit()
}

/// `kv`: params = [va, first, phys, count, seed]. The task serves the
/// pages `first..first + count` of the table at `va` (its share); word 0
/// of a page counts its updates, the other words hold the page's pattern.
/// A request looks up a random page of the share, verifies it and updates
/// its counter.
extern "C" fn kv_task(params: *const TaskParams) -> ! {
    // SAFETY: the kernel wrote the block at the top of this task's stack.
    let [va, first, phys, count, seed, ..] = unsafe { params.read() };
    let pfn_of = |i: u64| (phys >> PAGE_SHIFT) + i;
    for i in first..first + count {
        fill_page(va + i * PAGE_SIZE, |w| {
            if w == 0 {
                0
            } else {
                synthetic_word(seed, pfn_of(i), 1, w)
            }
        });
    }
    // The first share draws as the single server always did.
    let mut rng = Rng::new(seed ^ 0x6b76 ^ first);
    let (mut verified, mut mismatches) = (0, 0);
    loop {
        let request = user::request_wait();
        if request == NO_MORE_REQUESTS || request < 0 {
            break;
        }
        let i = first + rng.below(count);
        let page_va = va + i * PAGE_SIZE;
        // Word 0 is the update counter; the rest must keep their pattern.
        mismatches += verify_words(page_va, 1, |w| synthetic_word(seed, pfn_of(i), 1, w));
        // SAFETY: as above.
        unsafe {
            let counter = page_va as *mut u64;
            counter.write_volatile(counter.read_volatile() + 1);
        }
        verified += 1;
        user::request_done(request as u64);
    }
    user::report(metric::PAGES_VERIFIED, verified);
    user::report(metric::MISMATCHES, mismatches);
    user::write("kv task done\n");
    user::exit()
}
