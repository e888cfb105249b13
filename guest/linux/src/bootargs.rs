//! The workload configuration, from the `apflab.*` words of the kernel
//! command line (`/proc/cmdline`), with the keys and limits of
//! [`apflab_abi::boot`] and [`apflab_abi::limits`], as the built-in guest
//! takes them.
//!
//! Words that are not `apflab.*` belong to the kernel and are ignored; a
//! later word overrides an earlier one. Unlike the built-in guest, an
//! `apflab.*` key this init does not know, or one that does not apply to a
//! Linux guest, is an error: a key Linux would silently ignore would make
//! a run measure something other than what its config says.

use apflab_abi::boot::{self, parse_bootargs};
use apflab_abi::limits::{self, Bound};
use apflab_abi::linux::KEY_HOTPLUG;
use core::fmt;
use core::str::FromStr;

/// Which workload runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// `tasks` threads, each `ops` operations of [`crate::cpu::work`].
    Cpu,
    /// `tasks` threads share `mib` MiB: each maps its share, writes,
    /// verifies and unmaps it, `passes` times.
    Memtouch,
    /// `memtouch`'s threads and one CPU thread counting blocks of `ops`
    /// operations until the memory threads are done.
    Mixed,
    /// `requests` requests arrive on a timer every `interval_us` (on
    /// average) and are served by `tasks` threads from a `mib` MiB table.
    Kv,
}

impl Workload {
    /// The workload's id in the report ([`boot::WORKLOAD_CPU`], ...).
    pub fn id(self) -> u32 {
        match self {
            Workload::Cpu => boot::WORKLOAD_CPU,
            Workload::Memtouch => boot::WORKLOAD_MEMTOUCH,
            Workload::Mixed => boot::WORKLOAD_MIXED,
            Workload::Kv => boot::WORKLOAD_KV,
        }
    }

    fn from_id(id: u32) -> Option<Workload> {
        [
            Workload::Cpu,
            Workload::Memtouch,
            Workload::Mixed,
            Workload::Kv,
        ]
        .into_iter()
        .find(|w| w.id() == id)
    }
}

/// Order in which memory threads verify their pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Every page once, in address order.
    Sequential,
    /// As many pages as there are, each drawn at random (seeded).
    Random,
}

/// Who reads the memory threads' pages back for the check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// The thread itself, with loads.
    Task,
    /// The kernel: the thread writes each page into a pipe, so the
    /// kernel's `copy_from_user` touches it (a fault in kernel mode), and
    /// compares what it reads back out.
    Kernel,
}

/// The configuration of this boot. The defaults are those the built-in
/// guest boots with when given no bootargs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The workload.
    pub workload: Workload,
    /// Threads of the workload: CPU threads (`cpu`), memory threads
    /// (`memtouch`, `mixed`) or request servers (`kv`).
    pub tasks: u32,
    /// `cpu`: operations per thread; `mixed`: operations per block.
    pub ops: u64,
    /// Working set in MiB (`memtouch`, `mixed`, `kv`).
    pub mib: u64,
    /// Verification order of the memory threads.
    pub pattern: Pattern,
    /// Passes of the memory threads.
    pub passes: u64,
    /// Who reads the memory threads' pages back.
    pub reader: Reader,
    /// CPU 1 goes offline and online again during the memory threads'
    /// run ([`apflab_abi::linux::KEY_HOTPLUG`]).
    pub hotplug: bool,
    /// `kv`: requests.
    pub requests: u64,
    /// `kv`: mean inter-arrival time, microseconds.
    pub interval_us: u64,
    /// Seed of the page pattern and of every pseudo-random choice.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workload: Workload::Cpu,
            tasks: 1,
            ops: 1_000_000,
            mib: 4,
            pattern: Pattern::Sequential,
            passes: 1,
            reader: Reader::Task,
            hotplug: false,
            requests: 100,
            interval_us: 100,
            seed: 1,
        }
    }
}

impl Config {
    /// Threads the workload starts, each with its slot in the report's
    /// `task_done_ns`.
    pub fn threads(&self) -> u32 {
        match self.workload {
            Workload::Mixed => self.tasks + 1,
            _ => self.tasks,
        }
    }
}

