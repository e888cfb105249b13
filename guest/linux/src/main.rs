//! `apflab-linux-init`: PID 1 (`/init`) of the initramfs apflab boots a
//! Linux guest with.
//!
//! It mounts `/proc` (and devtmpfs on `/dev` if the initramfs has no
//! `/dev/console`), takes the workload from the `apflab.*` words of
//! `/proc/cmdline` or, on apflab, from the VMM after announcing the end of
//! its boot (`handover`), runs it in threads, prints one `APFLAB-REPORT` line
//! (see [`apflab_abi::report::GuestReport::write_console_line`]) on
//! `/dev/console` and powers off. A bad bootarg or any failure prints one
//! line with the prefixes of [`apflab_abi::linux`] and powers off without
//! a report.
//!
//! Times are CLOCK_MONOTONIC, the guest's virtual counter; the report's
//! `task_done_ns` and `elapsed_ns` count from the workload's start (after
//! the kernel's boot and the init's set-up), which the init prints first.

mod handover;
mod sys;

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use apflab_abi::linux::{
    APF_COUNTERS, APF_PROC_FILE, ERROR_PREFIX, HOTPLUG_OFFLINE_AT_NS, HOTPLUG_OFFLINE_FOR_NS,
    MESSAGE_PREFIX,
};
use apflab_abi::memory_map::PAGE_SIZE;
use apflab_abi::pattern::{WORDS_PER_PAGE, splitmix64};
use apflab_abi::report::GuestReport;
use apflab_linux_init::bootargs::{self, BadBootarg, Config, Pattern, Reader, Workload};
use apflab_linux_init::kv::{self, Arrivals, Latencies};
use apflab_linux_init::memory::{self, Checked};
use apflab_linux_init::{console_report, cpu, procfs};

/// Memory left to the kernel and the threads beside the working set.
const RESERVE_KIB: u64 = 16 << 10;

