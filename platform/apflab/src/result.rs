//! The results file of one run (`result.json`).
//!
//! Everything outside the [`Wall`] section is a function of the config file,
//! the guest kernel and the apflab build only, so two runs of the same
//! config and seed on the emu backend give byte-identical JSON once `wall`
//! is removed. Maps are `BTreeMap`s so key order is fixed too.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use apflab_abi::boot;
use apflab_abi::report::{GuestReport, LATENCY_BUCKETS};
use apflab_vmm::{GuestExit, RunOutcome};
use serde::{Deserialize, Serialize};

use crate::config::{Config, WorkloadKind};

/// Version of the layout of [`RunResult`]; bumped on any change that a
/// reader of old files would misread.
pub const SCHEMA_VERSION: u32 = 2;

/// One run's results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// apflab's version (of the build that ran).
    pub apflab_version: String,
    /// The git commit of apflab's source tree and whether the tree had
    /// changes not committed, when the run ended.
    #[serde(default)]
    pub source: SourceRecord,
    /// The config that ran.
    pub config: ConfigRecord,
    /// `emu` or `kvm`.
    pub backend: String,
    /// vCPUs of the VM.
    pub vcpus: u32,
    /// Virtual time at the end of the run (emu), ns.
    pub virtual_time_ns: u64,
    /// How the run ended and whether it counts as a success.
    pub outcome: Outcome,
    /// What the guest reported (absent if it sent no report).
    pub guest: Option<GuestRecord>,
    /// What the VMM counted.
    pub vmm: VmmRecord,
    /// Page content checks: every word the guest verified against what it
    /// wrote or against the pager's store.
    pub integrity: Integrity,
    /// Guest misuse of the async-PF protocol, by kind (each call got an
    /// SMCCC error); empty when none, or when the run offered no async PF.
    /// (Kept here, not under `apf`.)
    #[serde(default)]
    pub violations: BTreeMap<String, u64>,
    /// Faults the policy decided async but that were served synchronously,
    /// by cause; empty when none, or when the run offered no async PF.
    /// (Kept here, not under `apf`.)
    #[serde(default)]
    pub fallbacks: BTreeMap<String, u64>,
    /// Store reads the pager retried after a transient error (0 without a
    /// pager). (Kept here, not as `pager.store_retries`.)
    #[serde(default)]
    pub retries: u64,
    /// Why the watchdog stopped the run (`null`: it did not).
    #[serde(default)]
    pub watchdog: Option<WatchdogRecord>,
    /// What the pager did (absent without a `[pager]` section):
    /// [`apflab_pager::PagerMetrics`].
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pager: Option<serde_json::Value>,
    /// The policy that decided the faults (absent: the built-in sync
    /// baseline).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub policy: Option<PolicyRecord>,
    /// The fault engine's counters (faults sync and async, fallbacks by
    /// cause, "not present" and "ready" deliveries, ACKs, violations...),
    /// when the run offered async PF.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub apf: Option<serde_json::Value>,
    /// Everything that depends on the host or the moment of the run.
    pub wall: Wall,
}

/// Which source tree a run came from: the git commit of the tree apflab was
/// built from (the workspace the `apflab` executable was compiled in) and
/// whether the code that ran may differ from that commit, so a result can be
/// traced to code and one from uncommitted code is marked as such.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceRecord {
    /// `git rev-parse HEAD` of the tree (`unknown` where there is no git or
    /// no tree, e.g. a copied static executable).
    pub commit: String,
    /// Whether the run's code may not be exactly `commit`: `git status`
    /// found tracked files changed or new files not ignored, outside
    /// `paper/`, or the executable was built from another commit than the
    /// tree's current one (the tree moved on after the build). False where
    /// the commit is unknown. The write-up is left out: `scripts/paper`
    /// rewrites it while its runs go on, and nothing in it goes into a
    /// build.
    pub dirty: bool,
}

impl SourceRecord {
    /// The record of the tree this executable was built in, as it is now.
    pub fn of_build_tree() -> Self {
        // platform/apflab -> the workspace root.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let git = |args: &[&str]| crate::git::output(&root, args);
        Self::from_git(
            git(&["rev-parse", "HEAD"]),
            || git(&["status", "--porcelain", "--", ".", ":(exclude)paper"]),
            env!("APFLAB_BUILD_COMMIT"),
        )
    }