/// A bootarg the init does not accept. Displayed as `bad bootarg
/// KEY=VALUE: expected ...`; the console line adds
/// [`apflab_abi::linux::MESSAGE_PREFIX`] in front (the whole prefix is
/// [`apflab_abi::linux::BAD_BOOTARG_PREFIX`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadBootarg {
    /// The key as written.
    pub key: String,
    /// The value as written.
    pub value: String,
    /// What would have been accepted, and why when it is not obvious.
    pub expected: String,
}

impl fmt::Display for BadBootarg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad bootarg {}={}: expected {}",
            self.key,
            self.value.escape_debug(),
            self.expected
        )
    }
}

impl std::error::Error for BadBootarg {}

fn bad(key: &str, value: &str, expected: impl Into<String>) -> BadBootarg {
    BadBootarg {
        key: key.into(),
        value: value.into(),
        expected: expected.into(),
    }
}

/// An integer in `bound` (the range the VMM's CLI checks as well).
fn bounded<T>(key: &str, value: &str, bound: Bound<T>) -> Result<T, BadBootarg>
where
    T: FromStr + PartialOrd + Copy + fmt::Display,
{
    match value.parse::<T>() {
        Ok(v) if bound.contains(v) => Ok(v),
        _ => Err(bad(
            key,
            value,
            format!(
                "an integer in {}..={} ({})",
                bound.min, bound.max, bound.why
            ),
        )),
    }
}

/// `value` if it is the one value of `key` that means the same under
/// Linux as on the built-in guest; else why the key does not apply.
fn only(key: &str, value: &str, accepted: &str, why: &str) -> Result<(), BadBootarg> {
    if value == accepted {
        Ok(())
    } else {
        Err(bad(key, value, format!("{accepted} ({why})")))
    }
}

/// The keys that apply to a Linux guest, for the message about an unknown
/// one.
const LINUX_KEYS: [&str; 11] = [
    boot::KEY_WORKLOAD,
    boot::KEY_TASKS,
    boot::KEY_OPS,
    boot::KEY_MIB,
    boot::KEY_PATTERN,
    boot::KEY_PASSES,
    boot::KEY_READER,
    KEY_HOTPLUG,
    boot::KEY_REQUESTS,
    boot::KEY_INTERVAL_US,
    boot::KEY_SEED,
];

