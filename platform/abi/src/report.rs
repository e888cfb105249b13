//! The guest's results report, handed to the VMM with `REPORT` before the
//! guest powers off, and also printed on the console as one line starting
//! with [`CONSOLE_PREFIX`] so a run on plain QEMU can be compared field by
//! field with a run under apflab.

/// `GuestReport::magic`: "APFLABRP".
pub const REPORT_MAGIC: u64 = u64::from_le_bytes(*b"APFLABRP");
/// Version of the [`GuestReport`] layout. 2: kernel-mode halts, wake-alls
/// and halted time of the async PF client.
pub const REPORT_VERSION: u32 = 2;
/// Most tasks whose completion time is reported.
pub const MAX_REPORTED_TASKS: usize = 16;
/// Buckets of [`GuestReport::latency_hist`]: bucket `i` counts request
/// latencies in `[2^i, 2^(i+1))` nanoseconds (bucket 0 also holds 0).
pub const LATENCY_BUCKETS: usize = 40;
/// Prefix of the console line that carries the report.
pub const CONSOLE_PREFIX: &str = "APFLAB-REPORT";

/// What the guest measured. All times are from the guest's virtual counter
/// (CNTVCT_EL0) converted to nanoseconds with CNTFRQ_EL0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestReport {
    /// [`REPORT_MAGIC`].
    pub magic: u64,
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// Workload id ([`crate::boot::WORKLOAD_CPU`], ...).
    pub workload: u32,
    /// CPUs the guest brought up.
    pub cpus_online: u32,
    /// Tasks that ran to completion.
    pub tasks_completed: u32,
    /// Context switches on all CPUs.
    pub context_switches: u64,
    /// Timer interrupts taken on all CPUs.
    pub timer_irqs: u64,
    /// `cpu`: loop operations done by all tasks.
    pub cpu_ops: u64,
    /// `memtouch`/`kv`: pages read and verified.
    pub pages_verified: u64,
    /// Words that did not match the expected content (must be 0).
    pub mismatches: u64,
    /// `kv`: requests served.
    pub requests: u64,
    /// Async PF: "not present" notifications taken.
    pub apf_not_present: u64,
    /// Async PF: "page ready" notifications taken.
    pub apf_ready: u64,
    /// Async PF: tasks parked (rescheduled away).
    pub apf_parked: u64,
    /// Async PF: halts (WFI until ready).
    pub apf_halts: u64,
    /// Async PF: "ready" that arrived before its "not present" was processed.
    pub apf_early_ready: u64,
    /// Whether async PF was enabled (1) or not (0).
    pub apf_enabled: u64,
    /// Async PF: "not present" taken by the kernel itself (EL1), each
    /// waited for in the halt loop.
    pub apf_kernel_halts: u64,
    /// Async PF: wake-all tokens handled (every sleeper of a CPU woken).
    pub apf_wake_alls: u64,
    /// Async PF: nanoseconds spent in the halt loop waiting for tokens.
    pub apf_halted_ns: u64,
    /// Nanoseconds from boot to the last task's completion.
    pub elapsed_ns: u64,
    /// Nanoseconds the CPUs spent in the idle task.
    pub idle_ns: u64,
    /// Per-task completion time from boot, nanoseconds (0 = not reported).
    pub task_done_ns: [u64; MAX_REPORTED_TASKS],
    /// `kv`: request latency histogram (see [`LATENCY_BUCKETS`]).
    pub latency_hist: [u64; LATENCY_BUCKETS],
}

impl GuestReport {
    /// An empty report with magic and version set.
    pub const fn new(workload: u32) -> Self {
        GuestReport {
            magic: REPORT_MAGIC,
            version: REPORT_VERSION,
            workload,
            cpus_online: 0,
            tasks_completed: 0,
            context_switches: 0,
            timer_irqs: 0,
            cpu_ops: 0,
            pages_verified: 0,
            mismatches: 0,
            requests: 0,
            apf_not_present: 0,
            apf_ready: 0,
            apf_parked: 0,
            apf_halts: 0,
            apf_early_ready: 0,
            apf_enabled: 0,
            apf_kernel_halts: 0,
            apf_wake_alls: 0,
            apf_halted_ns: 0,
            elapsed_ns: 0,
            idle_ns: 0,
            task_done_ns: [0; MAX_REPORTED_TASKS],
            latency_hist: [0; LATENCY_BUCKETS],
        }
    }

    /// Size in bytes, as passed to `REPORT`.
    pub const SIZE: usize = core::mem::size_of::<GuestReport>();

