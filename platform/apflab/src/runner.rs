//! Running one config: build the VM, run it, write `result.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use apflab_abi::policy::{Params, Policy};
use apflab_apf::{ApfConfig, Engine};
use apflab_pager::{ArmedAt, ConfigError, FaultPath, PagerMetrics, Prepared, VirtualPager};
use apflab_policy_host::{
    BuiltinFixed, BuiltinSync, ConfigureError, PolicyConfig, PolicyError, PolicyModule,
};
use apflab_vmm::{
    NoFarMemory, RunOutcome, SnapshotError, SnapshotPlan, SnapshotRequest, Vm, VmConfig, VmError,
};

use crate::config::{Backend, Config, LoadedConfig, file_sha256};
use crate::page_server::KernelPager;
use crate::policy_config::PolicyChoice;
use crate::result::{PolicyRecord, RunInputs, RunResult};

/// Why a run could not produce results.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The guest image could not be read.
    #[error("{path}: cannot read the guest image: {error}")]
    Kernel {
        /// The image.
        path: String,
        /// Why.
        #[source]
        error: std::io::Error,
    },
    /// A Linux guest's initramfs could not be read.
    #[error("{path}: cannot read the initramfs: {error}")]
    Initrd {
        /// The initramfs.
        path: String,
        /// Why.
        #[source]
        error: std::io::Error,
    },
    /// The VMM refused the configuration (bad image, unsupported backend on
    /// this host...).
    #[error("cannot start the VM: {0}")]
    Setup(#[source] VmError),
    /// The config's sections ask for something together that none of them
    /// is wrong about alone.
    #[error("cannot start the VM: {}: {conflict}", path.display())]
    Sections {
        /// The config file.
        path: PathBuf,
        /// What does not fit.
        conflict: SectionConflict,
    },
    /// The `[pager]` section cannot be served (its store, its range).
    #[error("cannot start the VM: {0}")]
    Pager(#[source] ConfigError),
    /// The `[policy]` module cannot be loaded.
    #[error(
        "cannot start the VM: {}: policy.module = {name:?}: {}: {source}",
        path.display(),
        file.display()
    )]
    PolicyLoad {
        /// The config file.
        path: PathBuf,
        /// The module's name in the config.
        name: String,
        /// The module file.
        file: PathBuf,
        /// Why.
        #[source]
        source: Box<PolicyError>,
    },
    /// The `[policy]` module cannot be instantiated.
    #[error("cannot start the VM: {}: policy.module = {name:?}: {source}", path.display())]
    PolicyInstance {
        /// The config file.
        path: PathBuf,
        /// The module's name in the config.
        name: String,
        /// Why.
        #[source]
        source: Box<PolicyError>,
    },
    /// The policy refused `[policy] params`.
    #[error("cannot start the VM: {}: policy.params: {source}", path.display())]
    PolicyParams {
        /// The config file.
        path: PathBuf,
        /// Why.
        #[source]
        source: ConfigureError,
    },
    /// The VMM failed during the run.
    #[error("the VM failed: {0}")]
    Vmm(#[source] VmError),
    /// A snapshot could not be written, or does not fit the run.
    #[error(transparent)]
    Snapshot(SnapshotError),
    /// An output cannot be written: found before the run starts.
    #[error("{flag}{error}")]
    Output {
        /// The option that named it (`--trace `), or empty for a file in
        /// the results folder.
        flag: &'static str,
        /// Which file and why.
        #[source]
        error: apflab_files::OutputError,
    },
    /// The results could not be written after the run.
    #[error("{path}: cannot write results: {error}{}", kept_text(kept))]
    Write {
        /// The file.
        path: String,
        /// Why.
        #[source]
        error: std::io::Error,
        /// The files the run did write before this one failed.
        kept: Vec<String>,
    },
}

