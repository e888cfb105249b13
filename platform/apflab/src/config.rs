//! Experiment configs: the TOML file a user writes, its validation, and
//! what it turns into for the VMM ([`VmConfig`] and the guest's bootargs).
//!
//! Parsing happens in two steps. [`RawConfig`] mirrors the file exactly
//! (`deny_unknown_fields` everywhere, every checked value wrapped in
//! [`Spanned`] so a semantic error can point at its line and column);
//! `Config::from_raw` then validates it and fills in defaults. Every error
//! names the file, the position and the dotted key.

use std::path::{Path, PathBuf};

use apflab_abi::boot;
use apflab_abi::limits::{self, Bound};
use apflab_abi::memory_map::MAX_VCPUS;
use apflab_pager::{PagerConfig, Prepared};
use apflab_vmm::config::{
    MAX_COST_NS, MAX_NS_PER_INSTRUCTION, MAX_SLICE_INSTRUCTIONS, MAX_VIRTUAL_MS,
    MIN_NS_PER_INSTRUCTION, MIN_SLICE_INSTRUCTIONS,
};
use apflab_vmm::{BackendKind, CostModel, CostPreset, VmConfig, host_memory_mib};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::Spanned;

/// One MiB.
const MIB: u64 = 1 << 20;

/// Largest config (or experiment) file read: configs are a few hundred
/// bytes; anything near this is not one.
pub const MAX_CONFIG_BYTES: u64 = MIB;

/// Reads the text of a config or experiment file named by the user: a
/// regular file of at most [`MAX_CONFIG_BYTES`] (a FIFO or `/dev/zero` is
/// refused before it is read).
pub fn read_config_text(path: &Path) -> Result<String, ConfigError> {
    apflab_files::read_regular_to_string(path, MAX_CONFIG_BYTES, "a config file").map_err(|error| {
        ConfigError::Read {
            file: path.display().to_string(),
            error,
        }
    })
}

/// An error in a config file (or an experiment file's overrides of one).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {error}")]
    Read {
        /// The file as named by the user.
        file: String,
        /// Why.
        error: std::io::Error,
    },
    /// A value (or a key) is wrong; `key` is the dotted path.
    #[error("{file}:{line}:{col}: key `{key}`: {message}")]
    Key {
        /// The file as named by the user.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column (in characters).
        col: usize,
        /// Dotted key, e.g. `guest.vcpus`.
        key: String,
        /// What was expected.
        message: String,
    },
    /// The file is not valid TOML, or an error without a key.
    #[error("{file}:{line}:{col}: {message}")]
    Syntax {
        /// The file as named by the user.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column (in characters).
        col: usize,
        /// What is wrong.
        message: String,
    },
}

/// The `[guest]` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuest {
    vcpus: Spanned<u32>,
    memory_mib: Spanned<u64>,
    kernel: Option<Spanned<PathBuf>>,
    initrd: Option<Spanned<PathBuf>>,
    bootargs: Option<Spanned<String>>,
}

/// The `[workload]` section as written. All parameters are optional; which
/// ones apply depends on `kind` (checked in `Config::from_raw`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkload {
    kind: Spanned<String>,
    tasks: Option<Spanned<u32>>,
    ops: Option<Spanned<u64>>,
    mib: Option<Spanned<u64>>,
    pattern: Option<Spanned<String>>,
    passes: Option<Spanned<u32>>,
    verify: Option<Spanned<String>>,
    reader: Option<Spanned<String>>,
    requests: Option<Spanned<u64>>,
    interval_us: Option<Spanned<u64>>,
    timeslice_us: Option<Spanned<u64>>,
    scheduler: Option<Spanned<String>>,
}

/// `[backend.cost]` as written: a `preset` ([`CostPreset`], default
/// `uncalibrated`) and any of its values overridden.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCost {
    preset: Option<Spanned<String>>,
    ns_per_instruction: Option<Spanned<f64>>,
    exit_ns: Option<Spanned<u64>>,
    kernel_exit_ns: Option<Spanned<u64>>,
    hypercall_ns: Option<Spanned<u64>>,
    inject_ns: Option<Spanned<u64>>,
    kick_ns: Option<Spanned<u64>>,
}

/// `[backend]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    kind: Option<Backend>,
    #[serde(default)]
    cost: RawCost,
    slice_instructions: Option<Spanned<u64>>,
    max_virtual_ms: Option<Spanned<u64>>,
    watchdog_ms: Option<Spanned<u64>>,
    wall_timeout_ms: Option<Spanned<u64>>,
}

/// A config file exactly as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    guest: RawGuest,
    workload: RawWorkload,
    #[serde(default)]
    backend: RawBackend,
    seed: Option<u64>,
    /// Far memory (the pager crate's own schema, `deny_unknown_fields`).
    pager: Option<Spanned<PagerConfig>>,
    /// The per-fault policy.
    policy: Option<crate::policy_config::RawPolicy>,
    /// What the host offers the async PF client.
    apf: Option<crate::policy_config::RawApf>,
}

/// Engine, as written in configs and on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Software arm64 CPU in virtual time (deterministic).
    Emu,
    /// arm64 KVM (aarch64 Linux host with /dev/kvm).
    Kvm,
}

impl Backend {
    /// The VMM's name for it.
    pub fn kind(self) -> BackendKind {
        match self {
            Backend::Emu => BackendKind::Emu,
            Backend::Kvm => BackendKind::Kvm,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Emu => "emu",
            Backend::Kvm => "kvm",
        }
    }
}

/// Workload kinds (names and ids from [`apflab_abi::boot::WORKLOAD_NAMES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// Compute loop counting ops.
    Cpu,
    /// Touch a working set and verify every page read.
    Memtouch,
    /// One `cpu` task beside one `memtouch` task.
    Mixed,
    /// Timer-driven requests served from a large table.
    Kv,
}

impl WorkloadKind {
    /// All kinds, in the ABI's order.
    pub const ALL: [WorkloadKind; 4] = [
        WorkloadKind::Cpu,
        WorkloadKind::Memtouch,
        WorkloadKind::Mixed,
        WorkloadKind::Kv,
    ];