    /// The record of a tree at `head` (none: no git or no tree) whose
    /// `status` (`git status --porcelain`, asked only with a head) says
    /// what changed, for an executable built at commit `built`.
    fn from_git(
        head: Option<String>,
        status: impl FnOnce() -> Option<String>,
        built: &str,
    ) -> Self {
        match head {
            Some(commit) if !commit.is_empty() => SourceRecord {
                dirty: commit != built || status().is_none_or(|s| !s.is_empty()),
                commit,
            },
            _ => SourceRecord {
                commit: "unknown".to_owned(),
                dirty: false,
            },
        }
    }
}

/// The config of a run, as recorded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfigRecord {
    /// The config file's stem (`quick`).
    pub name: String,
    /// The config hash: SHA-256 of the config file's text, or with a
    /// policy module, of that and the module's SHA-256 together (see
    /// [`crate::config::LoadedConfig::sha256`]).
    pub sha256: String,
    /// SHA-256 of the guest kernel file that was booted.
    pub kernel_sha256: String,
    /// SHA-256 of the initramfs a Linux guest booted with (apflab's init
    /// or the config's own `guest.initrd`); none for apflab's own kernel.
    /// A Linux run depends on these bytes as on the kernel's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_sha256: Option<String>,
    /// The guest's bootargs as passed.
    pub bootargs: String,
    /// The config as parsed, with defaults filled in.
    pub parsed: serde_json::Value,
}

/// How the run ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Outcome {
    /// Whether the run succeeded (powered off with a clean report).
    pub success: bool,
    /// `power_off`, `reset`, `panic`, `crash`, `timeout` or `hang` (the
    /// watchdog stopped it: see [`RunResult::watchdog`]).
    pub exit: String,
    /// The guest's panic or crash message.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<String>,
    /// Why a run that powered off still failed (no report, mismatches).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub failure: Option<String>,
}

/// What the guest reported.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GuestRecord {
    /// Workload name from the report.
    pub workload: String,
    /// CPUs the guest brought up.
    pub cpus_online: u32,
    /// Tasks that ran to completion.
    pub tasks_completed: u32,
    /// Context switches on all CPUs.
    pub context_switches: u64,
    /// Timer interrupts on all CPUs.
    pub timer_irqs: u64,
    /// Boot to last task completion (guest clock), ns.
    pub elapsed_ns: u64,
    /// Time in the idle task, ns.
    pub idle_ns: u64,
    /// Per-workload metrics.
    pub metrics: WorkloadMetrics,
    /// Async page fault counters.
    pub apf: ApfRecord,
    /// Per-task completion time from boot (guest clock), ns; index = task.
    pub task_done_ns: Vec<u64>,
}

/// Per-workload metrics; only the sections of the workload that ran are
/// present (`mixed` has `cpu` and `memtouch`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkloadMetrics {
    /// `cpu`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cpu: Option<CpuMetrics>,
    /// `memtouch`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub memtouch: Option<MemtouchMetrics>,
    /// `kv`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kv: Option<KvMetrics>,
}

/// `cpu` workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CpuMetrics {
    /// Loop operations done by all tasks.
    pub ops: u64,
}

/// `memtouch` workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemtouchMetrics {
    /// Pages read and verified.
    pub pages_verified: u64,
    /// Words that did not match (must be 0).
    pub mismatches: u64,
}

/// `kv` workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KvMetrics {
    /// Requests served.
    pub requests: u64,
    /// Pages read and verified.
    pub pages_verified: u64,
    /// Words that did not match (must be 0).
    pub mismatches: u64,
    /// Request latency percentiles.
    pub latency: LatencySummary,
    /// Non-empty buckets of the guest's log2 histogram: bucket `i` (the
    /// key) counts latencies in `[2^i, 2^(i+1))` ns.
    pub latency_hist: BTreeMap<u32, u64>,
    /// Non-empty buckets of the guest's fine histogram
    /// ([`GuestReport::latency_fine_bounds`] gives bucket `i`'s range);
    /// empty when the guest's report came without it (a summary console
    /// line).
    #[serde(default)]
    pub latency_fine: BTreeMap<u32, u64>,
}

/// Percentiles of a latency histogram. Each value is the upper bound
/// (exclusive) of the bucket that holds the percentile, so it is never an
/// underestimate: at most 0.79 % above the true value when read from the
/// guest's fine histogram, within a factor of two from its log2 one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LatencySummary {
    /// Which histogram the percentiles come from: `"fine"` (0.79 %) or
    /// `"log2"`.
    #[serde(default = "log2_resolution")]
    pub resolution: String,
    /// Samples.
    pub count: u64,
    /// Median, ns.
    pub p50_ns: u64,
    /// 90th percentile, ns.
    pub p90_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// Largest, ns.
    pub max_ns: u64,
}