/// Parses the kernel command line.
pub fn parse(cmdline: &str) -> Result<Config, BadBootarg> {
    let mut c = Config::default();
    for (key, value) in parse_bootargs(cmdline) {
        match key {
            boot::KEY_WORKLOAD => {
                c.workload = boot::workload_id(value)
                    .and_then(Workload::from_id)
                    .ok_or_else(|| bad(key, value, "cpu, memtouch, mixed or kv"))?;
            }
            boot::KEY_TASKS => c.tasks = bounded(key, value, limits::TASKS)?,
            boot::KEY_OPS => c.ops = bounded(key, value, limits::OPS)?,
            boot::KEY_MIB => c.mib = bounded(key, value, limits::MIB)?,
            boot::KEY_PATTERN => {
                c.pattern = match value {
                    "seq" => Pattern::Sequential,
                    "random" => Pattern::Random,
                    _ => return Err(bad(key, value, "seq or random")),
                }
            }
            boot::KEY_PASSES => c.passes = bounded(key, value, limits::PASSES)?,
            boot::KEY_REQUESTS => c.requests = bounded(key, value, limits::REQUESTS)?,
            boot::KEY_INTERVAL_US => c.interval_us = bounded(key, value, limits::INTERVAL_US)?,
            boot::KEY_SEED => {
                c.seed = value
                    .parse()
                    .map_err(|_| bad(key, value, format!("an integer in 0..={}", u64::MAX)))?
            }
            boot::KEY_VERIFY => only(
                key,
                value,
                "self",
                "Linux zeroes the memory it gives a process, so the far-memory store's content \
                 never reaches the workload",
            )?,
            boot::KEY_READER => {
                c.reader = match value {
                    "task" => Reader::Task,
                    "kernel" => Reader::Kernel,
                    _ => return Err(bad(key, value, "task or kernel")),
                }
            }
            KEY_HOTPLUG => {
                c.hotplug = match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(bad(key, value, "on or off")),
                }
            }
            boot::KEY_APF => only(
                key,
                value,
                "off",
                "the async page fault client of apflab's Linux kernel is on unless the kernel \
                 parameter no-apflab-apf turns it off",
            )?,
            boot::KEY_APF_ABUSE => only(
                key,
                value,
                "off",
                "the abusive guest is apflab's own kernel",
            )?,
            boot::KEY_TRACE => only(
                key,
                value,
                "off",
                "the timeline log is the built-in guest's scheduler's",
            )?,
            boot::KEY_TIMESLICE_US => {
                return Err(bad(
                    key,
                    value,
                    "no such key for a Linux guest (Linux's scheduler picks its own time slices)",
                ));
            }
            boot::KEY_SCHEDULER => {
                return Err(bad(
                    key,
                    value,
                    "no such key for a Linux guest (Linux's own scheduler runs the threads)",
                ));
            }
            boot::KEY_STORE_SEED => {
                return Err(bad(
                    key,
                    value,
                    "no such key for a Linux guest (it goes with apflab.verify=store, which \
                     does not apply)",
                ));
            }
            boot::KEY_SELFTEST => {
                return Err(bad(
                    key,
                    value,
                    "no such key for a Linux guest (the SDEI self-test is the built-in guest's)",
                ));
            }
            _ if key.starts_with("apflab.") => {
                return Err(bad(
                    key,
                    value,
                    format!("one of the keys {}", LINUX_KEYS.join(", ")),
                ));
            }
            _ => {}
        }
    }
    if c.workload == Workload::Mixed && c.tasks >= limits::TASKS.max {
        return Err(bad(
            boot::KEY_TASKS,
            &c.tasks.to_string(),
            format!(
                "at most {} with {}=mixed (its CPU thread takes a slot of the report too)",
                limits::TASKS.max - 1,
                boot::KEY_WORKLOAD
            ),
        ));
    }
    Ok(c)
}