    /// Name as in bootargs and configs.
    pub fn name(self) -> &'static str {
        let id = match self {
            WorkloadKind::Cpu => boot::WORKLOAD_CPU,
            WorkloadKind::Memtouch => boot::WORKLOAD_MEMTOUCH,
            WorkloadKind::Mixed => boot::WORKLOAD_MIXED,
            WorkloadKind::Kv => boot::WORKLOAD_KV,
        };
        boot::workload_name(id).expect("every kind has an ABI name")
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The `[workload]` parameters this kind takes (besides `kind`).
    pub fn params(self) -> &'static [&'static str] {
        match self {
            WorkloadKind::Cpu => &["tasks", "ops", "timeslice_us", "scheduler"],
            WorkloadKind::Memtouch => &[
                "tasks",
                "mib",
                "pattern",
                "passes",
                "verify",
                "reader",
                "timeslice_us",
                "scheduler",
            ],
            WorkloadKind::Mixed => &[
                "ops",
                "mib",
                "pattern",
                "passes",
                "verify",
                "reader",
                "timeslice_us",
                "scheduler",
            ],
            WorkloadKind::Kv => &[
                "tasks",
                "mib",
                "requests",
                "interval_us",
                "timeslice_us",
                "scheduler",
            ],
        }
    }

    /// Whether the kind has a working set (`mib`) in the workload region.
    fn has_working_set(self) -> bool {
        self != WorkloadKind::Cpu
    }
}

/// Bounds of `backend.wall_timeout_ms` and `--wall-timeout`.
pub const WALL_TIMEOUT_BOUND: Bound<u64> = Bound {
    min: 1,
    max: 30 * 24 * 3_600_000,
    why: "at most 30 days of wall-clock time",
};

/// Instructions per MiB of guest RAM the built-in guest runs without a
/// sign of life the watchdog sees (an exit, console output, an interrupt
/// taken): at boot it maps all of its RAM with 4 KiB pages, interrupts
/// masked, before its first exit. Measured with `configs/cpu.toml`,
/// `watchdog_ms = 2` and a sweep of `ns_per_instruction`: 64 MiB hangs
/// with 714,000 instructions to the span and boots with 833,000; 256 MiB
/// hangs with 2,500,000 and boots with 3,330,000 (about 11,500 per MiB).
/// A config whose span holds fewer than this many per MiB cannot boot;
/// the bound is below every measured need, so none that could is refused.
pub const GUEST_QUIET_INSTRUCTIONS_PER_MIB: u64 = 9_500;

/// Default values of the workload parameters (all are passed to the guest
/// explicitly, so a result records exactly what ran).
pub mod defaults {
    /// `tasks` (`cpu`, `memtouch`, `kv`).
    pub const TASKS: u32 = 2;
    /// `ops` per `cpu` task.
    pub const OPS: u64 = 1_000_000;
    /// `mib` of the working set.
    pub const MIB: u64 = 16;
    /// `pattern` of `memtouch`.
    pub const PATTERN: &str = "seq";
    /// `passes` of `memtouch`.
    pub const PASSES: u32 = 1;
    /// `verify` of `memtouch`.
    pub const VERIFY: &str = "self";
    /// `reader` of `memtouch`.
    pub const READER: &str = "task";
    /// `requests` of `kv`.
    pub const REQUESTS: u64 = 1_000;
    /// `interval_us` of `kv`.
    pub const INTERVAL_US: u64 = 100;
    /// Scheduler time slice.
    pub const TIMESLICE_US: u64 = 1_000;
    /// `scheduler`: the guest's policy.
    pub const SCHEDULER: &str = apflab_abi::boot::SCHEDULER_ROUND_ROBIN;
    /// Top-level `seed`.
    pub const SEED: u64 = 1;
    /// `backend.slice_instructions`.
    pub const SLICE_INSTRUCTIONS: u64 = 20_000;
    /// `backend.max_virtual_ms`.
    pub const MAX_VIRTUAL_MS: u64 = 10_000;
    /// `backend.watchdog_ms`: a second without a sign of life. The guest's
    /// timer interrupt comes every time slice (at most 10 s, and 1 ms by
    /// default), and no fetch in the configs takes more than milliseconds.
    pub const WATCHDOG_MS: u64 = 1_000;
}

/// The `[guest]` section, validated.
#[derive(Clone, Debug, Serialize)]
pub struct GuestConfig {
    /// vCPUs, `1..=MAX_VCPUS`.
    pub vcpus: u32,
    /// Guest RAM.
    pub memory_mib: u64,
    /// Kernel as written in the config (relative to the config file), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// Initial RAM disk of a Linux kernel as written in the config, if any
    /// (without one, Linux boots apflab's own initramfs; see
    /// [`crate::linux_guest`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// Words added to the kernel command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootargs: Option<String>,
    /// The kernel is an arm64 Linux Image.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub linux: bool,
    /// Where far memory's managed region starts, from the start of RAM
    /// (derived from the kernel, so not echoed).
    #[serde(skip)]
    pub resident_low: u64,
}

/// The `[workload]` section, validated and with defaults filled in: the
/// parameters that apply to `kind` are `Some`, the others `None`.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadConfig {
    /// Which workload.
    pub kind: WorkloadKind,
    /// Tasks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<u32>,
    /// Loop iterations per `cpu` task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops: Option<u64>,
    /// Working set in MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mib: Option<u64>,
    /// `seq` or `random`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Passes over the working set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passes: Option<u32>,
    /// `self` (pages the guest wrote itself) or `store` (the `[pager]`
    /// synthetic store's content).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<String>,
    /// Who reads the pages to verify them: `task` (at EL0) or `kernel` (a
    /// system call checksums them at EL1, so the kernel takes the faults).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reader: Option<String>,
    /// `kv` requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// `kv` mean inter-arrival time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_us: Option<u64>,
    /// Scheduler time slice.
    pub timeslice_us: u64,
    /// The guest's scheduler: `round-robin` or `fair` (runtime-fair, as
    /// Linux's CFS).
    pub scheduler: String,
}

/// The cost model, as recorded in results.
#[derive(Clone, Debug, Serialize)]
pub struct CostConfig {
    /// The [`CostPreset`] the values start from (its name).
    pub preset: String,
    /// See [`CostModel::ns_per_instruction`].
    pub ns_per_instruction: f64,
    /// See [`CostModel::exit_ns`].
    pub exit_ns: u64,
    /// See [`CostModel::kernel_exit_ns`].
    pub kernel_exit_ns: u64,
    /// See [`CostModel::hypercall_ns`].
    pub hypercall_ns: u64,
    /// See [`CostModel::inject_ns`].
    pub inject_ns: u64,
    /// See [`CostModel::kick_ns`].
    pub kick_ns: u64,
}

/// The `[backend]` section, validated.
#[derive(Clone, Debug, Serialize)]
pub struct BackendConfig {
    /// Engine.
    pub kind: Backend,
    /// Emu: instructions per round-robin slice.
    pub slice_instructions: u64,
    /// The run fails after this much virtual time.
    pub max_virtual_ms: u64,
    /// The run is stopped once the guest has shown no sign of life for this
    /// long (virtual time on emu, host time on kvm).
    pub watchdog_ms: u64,
    /// The run is stopped after this much wall-clock time, whatever the
    /// guest does (`wall_timeout` in the results); absent, never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wall_timeout_ms: Option<u64>,
    /// Emu: host costs charged to virtual time.
    pub cost: CostConfig,
}