/// What results written before the fine histogram hold.
fn log2_resolution() -> String {
    "log2".to_owned()
}

impl LatencySummary {
    /// Summarises the report's request latencies: from the fine histogram
    /// when it holds every sample the log2 one does, else from the log2 one.
    pub fn of_report(r: &GuestReport) -> Self {
        let log2_count: u64 = r.latency_hist.iter().sum();
        if log2_count > 0 && r.latency_fine.iter().sum::<u64>() == log2_count {
            Self::from_hist(&r.latency_fine, "fine", |i| {
                GuestReport::latency_fine_bounds(i).1
            })
        } else {
            Self::from_log2_hist(&r.latency_hist)
        }
    }

    /// Summarises a histogram laid out as [`GuestReport::latency_hist`].
    pub fn from_log2_hist(hist: &[u64; LATENCY_BUCKETS]) -> Self {
        Self::from_hist(hist, "log2", |bucket| 1u64 << (bucket + 1))
    }

    /// Summarises `hist`, whose bucket `i` holds values below `upper(i)`.
    fn from_hist(hist: &[u64], resolution: &str, upper: impl Fn(usize) -> u64) -> Self {
        let count: u64 = hist.iter().sum();
        let percentile = |p: f64| -> u64 {
            if count == 0 {
                return 0;
            }
            // The smallest bucket whose cumulative count reaches p of all.
            let rank = ((p * count as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, n) in hist.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return upper(i);
                }
            }
            upper(hist.len() - 1)
        };
        let max_ns = hist.iter().rposition(|&n| n > 0).map_or(0, &upper);
        LatencySummary {
            resolution: resolution.to_owned(),
            count,
            p50_ns: percentile(0.50),
            p90_ns: percentile(0.90),
            p99_ns: percentile(0.99),
            max_ns,
        }
    }
}

/// Async page fault counters of the guest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApfRecord {
    /// Whether async PF was enabled in the guest.
    pub enabled: bool,
    /// "Not present" notifications taken.
    pub not_present: u64,
    /// "Page ready" notifications taken.
    pub ready: u64,
    /// Tasks parked.
    pub parked: u64,
    /// Halts until ready.
    pub halts: u64,
    /// Ready before its not-present was processed.
    pub early_ready: u64,
    /// "Not present" taken by the kernel itself, each waited out halting.
    #[serde(default)]
    pub kernel_halts: u64,
    /// Wake-all tokens handled.
    #[serde(default)]
    pub wake_alls: u64,
    /// Nanoseconds in the halt loop (guest time).
    #[serde(default)]
    pub halted_ns: u64,
}

/// Page content checks of the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Integrity {
    /// Pages whose every word the guest compared with the expected content.
    pub pages_verified: u64,
    /// Words that differed (a correct run has 0).
    pub mismatches: u64,
}

/// The watchdog's diagnosis of a run it stopped
/// ([`apflab_vmm::HangDiagnosis`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WatchdogRecord {
    /// How long the guest showed no sign of life, ms (`backend.watchdog_ms`).
    pub quiet_ms: u64,
    /// When the run was stopped, ns.
    pub at_ns: u64,
    /// Every vCPU.
    pub vcpus: Vec<WatchdogVcpu>,
    /// What the fault engine still owed the guest, one entry each.
    pub outstanding: Vec<String>,
}

/// One vCPU as the watchdog found it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WatchdogVcpu {
    /// Its index.
    pub vcpu: u32,
    /// Its run state, in words.
    pub state: String,
    /// Its program counter (hex), when the backend can tell.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pc: Option<String>,
    /// Its exception level, when known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub el: Option<u8>,
    /// Whether it had IRQs masked, when known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub irqs_masked: Option<bool>,
    /// An interrupt signalled to it and not taken, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pending_irq: Option<u32>,
}

impl WatchdogRecord {
    fn from_diagnosis(d: &apflab_vmm::HangDiagnosis) -> Self {
        WatchdogRecord {
            quiet_ms: d.quiet_ns / 1_000_000,
            at_ns: d.at_ns,
            vcpus: d
                .vcpus
                .iter()
                .map(|v| WatchdogVcpu {
                    vcpu: v.vcpu,
                    state: v.state.clone(),
                    pc: v.at.map(|p| format!("{:#x}", p.pc)),
                    el: v.at.map(|p| p.el),
                    irqs_masked: v.at.map(|p| p.irqs_masked),
                    pending_irq: v.pending_irq,
                })
                .collect(),
            outstanding: d.pending.clone(),
        }
    }
}

