//! The guest's results report, handed to the VMM with `REPORT` before the
//! guest powers off, and also printed on the console as one line starting
//! with [`CONSOLE_PREFIX`] so a run on plain QEMU can be compared field by
//! field with a run under apflab.

/// `GuestReport::magic`: "APFLABRP".
pub const REPORT_MAGIC: u64 = u64::from_le_bytes(*b"APFLABRP");
/// Version of the [`GuestReport`] layout. 2: kernel-mode halts, wake-alls
/// and halted time of the async PF client. 3: the fine latency histogram
/// ([`GuestReport::latency_fine`]).
pub const REPORT_VERSION: u32 = 3;
/// Most tasks whose completion time is reported.
pub const MAX_REPORTED_TASKS: usize = 16;
/// Buckets of [`GuestReport::latency_hist`]: bucket `i` counts request
/// latencies in `[2^i, 2^(i+1))` nanoseconds (bucket 0 also holds 0).
pub const LATENCY_BUCKETS: usize = 40;
/// Sub-buckets per power of two in [`GuestReport::latency_fine`], as a
/// power of two: 2^7 = 128, so a bucket is at most 1/128 (0.79 %) of its
/// values wide, which makes a percentile read from it exact to 0.79 %.
pub const LATENCY_FINE_SUB_BITS: u32 = 7;
/// The largest power of two [`GuestReport::latency_fine`] tells apart:
/// latencies from 2^36 ns (68.7 s) up all count in its last bucket.
pub const LATENCY_FINE_MAX_EXP: u32 = 35;
/// Buckets of [`GuestReport::latency_fine`]: latencies below 2^8 ns one
/// per nanosecond, then 128 per power of two up to [`LATENCY_FINE_MAX_EXP`]
/// (HdrHistogram's log-linear layout, with its significant figures fixed).
pub const LATENCY_FINE_BUCKETS: usize =
    ((LATENCY_FINE_MAX_EXP - LATENCY_FINE_SUB_BITS + 2) << LATENCY_FINE_SUB_BITS) as usize;
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
    /// `kv`: the same latencies at 0.79 % resolution (see
    /// [`Self::latency_fine_bucket`]), from which the percentiles are read.
    /// The log2 histogram stays beside it because it is what the console
    /// line of apflab's own guest carries (see [`ConsoleDetail`]).
    pub latency_fine: [u64; LATENCY_FINE_BUCKETS],
}

/// How much of the report [`GuestReport::write_console_line`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleDetail {
    /// Every field but the fine histogram. For apflab's own guest, which
    /// hands the whole report over with `REPORT`: every console byte is an
    /// MMIO exit, and a fine histogram of a few thousand bytes would add
    /// its exits to the run's virtual time.
    Summary,
    /// Also the fine histogram's non-empty buckets, for a guest whose
    /// console is its only channel (the Linux init) and for runs on plain
    /// QEMU.
    Full,
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
            latency_fine: [0; LATENCY_FINE_BUCKETS],
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

    /// Index of the [`Self::latency_fine`] bucket for `ns`: `ns` itself
    /// below 2^8, else the power of two and the 7 bits below its leading
    /// one.
    pub const fn latency_fine_bucket(ns: u64) -> usize {
        let linear = 2u64 << LATENCY_FINE_SUB_BITS;
        if ns < linear {
            return ns as usize;
        }
        let exp = 63 - ns.leading_zeros();
        if exp > LATENCY_FINE_MAX_EXP {
            return LATENCY_FINE_BUCKETS - 1;
        }
        let shift = exp - LATENCY_FINE_SUB_BITS;
        // `ns >> shift` is in [128, 256): the leading one and 7 bits.
        ((shift as usize) << LATENCY_FINE_SUB_BITS) + (ns >> shift) as usize
    }

    /// The values `[low, high)` that count in [`Self::latency_fine`] bucket
    /// `index` (the last bucket also holds everything above `high`).
    pub const fn latency_fine_bounds(index: usize) -> (u64, u64) {
        let linear = 2usize << LATENCY_FINE_SUB_BITS;
        if index < linear {
            return (index as u64, index as u64 + 1);
        }
        let shift = (index >> LATENCY_FINE_SUB_BITS) as u32 - 1;
        let mantissa =
            (index & ((1 << LATENCY_FINE_SUB_BITS) - 1)) as u64 + (1 << LATENCY_FINE_SUB_BITS);
        (mantissa << shift, (mantissa + 1) << shift)
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
    /// comma-separated lists: `task_done_ns=1,2,...`, `latency_hist=...`,
    /// and with [`ConsoleDetail::Full`] the fine histogram's non-empty
    /// buckets as `latency_fine=index:count,...` (no word when it is empty).
    pub fn write_console_line(
        &self,
        out: &mut impl core::fmt::Write,
        detail: ConsoleDetail,
    ) -> core::fmt::Result {
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
        if detail == ConsoleDetail::Full {
            let mut buckets = self
                .latency_fine
                .iter()
                .enumerate()
                .filter(|&(_, &n)| n > 0)
                .peekable();
            if buckets.peek().is_some() {
                out.write_str(" latency_fine=")?;
                for (k, (i, n)) in buckets.enumerate() {
                    if k > 0 {
                        out.write_char(',')?;
                    }
                    write!(out, "{i}:{n}")?;
                }
            }
        }
        Ok(())
    }

    /// Parses a line written by [`Self::write_console_line`] (surrounding
    /// whitespace allowed). `None` unless it starts with
    /// [`CONSOLE_PREFIX`], every field appears exactly once with a valid
    /// value (`latency_fine` at most once; absent, it is empty), no unknown
    /// field appears and the version is [`REPORT_VERSION`].
    pub fn parse_console_line(line: &str) -> Option<GuestReport> {
        let rest = line.trim().strip_prefix(CONSOLE_PREFIX)?;
        if !rest.is_empty() && !rest.starts_with(' ') {
            return None;
        }
        let mut r = GuestReport::new(0);
        // One bit per field: scalars, then the two arrays, then the
        // optional fine histogram.
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
                    "latency_fine" => {
                        bit += 2;
                        parse_sparse(value, &mut r.latency_fine)?
                    }
                    _ => return None,
                }
            }
            if seen & (1 << bit) != 0 {
                return None;
            }
            seen |= 1 << bit;
        }
        let required = (1u32 << (SCALAR_FIELDS + 2)) - 1;
        (seen & required == required && r.version == REPORT_VERSION).then_some(r)
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