/// Config sections that do not fit together ([`RunError::Sections`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SectionConflict {
    /// `[policy]` without `[pager]`: there are no far-memory faults to
    /// decide.
    #[error(
        "[policy] decides faults on far memory, and without a [pager] section \
         there are none: add [pager] or remove [policy]"
    )]
    PolicyWithoutPager,
    /// `server_poll_us` on a backend other than kvm: only kvm's page-server
    /// threads poll, so the key would be lost.
    #[error(
        "[pager] server_poll_us = {poll_us}: only kvm's page-server threads poll; the emu \
         backend's kernel fault path has none (expected 0 or --backend kvm)"
    )]
    PollWithoutPageServers {
        /// The value given.
        poll_us: u64,
    },
    /// `[policy]` with `fault_path = "kernel"`, where faults never exit.
    #[error(
        "[policy] decides faults that exit to the VMM; with [pager] fault_path = \"kernel\" \
         they never do: use fault_path = \"vmm\" for async PF"
    )]
    PolicyOnKernelPath,
    /// `armed_at = "boot-point"` on kvm, which does not stop at the boot
    /// point, so far memory would never start.
    #[error(
        "[pager] armed_at = \"boot-point\": only the emu backend stops at the guest's boot \
         point to start far memory there (expected armed_at = \"power-on\" or --backend emu)"
    )]
    ArmedAtBootPointOnKvm,
}

/// What [`RunError::Write`] says of the files already written.
fn kept_text(kept: &[String]) -> String {
    if kept.is_empty() {
        String::new()
    } else {
        format!("; what was written is kept: {}", kept.join(", "))
    }
}

impl RunError {
    /// Whether the error is the user's input (exit code 2) rather than a
    /// failed run (exit code 1).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            RunError::Kernel { .. }
                | RunError::Initrd { .. }
                | RunError::Setup(_)
                | RunError::Sections { .. }
                | RunError::Pager(_)
                | RunError::PolicyLoad { .. }
                | RunError::PolicyInstance { .. }
                | RunError::PolicyParams { .. }
                | RunError::Output { .. }
                | RunError::Snapshot(_)
        )
    }
}

/// The far memory behind a run, by where its faults are handled
/// (`[pager] fault_path`).
pub enum Pager {
    /// Faults exit to the VMM, whose fault engine stalls the vCPU.
    InVmm {
        /// The fault engine.
        engine: Box<Engine>,
        /// What the results say of its policy (`None`: no `[policy]`).
        policy: Option<PolicyRecord>,
    },
    /// Faults block in the host kernel; page-server threads answer (kvm).
    InKernel(Arc<KernelPager>),
}

impl Pager {
    /// What the pager did (None if it never started).
    pub fn metrics(&self) -> Option<PagerMetrics> {
        match self {
            Pager::InVmm { engine, .. } => Some(engine.pager_metrics()),
            Pager::InKernel(k) => k.metrics(),
        }
    }
}

/// Builds and runs one VM, with `pager` serving its not-resident pages if
/// given, saving or resuming a snapshot at the boot point if `snapshot`
/// says so. This is the only place the CLI calls the VMM.
pub fn execute(
    config: VmConfig,
    pager: Option<&mut Pager>,
    snapshot: Option<SnapshotRequest>,
) -> Result<RunOutcome, RunError> {
    tracing::debug!(?config, "starting VM");
    let mut vm = Vm::new(config).map_err(RunError::Setup)?;
    if let Some(request) = snapshot {
        vm.set_snapshot(request);
    }
    let outcome = match pager {
        Some(Pager::InVmm { engine, .. }) => {
            let outcome = vm.run(engine.as_mut());
            engine.finish();
            outcome
        }
        Some(Pager::InKernel(k)) => {
            vm.set_page_server(k.clone());
            vm.run(&mut NoFarMemory)
        }
        None => vm.run(&mut NoFarMemory),
    };
    outcome.map_err(|e| match e {
        VmError::Snapshot(e) => RunError::Snapshot(e),
        // Refused before the VM started (kvm).
        e @ VmError::BackendUnavailable { .. } => RunError::Setup(e),
        e => RunError::Vmm(e),
    })
}

