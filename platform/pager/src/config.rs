//! The `[pager]` section of an experiment config, and its validation.
//!
//! The structs deserialize with serde and `deny_unknown_fields`, so the CLI
//! embeds [`PagerConfig`] in its own config and TOML syntax/type errors come
//! out with file, key and line from the TOML parser. What only makes sense
//! once the guest's RAM size and the config's directory are known (limits
//! against RAM, the image file's length, the samples file's lines) is
//! checked by [`PagerConfig::validate`] and [`crate::Prepared::new`], whose
//! errors name the key (`pager.<key>`) and the offending value.
//!
//! ```toml
//! [pager]
//! store = { kind = "synthetic", seed = 7 }
//! latency = { model = "lognormal", median_us = 40.0, sigma = 0.6 }
//! bandwidth_bytes_per_sec = 1_250_000_000   # 10 Gbit/s; omit for unlimited
//! queue_depth = 4                           # concurrent fetches
//! resident_limit = "64 MiB"                 # or bytes: 67108864; omit for no limit
//! initially_resident = 0.0                  # post-copy start
//! eviction = "clock"
//! retries = 3
//! seed = 1
//! fault_path = "vmm"                        # or "kernel" (kvm only)
//! server_poll_us = 0                        # kernel fault path: busy-poll before blocking
//! inject_errors = { transient_every = 100, permanent = [0x4300_0000], spike_every = 50, spike_us = 2000, corrupt_every = 0 }
//! armed_at = "power-on"                     # or "boot-point" (emu): far memory starts after the boot
//! ```

use std::fmt;
use std::path::PathBuf;

use apflab_abi::apf::MAX_OUTSTANDING;
use apflab_abi::boot::WORKLOAD_REGION_OFFSET;
use apflab_abi::memory_map::{MAX_VCPUS, PAGE_SIZE};
use serde::{Deserialize, Serialize};

/// Most fetch slots (`queue_depth`): no more fetches can be in flight at
/// once than every vCPU's outstanding async faults together
/// ([`MAX_VCPUS`] x [`MAX_OUTSTANDING`]); more slots would never be used.
pub const MAX_QUEUE_DEPTH: u32 = MAX_VCPUS * MAX_OUTSTANDING as u32;

/// Most retries of a failed store read (`retries`): each costs another
/// fetch latency, and a store that fails a page this often is down.
pub const MAX_RETRIES: u32 = 100;

/// Longest fetch latency a model may give, µs (1000 s): far slower than
/// any far memory, and small enough that the sums of latencies on the
/// fetch timeline stay far from wrapping the ns clock.
pub const MAX_LATENCY_US: f64 = 1e9;

/// Largest `latency.sigma` of the log-normal model: at 10, one fetch in a
/// hundred already takes e^23 (10^10) times the median.
pub const MAX_LOGNORMAL_SIGMA: f64 = 10.0;

/// Largest samples file read (`latency.samples`): 16 MiB of text is
/// millions of samples.
pub const MAX_SAMPLES_BYTES: u64 = 16 << 20;