/// The policy of a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// As the config names it (a built-in example, a path, or `decision`).
    pub module: String,
    /// SHA-256 of the module file, hex (empty for a fixed decision).
    pub sha256: String,
    /// The fixed decision, when there is no module.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub decision: Option<serde_json::Value>,
    /// Wasm fuel the module consumed over the run (0 without a module).
    #[serde(default)]
    pub fuel_used: u64,
    /// Calls that failed (trap, fuel, limit, malformed decision) or were
    /// skipped once the policy was disabled; their decisions were sync.
    #[serde(default)]
    pub failed_calls: u64,
    /// The same calls by cause (`trap`, `out_of_fuel`, `resource_limit`,
    /// `malformed_decision`, `disabled`), the causes that occurred.
    #[serde(default)]
    pub failures: BTreeMap<String, u64>,
    /// The host disabled the module after repeated failures.
    #[serde(default)]
    pub disabled: bool,
    /// The ABI version the module speaks (absent for a fixed decision).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub abi_version: Option<i32>,
    /// Decisions of an ABI v2 module that asked for a prefetch, which
    /// apflab does not do (ignored).
    #[serde(skip_serializing_if = "is_zero", default)]
    pub prefetch_ignored: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl PolicyRecord {
    /// The failures by cause as one cell: `disabled 120; trap 8`, or `-`
    /// (no comma, so a CSV cell needs no quotes).
    pub fn failure_causes(&self) -> String {
        if self.failures.is_empty() {
            return "-".into();
        }
        self.failures
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// What the VMM counted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmmRecord {
    /// Exits by reason.
    pub exits: BTreeMap<String, u64>,
    /// All exits.
    pub exits_total: u64,
    /// Guest instructions, all vCPUs.
    pub instructions: u64,
    /// Per vCPU: ns halted in WFI (virtual on emu).
    pub halted_ns: Vec<u64>,
    /// Per vCPU: ns stalled on not-resident pages (virtual on emu, host
    /// time on kvm).
    #[serde(default)]
    pub stalled_ns: Vec<u64>,
    /// Interrupts injected, by INTID.
    pub interrupts: BTreeMap<u32, u64>,
    /// Per task: completion time (virtual ns) from `TASK_DONE`.
    pub task_done_ns: BTreeMap<u64, u64>,
}

/// Host- and time-dependent facts about the run, kept apart so the rest of
/// the file is deterministic.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Wall {
    /// Host wall-clock duration of the run, ms.
    pub wall_time_ms: f64,
    /// Host name.
    pub host: String,
    /// Start of the run, seconds since the Unix epoch.
    pub started_at_unix_s: u64,
    /// The config file as named on the command line.
    pub config_path: String,
    /// The kernel file that was booted.
    pub kernel_path: String,
    /// Guest instructions per host second (emu throughput).
    pub instructions_per_s: f64,
    /// Host time spent in the policy's calls, ms.
    #[serde(default)]
    pub policy_time_ms: f64,
    /// Host time the fault engine spent serving the VMM's calls (faults,
    /// waits, hypercalls, resumptions, completions; pager and policy
    /// included), ms: the VMM's side of far memory.
    #[serde(default)]
    pub fault_path_ms: f64,
    /// [`Wall::fault_path_ms`] per fault the engine saw, ns (0 without
    /// faults).
    #[serde(default)]
    pub fault_path_ns_per_fault: f64,
    /// The apflab process's peak resident set at the end of the run, MiB
    /// (`getrusage` `ru_maxrss`; in a process that ran several points, the
    /// peak over all of them so far).
    #[serde(default)]
    pub peak_rss_mib: f64,
}

/// The peak resident set of this process so far, MiB (0 if unknown).
pub fn peak_rss_mib() -> f64 {
    // SAFETY: `getrusage` fills the zeroed struct it is given and reads
    // nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    // Linux reports it in KiB.
    usage.ru_maxrss as f64 / 1024.0
}

/// The host's name (best effort; empty if unknown).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// What identifies a run besides its config: the inputs to
/// [`RunResult::new`].
pub struct RunInputs<'a> {
    /// Config stem.
    pub name: &'a str,
    /// SHA-256 of the config text.
    pub config_sha256: &'a str,
    /// SHA-256 of the kernel file.
    pub kernel_sha256: &'a str,
    /// SHA-256 of the Linux guest's initramfs, if it has one.
    pub initrd_sha256: Option<&'a str>,
    /// The validated config (backend already overridden if asked).
    pub config: &'a Config,
    /// The config file as named by the user.
    pub config_path: &'a Path,
    /// When the run started.
    pub started_at: SystemTime,
}