/// The pager of `config`'s `[pager]` section (from the file `path`), if it
/// has one.
fn pager(config: &Config, path: &Path) -> Result<Option<Pager>, RunError> {
    let Some(pager) = &config.pager else {
        if config.policy.is_some() {
            // Its module is never loaded, so it must not pass unnoticed.
            return Err(RunError::Sections {
                path: path.to_owned(),
                conflict: SectionConflict::PolicyWithoutPager,
            });
        }
        return Ok(None);
    };
    if config.policy.is_some() && pager.fault_path == FaultPath::Kernel {
        return Err(RunError::Sections {
            path: path.to_owned(),
            conflict: SectionConflict::PolicyOnKernelPath,
        });
    }
    if pager.server_poll_us > 0 && config.backend.kind != Backend::Kvm {
        return Err(RunError::Sections {
            path: path.to_owned(),
            conflict: SectionConflict::PollWithoutPageServers {
                poll_us: pager.server_poll_us,
            },
        });
    }
    if pager.armed_at == ArmedAt::BootPoint && config.backend.kind == Backend::Kvm {
        return Err(RunError::Sections {
            path: path.to_owned(),
            conflict: SectionConflict::ArmedAtBootPointOnKvm,
        });
    }
    let prepared = Prepared::new_above(
        pager,
        config.managed_low(),
        config.guest.memory_mib << 20,
        &config.base_dir,
    )
    .map_err(RunError::Pager)?;
    let in_kernel = pager.fault_path == FaultPath::Kernel;
    Ok(Some(match config.backend.kind {
        // Page-server threads in the host kernel's fault path (real time).
        Backend::Kvm if in_kernel => Pager::InKernel(Arc::new(KernelPager::new(prepared))),
        // Both backends drive the same engine: emu in virtual time, kvm in
        // host time since the start of the run (fetch latencies become real
        // stalls of the faulting vCPU). On emu, the kernel's fault path is
        // this engine's synchronous stall with the fault charged as an
        // in-kernel exit (`CostModel::kernel_exit_ns`) instead of an exit to
        // the VMM; no policy sees it.
        _ => {
            let (policy, record) = policy(config, path)?;
            let offered = match (&config.policy, config.apf) {
                (None, _) => ApfConfig::OFF,
                (Some(_), apf) => ApfConfig::all(apf.unwrap_or_default().ring_depth),
            };
            Pager::InVmm {
                engine: Box::new(Engine::new(
                    config.guest.vcpus,
                    VirtualPager::new(prepared),
                    policy,
                    offered,
                )),
                policy: record,
            }
        }
    }))
}

/// The policy `config` names (the sync baseline without `[policy]`), and
/// what the results say of it.
fn policy(
    config: &Config,
    path: &Path,
) -> Result<(Box<dyn Policy>, Option<PolicyRecord>), RunError> {
    Ok(match &config.policy {
        None => (Box::new(BuiltinSync), None),
        Some(PolicyChoice::Module {
            name,
            path: file,
            params,
        }) => {
            let module = PolicyModule::load(file, &PolicyConfig::default()).map_err(|source| {
                RunError::PolicyLoad {
                    path: path.to_owned(),
                    name: name.clone(),
                    file: file.clone(),
                    source: Box::new(source),
                }
            })?;
            let record = PolicyRecord {
                module: name.clone(),
                sha256: module.info().sha256.clone(),
                abi_version: Some(module.info().abi_version),
                ..PolicyRecord::default()
            };
            let mut instance = module
                .instantiate()
                .map_err(|source| RunError::PolicyInstance {
                    path: path.to_owned(),
                    name: name.clone(),
                    source: Box::new(source),
                })?;
            let text = params.record_text();
            instance
                .configure_params(&Params::new(&text))
                .map_err(|source| RunError::PolicyParams {
                    path: path.to_owned(),
                    source,
                })?;
            (Box::new(instance), Some(record))
        }
        Some(PolicyChoice::Decision(d)) => (
            Box::new(BuiltinFixed(d.decision())),
            Some(PolicyRecord {
                module: "decision".into(),
                sha256: String::new(),
                decision: serde_json::to_value(d).ok(),
                ..PolicyRecord::default()
            }),
        ),
    })
}

