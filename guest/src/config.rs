//! The workload configuration, from the bootargs keys defined in
//! [`apflab_abi::boot`]. Unknown words are ignored; a known key with a bad
//! value panics naming the key (the run then fails with that message). The
//! ranges are [`apflab_abi::limits`], which the VMM's CLI checks as well
//! when it loads a config.

use apflab_abi::boot::{self, parse_bootargs};
use apflab_abi::boot_point;
use apflab_abi::limits::{self, Bound};
use core::str::FromStr;
use spin::Once;

/// The configuration of this boot, once parsed.
static CONFIG: Once<Config> = Once::new();

/// Keeps `config` as this boot's configuration (boot CPU, once).
pub fn set(config: &Config) -> &'static Config {
    CONFIG.call_once(|| *config)
}

/// This boot's configuration.
///
/// # Panics
///
/// Before [`set`].
pub fn get() -> &'static Config {
    CONFIG.get().expect("the configuration was set at boot")
}

/// `memtouch` access order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Pages in address order.
    Sequential,
    /// Pages drawn at random (seeded).
    Random,
}

/// What `memtouch` verifies pages against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Write a per-page pattern first, then read and check it.
    SelfWritten,
    /// Check pages against the far-memory store's synthetic content.
    Store,
}

/// Who reads the pages `memtouch` verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// The task itself, at EL0.
    Task,
    /// The kernel, in a system call that checksums a page at EL1 with IRQs
    /// unmasked (so the kernel takes the not-resident faults).
    Kernel,
}

/// Parsed boot configuration.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Workload id ([`boot::WORKLOAD_CPU`], ...).
    pub workload: u32,
    /// Tasks of the workload (`cpu`, `memtouch`).
    pub tasks: u32,
    /// `cpu`: loop operations per task.
    pub ops: u64,
    /// Working set in MiB (`memtouch`, `kv`, `mixed`).
    pub mib: u64,
    /// `memtouch` order.
    pub pattern: Pattern,
    /// `memtouch` passes.
    pub passes: u64,
    /// `memtouch` verification mode.
    pub verify: Verify,
    /// `memtouch`: who reads the pages.
    pub reader: Reader,
    /// `kv`: requests.
    pub requests: u64,
    /// `kv`: mean inter-arrival time, microseconds.
    pub interval_us: u64,
    /// Seed of the guest's pseudo-random choices.
    pub seed: u64,
    /// Seed of the synthetic store content.
    pub store_seed: u64,
    /// Scheduler time slice, microseconds.
    pub timeslice_us: u64,
    /// The scheduler picks the task charged the least runtime
    /// ([`boot::SCHEDULER_FAIR`]) instead of going round-robin.
    pub fair_scheduler: bool,
    /// Whether the guest may use async PF (`apflab.apf=off` disables it).
    pub apf_allowed: bool,
    /// Whether the boot CPU misuses the async PF protocol first
    /// (`apflab.apf_abuse=on`).
    pub apf_abuse: bool,
    /// Keep the timeline log for the host (`apflab.trace=on`).
    pub trace: bool,
    /// Run the SDEI conformance test at boot (`apflab.selftest=sdei`).
    pub selftest_sdei: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workload: boot::WORKLOAD_CPU,
            tasks: 1,
            ops: 1_000_000,
            mib: 4,
            pattern: Pattern::Sequential,
            passes: 1,
            verify: Verify::SelfWritten,
            reader: Reader::Task,
            requests: 100,
            interval_us: 100,
            seed: 1,
            store_seed: 0,
            timeslice_us: 1000,
            fair_scheduler: false,
            apf_allowed: true,
            apf_abuse: false,
            trace: false,
            selftest_sdei: false,
        }
    }
}

/// Panics naming `key`, its value and what was expected.
fn bad(key: &str, value: &str, expected: &str) -> ! {
    panic!("bad bootarg {key}={value:?}: expected {expected}")
}

/// Parses an integer in `bound` (the limits the VMM's CLI checks too).
fn bounded<T: FromStr + PartialOrd + Copy + core::fmt::Display>(
    key: &str,
    value: &str,
    bound: Bound<T>,
) -> T {
    number(key, value, bound.min, bound.max)
}

/// Parses an integer in `min..=max`.
fn number<T: FromStr + PartialOrd + Copy + core::fmt::Display>(
    key: &str,
    value: &str,
    min: T,
    max: T,
) -> T {
    match value.parse::<T>() {
        Ok(v) if v >= min && v <= max => v,
        _ => {
            let mut expected = crate::console::FixedBuf::<64>::new();
            let _ = core::fmt::write(&mut expected, format_args!("an integer in {min}..={max}"));
            bad(key, value, expected.as_str())
        }
    }
}