/// Parses `index:count,...` into `out`: indices strictly increasing and in
/// range, counts non-zero, at least one pair.
fn parse_sparse(value: &str, out: &mut [u64]) -> Option<()> {
    let mut next = 0;
    for pair in value.split(',') {
        let (index, count) = pair.split_once(':')?;
        let index: usize = index.parse().ok()?;
        let count: u64 = count.parse().ok()?;
        if index < next || index >= out.len() || count == 0 {
            return None;
        }
        out[index] = count;
        next = index + 1;
    }
    Some(())
}

const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(GuestReport, magic) == 0);
    assert!(offset_of!(GuestReport, context_switches) == 24);
    assert!(offset_of!(GuestReport, apf_kernel_halts) == 120);
    assert!(offset_of!(GuestReport, task_done_ns) == 160);
    assert!(offset_of!(GuestReport, latency_hist) == 160 + 8 * MAX_REPORTED_TASKS);
    assert!(
        offset_of!(GuestReport, latency_fine) == 160 + 8 * MAX_REPORTED_TASKS + 8 * LATENCY_BUCKETS
    );
    // No padding anywhere: the sum of the fields' sizes.
    assert!(
        GuestReport::SIZE
            == 160 + 8 * MAX_REPORTED_TASKS + 8 * LATENCY_BUCKETS + 8 * LATENCY_FINE_BUCKETS
    );
    // The last fine bucket is the one of 2^(MAX_EXP+1) - 1.
    assert!(
        GuestReport::latency_fine_bucket((2 << LATENCY_FINE_MAX_EXP) - 1)
            == LATENCY_FINE_BUCKETS - 1
    );
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
        r.latency_fine[GuestReport::latency_fine_bucket(200)] = 40;
        r.latency_fine[LATENCY_FINE_BUCKETS - 1] = 2;
        let mut line = String::new();
        r.write_console_line(&mut line, ConsoleDetail::Full)
            .unwrap();
        assert!(line.starts_with("APFLAB-REPORT version=3 workload=4 cpus_online=4 "));
        assert!(line.ends_with(" latency_fine=200:40,3839:2"), "{line}");
        assert_eq!(GuestReport::parse_console_line(&line), Some(r));
        assert_eq!(
            GuestReport::parse_console_line(&format!("  {line}\r\n")),
            Some(r)
        );
        // The summary leaves the fine histogram out, and only it.
        let mut summary = String::new();
        r.write_console_line(&mut summary, ConsoleDetail::Summary)
            .unwrap();
        assert_eq!(
            line.strip_prefix(summary.as_str()),
            Some(" latency_fine=200:40,3839:2")
        );
        let mut without_fine = r;
        without_fine.latency_fine = [0; LATENCY_FINE_BUCKETS];
        assert_eq!(
            GuestReport::parse_console_line(&summary),
            Some(without_fine)
        );
    }

    #[test]
    fn fine_buckets_are_contiguous_and_within_0_79_percent() {
        assert_eq!(LATENCY_FINE_BUCKETS, 3840);
        let mut expected_low = 0;
        for i in 0..LATENCY_FINE_BUCKETS {
            let (low, high) = GuestReport::latency_fine_bounds(i);
            assert_eq!(low, expected_low, "bucket {i}");
            assert!(high > low);
            // Width over the smallest value held: at most 1/128.
            assert!(
                (high - low) * 128 <= low.max(128),
                "bucket {i}: {low}..{high}"
            );
            assert_eq!(GuestReport::latency_fine_bucket(low), i);
            assert_eq!(GuestReport::latency_fine_bucket(high - 1), i);
            expected_low = high;
        }
        assert_eq!(expected_low, 1 << (LATENCY_FINE_MAX_EXP + 1));
        assert_eq!(
            GuestReport::latency_fine_bucket(u64::MAX),
            LATENCY_FINE_BUCKETS - 1
        );
        assert_eq!(GuestReport::latency_fine_bucket(1_000_000), 1780);
        assert_eq!(GuestReport::latency_fine_bounds(1780), (999_424, 1_003_520));
    }

    #[test]
    fn malformed_console_lines_are_rejected() {
        let mut line = String::new();
        GuestReport::new(1)
            .write_console_line(&mut line, ConsoleDetail::Full)
            .unwrap();
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
        let version = line.replace("version=3", "version=2");
        assert!(GuestReport::parse_console_line(&version).is_none());
        // The fine histogram: twice, out of order, out of range, a zero
        // count, empty.
        for fine in [
            " latency_fine=1:1 latency_fine=2:1",
            " latency_fine=5:1,4:1",
            " latency_fine=3840:1",
            " latency_fine=3:0",
            " latency_fine=",
        ] {
            let bad = format!("{line}{fine}");
            assert!(GuestReport::parse_console_line(&bad).is_none(), "{fine}");
        }
        assert!(
            GuestReport::parse_console_line(&line.replace("APFLAB-REPORT", "APFLAB-REPORTX"))
                .is_none()
        );
        assert!(GuestReport::parse_console_line("something else").is_none());
    }
}