/// Where a run's files go by default: `results/<config-stem>`.
pub fn default_out_dir(loaded: &LoadedConfig) -> PathBuf {
    Path::new("results").join(&loaded.name)
}

/// What a run writes and shows beside its results.
#[derive(Clone, Debug, Default)]
pub struct RunFlags {
    /// Echo the guest console to stdout while it runs.
    pub console: bool,
    /// Write [`TOKEN_LOG`] (runs with a policy only).
    pub token_log: bool,
    /// Write the run's Chrome trace here ([`crate::trace`]).
    pub trace: Option<PathBuf>,
    /// Save a snapshot at the end of the guest's boot, or start from one
    /// (emu; see [`apflab_vmm::snapshot`]).
    pub snapshot: Option<SnapshotPlan>,
}

/// The file of a run's token event log: `t_ns,vcpu,token,event`, one row
/// per event in the order they happened.
pub const TOKEN_LOG: &str = "tokens.csv";

/// The files a run of `config` (from the file `path`) reads: the config,
/// the kernel, the pager's store image and samples file, the policy module.
pub fn inputs(path: &Path, config: &Config) -> Vec<PathBuf> {
    use apflab_pager::{LatencyConfig, StoreConfig};
    let mut files = vec![path.to_path_buf(), config.kernel_path.clone()];
    files.extend(config.initrd_path.clone());
    if let Some(pager) = &config.pager {
        if let StoreConfig::File { path } = &pager.store {
            files.push(config.base_dir.join(path));
        }
        if let LatencyConfig::Empirical { samples } = &pager.latency {
            files.push(config.base_dir.join(samples));
        }
    }
    if let Some(PolicyChoice::Module { path, .. }) = &config.policy {
        files.push(path.clone());
    }
    files
}

/// The results file of a run, in its folder.
pub const RESULT_FILE: &str = "result.json";

/// The guest's console output of a run, in its folder.
pub const CONSOLE_LOG: &str = "console.log";

/// Checks, before the run starts, every file a run of `loaded` writes into
/// `out_dir` (and the trace `flags` ask for): see [`apflab_files::output`].
pub fn check_outputs(
    loaded: &LoadedConfig,
    config: &Config,
    out_dir: &Path,
    flags: &RunFlags,
) -> Result<(), RunError> {
    let mut outputs = apflab_files::Outputs::new();
    for input in inputs(&loaded.path, config) {
        outputs.input(&input);
    }
    let mut files = vec![RESULT_FILE, CONSOLE_LOG, POLICY_LOG];
    if flags.token_log {
        files.push(TOKEN_LOG);
        files.push(crate::policy_calls::POLICY_CALLS_LOG);
    }
    outputs
        .dir(out_dir, &files)
        .map_err(|error| RunError::Output { flag: "", error })?;
    if let Some(trace) = &flags.trace {
        outputs.file(trace).map_err(|error| RunError::Output {
            flag: "--trace ",
            error,
        })?;
    }
    if let Some(SnapshotPlan::Save(path)) = &flags.snapshot {
        outputs.file(path).map_err(|error| RunError::Output {
            flag: "--save-snapshot ",
            error,
        })?;
    }
    Ok(())
}