/// Configuration of the far-memory model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerConfig {
    /// Where non-resident pages live.
    pub store: StoreConfig,
    /// Per-fetch latency (before bandwidth and queueing). Default: constant 0.
    #[serde(default)]
    pub latency: LatencyConfig,
    /// Link bandwidth in bytes per second; every page transfer occupies the
    /// link for `4096 / bandwidth` seconds, so transfers serialise on it.
    /// Absent: unlimited.
    #[serde(default)]
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// Fetches in flight at once; more wait for a free slot (queueing delay).
    #[serde(default = "default_queue_depth")]
    pub queue_depth: u32,
    /// Most bytes of the workload region resident at once (kernel memory,
    /// below the workload region, is always resident and not counted).
    /// An integer (bytes) or a string with a binary unit: `"64 MiB"`,
    /// `"4KiB"`, `"1 GiB"`. Absent: no limit, nothing is ever evicted.
    #[serde(default)]
    pub resident_limit: Option<ByteSize>,
    /// Fraction (0.0..=1.0) of workload-region pages resident at boot,
    /// chosen with the seeded RNG, capped by `resident_limit`. 0.0 is the
    /// post-copy start (nothing resident). Default 1.0.
    #[serde(default = "default_initially_resident")]
    pub initially_resident: f64,
    /// Which resident page makes room for a fetched one.
    #[serde(default)]
    pub eviction: EvictionPolicy,
    /// How often a failed store read is retried before the fault is
    /// reported as a permanent error (each retry costs another latency).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Seed of the latency RNG and of the initial resident set.
    #[serde(default)]
    pub seed: u64,
    /// Which evicted pages are written back to the store (default
    /// `conservative`: all of them).
    #[serde(default)]
    pub dirty_tracking: DirtyTracking,
    /// Where a vCPU that touched a non-resident page waits for it.
    #[serde(default)]
    pub fault_path: FaultPath,
    /// Kernel fault path: how long (µs) a page server keeps polling the
    /// userfaultfd before it blocks, as KVM's `halt_poll_ns` does for vCPUs.
    /// A fault arriving meanwhile costs no thread wake-up on the server's
    /// side, at the price of a busy host CPU. Default 0: block at once.
    #[serde(default)]
    pub server_poll_us: u64,
    /// Store reads made to fail (flaky far memory, and the error paths).
    /// Absent: the store never fails unless it really does.
    #[serde(default)]
    pub inject_errors: Option<InjectErrors>,
    /// When far memory starts (default `power-on`). Left out of the
    /// echoed config at its default.
    #[serde(default, skip_serializing_if = "ArmedAt::is_power_on")]
    pub armed_at: ArmedAt,
}

/// Store read failures injected into a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectErrors {
    /// Every n-th store read fails transiently: it is retried (up to
    /// `retries` times), each attempt costing another fetch latency.
    /// 0: never.
    #[serde(default)]
    pub transient_every: u64,
    /// Guest physical addresses whose pages can never be read: the first
    /// fault on one stops the run with an error naming the page.
    #[serde(default)]
    pub permanent: Vec<u64>,
    /// Every n-th fetch takes `spike_us` longer (a congested link, a slow
    /// disk): the fetches after it overtake it, so completions come out of
    /// fault order. 0: never.
    #[serde(default)]
    pub spike_every: u64,
    /// The extra latency of a spiked fetch, µs (at most 10^9).
    #[serde(default)]
    pub spike_us: u64,
    /// Every n-th store read silently returns the page with its first word
    /// flipped (a device that corrupts data without an error), so that a
    /// verifying workload's check can be seen to catch it. 0: never.
    #[serde(default)]
    pub corrupt_every: u64,
}

/// Where a fault on a non-resident page is handled, and so where the
/// faulting vCPU waits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultPath {
    /// The access exits to the VMM, which asks the pager and stalls the
    /// vCPU until the page is in. Both backends; the async variants build
    /// on this path, since the VMM sees every fault.
    #[default]
    Vmm,
    /// The vCPU blocks inside the host kernel on userfaultfd, and the
    /// pager's page-server threads install the page; the VMM sees no exit.
    /// This is stock KVM post-copy and swap. kvm backend only.
    Kernel,
}

/// When far memory starts withholding pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArmedAt {
    /// From power-on: the boot already faults on withheld pages (a
    /// post-copy start of a guest that has not booted yet).
    #[default]
    PowerOn,
    /// From the guest's boot point (its `BOOT_DONE` call): the boot runs
    /// with every page resident, then every managed page outside the
    /// initially resident set moves to the store with the content the
    /// boot left in it, and the workload starts on far memory. This is a
    /// booted VM put under a memory limit, or restored from a snapshot
    /// with its memory served post-copy; and since the boot no longer
    /// depends on latencies or the pager's seed, runs that differ only
    /// there share one saved boot (`apflab matrix`). emu backend, fault
    /// path `vmm`.
    BootPoint,
}