/// Why the init stopped without a report.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// A bootarg it does not accept (the run's config, not the init, is
    /// at fault: printed as a message).
    #[error(transparent)]
    Bootarg(#[from] BadBootarg),
    /// A system call failed while the init did `what`.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A system call of [`sys`] failed (its error says which and on what).
    #[error(transparent)]
    Sys(#[from] io::Error),
    /// A file of `/proc` lacks a line the init needs.
    #[error(transparent)]
    Proc(#[from] procfs::MissingLine),
    /// A thread could not finish (the panic hook powers off on a panic, so
    /// this is one that is left when it could not).
    #[error("{0} panicked")]
    Panicked(&'static str),
}

/// Names what the init was doing when a system call failed.
trait Doing<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, Failure>;
}

impl<T> Doing<T> for io::Result<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, Failure> {
        self.map_err(|source| Failure::Io {
            what: what(),
            source,
        })
    }
}

fn main() {
    if std::process::id() != 1 {
        eprintln!(
            "{ERROR_PREFIX}not PID 1: this is the init of apflab's Linux guest, and it powers \
             the machine off"
        );
        std::process::exit(2);
    }
    std::panic::set_hook(Box::new(|info| {
        sys::console_line(ERROR_PREFIX, &format!("{info}"));
        sys::power_off()
    }));
    match run() {
        Ok(()) => {}
        Err(Failure::Bootarg(b)) => sys::console_line(MESSAGE_PREFIX, &b.to_string()),
        Err(e) => sys::console_line(ERROR_PREFIX, &e.to_string()),
    }
    sys::power_off()
}

/// Takes CPU 1 offline at [`HOTPLUG_OFFLINE_AT_NS`] after the workload's
/// start and online again [`HOTPLUG_OFFLINE_FOR_NS`] later, unless the
/// memory threads are done (`stop`) by then: a thread beside the workload's,
/// which has no slot in the report.
fn spawn_hotplug(
    start: u64,
    stop: Arc<AtomicBool>,
) -> Result<thread::JoinHandle<Result<(), Failure>>, Failure> {
    sys::mount("sysfs", "/sys")?;
    let online = "/sys/devices/system/cpu/cpu1/online";
    let set = move |value: &str| {
        std::fs::write(online, value).doing(|| format!("write {value} to {online}"))
    };
    thread::Builder::new()
        .name("hotplug".into())
        .spawn(move || {
            sys::sleep_until(start + HOTPLUG_OFFLINE_AT_NS).doing(|| "clock_nanosleep".into())?;
            if stop.load(Ordering::Acquire) {
                return Ok(());
            }
            set("0")?;
            sys::sleep_until(start + HOTPLUG_OFFLINE_AT_NS + HOTPLUG_OFFLINE_FOR_NS)
                .doing(|| "clock_nanosleep".into())?;
            set("1")
        })
        .doing(|| "start the hotplug thread".into())
}

/// Reads a file of `/proc`, naming it on failure.
fn read_proc(path: &str) -> Result<String, Failure> {
    std::fs::read_to_string(path).doing(|| format!("read {path}"))
}

fn counters() -> Result<procfs::Counters, Failure> {
    let stat = read_proc("/proc/stat")?;
    let interrupts = read_proc("/proc/interrupts")?;
    Ok(procfs::counters(&stat, &interrupts)?)
}

/// The async PF client's counters, if the kernel has the client.
fn apf_counters() -> Result<Option<[u64; APF_COUNTERS.len()]>, Failure> {
    match std::fs::read_to_string(APF_PROC_FILE) {
        Ok(text) => Ok(Some(procfs::apf_counters(&text)?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Failure::Io {
            what: format!("read {APF_PROC_FILE}"),
            source,
        }),
    }
}

/// The report's `apf_*` fields: the counters since boot, as the host's
/// count every fault since boot (the init's own faults included).
fn fill_apf(report: &mut GuestReport, c: &[u64; APF_COUNTERS.len()]) {
    let [
        not_present,
        ready,
        parked,
        halts,
        early_ready,
        enabled,
        kernel_halts,
        wake_alls,
        halted_ns,
    ] = *c;
    report.apf_not_present = not_present;
    report.apf_ready = ready;
    report.apf_parked = parked;
    report.apf_halts = halts;
    report.apf_early_ready = early_ready;
    report.apf_enabled = enabled;
    report.apf_kernel_halts = kernel_halts;
    report.apf_wake_alls = wake_alls;
    report.apf_halted_ns = halted_ns;
}

fn run() -> Result<(), Failure> {
    sys::mount("proc", "/proc")?;
    sys::open_console()?;
    // The end of the boot (a snapshot's point) comes before anything the
    // workload's words change.
    let words = handover::workload_words(&read_proc("/proc/cmdline")?)?;
    let config = bootargs::parse(&words)?;
    let available = procfs::mem_available_kib(&read_proc("/proc/meminfo")?)?;
    bootargs::check_fits(&config, available, RESERVE_KIB)?;
    let cpus_online = sys::cpus_online();
    let before = counters()?;
    let start = sys::now_ns();
    sys::console_line(
        MESSAGE_PREFIX,
        &format!(
            "{} with {} threads on {cpus_online} CPUs from {start} ns of CLOCK_MONOTONIC",
            Described(&config),
            config.threads()
        ),
    );
    let outcome = match config.workload {
        Workload::Cpu => run_cpu(&config, start)?,
        Workload::Memtouch | Workload::Mixed => run_memory(&config, start)?,
        Workload::Kv => run_kv(&config, start)?,
    };
    let after = counters()?;
    let apf = apf_counters()?;

    let mut report = GuestReport::new(config.workload.id());
    report.cpus_online = cpus_online;
    report.tasks_completed = outcome.task_done_ns.len() as u32;
    report.context_switches = after.context_switches - before.context_switches;
    report.timer_irqs = after.timer_irqs - before.timer_irqs;
    report.idle_ns =
        (after.idle_ticks - before.idle_ticks) * 1_000_000_000 / sys::clock_ticks_per_second();
    report.cpu_ops = outcome.cpu_ops;
    report.pages_verified = outcome.checked.pages;
    report.mismatches = outcome.checked.mismatches;
    report.requests = outcome.requests;
    report.elapsed_ns = outcome.task_done_ns.iter().copied().max().unwrap_or(0);
    report.task_done_ns[..outcome.task_done_ns.len()].copy_from_slice(&outcome.task_done_ns);
    outcome.latencies.fill(&mut report);
    if let Some(apf) = apf {
        fill_apf(&mut report, &apf);
    }
    sys::write_console(&console_report(&report)).doing(|| "write the report to /dev/console".into())
}

/// The workload in words, for the first line.
struct Described<'a>(&'a Config);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        let name = apflab_abi::boot::workload_name(c.workload.id()).unwrap_or("?");
        write!(f, "{name}: seed {}", c.seed)?;
        match c.workload {
            Workload::Cpu => write!(f, ", {} ops per thread", c.ops),
            Workload::Memtouch | Workload::Mixed => {
                let order = match c.pattern {
                    Pattern::Sequential => "seq",
                    Pattern::Random => "random",
                };
                write!(f, ", {} MiB x {} passes ({order})", c.mib, c.passes)?;
                if c.workload == Workload::Mixed {
                    write!(f, ", CPU blocks of {} ops", c.ops)?;
                }
                Ok(())
            }
            Workload::Kv => write!(
                f,
                ", {} MiB table, {} requests every {} us",
                c.mib, c.requests, c.interval_us
            ),
        }
    }
}