/// A validated experiment config.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// Seed of every pseudo-random choice (guest and, later, pager).
    pub seed: u64,
    /// `[guest]`.
    pub guest: GuestConfig,
    /// `[workload]`.
    pub workload: WorkloadConfig,
    /// `[backend]`.
    pub backend: BackendConfig,
    /// `[pager]`: far memory; absent, all guest RAM is resident.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pager: Option<PagerConfig>,
    /// `[policy]`: absent, no async PF is offered (the sync baseline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy_config::PolicyChoice>,
    /// `[apf]`: what the host offers (used with a policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apf: Option<crate::policy_config::ApfSettings>,
    /// Where the pager's relative file names are looked up (the config
    /// file's directory).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The kernel file that will be booted (the config's `guest.kernel`
    /// resolved against the config's directory, or the built-in guest).
    #[serde(skip)]
    pub kernel_path: PathBuf,
    /// The initial RAM disk that will be loaded with a Linux kernel.
    #[serde(skip)]
    pub initrd_path: Option<PathBuf>,
    /// The guest keeps its timeline log for the host (`apflab run --trace`
    /// on emu; not a config key, but in the bootargs the results record).
    #[serde(skip)]
    pub timeline: bool,
}

/// A config as loaded from a file: the validated config plus what identifies
/// the file.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    /// The file as named by the user.
    pub path: PathBuf,
    /// Its stem (`quick` for `configs/quick.toml`).
    pub name: String,
    /// The config hash, lower-case hex: SHA-256 of the file's text, or,
    /// when `[policy]` names a module, of that and the module file's
    /// SHA-256 together ([`LoadedConfig::new`]), so that results (and a
    /// matrix's resume check) follow the module's bytes.
    pub sha256: String,
    /// SHA-256 of the file's text alone.
    pub text_sha256: String,
    /// The validated config.
    pub config: Config,
}

impl LoadedConfig {
    /// A config loaded from `path` under `name`, from `text`.
    pub fn new(path: PathBuf, name: String, text: &str, config: Config) -> Self {
        let mut loaded = LoadedConfig {
            path,
            name,
            sha256: String::new(),
            text_sha256: sha256_hex(text.as_bytes()),
            config,
        };
        loaded.rehash();
        loaded
    }

    /// Recomputes [`LoadedConfig::sha256`] after the config's policy
    /// changed (`apflab run --policy`).
    pub fn rehash(&mut self) {
        self.sha256 = match self.config.policy_module_sha256() {
            None => self.text_sha256.clone(),
            Some(module) => sha256_hex(
                format!("config {}\npolicy.module {module}\n", self.text_sha256).as_bytes(),
            ),
        };
    }
}

/// Where a semantic error points: a span in the source text.
struct Source<'a> {
    file: &'a str,
    text: &'a str,
}

impl Source<'_> {
    /// 1-based line and column (in characters) of byte offset `at`.
    fn line_col(&self, at: usize) -> (usize, usize) {
        let at = at.min(self.text.len());
        let before = &self.text[..at];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = self.text[line_start..at].chars().count() + 1;
        (line, col)
    }

    fn key_error(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, col) = self.line_col(span.start);
        ConfigError::Key {
            file: self.file.to_owned(),
            line,
            col,
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// An error whose message names its key itself (e.g. the pager's
    /// `pager.resident_limit = ...: ...`), at `span`.
    fn error_at(&self, span: std::ops::Range<usize>, message: String) -> ConfigError {
        let (line, col) = self.line_col(span.start);
        ConfigError::Syntax {
            file: self.file.to_owned(),
            line,
            col,
            message,
        }
    }

    /// Where the key `dotted` (its first part) is written in the section
    /// at `section` (a table's span): the start of its line, or the
    /// section itself if it is not found there (a default, or a value that
    /// came from elsewhere).
    fn key_in_section(
        &self,
        section: std::ops::Range<usize>,
        dotted: &str,
    ) -> std::ops::Range<usize> {
        let first = dotted.split('.').next().unwrap_or(dotted);
        let mut at = section.start;
        for (i, line) in self.text[section.start.min(self.text.len())..]
            .split_inclusive('\n')
            .enumerate()
        {
            let trimmed = line.trim_start();
            if i > 0 && trimmed.starts_with('[') {
                break;
            }
            if let Some(rest) = trimmed.strip_prefix(first)
                && rest.trim_start().starts_with('=')
            {
                let start = at + (line.len() - trimmed.len());
                return start..start + first.len();
            }
            at += line.len();
        }
        section
    }

    /// An error about a section or key that is missing altogether: points
    /// at the start of the file.
    fn missing(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.key_error(0..0, key, message)
    }
}

/// A workload parameter in `bound` (the guest's own limits, from
/// [`apflab_abi::limits`]): `None` if the workload does not take it
/// (`takes`), `default` if the file leaves it out.
fn bounded_param<T: Copy + PartialOrd + Into<u64>>(
    src: &Source<'_>,
    takes: bool,
    v: &Option<Spanned<T>>,
    name: &str,
    bound: Bound<u64>,
    default: T,
) -> Result<Option<T>, ConfigError> {
    if !takes {
        return Ok(None);
    }
    match v {
        Some(s) => {
            let value: u64 = (*s.get_ref()).into();
            check_bound(src, s.span(), &format!("workload.{name}"), value, bound)?;
            Ok(Some(*s.get_ref()))
        }
        None => Ok(Some(default)),
    }
}

/// `value` of `key` (at `span`) must be in `bound`.
fn check_bound(
    src: &Source<'_>,
    span: std::ops::Range<usize>,
    key: &str,
    value: u64,
    bound: Bound<u64>,
) -> Result<(), ConfigError> {
    if bound.contains(value) {
        return Ok(());
    }
    let message = if value < bound.min && bound.min == 1 {
        format!("{value}; expected at least 1")
    } else {
        format!(
            "{value}; expected {}..={} ({})",
            bound.min, bound.max, bound.why
        )
    };
    Err(src.key_error(span, key, message))
}

/// [`limits::TASKS`] as a `u64` bound.
const TASKS_BOUND: Bound<u64> = Bound {
    min: limits::TASKS.min as u64,
    max: limits::TASKS.max as u64,
    why: limits::TASKS.why,
};

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Hex SHA-256 of the regular file `path`, refused above `max_bytes` (the
/// limit `why` names) as [`apflab_files::read_regular`] refuses it.
pub fn file_sha256(path: &Path, max_bytes: u64, why: &str) -> std::io::Result<String> {
    apflab_files::read_regular(path, max_bytes, why).map(|bytes| sha256_hex(&bytes))
}

/// Deserializes TOML `text` (named `file` in errors) into `T`, with errors
/// that give the position and the dotted key.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    file: &str,
    text: &str,
) -> Result<T, ConfigError> {
    let src = Source { file, text };
    let de = toml::Deserializer::parse(text).map_err(|e| toml_error(&src, e, None))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        toml_error(&src, e.into_inner(), Some(path))
    })
}