impl Config {
    /// Parses the bootargs; later words override earlier ones.
    pub fn from_bootargs(bootargs: &str) -> Config {
        let c = Config::parse(bootargs, |_| true);
        let most = limits::TASKS.max - boot::APF_ABUSE_TASKS;
        if c.apf_abuse && c.tasks > most {
            panic!(
                "bad bootarg {}={}: expected at most {most} with {}=on (the abusive guest \
                 runs a task of its own)",
                boot::KEY_TASKS,
                c.tasks,
                boot::KEY_APF_ABUSE
            );
        }
        c
    }

    /// The keys of the bootargs that shape the boot, parsed; the workload's
    /// ([`boot_point::AFTER_BOOT_KEYS`]) keep their defaults, as the boot
    /// must not depend on them (they are read after
    /// [`boot_point::FN_BOOT_DONE`], see `main`).
    pub fn boot_part(bootargs: &str) -> Config {
        Config::parse(bootargs, |key| !boot_point::is_after_boot_key(key))
    }

    /// The keys `wanted` of the bootargs, parsed over the defaults.
    fn parse(bootargs: &str, wanted: impl Fn(&str) -> bool) -> Config {
        let mut c = Config::default();
        for (key, value) in parse_bootargs(bootargs).filter(|(key, _)| wanted(key)) {
            match key {
                boot::KEY_WORKLOAD => {
                    c.workload = boot::workload_id(value)
                        .unwrap_or_else(|| bad(key, value, "cpu, memtouch, mixed or kv"));
                }
                boot::KEY_TASKS => c.tasks = bounded(key, value, limits::TASKS),
                boot::KEY_OPS => c.ops = bounded(key, value, limits::OPS),
                boot::KEY_MIB => c.mib = bounded(key, value, limits::MIB),
                boot::KEY_PATTERN => {
                    c.pattern = match value {
                        "seq" => Pattern::Sequential,
                        "random" => Pattern::Random,
                        _ => bad(key, value, "seq or random"),
                    }
                }
                boot::KEY_PASSES => c.passes = bounded(key, value, limits::PASSES),
                boot::KEY_VERIFY => {
                    c.verify = match value {
                        "self" => Verify::SelfWritten,
                        "store" => Verify::Store,
                        _ => bad(key, value, "self or store"),
                    }
                }
                boot::KEY_READER => {
                    c.reader = match value {
                        "task" => Reader::Task,
                        "kernel" => Reader::Kernel,
                        _ => bad(key, value, "task or kernel"),
                    }
                }
                boot::KEY_REQUESTS => c.requests = bounded(key, value, limits::REQUESTS),
                boot::KEY_INTERVAL_US => c.interval_us = bounded(key, value, limits::INTERVAL_US),
                boot::KEY_SEED => c.seed = number(key, value, 0, u64::MAX),
                boot::KEY_STORE_SEED => c.store_seed = number(key, value, 0, u64::MAX),
                boot::KEY_TIMESLICE_US => {
                    c.timeslice_us = bounded(key, value, limits::TIMESLICE_US)
                }
                boot::KEY_SCHEDULER => {
                    c.fair_scheduler = match value {
                        boot::SCHEDULER_ROUND_ROBIN => false,
                        boot::SCHEDULER_FAIR => true,
                        _ => bad(key, value, "round-robin or fair"),
                    }
                }
                boot::KEY_TRACE => {
                    c.trace = match value {
                        "on" => true,
                        "off" => false,
                        _ => bad(key, value, "on or off"),
                    }
                }
                boot::KEY_APF_ABUSE => {
                    c.apf_abuse = match value {
                        "on" => true,
                        "off" => false,
                        _ => bad(key, value, "on or off"),
                    }
                }
                boot::KEY_APF => {
                    c.apf_allowed = match value {
                        "on" => true,
                        "off" => false,
                        _ => bad(key, value, "on or off"),
                    }
                }
                boot::KEY_SELFTEST => {
                    c.selftest_sdei = match value {
                        "sdei" => true,
                        _ => bad(key, value, "sdei"),
                    }
                }
                _ => {}
            }
        }
        c
    }

    /// The workload's name as written in bootargs.
    pub fn workload_name(&self) -> &'static str {
        boot::workload_name(self.workload).unwrap_or("?")
    }
}