/// Runs a loaded config and writes `DIR/result.json` and `DIR/console.log`
/// (and [`TOKEN_LOG`] if `flags` ask for it). Every output is checked
/// before the run starts ([`check_outputs`]) and written whole or not at
/// all ([`apflab_files::write_atomic`]).
/// A run whose guest failed still writes its results (and
/// [`RunResult::outcome`] says why); only a run that produced no results
/// is an error.
pub fn run_config(
    loaded: &LoadedConfig,
    backend: Option<Backend>,
    out_dir: &Path,
    flags: &RunFlags,
) -> Result<RunResult, RunError> {
    let mut config = loaded.config.clone();
    if let Some(b) = backend {
        config.backend.kind = b;
    }
    check_outputs(loaded, &config, out_dir, flags)?;
    // The guest's tracks need its timeline log; its times are the emu
    // counter's, which is the emu clock (on kvm the trace has the VMM's
    // tracks only).
    config.timeline = flags.trace.is_some() && config.backend.kind == Backend::Emu;
    // No larger than guest RAM, which it is loaded into (and checked again
    // there): a regular file, refused before it is read otherwise.
    let ram = config.guest.memory_mib.saturating_mul(1 << 20);
    let kernel_sha256 =
        file_sha256(&config.kernel_path, ram, "guest RAM").map_err(|error| RunError::Kernel {
            path: config.kernel_path.display().to_string(),
            error,
        })?;
    let initrd_sha256 = config
        .initrd_path
        .as_ref()
        .map(|path| {
            file_sha256(path, ram, "guest RAM").map_err(|error| RunError::Initrd {
                path: path.display().to_string(),
                error,
            })
        })
        .transpose()?;

    let started_at = SystemTime::now();
    let mut pager = pager(&config, &loaded.path)?;
    if flags.token_log
        && let Some(Pager::InVmm { engine, .. }) = pager.as_mut()
    {
        engine.record_policy_calls();
    }
    let snapshot = flags.snapshot.clone().map(|plan| SnapshotRequest {
        plan,
        boot_identity: config.boot_identity(),
    });
    let outcome = execute(config.vm_config(flags.console), pager.as_mut(), snapshot)?;
    let mut result = RunResult::new(
        &RunInputs {
            name: &loaded.name,
            config_sha256: &loaded.sha256,
            kernel_sha256: &kernel_sha256,
            initrd_sha256: initrd_sha256.as_deref(),
            config: &config,
            config_path: &loaded.path,
            started_at,
        },
        &outcome,
    );
    match &pager {
        Some(Pager::InVmm { engine, policy }) => {
            result.set_stalls(&engine.metrics().stalled_ns);
            let host = engine.host_time();
            result.wall.fault_path_ms = host.as_secs_f64() * 1e3;
            if engine.metrics().faults > 0 {
                result.wall.fault_path_ns_per_fault =
                    host.as_nanos() as f64 / engine.metrics().faults as f64;
            }
            if let Some(record) = policy {
                result.set_apf(engine.metrics(), engine.events_dropped());
                let usage = engine.policy_usage();
                result.policy = Some(PolicyRecord {
                    fuel_used: usage.fuel_used,
                    failed_calls: usage.failed_calls,
                    failures: usage
                        .failures
                        .by_name()
                        .into_iter()
                        .filter(|&(_, n)| n > 0)
                        .map(|(k, n)| (k.to_owned(), n))
                        .collect(),
                    disabled: usage.disabled,
                    prefetch_ignored: usage.prefetch_ignored,
                    ..record.clone()
                });
                result.wall.policy_time_ms = engine.policy_time().as_secs_f64() * 1e3;
            }
        }
        // The VMM never sees these stalls; the page servers timed them.
        Some(Pager::InKernel(k)) => {
            if let Some(m) = k.metrics() {
                result.set_stalls(&m.stalled_ns);
            }
        }
        None => {}
    }
    if let Some(m) = pager.as_ref().and_then(Pager::metrics) {
        result.set_pager(&m);
    }
    let mut kept = write_results(out_dir, &result, &outcome.console)?;
    write_policy_log(out_dir, &result, &config, pager.as_ref(), &mut kept)?;
    // Without an engine in the VMM nothing was logged: the trace has just
    // its tracks.
    let (events, stalls) = match &pager {
        Some(Pager::InVmm { engine, .. }) => (engine.events(), engine.stalls()),
        _ => (&[][..], &[][..]),
    };
    if flags.token_log {
        let path = out_dir.join(TOKEN_LOG);
        write_kept(&path, token_log(events).as_bytes(), &mut kept)?;
        if let Some(Pager::InVmm { engine, .. }) = &pager {
            let (calls, dropped) = engine.policy_calls();
            let csv = crate::policy_calls::render(calls);
            if dropped > 0 {
                tracing::warn!("{dropped} policy calls beyond the log's bound were not written");
            }
            let path = out_dir.join(crate::policy_calls::POLICY_CALLS_LOG);
            write_kept(&path, csv.as_bytes(), &mut kept)?;
        }
    }
    if let Some(path) = &flags.trace {
        let trace = crate::trace::chrome_trace(&crate::trace::TraceInputs {
            vcpus: config.guest.vcpus,
            events,
            stalls,
            halts: &outcome.metrics.halts,
            timeline: &outcome.timeline,
        });
        write_kept(path, trace.to_string().as_bytes(), &mut kept)?;
    }
    Ok(result)
}