/// Turns a toml error into a [`ConfigError`] with position and, when known,
/// the dotted key.
fn toml_error(src: &Source<'_>, err: toml::de::Error, path: Option<String>) -> ConfigError {
    let (line, col) = err.span().map_or((1, 1), |s| src.line_col(s.start));
    let message = err.message().trim().to_owned();
    // `Spanned` values add a private segment to the path; it is no key.
    let path = path
        .map(|p| {
            p.split('.')
                .filter(|seg| !seg.starts_with("$__serde_spanned_private"))
                .collect::<Vec<_>>()
                .join(".")
        })
        .filter(|p| p != "." && !p.is_empty());
    let with_name = |name: &str| match &path {
        Some(p) if p == name || p.ends_with(&format!(".{name}")) => p.clone(),
        Some(p) => format!("{p}.{name}"),
        None => name.to_owned(),
    };
    // serde reports an unknown key as "unknown field `x`, expected ...":
    // name the full key and keep the list of expected ones.
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((name, expected)) = rest.split_once('`')
    {
        let key = with_name(name);
        let expected = expected.trim_start_matches(',').trim();
        return ConfigError::Key {
            file: src.file.to_owned(),
            line,
            col,
            key,
            message: format!("unknown key; {expected}"),
        };
    }
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some((name, _)) = rest.split_once('`')
    {
        let key = with_name(name);
        return ConfigError::Key {
            file: src.file.to_owned(),
            line,
            col,
            key,
            message: "missing; this key is required".to_owned(),
        };
    }
    match path {
        Some(key) => ConfigError::Key {
            file: src.file.to_owned(),
            line,
            col,
            key,
            message,
        },
        None => ConfigError::Syntax {
            file: src.file.to_owned(),
            line,
            col,
            message,
        },
    }
}

/// The guest's files as `[guest]` names them, resolved and checked.
struct GuestFiles {
    /// Guest RAM in bytes.
    ram_bytes: u64,
    /// `guest.kernel` as written (none: the built-in guest).
    kernel: Option<PathBuf>,
    /// The kernel file that will be booted.
    kernel_path: PathBuf,
    /// The initramfs a Linux kernel boots with.
    initrd_path: Option<PathBuf>,
    /// The kernel is an arm64 Linux Image.
    linux: bool,
}

impl GuestFiles {
    /// The lowest address far memory manages, as an offset into RAM.
    fn resident_low(&self) -> u64 {
        // Far memory manages RAM above what the loader writes: apflab's own
        // kernel keeps itself below its workload region; a Linux kernel, its
        // device tree and initrd sit at the start of RAM (rounded up to
        // 2 MiB), and Linux allocates its own memory and the workload's
        // from the rest, lowest addresses first, so both fault.
        if self.linux {
            let initrd_len = self
                .initrd_path
                .as_deref()
                .and_then(|i| std::fs::metadata(i).ok())
                .map_or(0, |m| m.len());
            crate::linux_guest::payload_end(&self.kernel_path, initrd_len)
                .map_or(0, |end| end - apflab_abi::memory_map::RAM_BASE)
                .next_multiple_of(2 * MIB)
        } else {
            boot::WORKLOAD_REGION_OFFSET
        }
    }
}

/// `[guest]` on its own: the vCPUs, the memory, and the kernel and initrd
/// files, checked to exist and to fit in guest RAM.
fn guest_files(src: &Source<'_>, g: &RawGuest, base_dir: &Path) -> Result<GuestFiles, ConfigError> {
    let vcpus = &g.vcpus;
    if !(1..=MAX_VCPUS).contains(vcpus.get_ref()) {
        return Err(src.key_error(
            vcpus.span(),
            "guest.vcpus",
            format!("{} vCPUs; expected 1..={MAX_VCPUS}", vcpus.get_ref()),
        ));
    }
    let memory = &g.memory_mib;
    if let Some(host) = host_memory_mib()
        && *memory.get_ref() > host
    {
        return Err(src.key_error(
            memory.span(),
            "guest.memory_mib",
            format!(
                "{} MiB is more memory than this host has ({host} MiB)",
                memory.get_ref()
            ),
        ));
    }
    if *memory.get_ref() > limits::MAX_MEMORY_MIB {
        return Err(src.key_error(
            memory.span(),
            "guest.memory_mib",
            format!(
                "{} MiB; expected at most {} MiB (RAM starts at 1 GiB and the machine's \
                 physical address space ends at 1 TiB)",
                memory.get_ref(),
                limits::MAX_MEMORY_MIB
            ),
        ));
    }
    let ram_bytes = *memory.get_ref() * MIB;
    let (kernel, kernel_path) = match &g.kernel {
        Some(k) => {
            let resolved = base_dir.join(k.get_ref());
            // The image is loaded into guest RAM: a larger one cannot
            // fit, and is refused before anything reads it.
            match apflab_files::check_regular(&resolved, ram_bytes, "guest RAM") {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(src.key_error(
                        k.span(),
                        "guest.kernel",
                        format!(
                            "guest image {} not found; expected a path to an arm64 ELF or raw image, relative to the config file",
                            resolved.display()
                        ),
                    ));
                }
                Err(e) => {
                    return Err(src.key_error(
                        k.span(),
                        "guest.kernel",
                        format!(
                            "guest image {}: {e}; expected an arm64 ELF or raw image that fits in guest RAM",
                            resolved.display()
                        ),
                    ));
                }
            }
            (Some(k.get_ref().clone()), resolved)
        }
        None => {
            let built_in = apflab_artifacts::guest_elf().to_path_buf();
            if !built_in.is_file() {
                return Err(src.missing(
                    "guest.kernel",
                    format!(
                        "no kernel given and the built-in guest {} is missing (rebuild apflab)",
                        built_in.display()
                    ),
                ));
            }
            (None, built_in)
        }
    };

    // A Linux kernel, its initramfs and command line.
    let linux = g.kernel.is_some() && crate::linux_guest::is_linux_kernel(&kernel_path);
    let initrd_path = match &g.initrd {
        Some(i) if !linux => {
            return Err(src.key_error(
                i.span(),
                "guest.initrd",
                "only a Linux kernel takes an initrd; guest.kernel is not an arm64 Linux Image",
            ));
        }
        Some(i) => {
            let resolved = base_dir.join(i.get_ref());
            if let Err(e) = apflab_files::check_regular(&resolved, ram_bytes, "guest RAM") {
                return Err(src.key_error(
                    i.span(),
                    "guest.initrd",
                    format!(
                        "initrd {}: {e}; expected a file (a cpio initramfs, relative to the config file) that fits in guest RAM",
                        resolved.display()
                    ),
                ));
            }
            Some(resolved)
        }
        None if linux => Some(apflab_artifacts::linux_initramfs().to_path_buf()),
        None => None,
    };

    Ok(GuestFiles {
        ram_bytes,
        kernel,
        kernel_path,
        initrd_path,
        linux,
    })
}