/// What the workload's threads did.
#[derive(Default)]
struct Outcome {
    /// Completion time of each thread, ns after the start, in thread order.
    task_done_ns: Vec<u64>,
    cpu_ops: u64,
    checked: Checked,
    requests: u64,
    latencies: Latencies,
}

/// What one thread did.
#[derive(Default)]
struct ThreadResult {
    done_ns: u64,
    cpu_ops: u64,
    checked: Checked,
    requests: u64,
    latencies: Latencies,
}

/// Joins the threads in spawn order and sums what they did.
fn join(
    handles: Vec<thread::JoinHandle<Result<ThreadResult, Failure>>>,
) -> Result<Outcome, Failure> {
    let mut out = Outcome::default();
    for h in handles {
        // A panicking thread powers the machine off in the panic hook, so
        // a join error is only a thread that could not finish.
        let r = h
            .join()
            .map_err(|_| Failure::Panicked("a workload thread"))??;
        out.task_done_ns.push(r.done_ns);
        out.cpu_ops += r.cpu_ops;
        out.checked.pages += r.checked.pages;
        out.checked.mismatches += r.checked.mismatches;
        out.requests += r.requests;
        out.latencies.merge(&r.latencies);
    }
    Ok(out)
}

fn spawn(
    name: String,
    f: impl FnOnce() -> Result<ThreadResult, Failure> + Send + 'static,
) -> Result<thread::JoinHandle<Result<ThreadResult, Failure>>, Failure> {
    thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .doing(|| format!("start thread {name}"))
}

/// `cpu`: `tasks` threads of `ops` operations each.
fn run_cpu(config: &Config, start: u64) -> Result<Outcome, Failure> {
    let ops = config.ops;
    let handles = (0..config.tasks)
        .map(|i| {
            spawn(format!("cpu{i}"), move || {
                std::hint::black_box(cpu::work(ops, cpu::INITIAL));
                Ok(ThreadResult {
                    done_ns: sys::now_ns() - start,
                    cpu_ops: ops,
                    ..Default::default()
                })
            })
        })
        .collect::<Result<_, _>>()?;
    join(handles)
}