/// Checks that the working set fits in the memory Linux has available
/// (`MemAvailable` of `/proc/meminfo`, `available_kib`), keeping
/// `reserve_kib` for the threads and the kernel; a working set that does
/// not fit would start the OOM killer, which cannot kill init.
pub fn check_fits(config: &Config, available_kib: u64, reserve_kib: u64) -> Result<(), BadBootarg> {
    if config.workload == Workload::Cpu {
        return Ok(());
    }
    let most = available_kib.saturating_sub(reserve_kib) >> 10;
    if config.mib > most {
        return Err(bad(
            boot::KEY_MIB,
            &config.mib.to_string(),
            format!(
                "at most {most} (Linux has {} MiB available and keeps {} MiB for itself)",
                available_kib >> 10,
                reserve_kib >> 10
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "console=ttyAMA0 rdinit=/init apflab.workload=mixed apflab.mib=64 \
                        apflab.tasks=2 apflab.ops=5000 apflab.passes=3 apflab.pattern=random \
                        apflab.seed=7 apflab.requests=9 apflab.interval_us=250 apflab.reader=kernel apflab.hotplug=on quiet";

    #[test]
    fn every_linux_key_is_taken() {
        let c = parse(LINE).unwrap();
        assert_eq!(
            c,
            Config {
                workload: Workload::Mixed,
                tasks: 2,
                ops: 5000,
                mib: 64,
                pattern: Pattern::Random,
                passes: 3,
                reader: Reader::Kernel,
                hotplug: true,
                requests: 9,
                interval_us: 250,
                seed: 7,
            }
        );
        assert_eq!(c.threads(), 3);
        assert_eq!(c.workload.id(), boot::WORKLOAD_MIXED);
    }

    #[test]
    fn kernel_words_are_ignored_and_later_words_win() {
        assert_eq!(
            parse("console=ttyAMA0 quiet init=/x").unwrap(),
            Config::default()
        );
        let c = parse("apflab.workload=cpu apflab.workload=kv apflab.tasks=3").unwrap();
        assert_eq!((c.workload, c.tasks), (Workload::Kv, 3));
    }

    #[test]
    fn built_in_values_that_mean_the_same_under_linux_are_accepted() {
        let c = parse(
            "apflab.verify=self apflab.reader=task apflab.apf=off apflab.apf_abuse=off \
             apflab.trace=off",
        )
        .unwrap();
        assert_eq!(c, Config::default());
    }

    fn message(cmdline: &str) -> String {
        parse(cmdline).unwrap_err().to_string()
    }

    #[test]
    fn keys_that_do_not_apply_to_linux_are_named() {
        for (word, start) in [
            (
                "apflab.verify=store",
                "bad bootarg apflab.verify=store: expected self (",
            ),
            (
                "apflab.reader=both",
                "bad bootarg apflab.reader=both: expected task or kernel",
            ),
            ("apflab.apf=on", "bad bootarg apflab.apf=on: expected off ("),
            (
                "apflab.apf_abuse=on",
                "bad bootarg apflab.apf_abuse=on: expected off (",
            ),
            (
                "apflab.trace=on",
                "bad bootarg apflab.trace=on: expected off (",
            ),
            (
                "apflab.timeslice_us=1000",
                "bad bootarg apflab.timeslice_us=1000: expected no such key for a Linux guest",
            ),
            (
                "apflab.scheduler=fair",
                "bad bootarg apflab.scheduler=fair: expected no such key for a Linux guest",
            ),
            (
                "apflab.store_seed=3",
                "bad bootarg apflab.store_seed=3: expected no such key for a Linux guest",
            ),
            (
                "apflab.selftest=sdei",
                "bad bootarg apflab.selftest=sdei: expected no such key for a Linux guest",
            ),
            (
                "apflab.wrkload=cpu",
                "bad bootarg apflab.wrkload=cpu: expected one of the keys apflab.workload, ",
            ),
        ] {
            let m = message(&format!("console=ttyAMA0 apflab.workload=cpu {word}"));
            assert!(m.starts_with(start), "{word}: {m}");
        }
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        assert_eq!(
            message("apflab.workload=idle"),
            "bad bootarg apflab.workload=idle: expected cpu, memtouch, mixed or kv"
        );
        assert_eq!(
            message("apflab.pattern=stride"),
            "bad bootarg apflab.pattern=stride: expected seq or random"
        );
        let m = message("apflab.tasks=17");
        assert!(m.starts_with("bad bootarg apflab.tasks=17: expected an integer in 1..=16 ("));
        assert!(message("apflab.mib=0").starts_with("bad bootarg apflab.mib=0: expected"));
        assert!(message("apflab.ops=x").starts_with("bad bootarg apflab.ops=x: expected"));
        assert!(message("apflab.seed=-1").starts_with("bad bootarg apflab.seed=-1: expected"));
        assert!(message("apflab.passes=").starts_with("bad bootarg apflab.passes=: expected"));
        // A value with a control character is shown escaped, on one line.
        assert!(message("apflab.requests=1\u{7}").contains("requests=1\\u{7}: expected"));
    }

    #[test]
    fn mixed_leaves_a_report_slot_for_its_cpu_thread() {
        assert_eq!(
            parse("apflab.workload=mixed apflab.tasks=15")
                .unwrap()
                .threads(),
            16
        );
        assert_eq!(
            message("apflab.tasks=16 apflab.workload=mixed"),
            "bad bootarg apflab.tasks=16: expected at most 15 with apflab.workload=mixed \
             (its CPU thread takes a slot of the report too)"
        );
        assert_eq!(
            parse("apflab.workload=kv apflab.tasks=16")
                .unwrap()
                .threads(),
            16
        );
    }

    #[test]
    fn working_set_must_fit_in_available_memory() {
        let c = parse("apflab.workload=memtouch apflab.mib=100").unwrap();
        assert!(check_fits(&c, 200 << 10, 32 << 10).is_ok());
        assert_eq!(
            check_fits(&c, 120 << 10, 32 << 10).unwrap_err().to_string(),
            "bad bootarg apflab.mib=100: expected at most 88 (Linux has 120 MiB available and \
             keeps 32 MiB for itself)"
        );
        let cpu = parse("apflab.workload=cpu apflab.mib=100").unwrap();
        assert!(check_fits(&cpu, 1 << 10, 32 << 10).is_ok());
    }
}