impl RunResult {
    /// Whether this run is a synchronous baseline: no async PF offered, or
    /// the `sync` policy.
    pub fn is_sync_baseline(&self) -> bool {
        self.policy.as_ref().is_none_or(|p| p.module == "sync")
    }

    /// The policy as tables and plots name it: the module, or for a fixed
    /// decision its four choices (`dedicated-ec/interrupt/guest/reschedule`),
    /// or `none` without `[policy]`.
    pub fn policy_label(&self) -> String {
        let Some(p) = &self.policy else {
            return "none".to_owned();
        };
        let choice = |key: &str| {
            p.decision
                .as_ref()
                .and_then(|d| d.get(key))
                .and_then(serde_json::Value::as_str)
                .unwrap_or("?")
                .to_owned()
        };
        match &p.decision {
            Some(_) => ["not_present", "ready", "initiation", "sleep"]
                .map(choice)
                .join("/"),
            // A disabled module's run measured the fallback, not the
            // module: every table and plot says so.
            None if p.disabled => format!("{} (DISABLED)", p.module),
            None => p.module.clone(),
        }
    }

    /// Builds the results of a finished run.
    pub fn new(inputs: &RunInputs<'_>, outcome: &RunOutcome) -> Self {
        let config = inputs.config;
        let (exit, message) = match &outcome.exit {
            GuestExit::PowerOff => ("power_off", None),
            GuestExit::Reset => ("reset", None),
            GuestExit::Panic(m) => ("panic", Some(m.clone())),
            GuestExit::Crash(crash) => ("crash", Some(crash.to_string())),
            GuestExit::Timeout => (
                "timeout",
                Some(format!(
                    "no power-off within backend.max_virtual_ms = {} ms of virtual time",
                    config.backend.max_virtual_ms
                )),
            ),
            GuestExit::WallTimeout => (
                "wall_timeout",
                Some(format!(
                    "no power-off within {} ms of wall-clock time (backend.wall_timeout_ms or \
                     --wall-timeout)",
                    config.backend.wall_timeout_ms.unwrap_or_default()
                )),
            ),
            GuestExit::Hang(d) => ("hang", Some(d.to_string())),
        };
        let watchdog = match &outcome.exit {
            GuestExit::Hang(d) => Some(WatchdogRecord::from_diagnosis(d)),
            _ => None,
        };
        let guest = outcome
            .report
            .as_ref()
            .map(|r| GuestRecord::from_report(r, config.workload.kind));
        let failure = if !outcome.exit.is_success() {
            None
        } else {
            match &outcome.report {
                None => Some(
                    crate::linux_guest::init_failure(&outcome.console).unwrap_or_else(|| {
                        "the guest powered off without sending its report".to_owned()
                    }),
                ),
                Some(r) if r.mismatches != 0 => Some(format!(
                    "the guest found {} words that did not match the expected page content",
                    r.mismatches
                )),
                Some(_) => None,
            }
        };
        let m = &outcome.metrics;
        let wall_s = outcome.wall_time.as_secs_f64();
        RunResult {
            schema_version: SCHEMA_VERSION,
            apflab_version: env!("CARGO_PKG_VERSION").to_owned(),
            source: SourceRecord::of_build_tree(),
            config: ConfigRecord {
                name: inputs.name.to_owned(),
                sha256: inputs.config_sha256.to_owned(),
                kernel_sha256: inputs.kernel_sha256.to_owned(),
                initrd_sha256: inputs.initrd_sha256.map(str::to_owned),
                bootargs: config.bootargs(),
                parsed: serde_json::to_value(config).unwrap_or(serde_json::Value::Null),
            },
            backend: config.backend.kind.name().to_owned(),
            vcpus: config.guest.vcpus,
            virtual_time_ns: m.virtual_time_ns,
            outcome: Outcome {
                success: outcome.exit.is_success() && failure.is_none(),
                exit: exit.to_owned(),
                message,
                failure,
            },
            guest,
            vmm: VmmRecord {
                exits: m.exits.clone(),
                exits_total: m.exits.values().sum(),
                instructions: m.instructions,
                halted_ns: m.halted_ns.clone(),
                // Set from the fault engine or the page server, if any.
                stalled_ns: vec![0; config.guest.vcpus as usize],
                interrupts: m.interrupts.clone(),
                task_done_ns: outcome.task_done_ns.clone(),
            },
            integrity: outcome
                .report
                .as_ref()
                .map_or_else(Integrity::default, |r| Integrity {
                    pages_verified: r.pages_verified,
                    mismatches: r.mismatches,
                }),
            violations: BTreeMap::new(),
            fallbacks: BTreeMap::new(),
            retries: 0,
            watchdog,
            pager: None,
            policy: None,
            apf: None,
            wall: Wall {
                wall_time_ms: wall_s * 1e3,
                host: host_name(),
                started_at_unix_s: inputs
                    .started_at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                config_path: inputs.config_path.display().to_string(),
                kernel_path: config.kernel_path.display().to_string(),
                instructions_per_s: if wall_s > 0.0 {
                    m.instructions as f64 / wall_s
                } else {
                    0.0
                },
                policy_time_ms: 0.0,
                fault_path_ms: 0.0,
                fault_path_ns_per_fault: 0.0,
                peak_rss_mib: peak_rss_mib(),
            },
        }
    }