    /// Reads a report from its in-memory bytes (little-endian host and
    /// guest); `None` if the size, magic or version is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::SIZE {
            return None;
        }
        // SAFETY: GuestReport is repr(C), made only of integers (every bit
        // pattern is valid) and `bytes` has exactly its size;
        // read_unaligned copes with any alignment of the slice.
        let report: GuestReport = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) };
        (report.magic == REPORT_MAGIC && report.version == REPORT_VERSION).then_some(report)
    }

    /// The report's bytes, as handed to the host.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: repr(C) with only u32/u64 fields laid out without padding
        // (checked below), so every byte is initialised.
        unsafe { core::slice::from_raw_parts((self as *const Self).cast(), Self::SIZE) }
    }

    /// Index of the latency bucket for `ns`.
    pub const fn latency_bucket(ns: u64) -> usize {
        let b = if ns == 0 {
            0
        } else {
            63 - ns.leading_zeros() as usize
        };
        if b >= LATENCY_BUCKETS {
            LATENCY_BUCKETS - 1
        } else {
            b
        }
    }
}

/// Applies `$m!(field, type)` to every scalar field of [`GuestReport`] in
/// declaration order after `magic`; the console line is written and parsed
/// from this one list.
macro_rules! scalar_fields {
    ($m:ident) => {
        $m!(version, u32);
        $m!(workload, u32);
        $m!(cpus_online, u32);
        $m!(tasks_completed, u32);
        $m!(context_switches, u64);
        $m!(timer_irqs, u64);
        $m!(cpu_ops, u64);
        $m!(pages_verified, u64);
        $m!(mismatches, u64);
        $m!(requests, u64);
        $m!(apf_not_present, u64);
        $m!(apf_ready, u64);
        $m!(apf_parked, u64);
        $m!(apf_halts, u64);
        $m!(apf_early_ready, u64);
        $m!(apf_enabled, u64);
        $m!(apf_kernel_halts, u64);
        $m!(apf_wake_alls, u64);
        $m!(apf_halted_ns, u64);
        $m!(elapsed_ns, u64);
        $m!(idle_ns, u64);
    };
}

impl GuestReport {
    /// Writes the report as one console line (no newline):
    /// [`CONSOLE_PREFIX`] followed by space-separated `field=value` words for
    /// every field but `magic` (implied by the prefix), with the arrays as
    /// comma-separated lists: `task_done_ns=1,2,...`, `latency_hist=...`.
    pub fn write_console_line(&self, out: &mut impl core::fmt::Write) -> core::fmt::Result {
        out.write_str(CONSOLE_PREFIX)?;
        macro_rules! write_field {
            ($f:ident, $t:ty) => {
                write!(out, concat!(" ", stringify!($f), "={}"), self.$f)?
            };
        }
        scalar_fields!(write_field);
        for (name, values) in [
            ("task_done_ns", &self.task_done_ns[..]),
            ("latency_hist", &self.latency_hist[..]),
        ] {
            write!(out, " {name}=")?;
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    out.write_char(',')?;
                }
                write!(out, "{v}")?;
            }
        }
        Ok(())
    }

    /// Parses a line written by [`Self::write_console_line`] (surrounding
    /// whitespace allowed). `None` unless it starts with
    /// [`CONSOLE_PREFIX`], every field appears exactly once with a valid
    /// value, no unknown field appears and the version is
    /// [`REPORT_VERSION`].
    pub fn parse_console_line(line: &str) -> Option<GuestReport> {
        let rest = line.trim().strip_prefix(CONSOLE_PREFIX)?;
        if !rest.is_empty() && !rest.starts_with(' ') {
            return None;
        }
        let mut r = GuestReport::new(0);
        // One bit per field: scalars, then the two arrays.
        let mut seen: u32 = 0;
        for word in rest.split_ascii_whitespace() {
            let (key, value) = word.split_once('=')?;
            let mut bit = 0u32;
            let mut matched = false;
            macro_rules! parse_field {
                ($f:ident, $t:ty) => {
                    if !matched {
                        if key == stringify!($f) {
                            r.$f = value.parse::<$t>().ok()?;
                            matched = true;
                        } else {
                            bit += 1;
                        }
                    }
                };
            }
            scalar_fields!(parse_field);
            if !matched {
                match key {
                    "task_done_ns" => parse_list(value, &mut r.task_done_ns)?,
                    "latency_hist" => {
                        bit += 1;
                        parse_list(value, &mut r.latency_hist)?
                    }
                    _ => return None,
                }
            }
            if seen & (1 << bit) != 0 {
                return None;
            }
            seen |= 1 << bit;
        }
        let all = (1u32 << (SCALAR_FIELDS + 2)) - 1;
        (seen == all && r.version == REPORT_VERSION).then_some(r)
    }
}