/// Writes `bytes` to `path` whole or not at all, adding it to `kept`, the
/// files this run wrote; a failure names them.
fn write_kept(path: &Path, bytes: &[u8], kept: &mut Vec<String>) -> Result<(), RunError> {
    apflab_files::write_atomic(path, bytes).map_err(|error| RunError::Write {
        path: path.display().to_string(),
        error,
        kept: kept.clone(),
    })?;
    kept.push(path.display().to_string());
    Ok(())
}

/// `events` as [`TOKEN_LOG`]'s CSV.
fn token_log(events: &[apflab_apf::Event]) -> String {
    use std::fmt::Write as _;
    let mut csv = String::from("t_ns,vcpu,token,event\n");
    for e in events {
        let _ = writeln!(
            csv,
            "{},{},{:#x},{}",
            e.t,
            e.token.vcpu(),
            e.token.0,
            e.kind.name()
        );
    }
    csv
}

/// The file of a run's policy log.
pub const POLICY_LOG: &str = "policy.log";

/// Writes `dir`/[`POLICY_LOG`]: a header naming the policy (module, its
/// sha256 and ABI version, params), then what the module logged and what
/// the host said about it (failed calls with their export and cause,
/// disabling), one line each with the run's time and a level. Every run
/// has one; one without a Wasm module says so.
fn write_policy_log(
    dir: &Path,
    result: &RunResult,
    config: &Config,
    pager: Option<&Pager>,
    kept: &mut Vec<String>,
) -> Result<(), RunError> {
    let mut text = match (&result.policy, pager) {
        (Some(p), Some(Pager::InVmm { engine, .. })) if !p.sha256.is_empty() => {
            let mut head = format!(
                "# policy {} (sha256 {}, ABI v{})",
                p.module,
                p.sha256,
                p.abi_version.unwrap_or(0)
            );
            if let Some(crate::policy_config::PolicyChoice::Module { params, .. }) = &config.policy
                && !params.is_empty()
            {
                head += &format!(
                    ", params {}",
                    params.record_text().trim_end().replace('\n', " ")
                );
            }
            if p.disabled {
                head += &format!(
                    "\n# DISABLED after repeated failures: {} failed calls ({})",
                    p.failed_calls,
                    p.failures
                        .iter()
                        .map(|(k, n)| format!("{k} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            format!(
                "{head}\n# t_ns level source: message\n{}",
                engine.policy_log()
            )
        }
        (Some(p), _) if p.decision.is_some() => {
            "# policy: a fixed decision for every fault (no module, no log)\n".to_owned()
        }
        _ => "# no [policy]: every fault is the synchronous baseline (no module, no log)\n"
            .to_owned(),
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    write_kept(&dir.join(POLICY_LOG), text.as_bytes(), kept)
}

/// Writes `result.json` and then `console.log` into `dir` (created if
/// needed), each whole or not at all; returns the files written.
pub fn write_results(
    dir: &Path,
    result: &RunResult,
    console: &str,
) -> Result<Vec<String>, RunError> {
    let mut json = serde_json::to_string_pretty(result).expect("results serialize");
    json.push('\n');
    let mut kept = Vec::new();
    write_kept(&dir.join(RESULT_FILE), json.as_bytes(), &mut kept)?;
    write_kept(&dir.join(CONSOLE_LOG), console.as_bytes(), &mut kept)?;
    Ok(kept)
}
