//! Boots the apflab guest kernel on plain `qemu-system-aarch64 -M virt`
//! (no apflab VMM: every apflab hypercall answers NOT_SUPPORTED) and checks
//! what the guest itself reports on its console for every workload, on one
//! and on four CPUs, plus the panic path for a bad boot argument.

use apflab_abi::boot::{WORKLOAD_CPU, WORKLOAD_KV, WORKLOAD_MEMTOUCH, WORKLOAD_MIXED};
use apflab_abi::report::{CONSOLE_PREFIX, GuestReport};
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Longest a single boot may take before QEMU is killed and the test fails.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// What one boot printed and how it ended.
struct Boot {
    console: String,
}

impl Boot {
    /// The parsed `APFLAB-REPORT` line; fails the test if there is none.
    fn report(&self) -> GuestReport {
        let line = self
            .console
            .lines()
            .find(|l| l.starts_with(CONSOLE_PREFIX))
            .unwrap_or_else(|| panic!("no report line in console output:\n{}", self.console));
        GuestReport::parse_console_line(line)
            .unwrap_or_else(|| panic!("malformed report line: {line}"))
    }
}

/// Boots the guest with `cpus` CPUs and `append` as bootargs; waits for the
/// guest's PSCI SYSTEM_OFF (QEMU exits) or kills QEMU after
/// [`BOOT_TIMEOUT`].
fn boot(cpus: u32, append: &str) -> Boot {
    let mut child = apflab_artifacts::qemu_virt(cpus, 256, append)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run qemu-system-aarch64 (Debian package qemu-system-arm)");
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for qemu") {
            break status;
        }
        if start.elapsed() > BOOT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let out = reader.join().unwrap_or_default();
            panic!(
                "guest did not power off within {BOOT_TIMEOUT:?} ({cpus} cpus, {append}); console:\n{}",
                String::from_utf8_lossy(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let console = String::from_utf8_lossy(&reader.join().expect("reader thread")).into_owned();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(
        status.success(),
        "qemu failed ({status}): {stderr}\nconsole:\n{console}"
    );
    Boot { console }
}

fn check_cpu(cpus: u32) {
    let r = boot(
        cpus,
        "apflab.workload=cpu apflab.tasks=2 apflab.ops=1000000",
    )
    .report();
    assert_eq!(r.workload, WORKLOAD_CPU);
    assert_eq!(r.cpus_online, cpus);
    assert_eq!(r.tasks_completed, 2);
    assert_eq!(r.cpu_ops, 2 * 1_000_000);
    assert_eq!(r.mismatches, 0);
    assert!(r.task_done_ns[..2].iter().all(|&t| t > 0), "{r:?}");
    assert!(r.elapsed_ns >= r.task_done_ns[0].max(r.task_done_ns[1]));
}

#[test]
fn cpu_workload_on_one_cpu_preempts_and_interleaves() {
    check_cpu(1);
    // Longer tasks on one CPU with a short slice: both must progress
    // together, so with round-robin preemption the first one to finish
    // does so close to the second (without preemption it would finish at
    // half the time).
    let r = boot(
        1,
        "apflab.workload=cpu apflab.tasks=2 apflab.ops=4000000 apflab.timeslice_us=500",
    )
    .report();
    assert_eq!(r.cpu_ops, 8_000_000);
    assert!(r.timer_irqs > 0, "{r:?}");
    assert!(
        r.context_switches > 2,
        "two tasks sharing a CPU were never preempted: {r:?}"
    );
    let (a, b) = (r.task_done_ns[0], r.task_done_ns[1]);
    assert!(
        a.min(b) * 4 > a.max(b) * 3,
        "tasks did not interleave: done at {a} and {b} ns"
    );
}

#[test]
fn cpu_workload_on_four_cpus() {
    check_cpu(4);
    let r = boot(4, "apflab.workload=cpu apflab.tasks=16 apflab.ops=100000").report();
    assert_eq!(r.tasks_completed, 16);
    assert_eq!(r.cpu_ops, 16 * 100_000);
    assert!(r.task_done_ns.iter().all(|&t| t > 0), "{r:?}");
}

fn check_memtouch(cpus: u32, args: &str, expected_pages: u64) {
    let b = boot(cpus, &format!("apflab.workload=memtouch {args}"));
    let r = b.report();
    assert_eq!(r.workload, WORKLOAD_MEMTOUCH);
    assert_eq!(r.cpus_online, cpus);
    assert_eq!(r.pages_verified, expected_pages, "{r:?}");
    assert_eq!(r.mismatches, 0);
    assert!(b.console.contains("memtouch task done"));
}

#[test]
fn memtouch_verifies_every_page() {
    // 4 MiB = 1024 pages per pass.
    check_memtouch(1, "apflab.mib=4 apflab.pattern=seq apflab.passes=2", 2048);
    check_memtouch(1, "apflab.mib=4 apflab.pattern=random", 1024);
    check_memtouch(4, "apflab.mib=4 apflab.tasks=3 apflab.passes=2", 2048);
    check_memtouch(4, "apflab.mib=2 apflab.tasks=4 apflab.pattern=random", 512);
}

#[test]
fn memtouch_store_mode_finds_mismatches_without_the_store() {
    // Plain QEMU has no far-memory store filling pages with the synthetic
    // pattern, so verification against it must fail on (nearly) every word:
    // proof that the check is real.
    let r = boot(
        1,
        "apflab.workload=memtouch apflab.mib=1 apflab.verify=store",
    )
    .report();
    assert_eq!(r.pages_verified, 256);
    assert!(r.mismatches > 256 * 500, "{r:?}");
}

#[test]
fn mixed_runs_cpu_beside_memtouch() {
    for cpus in [1, 4] {
        let r = boot(
            cpus,
            "apflab.workload=mixed apflab.ops=2000000 apflab.mib=2 apflab.passes=2",
        )
        .report();
        assert_eq!(r.workload, WORKLOAD_MIXED);
        assert_eq!(r.tasks_completed, 2);
        assert_eq!(r.cpu_ops, 2_000_000);
        assert_eq!(r.pages_verified, 2 * 512);
        assert_eq!(r.mismatches, 0);
    }
}

#[test]
fn kv_serves_every_request() {
    for cpus in [1, 4] {
        let r = boot(
            cpus,
            "apflab.workload=kv apflab.mib=4 apflab.requests=300 apflab.interval_us=100 apflab.seed=7",
        )
        .report();
        assert_eq!(r.workload, WORKLOAD_KV);
        assert_eq!(r.tasks_completed, 1);
        assert_eq!(r.requests, 300);
        assert_eq!(r.pages_verified, 300);
        assert_eq!(r.mismatches, 0);
        assert_eq!(r.latency_hist.iter().sum::<u64>(), 300, "{r:?}");
        // The console line is the summary: the fine histogram goes only
        // through `REPORT`, which plain QEMU does not implement.
        assert!(r.latency_fine.iter().all(|&n| n == 0), "{r:?}");
        // Requests arrive over time (about 300 x 100 us), not all at once.
        assert!(r.elapsed_ns > 300 * 100_000 / 2, "{r:?}");
        // QEMU's counter follows host time: on a busy host several overdue
        // arrivals are served per interrupt, so only a floor is certain.
        assert!(r.timer_irqs >= 30, "arrivals are timer-driven: {r:?}");
    }
}

/// A known key with a bad value makes the guest panic naming the key.
fn assert_panics_naming(append: &str, key: &str) {
    let b = boot(1, append);
    let panic_line = b
        .console
        .lines()
        .find(|l| l.starts_with("apflab-guest panic: "))
        .unwrap_or_else(|| panic!("no panic for {append}:\n{}", b.console));
    assert!(panic_line.contains(key), "{panic_line}");
    assert!(!b.console.contains(CONSOLE_PREFIX), "{}", b.console);
}

#[test]
fn bad_bootargs_panic_naming_the_key() {
    assert_panics_naming("apflab.workload=cpu apflab.tasks=nope", "apflab.tasks");
    assert_panics_naming("apflab.workload=bogus", "apflab.workload");
    assert_panics_naming(
        "apflab.workload=memtouch apflab.pattern=zigzag",
        "apflab.pattern",
    );
    assert_panics_naming("apflab.workload=memtouch apflab.mib=100000", "apflab.mib");
}