/// Number of fields in `scalar_fields!`.
const SCALAR_FIELDS: u32 = {
    let mut n = 0;
    macro_rules! count {
        ($f:ident, $t:ty) => {
            n += 1
        };
    }
    scalar_fields!(count);
    n
};

/// Parses exactly `out.len()` comma-separated integers.
fn parse_list(value: &str, out: &mut [u64]) -> Option<()> {
    let mut items = value.split(',');
    for slot in out.iter_mut() {
        *slot = items.next()?.parse().ok()?;
    }
    items.next().is_none().then_some(())
}

const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(GuestReport, magic) == 0);
    assert!(offset_of!(GuestReport, context_switches) == 24);
    assert!(offset_of!(GuestReport, apf_kernel_halts) == 120);
    assert!(offset_of!(GuestReport, task_done_ns) == 160);
    assert!(offset_of!(GuestReport, latency_hist) == 160 + 8 * MAX_REPORTED_TASKS);
    // No padding anywhere: the sum of the fields' sizes.
    assert!(GuestReport::SIZE == 160 + 8 * MAX_REPORTED_TASKS + 8 * LATENCY_BUCKETS);
};

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;
    use std::string::String;

    #[test]
    fn report_round_trips_through_bytes() {
        let mut r = GuestReport::new(2);
        r.pages_verified = 77;
        r.latency_hist[3] = 9;
        let back = GuestReport::from_bytes(r.as_bytes()).unwrap();
        assert_eq!(back, r);
        let mut bad = [0u8; GuestReport::SIZE];
        bad.copy_from_slice(r.as_bytes());
        bad[0] ^= 1;
        assert!(GuestReport::from_bytes(&bad).is_none());
        assert!(GuestReport::from_bytes(&bad[1..]).is_none());
    }

    #[test]
    fn latency_buckets_are_log2() {
        assert_eq!(GuestReport::latency_bucket(0), 0);
        assert_eq!(GuestReport::latency_bucket(1), 0);
        assert_eq!(GuestReport::latency_bucket(1024), 10);
        assert_eq!(GuestReport::latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn console_line_round_trips() {
        let mut r = GuestReport::new(crate::boot::WORKLOAD_KV);
        r.cpus_online = 4;
        r.tasks_completed = 3;
        r.context_switches = 17;
        r.cpu_ops = u64::MAX;
        r.idle_ns = 5;
        r.task_done_ns[0] = 123;
        r.task_done_ns[MAX_REPORTED_TASKS - 1] = 9;
        r.latency_hist[7] = 42;
        let mut line = String::new();
        r.write_console_line(&mut line).unwrap();
        assert!(line.starts_with("APFLAB-REPORT version=2 workload=4 cpus_online=4 "));
        assert_eq!(GuestReport::parse_console_line(&line), Some(r));
        assert_eq!(
            GuestReport::parse_console_line(&format!("  {line}\r\n")),
            Some(r)
        );
    }

    #[test]
    fn malformed_console_lines_are_rejected() {
        let mut line = String::new();
        GuestReport::new(1).write_console_line(&mut line).unwrap();
        assert!(GuestReport::parse_console_line(&line).is_some());
        // Missing field, duplicate, unknown key, bad number, short array.
        let missing = line.replace(" cpu_ops=0", "");
        assert!(GuestReport::parse_console_line(&missing).is_none());
        let dup = format!("{line} cpu_ops=1");
        assert!(GuestReport::parse_console_line(&dup).is_none());
        let unknown = format!("{line} bogus=1");
        assert!(GuestReport::parse_console_line(&unknown).is_none());
        let bad = line.replace("cpu_ops=0", "cpu_ops=x");
        assert!(GuestReport::parse_console_line(&bad).is_none());
        let short = line.replace("task_done_ns=0,", "task_done_ns=");
        assert!(GuestReport::parse_console_line(&short).is_none());
        let version = line.replace("version=2", "version=1");
        assert!(GuestReport::parse_console_line(&version).is_none());
        assert!(
            GuestReport::parse_console_line(&line.replace("APFLAB-REPORT", "APFLAB-REPORTX"))
                .is_none()
        );
        assert!(GuestReport::parse_console_line("something else").is_none());
    }
}