impl ArmedAt {
    /// Whether this is the default, [`ArmedAt::PowerOn`].
    pub fn is_power_on(&self) -> bool {
        *self == ArmedAt::PowerOn
    }
}

fn default_queue_depth() -> u32 {
    1
}
fn default_initially_resident() -> f64 {
    1.0
}
fn default_retries() -> u32 {
    3
}

/// The backing store of non-resident pages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// Every page reads as zeros until written back.
    Zero {},
    /// A raw guest memory image: file offset 0 is guest physical
    /// [`apflab_abi::memory_map::RAM_BASE`]; it must cover all of guest RAM.
    /// Pages are read with `pread`; write-backs stay in memory (the image
    /// is never modified).
    File {
        /// Path of the image (relative paths are taken from the config's
        /// directory).
        path: PathBuf,
    },
    /// Page content is [`apflab_abi::pattern::fill_page`] of this seed, the
    /// page frame and its write-back version, so the guest can verify it.
    Synthetic {
        /// Pattern seed (the VMM passes it to the guest as
        /// [`apflab_abi::boot::KEY_STORE_SEED`]).
        #[serde(default)]
        seed: u64,
    },
}

/// Distribution of one fetch's latency, in microseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "lowercase", deny_unknown_fields)]
pub enum LatencyConfig {
    /// Always the same.
    Constant {
        /// Latency in µs.
        us: f64,
    },
    /// Uniform in `[min_us, max_us]`.
    Uniform {
        /// Lower bound in µs.
        min_us: f64,
        /// Upper bound in µs.
        max_us: f64,
    },
    /// Log-normal with the given median and shape (σ of the underlying
    /// normal; 0.5 is a moderately heavy tail).
    Lognormal {
        /// Median in µs.
        median_us: f64,
        /// σ of ln(latency).
        sigma: f64,
    },
    /// Drawn uniformly from measured samples: a text file with one latency
    /// in µs per line (blank lines and `#` comments ignored).
    Empirical {
        /// Path of the samples file (relative to the config's directory).
        samples: PathBuf,
    },
}

impl Default for LatencyConfig {
    fn default() -> Self {
        LatencyConfig::Constant { us: 0.0 }
    }
}

/// Victim selection when the resident limit is reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvictionPolicy {
    /// CLOCK (second chance) over the workload region: a page whose
    /// accessed bit is set (on install, or by a VMM hint) is skipped once.
    #[default]
    Clock,
    /// Oldest installed page first, ignoring accesses.
    Fifo,
}

/// Which evicted pages go back to the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DirtyTracking {
    /// Every evicted page is written back: correct without any help from
    /// the backend.
    #[default]
    Conservative,
    /// Only pages installed for a write fault or marked dirty by the VMM
    /// are written back; the backend must report every first write.
    Hinted,
}

/// A size in bytes, written as an integer or as a string with a binary
/// unit (`B`, `KiB`, `MiB`, `GiB`, also `K`, `M`, `G`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// Why a text is no [`ByteSize`]; each variant holds the text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ByteSizeError {
    /// No number first.
    #[error("expected a size like \"64 MiB\" or 4096, found {0:?}")]
    NoNumber(String),
    /// A unit other than the binary ones.
    #[error("unknown unit {unit:?} in {text:?} (use B, KiB, MiB or GiB)")]
    UnknownUnit {
        /// The unit given.
        unit: String,
        /// The whole text.
        text: String,
    },
    /// More bytes than a u64 holds.
    #[error("{0:?} does not fit in 64 bits")]
    TooLarge(String),
}