/// `[workload]`: the kind, and each parameter it takes within the guest's
/// bounds (on a Linux guest, only those Linux's /init takes).
fn workload_section(
    src: &Source<'_>,
    w: &RawWorkload,
    linux: bool,
) -> Result<WorkloadConfig, ConfigError> {
    let kind = WorkloadKind::from_name(w.kind.get_ref()).ok_or_else(|| {
        let names: Vec<_> = WorkloadKind::ALL.iter().map(|k| k.name()).collect();
        src.key_error(
            w.kind.span(),
            "workload.kind",
            format!(
                "unknown workload `{}`; expected one of {}",
                w.kind.get_ref(),
                names.join(", ")
            ),
        )
    })?;
    let given: [(&str, Option<std::ops::Range<usize>>); 11] = [
        ("tasks", w.tasks.as_ref().map(Spanned::span)),
        ("ops", w.ops.as_ref().map(Spanned::span)),
        ("mib", w.mib.as_ref().map(Spanned::span)),
        ("pattern", w.pattern.as_ref().map(Spanned::span)),
        ("passes", w.passes.as_ref().map(Spanned::span)),
        ("verify", w.verify.as_ref().map(Spanned::span)),
        ("reader", w.reader.as_ref().map(Spanned::span)),
        ("requests", w.requests.as_ref().map(Spanned::span)),
        ("interval_us", w.interval_us.as_ref().map(Spanned::span)),
        ("timeslice_us", w.timeslice_us.as_ref().map(Spanned::span)),
        ("scheduler", w.scheduler.as_ref().map(Spanned::span)),
    ];
    for (name, span) in &given {
        if let Some(span) = span
            && linux
            && crate::linux_guest::WORKLOAD_KEYS_NOT_FOR_LINUX.contains(name)
        {
            return Err(src.key_error(
                span.clone(),
                &format!("workload.{name}"),
                format!(
                    "does not apply to a Linux guest (only apflab's own kernel has it); \
                     Linux's /init takes {}",
                    kind.params()
                        .iter()
                        .filter(|p| !crate::linux_guest::WORKLOAD_KEYS_NOT_FOR_LINUX.contains(p))
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if let Some(span) = span
            && !kind.params().contains(name)
        {
            return Err(src.key_error(
                span.clone(),
                &format!("workload.{name}"),
                format!(
                    "does not apply to workload `{}`; it takes {}",
                    kind.name(),
                    kind.params().join(", ")
                ),
            ));
        }
    }
    let takes = |name: &str| kind.params().contains(&name);
    let bounded_u32 = |v: &Option<Spanned<u32>>, name: &str, bound: Bound<u64>, default: u32| {
        bounded_param(src, takes(name), v, name, bound, default)
    };
    let bounded_u64 = |v: &Option<Spanned<u64>>, name: &str, bound: Bound<u64>, default: u64| {
        bounded_param(src, takes(name), v, name, bound, default)
    };
    let one_of = |v: &Option<Spanned<String>>,
                  name: &str,
                  allowed: &[&str],
                  default: &str|
     -> Result<Option<String>, ConfigError> {
        if !takes(name) {
            return Ok(None);
        }
        match v {
            Some(s) if !allowed.contains(&s.get_ref().as_str()) => Err(src.key_error(
                s.span(),
                &format!("workload.{name}"),
                format!("`{}`; expected one of {}", s.get_ref(), allowed.join(", ")),
            )),
            Some(s) => Ok(Some(s.get_ref().clone())),
            None => Ok(Some(default.to_owned())),
        }
    };
    Ok(WorkloadConfig {
        kind,
        tasks: bounded_u32(&w.tasks, "tasks", TASKS_BOUND, defaults::TASKS)?,
        ops: bounded_u64(&w.ops, "ops", limits::OPS, defaults::OPS)?,
        mib: bounded_u64(&w.mib, "mib", limits::MIB, defaults::MIB)?,
        pattern: one_of(&w.pattern, "pattern", &["seq", "random"], defaults::PATTERN)?,
        passes: bounded_u32(&w.passes, "passes", limits::PASSES, defaults::PASSES)?,
        verify: one_of(&w.verify, "verify", &["self", "store"], defaults::VERIFY)?,
        reader: one_of(&w.reader, "reader", &["task", "kernel"], defaults::READER)?,
        requests: bounded_u64(
            &w.requests,
            "requests",
            limits::REQUESTS,
            defaults::REQUESTS,
        )?,
        interval_us: bounded_u64(
            &w.interval_us,
            "interval_us",
            limits::INTERVAL_US,
            defaults::INTERVAL_US,
        )?,
        timeslice_us: bounded_u64(
            &w.timeslice_us,
            "timeslice_us",
            limits::TIMESLICE_US,
            defaults::TIMESLICE_US,
        )?
        .expect("every kind takes timeslice_us"),
        scheduler: one_of(
            &w.scheduler,
            "scheduler",
            &[boot::SCHEDULER_ROUND_ROBIN, boot::SCHEDULER_FAIR],
            defaults::SCHEDULER,
        )?
        .expect("every kind takes scheduler"),
    })
}

/// Guest memory enough for the kernel and the workload's working set.
fn check_room(
    src: &Source<'_>,
    memory: &Spanned<u64>,
    workload: &WorkloadConfig,
) -> Result<(), ConfigError> {
    // The kernel, its tables and stacks live below the workload region;
    // the working set lives in it (Linux's own kernel needs about as
    // much below its page cache and the process).
    let region_mib = boot::WORKLOAD_REGION_OFFSET / MIB;
    let needed = region_mib + workload.mib.unwrap_or(1);
    if *memory.get_ref() < needed {
        let why = if workload.kind.has_working_set() {
            format!(
                "{region_mib} MiB for the kernel + {} MiB working set",
                workload.mib.unwrap_or(0)
            )
        } else {
            format!("{region_mib} MiB for the kernel + 1 MiB for tasks")
        };
        return Err(src.key_error(
            memory.span(),
            "guest.memory_mib",
            format!(
                "{} MiB is too small for workload `{}`; expected at least {needed} MiB ({why})",
                memory.get_ref(),
                workload.kind.name()
            ),
        ));
    }
    Ok(())
}

/// `[pager]`, managing RAM from `resident_low` up.
fn pager_section(
    src: &Source<'_>,
    pager: Option<&Spanned<PagerConfig>>,
    resident_low: u64,
    ram_bytes: u64,
    base_dir: &Path,
) -> Result<Option<PagerConfig>, ConfigError> {
    // [pager]: everything is checked now, files included, so a bad
    // value fails before any VM is built.
    match pager {
        Some(p) => {
            Prepared::new_above(p.get_ref(), resident_low, ram_bytes, base_dir).map_err(|e| {
                let at = match &e {
                    apflab_pager::ConfigError::Invalid { key, .. } => {
                        src.key_in_section(p.span(), key)
                    }
                    _ => p.span(),
                };
                src.error_at(at, e.to_string())
            })?;
            Ok(Some(p.get_ref().clone()))
        }
        None => Ok(None),
    }
}

/// `workload.verify = "store"` needs the pager's synthetic store.
fn check_store_verification(
    src: &Source<'_>,
    w: &RawWorkload,
    workload: &WorkloadConfig,
    pager: Option<&PagerConfig>,
) -> Result<(), ConfigError> {
    if workload.verify.as_deref() == Some("store")
        && pager.and_then(PagerConfig::synthetic_seed).is_none()
    {
        let span = w.verify.as_ref().map_or(0..0, |v| v.span());
        return Err(src.key_error(
            span,
            "workload.verify",
            "`store` checks pages against the pager's synthetic store; expected a [pager] \
             section with store = { kind = \"synthetic\", seed = ... }, or verify = \"self\""
                .to_owned(),
        ));
    }

    Ok(())
}

/// `[backend]`: the engine, its limits and its cost model (a preset and the
/// keys that override it).
fn backend_section(src: &Source<'_>, b: &RawBackend) -> Result<BackendConfig, ConfigError> {
    let preset = match &b.cost.preset {
        None => CostPreset::Uncalibrated,
        Some(p) => CostPreset::from_name(p.get_ref()).ok_or_else(|| {
            src.key_error(
                p.span(),
                "backend.cost.preset",
                format!(
                    "\"{}\" is not a cost preset; expected one of {} (`apflab list` says \
                     where each value comes from)",
                    p.get_ref(),
                    CostPreset::names()
                ),
            )
        })?,
    };
    let default_cost = preset.model();
    let ns_per_instruction = match &b.cost.ns_per_instruction {
        Some(s)
            if !(s.get_ref().is_finite()
                && (MIN_NS_PER_INSTRUCTION..MAX_NS_PER_INSTRUCTION).contains(s.get_ref())) =>
        {
            return Err(src.key_error(
                s.span(),
                "backend.cost.ns_per_instruction",
                format!(
                    "{}; expected {MIN_NS_PER_INSTRUCTION} ns or more (no CPU retires \
                     instructions faster, and virtual time must advance) and below \
                     {MAX_NS_PER_INSTRUCTION:e} ns",
                    apflab_pager::config::float_text(*s.get_ref())
                ),
            ));
        }
        Some(s) => *s.get_ref(),
        None => default_cost.ns_per_instruction,
    };
    let bounded = |v: &Option<Spanned<u64>>,
                   key: &str,
                   bound: Bound<u64>,
                   default: u64|
     -> Result<u64, ConfigError> {
        match v {
            Some(s) => {
                check_bound(src, s.span(), key, *s.get_ref(), bound)?;
                Ok(*s.get_ref())
            }
            None => Ok(default),
        }
    };
    let cost_bound = |min: u64| Bound {
        min,
        max: MAX_COST_NS,
        why: "one exit, hypercall or injection costs at most a second, so the \
              virtual clock cannot wrap",
    };
    Ok(BackendConfig {
        kind: b.kind.unwrap_or(Backend::Emu),
        slice_instructions: bounded(
            &b.slice_instructions,
            "backend.slice_instructions",
            Bound {
                min: MIN_SLICE_INSTRUCTIONS,
                max: MAX_SLICE_INSTRUCTIONS,
                why: apflab_vmm::config::SLICE_INSTRUCTIONS_WHY,
            },
            defaults::SLICE_INSTRUCTIONS,
        )?,
        max_virtual_ms: bounded(
            &b.max_virtual_ms,
            "backend.max_virtual_ms",
            Bound {
                min: 1,
                max: MAX_VIRTUAL_MS,
                why: "about 11.6 days of guest time, far past any run",
            },
            defaults::MAX_VIRTUAL_MS,
        )?,
        watchdog_ms: bounded(
            &b.watchdog_ms,
            "backend.watchdog_ms",
            Bound {
                min: 1,
                max: MAX_VIRTUAL_MS,
                why: "about 11.6 days of guest time, far past any run",
            },
            defaults::WATCHDOG_MS,
        )?,
        wall_timeout_ms: match &b.wall_timeout_ms {
            Some(s) => {
                check_bound(
                    src,
                    s.span(),
                    "backend.wall_timeout_ms",
                    *s.get_ref(),
                    WALL_TIMEOUT_BOUND,
                )?;
                Some(*s.get_ref())
            }
            None => None,
        },
        cost: CostConfig {
            preset: preset.name().to_owned(),
            ns_per_instruction,
            exit_ns: bounded(
                &b.cost.exit_ns,
                "backend.cost.exit_ns",
                cost_bound(0),
                default_cost.exit_ns,
            )?,
            kernel_exit_ns: bounded(
                &b.cost.kernel_exit_ns,
                "backend.cost.kernel_exit_ns",
                cost_bound(0),
                default_cost.kernel_exit_ns,
            )?,
            kick_ns: bounded(
                &b.cost.kick_ns,
                "backend.cost.kick_ns",
                cost_bound(0),
                default_cost.kick_ns,
            )?,
            hypercall_ns: bounded(
                &b.cost.hypercall_ns,
                "backend.cost.hypercall_ns",
                cost_bound(0),
                default_cost.hypercall_ns,
            )?,
            inject_ns: bounded(
                &b.cost.inject_ns,
                "backend.cost.inject_ns",
                cost_bound(0),
                default_cost.inject_ns,
            )?,
        },
    })
}

/// The watchdog's span against what the guest does between two signs of
/// life: a time slice, and on emu the built-in guest's longest quiet
/// stretch.
fn check_watchdog(
    src: &Source<'_>,
    raw: &RawConfig,
    workload: &WorkloadConfig,
    backend: &BackendConfig,
) -> Result<(), ConfigError> {
    let b = &raw.backend;
    let memory = &raw.guest.memory_mib;
    // A guest that computes makes no exit between two timer interrupts,
    // which come once a time slice.
    if backend.watchdog_ms.saturating_mul(1000) <= workload.timeslice_us {
        let message = format!(
            "{}; expected more than workload.timeslice_us = {} us: a busy guest may show \
             no sign of life for a whole time slice",
            backend.watchdog_ms, workload.timeslice_us
        );
        return Err(match (&b.watchdog_ms, &raw.workload.timeslice_us) {
            (Some(s), _) => src.key_error(s.span(), "backend.watchdog_ms", message),
            (None, Some(t)) => src.key_error(
                t.span(),
                "workload.timeslice_us",
                format!(
                    "{message} (backend.watchdog_ms defaults to {})",
                    defaults::WATCHDOG_MS
                ),
            ),
            (None, None) => src.missing("backend.watchdog_ms", message),
        });
    }

    // On emu, every instruction costs virtual time: the built-in guest
    // must be able to run its longest stretch without a sign of life
    // within the watchdog's span, or every run ends as a hang.
    let quiet = GUEST_QUIET_INSTRUCTIONS_PER_MIB.saturating_mul(*memory.get_ref());
    if backend.kind == Backend::Emu
        && raw.guest.kernel.is_none()
        && backend.watchdog_ms as f64 * 1e6 / backend.cost.ns_per_instruction < quiet as f64
    {
        let most = backend.watchdog_ms as f64 * 1e6 / quiet as f64;
        let least_ms = (quiet as f64 * backend.cost.ns_per_instruction / 1e6).ceil();
        let message = format!(
            "backend.cost.ns_per_instruction = {} with backend.watchdog_ms = {}: at boot \
             the guest runs about {quiet} instructions ({GUEST_QUIET_INSTRUCTIONS_PER_MIB} \
             per MiB of guest.memory_mib = {}) without a sign of life, which take {least_ms} \
             ms at this cost, so the watchdog would stop every run as a hang; expected \
             ns_per_instruction at most {} or watchdog_ms at least {least_ms}",
            apflab_pager::config::float_text(backend.cost.ns_per_instruction),
            backend.watchdog_ms,
            memory.get_ref(),
            apflab_pager::config::float_text((most * 100.0).floor() / 100.0),
        );
        return Err(match (&b.cost.ns_per_instruction, &b.watchdog_ms) {
            (Some(s), _) => src.key_error(s.span(), "backend.cost.ns_per_instruction", message),
            (None, Some(s)) => src.key_error(s.span(), "backend.watchdog_ms", message),
            (None, None) => src.missing("backend.watchdog_ms", message),
        });
    }

    Ok(())
}

/// `[policy]` and `[apf]`, and what they ask of the guest and the workload.
fn policy_sections(
    src: &Source<'_>,
    raw: &RawConfig,
    base_dir: &Path,
    linux: bool,
    workload: &WorkloadConfig,
) -> Result<
    (
        Option<crate::policy_config::PolicyChoice>,
        Option<crate::policy_config::ApfSettings>,
    ),
    ConfigError,
> {
    let w = &raw.workload;
    let problem = |p: crate::policy_config::KeyProblem| match p.span {
        Some(span) => src.key_error(span, p.key, p.message),
        None => src.missing(p.key, p.message),
    };
    let policy = raw
        .policy
        .as_ref()
        .map(|p| crate::policy_config::policy(p, base_dir))
        .transpose()
        .map_err(problem)?;
    let apf = raw
        .apf
        .as_ref()
        .map(crate::policy_config::apf)
        .transpose()
        .map_err(problem)?;
    if linux && apf.is_some_and(|a| a.guest_abuses) {
        return Err(src.missing(
            "apf",
            "guest_abuses = false: the abusive guest is apflab's own kernel; the Linux \
             guest's client (guest/linux/kernel) only uses the protocol as it is meant",
        ));
    }
    let most = limits::TASKS.max - boot::APF_ABUSE_TASKS;
    if let (Some(tasks), true) = (workload.tasks, apf.is_some_and(|a| a.guest_abuses))
        && tasks > most
    {
        let span = w.tasks.as_ref().map_or(0..0, Spanned::span);
        return Err(src.key_error(
            span,
            "workload.tasks",
            format!(
                "{tasks}; expected at most {most} with [apf] guest_abuses = true (the abusive \
                 guest runs a task of its own)"
            ),
        ));
    }

    Ok((policy, apf))
}

/// The kernel command line: no NUL, and no longer than the kernel takes.
fn check_bootargs(src: &Source<'_>, g: &RawGuest, config: &Config) -> Result<(), ConfigError> {
    if let Some(b) = &g.bootargs
        && b.get_ref().contains('\0')
    {
        return Err(src.key_error(
            b.span(),
            "guest.bootargs",
            "contains a NUL character; expected kernel command line words",
        ));
    }
    // Linux cuts a longer command line short without a word.
    let len = config.bootargs().len();
    if len > apflab_vmm::fdt::MAX_BOOTARGS_LEN {
        let span = g.bootargs.as_ref().map_or(0..0, Spanned::span);
        return Err(src.key_error(
            span,
            "guest.bootargs",
            format!(
                "the kernel command line would be {len} bytes; the kernel takes at most {}",
                apflab_vmm::fdt::MAX_BOOTARGS_LEN
            ),
        ));
    }
    Ok(())
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        let file = path.display().to_string();
        let text = read_config_text(path)?;
        let config = Self::from_text(&file, &text, path.parent().unwrap_or(Path::new("")))?;
        Ok(LoadedConfig::new(
            path.to_owned(),
            path.file_stem()
                .map_or_else(|| "config".to_owned(), |s| s.to_string_lossy().into_owned()),
            &text,
            config,
        ))
    }

    /// Parses and validates config `text`; `file` names it in errors and
    /// `base_dir` is where a relative `guest.kernel` is looked up.
    pub fn from_text(file: &str, text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = parse_toml(file, text)?;
        Self::from_raw(file, text, raw, base_dir)
    }

    /// Validates a parsed config (see [`Config::from_text`]): each section
    /// on its own, then what one asks of another. The checks run in this
    /// order, so a config with several mistakes is told of the same one
    /// first every time.
    fn from_raw(
        file: &str,
        text: &str,
        raw: RawConfig,
        base_dir: &Path,
    ) -> Result<Config, ConfigError> {
        let src = &Source { file, text };
        let guest = guest_files(src, &raw.guest, base_dir)?;
        let workload = workload_section(src, &raw.workload, guest.linux)?;
        check_room(src, &raw.guest.memory_mib, &workload)?;
        let resident_low = guest.resident_low();
        let pager = pager_section(
            src,
            raw.pager.as_ref(),
            resident_low,
            guest.ram_bytes,
            base_dir,
        )?;
        check_store_verification(src, &raw.workload, &workload, pager.as_ref())?;
        let backend = backend_section(src, &raw.backend)?;
        check_watchdog(src, &raw, &workload, &backend)?;
        let (policy, apf) = policy_sections(src, &raw, base_dir, guest.linux, &workload)?;
        let config = Config {
            seed: raw.seed.unwrap_or(defaults::SEED),
            guest: GuestConfig {
                vcpus: *raw.guest.vcpus.get_ref(),
                memory_mib: *raw.guest.memory_mib.get_ref(),
                kernel: guest.kernel,
                initrd: raw.guest.initrd.as_ref().map(|i| i.get_ref().clone()),
                bootargs: raw.guest.bootargs.as_ref().map(|b| b.get_ref().clone()),
                linux: guest.linux,
                resident_low,
            },
            workload,
            backend,
            pager,
            policy,
            apf,
            base_dir: base_dir.to_path_buf(),
            kernel_path: guest.kernel_path,
            initrd_path: guest.initrd_path,
            timeline: false,
        };
        check_bootargs(src, &raw.guest, &config)?;
        Ok(config)
    }

    /// SHA-256 of the policy module's file, when `[policy]` names one that
    /// can be read (one that cannot fails the run when it is loaded).
    pub fn policy_module_sha256(&self) -> Option<String> {
        let Some(crate::policy_config::PolicyChoice::Module { path, .. }) = &self.policy else {
            return None;
        };
        let max = apflab_policy_host::PolicyConfig::default().max_module_bytes as u64;
        file_sha256(path, max, "max_module_bytes").ok()
    }

    /// The guest's `/chosen/bootargs`: every workload parameter explicitly,
    /// in a fixed order, with the keys of [`apflab_abi::boot`], after the
    /// config's own `[guest] bootargs`; for Linux, after its console and
    /// init too ([`crate::linux_guest::bootargs`]).
    pub fn bootargs(&self) -> String {
        let workload = self.workload_args();
        if self.guest.linux {
            crate::linux_guest::bootargs(self.guest.bootargs.as_deref(), &workload)
        } else {
            match self.guest.bootargs.as_deref().map(str::trim) {
                Some(extra) if !extra.is_empty() => format!("{extra} {workload}"),
                _ => workload,
            }
        }
    }

    /// Where far memory's managed region starts, from the start of RAM.
    pub fn managed_low(&self) -> u64 {
        self.guest.resident_low
    }

    /// What shapes this config's boot beyond the VM's own config, for a
    /// snapshot's identity ([`apflab_vmm::SnapshotRequest::boot_identity`]):
    /// the guest's kind and the pager's store and initial residency. Its
    /// latencies, queue, retries and injected errors act only on faults,
    /// which come after the boot, so they are left out: runs that differ
    /// only there share a snapshot. Far memory armed at the boot point
    /// withholds nothing before it, so then only the store (which fills
    /// guest RAM at power-on) and `armed_at` are kept.
    pub fn boot_identity(&self) -> std::collections::BTreeMap<String, String> {
        const AFTER_BOOT: [&str; 6] = [
            "latency",
            "bandwidth_bytes_per_sec",
            "queue_depth",
            "retries",
            "inject_errors",
            "server_poll_us",
        ];
        const AT_BOOT_POINT: [&str; 2] = ["store", "armed_at"];
        let pager = match self.pager.as_ref().map(|p| (p, serde_json::to_value(p))) {
            None => "none".to_owned(),
            Some((p, Ok(serde_json::Value::Object(mut fields)))) => {
                if p.armed_at == apflab_pager::ArmedAt::BootPoint {
                    fields.retain(|key, _| AT_BOOT_POINT.contains(&key.as_str()));
                } else {
                    for key in AFTER_BOOT {
                        fields.remove(key);
                    }
                }
                serde_json::Value::Object(fields).to_string()
            }
            // Not an object: all of it, then.
            Some((_, other)) => format!("{other:?}"),
        };
        [
            ("guest.linux", self.guest.linux.to_string()),
            ("pager", pager),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .into()
    }

    /// The workload's keys on the command line. apflab's own kernel gets
    /// every one; Linux's `/init` none of those it does not take.
    fn workload_args(&self) -> String {
        let linux = self.guest.linux;
        let w = &self.workload;
        let mut args = vec![format!("{}={}", boot::KEY_WORKLOAD, w.kind.name())];
        let mut push = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                args.push(format!("{key}={v}"));
            }
        };
        push(boot::KEY_TASKS, w.tasks.map(|v| v.to_string()));
        push(boot::KEY_OPS, w.ops.map(|v| v.to_string()));
        push(boot::KEY_MIB, w.mib.map(|v| v.to_string()));
        push(boot::KEY_PATTERN, w.pattern.clone());
        push(boot::KEY_PASSES, w.passes.map(|v| v.to_string()));
        push(boot::KEY_VERIFY, w.verify.clone().filter(|_| !linux));
        push(boot::KEY_READER, w.reader.clone());
        push(boot::KEY_REQUESTS, w.requests.map(|v| v.to_string()));
        push(boot::KEY_INTERVAL_US, w.interval_us.map(|v| v.to_string()));
        push(
            boot::KEY_TIMESLICE_US,
            (!linux).then(|| w.timeslice_us.to_string()),
        );
        push(boot::KEY_SCHEDULER, (!linux).then(|| w.scheduler.clone()));
        push(boot::KEY_SEED, Some(self.seed.to_string()));
        let apf_off = self.apf.is_some_and(|a| !a.guest_enables);
        push(boot::KEY_APF, (apf_off && !linux).then(|| "off".into()));
        if self.apf.is_some_and(|a| a.guest_abuses) {
            push(boot::KEY_APF_ABUSE, Some("on".into()));
        }
        if self.timeline {
            push(boot::KEY_TRACE, Some("on".into()));
        }
        push(
            boot::KEY_STORE_SEED,
            self.pager
                .as_ref()
                .and_then(PagerConfig::synthetic_seed)
                .filter(|_| !linux)
                .map(|s| s.to_string()),
        );
        if apf_off && linux {
            args.push(crate::linux_guest::NO_APF_BOOTARG.into());
        }
        args.join(" ")
    }

    /// What the VMM needs to run this config.
    pub fn vm_config(&self, echo_console: bool) -> VmConfig {
        let c = &self.backend.cost;
        VmConfig {
            backend: self.backend.kind.kind(),
            vcpus: self.guest.vcpus,
            memory_mib: self.guest.memory_mib,
            kernel: self.kernel_path.clone(),
            initrd: self.initrd_path.clone(),
            bootargs: self.bootargs(),
            cost: CostModel {
                ns_per_instruction: c.ns_per_instruction,
                exit_ns: c.exit_ns,
                kernel_exit_ns: c.kernel_exit_ns,
                hypercall_ns: c.hypercall_ns,
                inject_ns: c.inject_ns,
                kick_ns: c.kick_ns,
            },
            faults_in_kernel: self
                .pager
                .as_ref()
                .is_some_and(|p| p.fault_path == apflab_pager::FaultPath::Kernel),
            slice_instructions: self.backend.slice_instructions,
            max_virtual_ns: self.backend.max_virtual_ms.saturating_mul(1_000_000),
            watchdog_ns: self.backend.watchdog_ms.saturating_mul(1_000_000),
            wall_timeout: self
                .backend
                .wall_timeout_ms
                .map(std::time::Duration::from_millis),
            echo_console,
        }
    }
}