    /// Records the pager's metrics (its retries go to
    /// [`RunResult::retries`]).
    pub fn set_pager(&mut self, metrics: &apflab_pager::PagerMetrics) {
        self.retries = metrics.store_retries;
        self.pager = serde_json::to_value(metrics).ok();
        if let Some(p) = self.pager.as_mut().and_then(|v| v.as_object_mut()) {
            p.remove("store_retries");
        }
    }

    /// Records the fault engine's counters under `apf` (its violations and
    /// fallbacks go to [`RunResult::violations`] and
    /// [`RunResult::fallbacks`]), with the count of token events the log
    /// dropped.
    pub fn set_apf(&mut self, metrics: &apflab_apf::FaultMetrics, token_events_dropped: u64) {
        self.violations = metrics.violations.clone();
        self.fallbacks = metrics.fallbacks.clone();
        self.apf = serde_json::to_value(metrics).ok();
        if let Some(apf) = self.apf.as_mut().and_then(|v| v.as_object_mut()) {
            apf.remove("violations");
            apf.remove("fallbacks");
            apf.insert("token_events_dropped".into(), token_events_dropped.into());
        }
    }

    /// Sets the per-vCPU stall times, as the fault engine or the page
    /// server counted them (one entry per vCPU; vCPUs not in `stalled_ns`
    /// stalled 0 ns).
    pub fn set_stalls(&mut self, stalled_ns: &[u64]) {
        let n = self.vmm.stalled_ns.len().max(self.vcpus as usize);
        self.vmm.stalled_ns = (0..n)
            .map(|v| stalled_ns.get(v).copied().unwrap_or(0))
            .collect();
    }

