//! The kernel's counters and the final [`GuestReport`].
//!
//! Counters are atomics updated by whichever CPU does the work; the report
//! is assembled once, by the CPU on which the last task exits.

use crate::arch;
use crate::config::Config;
use crate::percpu::{self, MAX_CPUS};
use apflab_abi::report::{GuestReport, MAX_REPORTED_TASKS};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use spin::mutex::{SpinMutex, SpinMutexGuard};

/// Metric ids of the `report` syscall (EL0 tasks add to these).
pub mod metric {
    /// `cpu` loop operations done.
    pub const CPU_OPS: u64 = 0;
    /// Pages read and verified.
    pub const PAGES_VERIFIED: u64 = 1;
    /// Words that did not match.
    pub const MISMATCHES: u64 = 2;
}

/// A named counter.
pub struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Context switches on all CPUs (switches into a task).
pub static CONTEXT_SWITCHES: Counter = Counter::new();
/// Virtual timer interrupts on all CPUs.
pub static TIMER_IRQS: Counter = Counter::new();
/// `cpu` operations.
pub static CPU_OPS: Counter = Counter::new();
/// Pages verified.
pub static PAGES_VERIFIED: Counter = Counter::new();
/// Mismatching words.
pub static MISMATCHES: Counter = Counter::new();
/// `kv` requests served.
pub static REQUESTS: Counter = Counter::new();
/// Counter ticks spent in finished idle waits.
static IDLE_TICKS: Counter = Counter::new();
/// Per CPU: counter value at which its current idle wait began (0 = not
/// waiting). Whoever swaps a non-zero value out accounts for that wait, so
/// a wait still going on when the report is built (a CPU without work
/// sleeps until power-off) is counted exactly once.
static IDLE_SINCE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// CPUs that enabled async PF.
pub static APF_ENABLED: Counter = Counter::new();
/// "Not present" notifications handled.
pub static APF_NOT_PRESENT: Counter = Counter::new();
/// "Page ready" tokens received.
pub static APF_READY: Counter = Counter::new();
/// Tasks parked on a token.
pub static APF_PARKED: Counter = Counter::new();
/// CPUs halted until a token was ready.
pub static APF_HALTS: Counter = Counter::new();
/// Tokens found ready before their task slept (dummy entries used).
pub static APF_EARLY_READY: Counter = Counter::new();
/// "Not present" taken by the kernel itself (each waited for halting).
pub static APF_KERNEL_HALTS: Counter = Counter::new();
/// Wake-all tokens handled.
pub static APF_WAKE_ALLS: Counter = Counter::new();
/// Counter ticks spent in the halt loop.
pub static APF_HALTED_TICKS: Counter = Counter::new();
/// Async PF features the host offered at boot.
static APF_FEATURES: Counter = Counter::new();

/// Counter value at boot (the report's time origin).
static BOOT_TICKS: AtomicU64 = AtomicU64::new(0);

/// The report, filled in place: per-task completion times and the request
/// latency histograms as they happen, the counters at the end. A static
/// and not a value built on the stack, because its fine histogram (30 KiB)
/// is larger than a task's kernel stack.
static REPORT: SpinMutex<GuestReport> = SpinMutex::new(GuestReport::new(0));

/// Records the boot time (called first thing by the boot CPU).
pub fn mark_boot() {
    BOOT_TICKS.store(arch::counter(), Relaxed);
}

/// Nanoseconds since boot.
pub fn now_ns() -> u64 {
    arch::ticks_to_ns(arch::counter().saturating_sub(BOOT_TICKS.load(Relaxed)))
}

/// This CPU starts waiting for an interrupt in its idle loop.
pub fn idle_begin() {
    IDLE_SINCE[percpu::cpu_index()].store(arch::counter().max(1), Relaxed);
}

/// This CPU's idle wait ended.
pub fn idle_end() {
    let since = IDLE_SINCE[percpu::cpu_index()].swap(0, Relaxed);
    if since != 0 {
        IDLE_TICKS.add(arch::counter().saturating_sub(since));
    }
}

/// Idle ticks of all CPUs, including waits still in progress.
fn idle_ticks_now() -> u64 {
    let now = arch::counter();
    let ongoing: u64 = IDLE_SINCE
        .iter()
        .map(|s| s.swap(0, Relaxed))
        .filter(|&since| since != 0)
        .map(|since| now.saturating_sub(since))
        .sum();
    IDLE_TICKS.get() + ongoing
}

/// Remembers the features `FEATURES` returned.
pub fn set_apf_features(features: u64) {
    APF_FEATURES.add(features);
}

/// Adds `value` to the metric `id` on behalf of an EL0 task; `false` for an
/// unknown id.
pub fn add_metric(id: u64, value: u64) -> bool {
    match id {
        metric::CPU_OPS => CPU_OPS.add(value),
        metric::PAGES_VERIFIED => PAGES_VERIFIED.add(value),
        metric::MISMATCHES => MISMATCHES.add(value),
        _ => return false,
    }
    true
}

/// Records that workload task `index` finished now.
pub fn task_done(index: usize) {
    if index < MAX_REPORTED_TASKS {
        REPORT.lock().task_done_ns[index] = now_ns().max(1);
    }
}

/// Records one served request with its latency.
pub fn request_done(latency_ns: u64) {
    REQUESTS.add(1);
    let mut report = REPORT.lock();
    report.latency_hist[GuestReport::latency_bucket(latency_ns)] += 1;
    report.latency_fine[GuestReport::latency_fine_bucket(latency_ns)] += 1;
}

/// Completes the report with the counters; the guard keeps it for the
/// console line and `REPORT`.
pub fn build_report(
    config: &Config,
    cpus_online: u32,
    tasks_completed: u32,
) -> SpinMutexGuard<'static, GuestReport> {
    let mut r = REPORT.lock();
    r.workload = config.workload;
    r.cpus_online = cpus_online;
    r.tasks_completed = tasks_completed;
    r.context_switches = CONTEXT_SWITCHES.get();
    r.timer_irqs = TIMER_IRQS.get();
    r.cpu_ops = CPU_OPS.get();
    r.pages_verified = PAGES_VERIFIED.get();
    r.mismatches = MISMATCHES.get();
    r.requests = REQUESTS.get();
    r.apf_enabled = APF_ENABLED.get();
    r.apf_not_present = APF_NOT_PRESENT.get();
    r.apf_ready = APF_READY.get();
    r.apf_parked = APF_PARKED.get();
    r.apf_halts = APF_HALTS.get();
    r.apf_early_ready = APF_EARLY_READY.get();
    r.apf_kernel_halts = APF_KERNEL_HALTS.get();
    r.apf_wake_alls = APF_WAKE_ALLS.get();
    r.apf_halted_ns = arch::ticks_to_ns(APF_HALTED_TICKS.get());
    r.elapsed_ns = now_ns();
    r.idle_ns = arch::ticks_to_ns(idle_ticks_now());
    r
}