/// `memtouch` and `mixed`: memory threads over shares of the working set
/// and, for `mixed`, one CPU thread that counts blocks of `ops` operations
/// until the last memory thread is done.
fn run_memory(config: &Config, start: u64) -> Result<Outcome, Failure> {
    let pages = config.mib << 20 >> PAGE_SIZE.trailing_zeros();
    let shares = memory::shares(pages, config.tasks);
    let memory_left = Arc::new(AtomicUsize::new(shares.len()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for (i, (first_page, count)) in shares.into_iter().enumerate() {
        let c = *config;
        let (memory_left, stop) = (memory_left.clone(), stop.clone());
        handles.push(spawn(format!("memory{i}"), move || {
            let r = memory_thread(&c, first_page, count, start);
            if memory_left.fetch_sub(1, Ordering::AcqRel) == 1 {
                stop.store(true, Ordering::Release);
            }
            r
        })?);
    }
    let hotplug = config
        .hotplug
        .then(|| spawn_hotplug(start, stop.clone()))
        .transpose()?;
    if config.workload == Workload::Mixed {
        let ops = config.ops;
        handles.push(spawn("cpu".into(), move || {
            let (mut x, mut done) = (cpu::INITIAL, 0);
            loop {
                x = cpu::work(ops, x);
                done += ops;
                if stop.load(Ordering::Acquire) {
                    break;
                }
            }
            std::hint::black_box(x);
            Ok(ThreadResult {
                done_ns: sys::now_ns() - start,
                cpu_ops: done,
                ..Default::default()
            })
        })?);
    }
    let outcome = join(handles)?;
    if let Some(h) = hotplug {
        h.join()
            .map_err(|_| Failure::Panicked("the hotplug thread"))??;
    }
    Ok(outcome)
}

/// One memory thread: per pass, map its share, write the pass's pattern,
/// read back and compare every word, unmap.
fn memory_thread(
    config: &Config,
    first_page: u64,
    pages: u64,
    start: u64,
) -> Result<ThreadResult, Failure> {
    let mut checked = Checked::default();
    for pass in 0..config.passes {
        let version = memory::version(pass);
        let mut map = sys::Mapping::new(pages * PAGE_SIZE)?;
        let words = map.words_mut();
        memory::fill(words, first_page, config.seed, version);
        let draw_seed = config.seed ^ splitmix64(first_page ^ (pass << 40));
        let c = match config.reader {
            Reader::Task => memory::check_loads(
                words,
                first_page,
                config.seed,
                version,
                config.pattern,
                draw_seed,
            ),
            Reader::Kernel => {
                let pipe = sys::Pipe::new().doing(|| "pipe".into())?;
                let mut copy = [0u64; WORDS_PER_PAGE];
                memory::check(
                    words,
                    first_page,
                    config.pattern,
                    draw_seed,
                    |page, index| {
                        pipe.copy_through(page, &mut copy)
                            .doing(|| format!("copy page {index} through a pipe"))?;
                        Ok::<_, Failure>(memory::mismatches_in_words(
                            &copy,
                            index,
                            config.seed,
                            version,
                            0,
                        ))
                    },
                )?
            }
        };
        map.unmap()?;
        checked.pages += c.pages;
        checked.mismatches += c.mismatches;
    }
    Ok(ThreadResult {
        done_ns: sys::now_ns() - start,
        checked,
        ..Default::default()
    })
}

/// The `kv` table: pages whose word 0 counts updates (atomically: any
/// server may update any page) and whose other words hold the pattern.
struct Table {
    map: sys::Mapping,
    pages: u64,
}

impl Table {
    /// Words 1.. of page `page`, never written after the table is filled.
    fn pattern_words(&self, page: u64) -> &[u64] {
        let at = page as usize * WORDS_PER_PAGE + 1;
        // SAFETY: in the mapping (page < pages); these words are only read
        // once the table is shared.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(at), WORDS_PER_PAGE - 1) }
    }

    /// The update counter of page `page`.
    fn counter(&self, page: u64) -> &AtomicU64 {
        let at = page as usize * WORDS_PER_PAGE;
        // SAFETY: in the mapping, aligned; word 0 is only accessed
        // atomically once the table is shared.
        unsafe { AtomicU64::from_ptr(self.map.as_ptr().add(at)) }
    }
}

/// `kv`: the table is written, then `tasks` servers take the requests in
/// arrival order; each sleeps until its request is due (a timer), or
/// serves it at once if it is already late, verifies the request's page,
/// bumps its counter and records the latency from the due time.
fn run_kv(config: &Config, start: u64) -> Result<Outcome, Failure> {
    let pages = config.mib << 20 >> PAGE_SIZE.trailing_zeros();
    let mut map = sys::Mapping::new(pages * PAGE_SIZE)?;
    let words = map.words_mut();
    memory::fill(words, 0, config.seed, kv::TABLE_VERSION);
    for page in words.as_chunks_mut::<WORDS_PER_PAGE>().0 {
        page[0] = 0;
    }
    let table = Arc::new(Table { map, pages });
    // Next request to hand out, and the arrivals' due times.
    let arrivals = Arc::new(Mutex::new((
        0u64,
        Arrivals::new(config.interval_us, config.seed, sys::now_ns()),
    )));
    let handles = (0..config.tasks)
        .map(|i| {
            let (table, arrivals, c) = (table.clone(), arrivals.clone(), *config);
            spawn(format!("kv{i}"), move || {
                let mut r = ThreadResult::default();
                loop {
                    let (index, due) = {
                        let mut a = arrivals.lock().map_err(|_| Failure::Panicked("a server"))?;
                        if a.0 == c.requests {
                            break;
                        }
                        a.0 += 1;
                        (a.0 - 1, a.1.next_due())
                    };
                    sys::sleep_until(due).doing(|| "clock_nanosleep".into())?;
                    let page = kv::request_page(c.seed, index, table.pages);
                    r.checked.mismatches += memory::mismatches_in_words(
                        table.pattern_words(page),
                        page,
                        c.seed,
                        kv::TABLE_VERSION,
                        1,
                    );
                    table.counter(page).fetch_add(1, Ordering::Relaxed);
                    r.checked.pages += 1;
                    r.requests += 1;
                    r.latencies.record(sys::now_ns().saturating_sub(due));
                }
                r.done_ns = sys::now_ns() - start;
                Ok(r)
            })
        })
        .collect::<Result<_, _>>()?;
    let mut out = join(handles)?;
    // Every request bumped one counter: a lost update is a lost write.
    let counted: u64 = (0..table.pages)
        .map(|p| table.counter(p).load(Ordering::Relaxed))
        .sum();
    if counted != out.requests {
        sys::console_line(
            MESSAGE_PREFIX,
            &format!(
                "kv: the table counts {counted} updates for {} requests",
                out.requests
            ),
        );
        out.checked.mismatches += counted.abs_diff(out.requests);
    }
    Ok(out)
}