    /// A few lines for a human.
    pub fn summary(&self) -> String {
        let disabled = self.policy.as_ref().filter(|p| p.disabled);
        let mut s = format!(
            "{} ({}, {} vCPU{}): {}{} after {:.3} ms virtual, {:.0} ms wall",
            self.config.name,
            self.backend,
            self.vcpus,
            if self.vcpus == 1 { "" } else { "s" },
            if self.outcome.success { "ok" } else { "FAILED" },
            if disabled.is_some() {
                ", POLICY DISABLED (its decisions were the sync fallback)"
            } else {
                ""
            },
            self.virtual_time_ns as f64 / 1e6,
            self.wall.wall_time_ms,
        );
        if let Some(p) = self.policy.as_ref().filter(|p| !p.sha256.is_empty()) {
            s += &format!(
                "\n  policy {} (sha256 {}): {} failed calls ({}){}; log: policy.log",
                p.module,
                p.sha256.get(..12).unwrap_or(&p.sha256),
                p.failed_calls,
                p.failure_causes(),
                if p.disabled { ", disabled" } else { "" },
            );
        }
        if let Some(m) = self
            .outcome
            .message
            .as_ref()
            .or(self.outcome.failure.as_ref())
        {
            s += &format!("\n  {}: {m}", self.outcome.exit);
        }
        if let Some(g) = &self.guest {
            s += &format!(
                "\n  guest: {} tasks done, {} context switches, {} timer irqs",
                g.tasks_completed, g.context_switches, g.timer_irqs
            );
            if let Some(c) = &g.metrics.cpu {
                s += &format!("\n  cpu: {} ops", c.ops);
            }
            if let Some(t) = &g.metrics.memtouch {
                s += &format!(
                    "\n  memtouch: {} pages verified, {} mismatches",
                    t.pages_verified, t.mismatches
                );
            }
            if let Some(k) = &g.metrics.kv {
                s += &format!(
                    "\n  kv: {} requests, latency p50 < {} ns, p99 < {} ns",
                    k.requests, k.latency.p50_ns, k.latency.p99_ns
                );
            }
        }
        if let Some(p) = &self.pager {
            let n = |key: &str| p.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0);
            let p99 = p
                .pointer("/fetch_latency/p99_ns")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            s += &format!(
                "\n  pager: {} fetches ({} refaults), {} evictions, {} MiB moved, fetch p99 {:.1} us",
                n("fetches"),
                n("refaults"),
                n("evictions"),
                n("bytes_moved") >> 20,
                p99 as f64 / 1e3
            );
            if let Some(arming) = p.get("boot_point") {
                s += &match arming.get("at_ns").and_then(serde_json::Value::as_u64) {
                    Some(at) => format!(
                        "; far from the boot point at {:.3} ms ({} pages withheld, {} stored)",
                        at as f64 / 1e6,
                        arming["pages_withheld"],
                        arming["pages_stored"]
                    ),
                    None => "; far memory never started: the guest never reached its boot \
                             point (armed_at = \"boot-point\")"
                        .to_owned(),
                };
            }
        }
        let kinds_of = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                "none".to_owned()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        if let Some(a) = &self.apf {
            let n = |key: &str| a.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0);
            let kinds = |key: &str| {
                a.get(key)
                    .and_then(serde_json::Value::as_object)
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| "none".into())
            };
            s += &format!(
                "\n  async PF ({}): {} of {} faults async (not present: {}), {} sync (fallbacks: {}); \
                 {} tokens ready in {} interrupts, {} page requests, violations: {}",
                self.policy.as_ref().map_or("sync", |p| p.module.as_str()),
                n("async_faults"),
                n("faults"),
                kinds("not_present"),
                n("sync_faults"),
                kinds_of(&self.fallbacks),
                n("ready_delivered"),
                n("ready_interrupts"),
                n("page_requests"),
                kinds_of(&self.violations),
            );
        }
        s += &format!(
            "\n  integrity: {} pages verified, {} mismatches",
            self.integrity.pages_verified, self.integrity.mismatches
        );
        s += &format!(
            "\n  vmm: {} instructions ({:.1} M/s), {} exits",
            self.vmm.instructions,
            self.wall.instructions_per_s / 1e6,
            self.vmm.exits_total
        );
        s
    }
}

impl GuestRecord {
    /// Reads the guest's report; `kind` is the workload that was asked for
    /// (the report's own workload id is recorded as the guest gave it).
    fn from_report(r: &GuestReport, kind: WorkloadKind) -> Self {
        let (cpu, memtouch, kv) = match kind {
            WorkloadKind::Cpu => (true, false, false),
            WorkloadKind::Memtouch => (false, true, false),
            WorkloadKind::Mixed => (true, true, false),
            WorkloadKind::Kv => (false, false, true),
        };
        let metrics = WorkloadMetrics {
            cpu: cpu.then_some(CpuMetrics { ops: r.cpu_ops }),
            memtouch: memtouch.then_some(MemtouchMetrics {
                pages_verified: r.pages_verified,
                mismatches: r.mismatches,
            }),
            kv: kv.then(|| KvMetrics {
                requests: r.requests,
                pages_verified: r.pages_verified,
                mismatches: r.mismatches,
                latency: LatencySummary::of_report(r),
                latency_hist: non_empty(&r.latency_hist),
                latency_fine: non_empty(&r.latency_fine),
            }),
        };
        // Completion times of tasks that finished; trailing zeros are slots
        // the guest did not use.
        let used = r
            .task_done_ns
            .iter()
            .rposition(|&t| t != 0)
            .map_or(0, |i| i + 1);
        GuestRecord {
            workload: boot::workload_name(r.workload)
                .map_or_else(|| format!("unknown({})", r.workload), str::to_owned),
            cpus_online: r.cpus_online,
            tasks_completed: r.tasks_completed,
            context_switches: r.context_switches,
            timer_irqs: r.timer_irqs,
            elapsed_ns: r.elapsed_ns,
            idle_ns: r.idle_ns,
            metrics,
            apf: ApfRecord {
                enabled: r.apf_enabled != 0,
                not_present: r.apf_not_present,
                ready: r.apf_ready,
                parked: r.apf_parked,
                halts: r.apf_halts,
                early_ready: r.apf_early_ready,
                kernel_halts: r.apf_kernel_halts,
                wake_alls: r.apf_wake_alls,
                halted_ns: r.apf_halted_ns,
            },
            task_done_ns: r.task_done_ns[..used].to_vec(),
        }
    }
}