impl ByteSize {
    /// Parses `"64 MiB"`, `"4KiB"`, `"4096"`, ...
    pub fn parse(text: &str) -> Result<Self, ByteSizeError> {
        let t = text.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '_')
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: u64 = num
            .replace('_', "")
            .parse()
            .map_err(|_| ByteSizeError::NoNumber(text.to_owned()))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            other => {
                return Err(ByteSizeError::UnknownUnit {
                    unit: other.to_owned(),
                    text: text.to_owned(),
                });
            }
        };
        num.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| ByteSizeError::TooLarge(text.to_owned()))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes (integer) or a string like \"64 MiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("a size cannot be negative, found {v}")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A `[pager]` value that cannot be used, naming the key and the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key's value is out of its range or inconsistent with the guest.
    #[error("pager.{key} = {value}: {reason}")]
    Invalid {
        /// Key inside `[pager]`, dotted.
        key: &'static str,
        /// The value as written (or as parsed).
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A file named by a key could not be opened or read.
    #[error("pager.{key} = {path:?}: cannot read: {source}")]
    File {
        /// Key inside `[pager]`, dotted.
        key: &'static str,
        /// The path, after resolution against the config directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line of a samples file is not a latency.
    #[error("pager.{key} = {path:?}: {path_display}:{line}: {reason}", path_display = path.display())]
    FileLine {
        /// Key inside `[pager]`, dotted.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// `v` as a user would write it: `1e300`, not three hundred digits.
pub fn float_text(v: f64) -> String {
    if v != 0.0 && v.is_finite() && !(1e-6..1e16).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

/// What a latency in µs must be (for error messages).
pub(crate) fn latency_range() -> String {
    format!(
        "expected a finite, non-negative number of microseconds, at most {MAX_LATENCY_US:e} \
         (1000 s; no far memory is slower)"
    )
}

impl ConfigError {
    fn invalid(key: &'static str, value: impl fmt::Display, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// The part of guest RAM the pager manages: whole pages from
/// `RAM_BASE + WORKLOAD_REGION_OFFSET` to the end of RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManagedRange {
    /// First managed guest page frame (guest physical address >> 12).
    pub first_pfn: u64,
    /// Number of managed pages.
    pub pages: u64,
}

impl ManagedRange {
    /// The workload region of a guest with `guest_ram_bytes` of RAM.
    pub fn for_guest_ram(guest_ram_bytes: u64) -> Result<Self, ConfigError> {
        Self::above(WORKLOAD_REGION_OFFSET, guest_ram_bytes)
    }

    /// RAM from `low` bytes above its start to its end, for a guest with
    /// `guest_ram_bytes` of RAM (`low` is page aligned).
    pub fn above(low: u64, guest_ram_bytes: u64) -> Result<Self, ConfigError> {
        use apflab_abi::memory_map::{PAGE_SHIFT, RAM_BASE};
        if guest_ram_bytes <= low {
            return Err(ConfigError::invalid(
                "guest_memory",
                format!("{guest_ram_bytes} bytes"),
                format!(
                    "the pager manages RAM above the first {} MiB (the kernel's); \
                     the guest needs more RAM than that",
                    low >> 20
                ),
            ));
        }
        Ok(ManagedRange {
            first_pfn: (RAM_BASE + low) >> PAGE_SHIFT,
            pages: (guest_ram_bytes - low) / PAGE_SIZE,
        })
    }

    /// Index of `pfn` in the range, if it is managed.
    #[inline]
    pub fn index(&self, pfn: u64) -> Option<usize> {
        let i = pfn.checked_sub(self.first_pfn)?;
        (i < self.pages).then_some(i as usize)
    }

    /// Whether `pfn` is managed (may be non-resident).
    #[inline]
    pub fn contains(&self, pfn: u64) -> bool {
        self.index(pfn).is_some()
    }

    /// Page frame at index `i`.
    #[inline]
    pub fn pfn(&self, i: usize) -> u64 {
        self.first_pfn + i as u64
    }
}

impl PagerConfig {
    /// A config with every default and the given store: no latency, no
    /// limit, everything resident at boot.
    pub fn with_store(store: StoreConfig) -> Self {
        PagerConfig {
            store,
            latency: LatencyConfig::default(),
            bandwidth_bytes_per_sec: None,
            queue_depth: default_queue_depth(),
            resident_limit: None,
            initially_resident: default_initially_resident(),
            eviction: EvictionPolicy::default(),
            retries: default_retries(),
            seed: 0,
            dirty_tracking: DirtyTracking::default(),
            fault_path: FaultPath::default(),
            server_poll_us: 0,
            inject_errors: None,
            armed_at: ArmedAt::default(),
        }
    }

    /// The synthetic store's seed, which the guest needs to verify pages.
    pub fn synthetic_seed(&self) -> Option<u64> {
        match self.store {
            StoreConfig::Synthetic { seed } => Some(seed),
            _ => None,
        }
    }

    /// Checks every value that does not need a file, against a guest with
    /// `guest_ram_bytes` of RAM; returns the managed range.
    pub fn validate(&self, guest_ram_bytes: u64) -> Result<ManagedRange, ConfigError> {
        self.validate_above(WORKLOAD_REGION_OFFSET, guest_ram_bytes)
    }

    /// [`Self::validate`] for a pager that manages RAM from `low` bytes
    /// above its start ([`ManagedRange::above`]).
    pub fn validate_above(
        &self,
        low: u64,
        guest_ram_bytes: u64,
    ) -> Result<ManagedRange, ConfigError> {
        let range = ManagedRange::above(low, guest_ram_bytes)?;
        if let Some(limit) = self.resident_limit {
            if limit.0 < PAGE_SIZE {
                return Err(ConfigError::invalid(
                    "resident_limit",
                    limit,
                    format!("smaller than one page ({PAGE_SIZE} bytes)"),
                ));
            }
            if limit.0 > guest_ram_bytes {
                return Err(ConfigError::invalid(
                    "resident_limit",
                    limit,
                    format!("larger than guest RAM ({guest_ram_bytes} bytes)"),
                ));
            }
        }
        let f = self.initially_resident;
        if !(0.0..=1.0).contains(&f) {
            return Err(ConfigError::invalid(
                "initially_resident",
                float_text(f),
                "expected a fraction between 0.0 and 1.0",
            ));
        }
        if self.queue_depth == 0 {
            return Err(ConfigError::invalid(
                "queue_depth",
                0,
                "at least one fetch must be able to run",
            ));
        }
        if self.queue_depth > MAX_QUEUE_DEPTH {
            return Err(ConfigError::invalid(
                "queue_depth",
                self.queue_depth,
                format!(
                    "at most {MAX_QUEUE_DEPTH}: no more fetches are ever in flight at once \
                     ({MAX_VCPUS} vCPUs x {MAX_OUTSTANDING} outstanding async faults each)"
                ),
            ));
        }
        if self.retries > MAX_RETRIES {
            return Err(ConfigError::invalid(
                "retries",
                self.retries,
                format!(
                    "at most {MAX_RETRIES}: each retry costs another fetch latency, and a store \
                     that fails a page this often is down"
                ),
            ));
        }
        if self.bandwidth_bytes_per_sec == Some(0) {
            return Err(ConfigError::invalid(
                "bandwidth_bytes_per_sec",
                0,
                "must be positive (omit it for unlimited bandwidth)",
            ));
        }
        self.validate_latency()?;
        if self.server_poll_us > 0 && self.fault_path != FaultPath::Kernel {
            return Err(ConfigError::invalid(
                "server_poll_us",
                self.server_poll_us,
                "only the kernel fault path (fault_path = \"kernel\") has page-server threads \
                 to poll",
            ));
        }
        if self.armed_at == ArmedAt::BootPoint && self.fault_path == FaultPath::Kernel {
            return Err(ConfigError::invalid(
                "armed_at",
                "\"boot-point\"",
                "only the VMM fault path (fault_path = \"vmm\", emu) starts far memory at the \
                 boot point; the kernel fault path withholds pages from power-on",
            ));
        }
        if self.server_poll_us > 1_000_000 {
            return Err(ConfigError::invalid(
                "server_poll_us",
                self.server_poll_us,
                "at most 1000000 (one second of busy polling per fault)",
            ));
        }
        if let Some(i) = &self.inject_errors {
            if i.spike_us as f64 > MAX_LATENCY_US {
                return Err(ConfigError::invalid(
                    "inject_errors.spike_us",
                    i.spike_us,
                    "at most 1000000000 (1000 s; no far memory is slower)",
                ));
            }
            if (i.spike_every == 0) != (i.spike_us == 0) {
                return Err(ConfigError::invalid(
                    "inject_errors.spike_every",
                    i.spike_every,
                    "spike_every and spike_us go together: both 0, or both set",
                ));
            }
        }
        for &addr in self.inject_errors.iter().flat_map(|i| &i.permanent) {
            if range.index(addr / PAGE_SIZE).is_none() {
                return Err(ConfigError::invalid(
                    "inject_errors.permanent",
                    format_args!("{addr:#x}"),
                    format!(
                        "not in the pager's range (guest physical {:#x}..{:#x})",
                        range.first_pfn * PAGE_SIZE,
                        (range.first_pfn + range.pages) * PAGE_SIZE
                    ),
                ));
            }
        }
        Ok(range)
    }

    fn validate_latency(&self) -> Result<(), ConfigError> {
        let finite_nonneg = |key: &'static str, v: f64| {
            if v.is_finite() && (0.0..=MAX_LATENCY_US).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError::invalid(key, float_text(v), latency_range()))
            }
        };
        match self.latency {
            LatencyConfig::Constant { us } => finite_nonneg("latency.us", us),
            LatencyConfig::Uniform { min_us, max_us } => {
                finite_nonneg("latency.min_us", min_us)?;
                finite_nonneg("latency.max_us", max_us)?;
                if min_us > max_us {
                    return Err(ConfigError::invalid(
                        "latency.min_us",
                        float_text(min_us),
                        format!("larger than latency.max_us ({max_us})"),
                    ));
                }
                Ok(())
            }
            LatencyConfig::Lognormal { median_us, sigma } => {
                if !(median_us.is_finite() && median_us > 0.0 && median_us <= MAX_LATENCY_US) {
                    return Err(ConfigError::invalid(
                        "latency.median_us",
                        float_text(median_us),
                        format!(
                            "expected a positive number of microseconds, at most \
                             {MAX_LATENCY_US:e} (1000 s)"
                        ),
                    ));
                }
                if !(sigma.is_finite() && (0.0..=MAX_LOGNORMAL_SIGMA).contains(&sigma)) {
                    return Err(ConfigError::invalid(
                        "latency.sigma",
                        float_text(sigma),
                        format!(
                            "expected a number from 0 to {MAX_LOGNORMAL_SIGMA} (at 10, one fetch \
                             in a hundred takes 10^10 times the median)"
                        ),
                    ));
                }
                Ok(())
            }
            LatencyConfig::Empirical { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PagerConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn full_section_parses() {
        let c = parse(
            r#"
            store = { kind = "synthetic", seed = 7 }
            latency = { model = "lognormal", median_us = 40.0, sigma = 0.6 }
            bandwidth_bytes_per_sec = 1_250_000_000
            queue_depth = 4
            resident_limit = "64 MiB"
            initially_resident = 0.0
            eviction = "fifo"
            retries = 2
            seed = 9
            dirty_tracking = "hinted"
            "#,
        )
        .unwrap();
        assert_eq!(c.store, StoreConfig::Synthetic { seed: 7 });
        assert_eq!(c.resident_limit, Some(ByteSize(64 << 20)));
        assert_eq!(c.eviction, EvictionPolicy::Fifo);
        assert_eq!(c.dirty_tracking, DirtyTracking::Hinted);
        assert_eq!(c.synthetic_seed(), Some(7));
        assert_eq!(c.validate(256 << 20).unwrap().pages, (224 << 20) / 4096);
    }

    #[test]
    fn far_memory_starts_at_power_on_unless_the_boot_point_is_asked_for() {
        let c = parse(r#"store = { kind = "zero" }"#).unwrap();
        assert_eq!(c.armed_at, ArmedAt::PowerOn);
        // The default is not echoed, so configs that do not name it keep
        // their recorded form.
        assert!(!serde_json::to_string(&c).unwrap().contains("armed_at"));
        let c = parse("store = { kind = \"zero\" }\narmed_at = \"boot-point\"").unwrap();
        assert_eq!(c.armed_at, ArmedAt::BootPoint);
        c.validate(256 << 20).unwrap();
        let e = parse("store = { kind = \"zero\" }\narmed_at = \"boot\"").unwrap_err();
        assert!(e.to_string().contains("boot-point"), "{e}");
        let kernel = PagerConfig {
            fault_path: FaultPath::Kernel,
            ..c
        };
        let e = kernel.validate(256 << 20).unwrap_err().to_string();
        assert!(e.contains("armed_at") && e.contains("fault_path"), "{e}");
    }

    #[test]
    fn defaults_apply() {
        let c = parse(r#"store = { kind = "zero" }"#).unwrap();
        assert_eq!(c, PagerConfig::with_store(StoreConfig::Zero {}));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = parse("store = { kind = \"zero\" }\nresident_limt = 5").unwrap_err();
        assert!(e.to_string().contains("resident_limt"), "{e}");
        let e = parse(r#"store = { kind = "zero", seed = 1 }"#).unwrap_err();
        assert!(e.to_string().contains("seed"), "{e}");
        let e = parse(
            "store = { kind = \"zero\" }\nlatency = { model = \"constant\", us = 1.0, x = 2 }",
        )
        .unwrap_err();
        assert!(e.to_string().contains('x'), "{e}");
        let e = parse(r#"store = { kind = "tape" }"#).unwrap_err();
        assert!(e.to_string().contains("tape"), "{e}");
    }

    #[test]
    fn byte_sizes_parse_or_explain() {
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
        assert_eq!(ByteSize::parse("4KiB"), Ok(ByteSize(4096)));
        assert_eq!(ByteSize::parse(" 2 GiB "), Ok(ByteSize(2 << 30)));
        assert_eq!(ByteSize::parse("1_000 B"), Ok(ByteSize(1000)));
        assert_eq!(
            ByteSize::parse("12 parsecs"),
            Err(ByteSizeError::UnknownUnit {
                unit: "parsecs".into(),
                text: "12 parsecs".into()
            })
        );
        assert_eq!(
            ByteSize::parse("MiB"),
            Err(ByteSizeError::NoNumber("MiB".into()))
        );
        assert_eq!(
            ByteSize::parse("16777216 TiB"),
            Err(ByteSizeError::UnknownUnit {
                unit: "TiB".into(),
                text: "16777216 TiB".into()
            })
        );
        assert_eq!(
            ByteSize::parse("17179869184 GiB"),
            Err(ByteSizeError::TooLarge("17179869184 GiB".into()))
        );
        let e = parse("store = { kind = \"zero\" }\nresident_limit = -4").unwrap_err();
        assert!(e.to_string().contains("negative"), "{e}");
        let e = parse("store = { kind = \"zero\" }\nresident_limit = \"3 XB\"").unwrap_err();
        assert!(e.to_string().contains("XB"), "{e}");
    }

    #[test]
    fn limits_are_checked_against_guest_ram() {
        let mut c = PagerConfig::with_store(StoreConfig::Zero {});
        c.resident_limit = Some(ByteSize(100));
        let e = c.validate(128 << 20).unwrap_err().to_string();
        assert_eq!(
            e,
            "pager.resident_limit = 100 bytes: smaller than one page (4096 bytes)"
        );
        c.resident_limit = Some(ByteSize(1 << 30));
        let e = c.validate(128 << 20).unwrap_err().to_string();
        assert!(e.contains("pager.resident_limit = 1073741824 bytes"), "{e}");
        assert!(e.contains("larger than guest RAM (134217728 bytes)"), "{e}");
        c.resident_limit = Some(ByteSize(4096));
        assert!(c.validate(128 << 20).is_ok());
        assert!(c.validate(16 << 20).is_err(), "no workload region");
    }

    #[test]
    fn latency_and_fractions_are_checked() {
        let mut c = PagerConfig::with_store(StoreConfig::Zero {});
        c.initially_resident = 1.5;
        assert!(
            c.validate(64 << 20)
                .unwrap_err()
                .to_string()
                .starts_with("pager.initially_resident = 1.5")
        );
        c.initially_resident = f64::NAN;
        assert!(c.validate(64 << 20).is_err());
        c.initially_resident = 0.5;
        c.latency = LatencyConfig::Uniform {
            min_us: 5.0,
            max_us: 1.0,
        };
        let e = c.validate(64 << 20).unwrap_err().to_string();
        assert!(e.starts_with("pager.latency.min_us = 5"), "{e}");
        c.latency = LatencyConfig::Lognormal {
            median_us: 0.0,
            sigma: 1.0,
        };
        assert!(
            c.validate(64 << 20)
                .unwrap_err()
                .to_string()
                .contains("latency.median_us")
        );
        c.latency = LatencyConfig::default();
        c.queue_depth = 0;
        assert!(
            c.validate(64 << 20)
                .unwrap_err()
                .to_string()
                .contains("queue_depth")
        );
    }

    #[test]
    fn counts_depths_and_times_are_bounded() {
        let mut c = PagerConfig::with_store(StoreConfig::Zero {});
        c.queue_depth = u32::MAX;
        let e = c.validate(64 << 20).unwrap_err().to_string();
        assert!(
            e.starts_with("pager.queue_depth = 4294967295: at most 512"),
            "{e}"
        );
        c.queue_depth = MAX_QUEUE_DEPTH;
        assert!(c.validate(64 << 20).is_ok());
        c.retries = MAX_RETRIES + 1;
        assert!(
            c.validate(64 << 20)
                .unwrap_err()
                .to_string()
                .contains("pager.retries")
        );
        c.retries = 3;
        c.latency = LatencyConfig::Constant { us: 1e300 };
        let e = c.validate(64 << 20).unwrap_err().to_string();
        assert!(e.starts_with("pager.latency.us = 1e300: "), "{e}");
        c.latency = LatencyConfig::Lognormal {
            median_us: 10.0,
            sigma: 11.0,
        };
        assert!(
            c.validate(64 << 20)
                .unwrap_err()
                .to_string()
                .contains("latency.sigma")
        );
        assert_eq!(float_text(1e-300), "1e-300");
        assert_eq!(float_text(2.5), "2.5");
    }

    #[test]
    fn managed_range_indexes_pages() {
        let r = ManagedRange::for_guest_ram(64 << 20).unwrap();
        assert_eq!(r.first_pfn, 0x4200_0000 >> 12);
        assert_eq!(r.pages, 8192);
        assert_eq!(r.index(r.first_pfn - 1), None);
        assert_eq!(r.index(r.first_pfn + 8191), Some(8191));
        assert_eq!(r.index(r.first_pfn + 8192), None);
        assert_eq!(r.pfn(3), r.first_pfn + 3);
    }
}