/// A histogram's non-empty buckets by index.
fn non_empty(hist: &[u64]) -> BTreeMap<u32, u64> {
    hist.iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (i as u32, *n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_clean_only_from_the_commit_the_executable_was_built_at_with_no_changes() {
        let record = |head: Option<&str>, status: Option<&str>, built| {
            let status = status.map(str::to_owned);
            SourceRecord::from_git(head.map(str::to_owned), move || status, built)
        };
        let clean = record(Some("aaa"), Some(""), "aaa");
        assert_eq!((clean.commit.as_str(), clean.dirty), ("aaa", false));
        // Files changed since the commit.
        assert!(record(Some("aaa"), Some(" M platform/vmm/src/machine.rs"), "aaa").dirty);
        // The tree moved on after the executable was built.
        let moved = record(Some("bbb"), Some(""), "aaa");
        assert_eq!((moved.commit.as_str(), moved.dirty), ("bbb", true));
        // git status failed.
        assert!(record(Some("aaa"), None, "aaa").dirty);
        let none = record(None, None, "aaa");
        assert_eq!((none.commit.as_str(), none.dirty), ("unknown", false));
    }

    #[test]
    fn percentiles_come_from_the_fine_histogram_to_0_79_percent() {
        let mut r = GuestReport::new(boot::WORKLOAD_KV);
        // 98 requests at 1.0 ms, 2 at 3.7 ms: in log2 buckets p99 would
        // read 4,194,304 ns.
        for (ns, n) in [(1_000_000u64, 98), (3_700_000, 2)] {
            r.latency_hist[GuestReport::latency_bucket(ns)] += n;
            r.latency_fine[GuestReport::latency_fine_bucket(ns)] += n;
        }
        let s = LatencySummary::of_report(&r);
        assert_eq!(s.resolution, "fine");
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_ns, 1_003_520);
        assert_eq!(s.p99_ns, 3_702_784);
        assert!(s.p99_ns >= 3_700_000 && s.p99_ns as f64 <= 3_700_000.0 * 1.0079);
        assert_eq!(s.max_ns, s.p99_ns);
        // A report whose fine histogram is missing (a summary console
        // line) falls back to the log2 buckets and says so.
        r.latency_fine = [0; apflab_abi::report::LATENCY_FINE_BUCKETS];
        let s = LatencySummary::of_report(&r);
        assert_eq!((s.resolution.as_str(), s.p99_ns), ("log2", 1 << 22));
    }

    #[test]
    fn percentiles_are_bucket_upper_bounds() {
        let mut hist = [0u64; LATENCY_BUCKETS];
        // 90 samples in [1024, 2048), 9 in [8192, 16384), 1 in [2^20, 2^21).
        hist[10] = 90;
        hist[13] = 9;
        hist[20] = 1;
        let s = LatencySummary::from_log2_hist(&hist);
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_ns, 2048);
        assert_eq!(s.p90_ns, 2048);
        assert_eq!(s.p99_ns, 16384);
        assert_eq!(s.max_ns, 1 << 21);
    }

    #[test]
    fn empty_histogram_has_zero_percentiles() {
        let s = LatencySummary::from_log2_hist(&[0; LATENCY_BUCKETS]);
        assert_eq!(
            s,
            LatencySummary {
                resolution: "log2".to_owned(),
                count: 0,
                p50_ns: 0,
                p90_ns: 0,
                p99_ns: 0,
                max_ns: 0
            }
        );
    }

    #[test]
    fn mixed_reports_cpu_and_memtouch() {
        let mut r = GuestReport::new(boot::WORKLOAD_MIXED);
        r.cpu_ops = 5;
        r.pages_verified = 7;
        r.task_done_ns[0] = 10;
        r.task_done_ns[1] = 20;
        let g = GuestRecord::from_report(&r, WorkloadKind::Mixed);
        assert_eq!(g.workload, "mixed");
        assert_eq!(g.metrics.cpu.unwrap().ops, 5);
        assert_eq!(g.metrics.memtouch.unwrap().pages_verified, 7);
        assert!(g.metrics.kv.is_none());
        assert_eq!(g.task_done_ns, vec![10, 20]);
    }
}
