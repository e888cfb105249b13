//! `apflab`: run async page fault experiments on the apflab VMM.
//!
//! Exit status: 0 success, 1 a run failed (guest panic, crash, timeout, bad
//! results, VMM error), 2 bad input (config, experiment or image), 3 the
//! guest asked for a reset (`apflab boot`).

use apflab::runner::RunFlags;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use apflab::config::Backend;
use apflab::matrix::{Experiment, MatrixSummary};
use apflab::{catalog, report, runner};
use apflab_vmm::{GuestExit, SnapshotPlan, VmConfig};
use clap::{Parser, Subcommand};

/// Exit status for bad input.
const EXIT_BAD_INPUT: u8 = 2;
/// Exit status for a failed run.
const EXIT_FAILED: u8 = 1;
/// Exit status when the guest asked for SYSTEM_RESET (`apflab boot`).
const EXIT_RESET: u8 = 3;

/// `out!` that never panics: everything apflab prints on standard output
/// goes through it (see [`write_stdout`]).
macro_rules! out {
    ($($arg:tt)*) => { write_stdout(format_args!($($arg)*)) };
}

/// `outln!` that never panics (see [`write_stdout`]).
macro_rules! outln {
    () => { write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Writes to standard output. A reader that went away (`apflab list |
/// head -1`: a broken pipe) is no error of the command, whose status stays
/// what its work decided (`out!` would panic, exit 101); another write
/// error is reported once on stderr.
fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    static REPORTED: AtomicBool = AtomicBool::new(false);
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
        && !REPORTED.swap(true, Ordering::Relaxed)
    {
        eprintln!("apflab: cannot write to standard output: {e}");
    }
}

#[derive(Parser)]
#[command(
    name = "apflab",
    version,
    about = "A laboratory for arm64 asynchronous page faults: run a guest and a workload \
             under the apflab VMM and record what happened.",
    after_help = "Exit status: 0 success; 1 a run failed (guest panic, crash, timeout, \
                  wrong results, VMM error); 2 bad input (config, experiment, image); \
                  3 the guest asked for a reset (boot).\n\
                  Logs: set RUST_LOG (e.g. RUST_LOG=apflab=debug,apflab_vmm=trace); \
                  they go to stderr."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one experiment config and write DIR/result.json (and
    /// DIR/console.log), then print a short summary.
    Run {
        /// The experiment config (TOML; see configs/ for examples).
        config: PathBuf,
        /// Engine, overriding the config's `backend.kind`.
        #[arg(long, value_enum)]
        backend: Option<Backend>,
        /// Directory for the results [default: results/<config-stem>].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Also echo the guest console to stdout while it runs.
        #[arg(long)]
        console: bool,
        /// The run's name in result.json [default: the config's stem]
        /// (a matrix names its points <experiment>/<run>).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Take the config's relative paths (guest.kernel, pager files)
        /// from DIR instead of the config's directory (a matrix point's
        /// config is relative to its experiment's base config).
        #[arg(long, value_name = "DIR")]
        base_dir: Option<PathBuf>,
        /// The policy that decides every fault, overriding the config's
        /// `[policy]`: a built-in example's name or a .wasm / .wat file.
        #[arg(long, value_name = "MODULE")]
        policy: Option<String>,
        /// Also write DIR/tokens.csv: each async token's life (fault, not
        /// present, request, fetch done, pushed, consumed, dropped) with
        /// the time of each event; and DIR/policy-calls.csv: every call
        /// into the policy with its inputs and decision, which `apflab
        /// policy test` replays. (DIR/policy.log is written by every run.)
        #[arg(long)]
        token_log: bool,
        /// Also write the run as a Chrome trace-event JSON file (open it in
        /// ui.perfetto.dev): a track per vCPU with the task it runs, the
        /// guest's exception handlers, its stalls on far memory and halts,
        /// a track per guest task (emu), and each async PF token's life as
        /// a slice with a flow to the task's wake-up.
        #[arg(long, value_name = "FILE")]
        trace: Option<PathBuf>,
        /// Stop the run after this much wall-clock time, whatever the guest
        /// does, overriding the config's `backend.wall_timeout_ms`; the
        /// results record it as `wall_timeout` (exit status 1).
        #[arg(long, value_name = "MS")]
        wall_timeout: Option<u64>,
        /// Save the whole machine to FILE at the end of the guest's boot,
        /// before its workload starts, then run on (emu). Runs whose
        /// config differs only in the workload, the policy and the pager's
        /// latencies can start from it with --resume.
        #[arg(long, value_name = "FILE", conflicts_with = "resume")]
        save_snapshot: Option<PathBuf>,
        /// Start from the snapshot in FILE (see --save-snapshot) instead
        /// of booting: the results are those of this config run from
        /// power-on. A snapshot of another boot (another apflab build,
        /// kernel, or a config key that shapes the boot) is refused (exit
        /// 2), naming what differs.
        #[arg(long, value_name = "FILE")]
        resume: Option<PathBuf>,
    },
    /// Boot any arm64 kernel built for QEMU's virt board (ELF, an arm64
    /// Linux Image, plain or gzip'd, with --initrd for its initramfs, or a
    /// raw image loaded at the start of RAM like QEMU's -kernel), with the
    /// guest console on stdout. Exit status 0 on PSCI SYSTEM_OFF, 3 on
    /// SYSTEM_RESET, 1 on a guest panic, crash or timeout.
    Boot(BootArgs),
    /// List the configs in a directory, the guest's workloads, the
    /// policies built with apflab and the cost-model presets (every value
    /// with its source).
    List {
        /// Where to look for configs [default: configs, if there is one];
        /// a folder named here must exist (else exit 2).
        #[arg(long, value_name = "DIR")]
        configs: Option<PathBuf>,
    },
    /// Run every point of an experiment grid (base config x axes x
    /// repetitions), JOBS at a time, each in a process of its own, with a
    /// progress bar; writes DIR/points/<run>.toml, DIR/<run>/result.json
    /// and DIR/table.csv. Points whose results are already in DIR (same
    /// config hash, backend and schema version) are not run again.
    Matrix(MatrixArgs),
    /// Work with policy modules.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Turn result files into markdown tables (one per workload).
    Report {
        /// Directories searched (recursively) for result.json files.
        #[arg(value_name = "DIR", default_value = "results")]
        results: Vec<PathBuf>,
        /// The markdown file written.
        #[arg(long, value_name = "FILE", default_value = "paper/results.md")]
        out: PathBuf,
    },
    /// Fill a markdown template's `{{...}}` placeholders with figures
    /// computed from experiment results (see `paper/paper.in.md`).
    Paper {
        /// The template.
        #[arg(value_name = "TEMPLATE", default_value = "paper/paper.in.md")]
        template: PathBuf,
        /// The folder holding one results folder per experiment.
        #[arg(long, value_name = "DIR", default_value = "results/paper")]
        results: PathBuf,
        /// The markdown file written.
        #[arg(long, value_name = "FILE", default_value = "paper/paper.md")]
        out: PathBuf,
    },
}

/// `apflab boot`'s arguments.
#[derive(clap::Args)]
struct BootArgs {
    /// The image.
    image: PathBuf,
    /// An initial RAM disk (e.g. a gzip'd cpio initramfs) for a Linux
    /// image, loaded after the kernel and named in /chosen.
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// Kernel command line (`/chosen/bootargs`), e.g.
    /// "apflab.workload=cpu apflab.ops=1000".
    #[arg(long, value_name = "ARGS", default_value = "")]
    append: String,
    /// vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    vcpus: u32,
    /// Guest RAM in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 128)]
    memory: u64,
    /// Engine.
    #[arg(long, value_enum, default_value_t = Backend::Emu)]
    backend: Backend,
    /// Give up (exit 1) after this much virtual time.
    #[arg(long, value_name = "MS", default_value_t = apflab::config::defaults::MAX_VIRTUAL_MS)]
    max_virtual_ms: u64,
    /// Give up (exit 1, with what each vCPU was doing) once the guest
    /// has shown no sign of life (an exit to the VMM, console output,
    /// an interrupt taken) for this long: virtual time on emu, host
    /// time on kvm. An image that spins or waits in WFI with interrupts
    /// masked ends here.
    #[arg(long, value_name = "MS", default_value_t = apflab::config::defaults::WATCHDOG_MS)]
    timeout: u64,
    /// Give up (exit 1) after this much wall-clock time, whatever the
    /// guest does [default: never].
    #[arg(long, value_name = "MS")]
    wall_timeout: Option<u64>,
    /// The emu backend's cost model (`apflab list` gives every preset's
    /// values and their sources).
    #[arg(long, value_name = "PRESET", default_value = "uncalibrated", value_parser = cost_preset)]
    cost_preset: apflab_vmm::CostPreset,
}

/// A `--cost-preset` value that names no preset (clap names the value).
#[derive(Debug, thiserror::Error)]
#[error(
    "not a cost preset; expected one of {}",
    apflab_vmm::CostPreset::names()
)]
struct UnknownCostPreset;

/// `--cost-preset`'s value.
fn cost_preset(name: &str) -> Result<apflab_vmm::CostPreset, UnknownCostPreset> {
    apflab_vmm::CostPreset::from_name(name).ok_or(UnknownCostPreset)
}

/// `apflab matrix`'s arguments.
#[derive(clap::Args)]
struct MatrixArgs {
    /// The experiment file (TOML; see experiments/).
    experiment: PathBuf,
    /// Engine for every run, overriding the configs.
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// Directory for the results [default: results/<experiment-stem>].
    #[arg(long, value_name = "DIR", conflicts_with_all = ["slurm", "collect"])]
    out: Option<PathBuf>,
    /// Runs at a time [default: the number of CPUs].
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    jobs: Option<u32>,
    /// Run the points again even if their results are there.
    #[arg(long)]
    force: bool,
    /// Boot every point, even those whose boots are the same (by default
    /// each group of those boots once and its other points resume from a
    /// snapshot of that boot; see the README's "Boot once, run many").
    #[arg(long)]
    no_boot_sharing: bool,
    /// Only the points whose axis AXIS has VALUE (`rep=N`: repetition N).
    /// Repeatable: filters on one axis admit any of their values, filters
    /// on different axes must all hold.
    #[arg(long, value_name = "AXIS=VALUE")]
    filter: Vec<String>,
    /// Instead of running the points, write a Slurm job array running them
    /// (DIR/job.sbatch, one array task per point) and the point configs
    /// into DIR, the results folder, which must be on a filesystem the
    /// compute nodes share.
    #[arg(long, value_name = "DIR", conflicts_with = "collect")]
    slurm: Option<PathBuf>,
    /// With --slurm: points per array task.
    #[arg(long, value_name = "K", requires = "slurm", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    chunk: u32,
    /// With --slurm: submit the job with sbatch (which must be on the PATH).
    #[arg(long, requires = "slurm")]
    submit: bool,
    /// With --slurm: the partition (#SBATCH --partition).
    #[arg(long, value_name = "NAME", requires = "slurm")]
    partition: Option<String>,
    /// With --slurm: the time limit of each array task (#SBATCH --time,
    /// e.g. 30 or 1:00:00).
    #[arg(long, value_name = "TIME", requires = "slurm")]
    time: Option<String>,
    /// Stop each point's run after this much wall-clock time (`apflab run
    /// --wall-timeout`); with --slurm, each array task's #SBATCH --time is
    /// its points' share of it unless --time is given.
    #[arg(long, value_name = "MS")]
    wall_timeout: Option<u64>,
    /// With --slurm: the account charged (#SBATCH --account).
    #[arg(long, value_name = "NAME", requires = "slurm")]
    account: Option<String>,
    /// Run nothing: write DIR/table.csv from the results in DIR (e.g. of a
    /// --slurm job), and list the points without results (exit status 1
    /// if any, or if a point failed).
    #[arg(long, value_name = "DIR")]
    collect: Option<PathBuf>,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy module (core Wasm, binary or text) the way a run
    /// would load it, print its ABI version, exports and imports, then call
    /// each export once with sample inputs under a run's fuel and memory
    /// limits (configure, three faults, a sync and an async completion, the
    /// run's end) and print what each returned. Exit status 2 if it is not
    /// a usable policy or a call failed (trap, fuel, memory, a malformed
    /// decision).
    Check {
        /// The module: a .wasm/.wat file, or the name of an example policy
        /// built with apflab (see `apflab list`).
        module: PathBuf,
        /// Print the module's description and calls as JSON.
        #[arg(long)]
        json: bool,
        /// A parameter handed to its `apf_configure`, as in `[policy]
        /// params`: NAME=VALUE, VALUE in TOML (50000, 0.5, true, "text").
        /// Repeatable.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
    },
    /// Replay a sequence of faults and completions through a module: a
    /// run's DIR/policy-calls.csv (`apflab run --token-log`), or a CSV
    /// written by hand with any of its columns. Prints each decision, how
    /// the engine would serve it, and whether it is the one the run took;
    /// then the module's log. Exit status 1 if a call failed or a decision
    /// differs from the recorded one.
    Test {
        /// The module: a .wasm/.wat file, or the name of an example policy.
        module: PathBuf,
        /// The calls: `t_ns,call,vcpu,token,ipa,access,el,can_reschedule,
        /// runnable,outstanding,est_fetch_ns,fetches_completed,decision,
        /// asynchronous,fetch_ns,wait_ns` (any subset with `call`).
        calls: PathBuf,
        /// A parameter for its `apf_configure` (NAME=VALUE, TOML value).
        /// Repeatable.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Print only differences, failures and the summary.
        #[arg(long)]
        quiet: bool,
    },
    /// Write a new policy outside the repository, ready to build and run:
    /// DIR/NAME/ with a Rust crate against this checkout's SDK (`cargo
    /// build --release` builds the .wasm) or one .wat file, a config that
    /// runs it and a README.
    New {
        /// The policy's name (lower-case letters, digits, `-`, `_`).
        name: String,
        /// The language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: NewLang,
        /// The folder the policy's folder is made in.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
}

/// The language of `apflab policy new`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum NewLang {
    /// A Rust crate against the policy SDK.
    Rust,
    /// WebAssembly text.
    Wat,
}

/// Why the command failed, and so which exit status it gets.
enum Failure {
    /// Bad input: exit 2.
    BadInput(anyhow::Error),
    /// A run failed: exit 1.
    Failed(anyhow::Error),
    /// A status decided by the guest (`boot`): message already shown.
    Status(u8),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Failed(e)
    }
}

fn bad(e: impl Into<anyhow::Error>) -> Failure {
    Failure::BadInput(e.into())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only where a terminal shows them, not in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run {
            config,
            backend,
            out,
            console,
            name,
            base_dir,
            policy,
            token_log,
            trace,
            wall_timeout,
            save_snapshot,
            resume,
        } => run(
            &config,
            backend,
            out,
            RunFlags {
                console,
                token_log,
                trace,
                snapshot: save_snapshot
                    .map(SnapshotPlan::Save)
                    .or(resume.map(SnapshotPlan::Resume)),
            },
            name,
            base_dir,
            Overrides {
                policy,
                wall_timeout,
            },
        ),
        Command::Boot(args) => boot(&args),
        Command::List { configs } => list(configs.as_deref()),
        Command::Matrix(args) => matrix(&args),
        Command::Policy {
            command:
                PolicyCommand::Check {
                    module,
                    json,
                    params,
                },
        } => policy_check(&module, json, &params),
        Command::Policy {
            command:
                PolicyCommand::Test {
                    module,
                    calls,
                    params,
                    quiet,
                },
        } => policy_test(&module, &calls, &params, quiet),
        Command::Policy {
            command: PolicyCommand::New { name, lang, dir },
        } => policy_new(&name, lang, &dir),
        Command::Report { results, out } => write_report(&results, &out),
        Command::Paper {
            template,
            results,
            out,
        } => write_paper(&template, &results, &out),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BadInput(e)) => {
            eprintln!("apflab: error: {}", error_text(&e));
            ExitCode::from(EXIT_BAD_INPUT)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("apflab: failed: {}", error_text(&e));
            ExitCode::from(EXIT_FAILED)
        }
        Err(Failure::Status(s)) => ExitCode::from(s),
    }
}

/// What `apflab run`'s options change in the config.
struct Overrides {
    /// `--policy`.
    policy: Option<String>,
    /// `--wall-timeout`, ms.
    wall_timeout: Option<u64>,
}

/// An error and its causes, each said once: many errors already include
/// their cause's text in their own (`cannot read: is a directory`), and
/// `{:#}` would repeat it.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn run(
    config_path: &Path,
    backend: Option<Backend>,
    out: Option<PathBuf>,
    flags: RunFlags,
    name: Option<String>,
    base_dir: Option<PathBuf>,
    overrides: Overrides,
) -> Result<(), Failure> {
    let Overrides {
        policy,
        wall_timeout,
    } = overrides;
    let mut loaded =
        apflab::matrix::load_config_as(config_path, name.as_deref(), base_dir.as_deref())
            .map_err(bad)?;
    if let Some(module) = policy {
        // Relative to where the command runs, as any path on the command line.
        let choice = apflab::policy_config::module(&module, Path::new("."))
            .map_err(|p| bad(anyhow::anyhow!("--policy {module}: {}", p.message)))?;
        loaded.config.policy = Some(choice);
        loaded.rehash();
    }
    if let Some(ms) = wall_timeout {
        loaded.config.backend.wall_timeout_ms = Some(check_wall_timeout(ms)?);
    }
    let out = out.unwrap_or_else(|| runner::default_out_dir(&loaded));
    let result = runner::run_config(&loaded, backend, &out, &flags).map_err(|e| {
        if e.is_bad_input() {
            bad(e)
        } else {
            Failure::Failed(e.into())
        }
    })?;
    outln!("{}", result.summary());
    outln!("  results: {}", out.join("result.json").display());
    if flags.token_log {
        outln!("  tokens: {}", out.join(runner::TOKEN_LOG).display());
        outln!(
            "  policy calls: {}",
            out.join(apflab::policy_calls::POLICY_CALLS_LOG).display()
        );
    }
    if let Some(trace) = &flags.trace {
        outln!("  trace: {} (open it in ui.perfetto.dev)", trace.display());
    }
    if result.outcome.success {
        Ok(())
    } else {
        let why = result
            .outcome
            .message
            .or(result.outcome.failure)
            .unwrap_or_else(|| result.outcome.exit.clone());
        Err(Failure::Failed(anyhow::anyhow!(
            "{}: {}: {why}",
            loaded.path.display(),
            result.outcome.exit
        )))
    }
}

fn boot(args: &BootArgs) -> Result<(), Failure> {
    let BootArgs {
        ref image,
        ref initrd,
        ref append,
        vcpus,
        memory: memory_mib,
        backend,
        max_virtual_ms,
        timeout: timeout_ms,
        wall_timeout,
        cost_preset,
    } = *args;
    let wall_timeout = wall_timeout.map(check_wall_timeout).transpose()?;
    let max = apflab_abi::memory_map::MAX_VCPUS;
    if !(1..=max).contains(&vcpus) {
        return Err(bad(anyhow::anyhow!("--vcpus {vcpus}: expected 1..={max}")));
    }
    if memory_mib == 0 {
        return Err(bad(anyhow::anyhow!("--memory 0: expected at least 1 MiB")));
    }
    let max_ms = apflab_vmm::config::MAX_VIRTUAL_MS;
    if !(1..=max_ms).contains(&max_virtual_ms) {
        return Err(bad(anyhow::anyhow!(
            "--max-virtual-ms {max_virtual_ms}: expected 1..={max_ms} (about 11.6 days)"
        )));
    }
    if !(1..=max_ms).contains(&timeout_ms) {
        return Err(bad(anyhow::anyhow!(
            "--timeout {timeout_ms}: expected 1..={max_ms} ms (about 11.6 days)"
        )));
    }
    // The image is loaded into guest RAM: one that cannot fit is refused
    // before it is read, and so is anything but a regular file.
    let ram = memory_mib.saturating_mul(1 << 20);
    match apflab_files::check_regular(image, ram, &format!("--memory {memory_mib} MiB")) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad(anyhow::anyhow!(
                "{}: guest image not found",
                image.display()
            )));
        }
        Err(e) => {
            return Err(bad(anyhow::anyhow!(
                "{}: guest image {e}; expected an arm64 ELF or raw image that fits in guest RAM",
                image.display()
            )));
        }
    }
    let config = VmConfig {
        backend: backend.kind(),
        vcpus,
        memory_mib,
        kernel: image.to_path_buf(),
        initrd: initrd.clone(),
        bootargs: append.clone(),
        cost: cost_preset.model(),
        faults_in_kernel: false,
        slice_instructions: apflab::config::defaults::SLICE_INSTRUCTIONS,
        max_virtual_ns: max_virtual_ms.saturating_mul(1_000_000),
        watchdog_ns: timeout_ms.saturating_mul(1_000_000),
        wall_timeout: wall_timeout.map(std::time::Duration::from_millis),
        echo_console: true,
    };
    let outcome = runner::execute(config, None, None).map_err(|e| {
        if e.is_bad_input() {
            bad(e)
        } else {
            Failure::Failed(e.into())
        }
    })?;
    match outcome.exit {
        GuestExit::PowerOff => Ok(()),
        GuestExit::Reset => {
            eprintln!("apflab: the guest asked for a system reset");
            Err(Failure::Status(EXIT_RESET))
        }
        GuestExit::Panic(m) => Err(Failure::Failed(anyhow::anyhow!("guest panic: {m}"))),
        // The crash stays the cause, so the message says each of its
        // causes (the engine's or kernel's error, the pager's) once.
        GuestExit::Crash(crash) => Err(Failure::Failed(
            anyhow::Error::new(crash).context("guest crash"),
        )),
        GuestExit::Timeout => Err(Failure::Failed(anyhow::anyhow!(
            "no power-off within {max_virtual_ms} ms of virtual time"
        ))),
        GuestExit::WallTimeout => Err(Failure::Failed(anyhow::anyhow!(
            "no power-off within --wall-timeout {} ms of wall-clock time",
            wall_timeout.unwrap_or_default()
        ))),
        GuestExit::Hang(d) => Err(Failure::Failed(anyhow::anyhow!("guest hung: {d}"))),
    }
}

/// `--wall-timeout MS`, checked against [`apflab::config::WALL_TIMEOUT_BOUND`].
fn check_wall_timeout(ms: u64) -> Result<u64, Failure> {
    let bound = apflab::config::WALL_TIMEOUT_BOUND;
    if bound.contains(ms) {
        Ok(ms)
    } else {
        Err(bad(anyhow::anyhow!(
            "--wall-timeout {ms}: expected {}..={} ms ({})",
            bound.min,
            bound.max,
            bound.why
        )))
    }
}

fn list(configs: Option<&Path>) -> Result<(), Failure> {
    let named = configs.is_some();
    let configs = configs.unwrap_or(Path::new("configs"));
    match std::fs::metadata(configs) {
        Ok(m) if m.is_dir() => {
            outln!("configs ({}):", configs.display());
            out!("{}", catalog::describe_configs(configs));
        }
        Ok(_) if named => {
            return Err(bad(anyhow::anyhow!(
                "--configs {}: not a folder; expected the folder holding the configs",
                configs.display()
            )));
        }
        Err(e) if named => {
            return Err(bad(anyhow::anyhow!(
                "--configs {}: {}; expected the folder holding the configs",
                configs.display(),
                if e.kind() == std::io::ErrorKind::NotFound {
                    "no such folder".to_owned()
                } else {
                    e.to_string()
                }
            )));
        }
        _ => outln!(
            "configs: no folder {} here (--configs DIR names one)",
            configs.display()
        ),
    }
    outln!("workloads (and their [workload] parameters):");
    out!("{}", catalog::describe_workloads());
    outln!("policies:");
    out!("{}", catalog::describe_policies());
    outln!("cost-model presets ([backend.cost] preset; any value can be overridden):");
    out!("{}", catalog::describe_cost_presets());
    Ok(())
}

fn matrix(args: &MatrixArgs) -> Result<(), Failure> {
    use apflab::matrix::{Event, Layout, Runner, Status};
    use std::collections::BTreeMap;

    // Everything is checked before the first run starts: every point's
    // config, the selection, the engines, the results folder.
    let experiment = Experiment::load(&args.experiment).map_err(bad)?;
    let selected = experiment.select(&args.filter).map_err(bad)?;
    // The submitting host need not have the compute nodes' /dev/kvm.
    experiment
        .preflight(&selected, args.backend, args.slurm.is_none())
        .map_err(bad)?;
    let root = args
        .collect
        .clone()
        .or(args.slurm.clone())
        .or(args.out.clone())
        .unwrap_or_else(|| Path::new("results").join(&experiment.name));
    if args.collect.is_some() && !root.is_dir() {
        return Err(bad(anyhow::anyhow!(
            "{}: no such results folder",
            root.display()
        )));
    }
    let sbatch = if args.submit {
        Some(apflab::slurm::find_sbatch().ok_or_else(|| {
            bad(anyhow::anyhow!(
                "--submit: sbatch is not on the PATH; submit {} from a Slurm login node, \
                 or drop --submit and run sbatch yourself",
                root.join("job.sbatch").display()
            ))
        })?)
    } else {
        None
    };
    let slurm_options = apflab::slurm::SlurmOptions {
        chunk: args.chunk as usize,
        partition: args.partition.clone(),
        time: args.time.clone(),
        account: args.account.clone(),
        wall_timeout_ms: args.wall_timeout.map(check_wall_timeout).transpose()?,
    };
    let root = if args.slurm.is_some() {
        slurm_options.check().map_err(bad)?;
        let root = std::path::absolute(&root).with_context(|| format!("{}", root.display()))?;
        apflab::slurm::check_folder(&root).map_err(bad)?;
        root
    } else {
        root
    };
    let layout = Layout { root };
    // Nothing it writes may replace what it reads, and all of it must be
    // writable, before the folder is touched.
    layout
        .check_outputs(&experiment, args.slurm.is_some())
        .map_err(bad)?;
    if args.collect.is_some() {
        layout.check_schema().map_err(bad)?;
    } else {
        layout.prepare(args.force).map_err(bad)?;
    }
    let exe = std::env::current_exe().context("cannot find the apflab executable")?;
    let runner = Runner {
        experiment: &experiment,
        layout: layout.clone(),
        backend: args.backend,
        exe,
        wall_timeout_ms: slurm_options.wall_timeout_ms,
        share_boots: !args.no_boot_sharing,
    };

    // What is already there: every point of the grid (a filtered run still
    // tables the others' results).
    let mut done: BTreeMap<usize, Status> = BTreeMap::new();
    let chosen: std::collections::BTreeSet<usize> = selected.iter().copied().collect();
    let mut corrupt = Vec::new();
    for i in 0..experiment.len() {
        let rerun = args.force && chosen.contains(&i);
        if rerun {
            continue;
        }
        match layout.existing(&experiment, i, experiment.backend(i, args.backend)) {
            apflab::matrix::Existing::Done(r) => {
                done.insert(i, Status::of(*r));
            }
            apflab::matrix::Existing::Corrupt(why) => {
                if args.collect.is_some() {
                    done.insert(i, Status::Error(format!("corrupt results: {why}")));
                }
                if args.collect.is_some() || chosen.contains(&i) {
                    corrupt.push(format!("{} ({why})", Experiment::id(i)));
                }
            }
            apflab::matrix::Existing::Missing | apflab::matrix::Existing::Stale => {}
        }
    }
    if !corrupt.is_empty() {
        eprintln!(
            "apflab: {} point{} with a corrupt result.json, {}: {}",
            corrupt.len(),
            if corrupt.len() == 1 { "" } else { "s" },
            if args.collect.is_some() {
                "counted as failed"
            } else {
                "run again"
            },
            corrupt.join("; ")
        );
    }
    let pending: Vec<usize> = selected
        .iter()
        .copied()
        .filter(|i| !done.contains_key(i))
        .collect();
    let skipped = selected.len() - pending.len();
    let table_path = layout.table();

    if args.collect.is_some() {
        runner
            .write_table(&done)
            .with_context(|| format!("{}: cannot write", table_path.display()))?;
        return matrix_outcome(&experiment, &selected, &done, 0, &table_path);
    }
    layout
        .write_points(&experiment, &selected)
        .map_err(|e| Failure::Failed(e.into()))?;

    if args.slurm.is_some() {
        if pending.is_empty() {
            outln!(
                "{}: all {} points have results in {}; nothing to submit (--force reruns them)",
                experiment.name,
                selected.len(),
                layout.root.display()
            );
            return Ok(());
        }
        let job = apflab::slurm::write_job(
            &experiment,
            &layout,
            &pending,
            args.backend,
            &runner.exe,
            &slurm_options,
        )
        .with_context(|| format!("{}: cannot write the job", layout.root.display()))?;
        if job.chunk > slurm_options.chunk {
            outln!(
                "{}: {} points per array task (not --chunk {}), to stay within Slurm's \
                 default MaxArraySize of {} tasks",
                experiment.name,
                job.chunk,
                slurm_options.chunk,
                apflab::slurm::MAX_ARRAY_TASKS
            );
        }
        outln!(
            "{}: {} ({} array tasks for {} points{})",
            experiment.name,
            job.script.display(),
            job.tasks,
            job.points,
            if skipped > 0 {
                format!("; {skipped} already done")
            } else {
                String::new()
            }
        );
        if let Some(sbatch) = sbatch {
            let id = apflab::slurm::submit(&sbatch, &job.script).map_err(anyhow::Error::from)?;
            outln!("submitted batch job {id}");
        } else {
            outln!("submit it with: sbatch {}", job.script.display());
        }
        outln!(
            "then: apflab matrix {} --collect {}",
            args.experiment.display(),
            layout.root.display()
        );
        return Ok(());
    }

    if skipped > 0 {
        outln!(
            "{}: {skipped} of {} points already have results in {} (--force reruns them)",
            experiment.name,
            selected.len(),
            layout.root.display()
        );
    }
    let jobs = args.jobs.map_or_else(
        || std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        |j| j as usize,
    );
    let bar = indicatif::ProgressBar::new(pending.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} (ETA {eta})",
        )
        .expect("the template is valid"),
    );
    let (mut finished, mut failed) = (0usize, 0usize);
    let mut running: Vec<String> = Vec::new();
    let message = |finished: usize, failed: usize, running: &[String]| {
        format!(
            "done {}, failed {failed}, remaining {}; running {}",
            finished - failed,
            pending.len() - finished,
            running.join(" ")
        )
    };
    bar.set_message(message(0, 0, &running));
    runner
        .run(&pending, jobs, &mut done, |event| match event {
            Event::BootsShared { groups, points } => {
                bar.suspend(|| {
                    outln!(
                        "{}: {points} points boot alike in {groups} groups: each group boots \
                         once and its other points resume from a snapshot of that boot",
                        experiment.name
                    )
                });
            }
            Event::Started(point) => {
                running.push(point.id.clone());
                bar.set_message(message(finished, failed, &running));
            }
            Event::Finished(point, status) => {
                running.retain(|id| *id != point.id);
                finished += 1;
                if let Some(why) = status.failure() {
                    failed += 1;
                    // (`println` of a hidden bar, as when stderr is no
                    // terminal, would print nothing.)
                    bar.suspend(|| eprintln!("{} ({}): FAILED: {why}", point.id, point.label()));
                }
                bar.set_message(message(finished, failed, &running));
                bar.inc(1);
            }
        })
        .with_context(|| format!("{}: cannot write", table_path.display()))?;
    bar.finish_and_clear();
    matrix_outcome(&experiment, &selected, &done, skipped, &table_path)
}

/// Prints the counts of a matrix over its points `selected`; exit status 1
/// if one failed or has no results.
fn matrix_outcome(
    experiment: &Experiment,
    selected: &[usize],
    done: &std::collections::BTreeMap<usize, apflab::matrix::Status>,
    skipped: usize,
    table_path: &Path,
) -> Result<(), Failure> {
    let summary = MatrixSummary::of(selected, done);
    outln!(
        "{}: {} runs, {} ok, {} failed{}{}; table: {}",
        experiment.name,
        selected.len(),
        summary.ok,
        summary.failed.len(),
        if summary.missing.is_empty() {
            String::new()
        } else {
            format!(", {} without results", summary.missing.len())
        },
        if skipped > 0 {
            format!(" ({skipped} already done)")
        } else {
            String::new()
        },
        table_path.display()
    );
    out!("{}", apflab::matrix::comparison(experiment, done));
    let mut problems = Vec::new();
    if !summary.failed.is_empty() {
        problems.push(format!(
            "{} of {} runs failed: {}",
            summary.failed.len(),
            selected.len(),
            summary
                .failed
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !summary.missing.is_empty() {
        problems.push(format!(
            "{} of {} runs have no results: {}",
            summary.missing.len(),
            selected.len(),
            summary.missing.join(", ")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::Failed(anyhow::anyhow!(problems.join("; "))))
    }
}

/// The module a `policy` subcommand names: a file, or an example's name.
fn policy_path(module: &Path) -> Result<PathBuf, Failure> {
    if module.exists() {
        return Ok(module.to_path_buf());
    }
    catalog::policy_by_name(&module.to_string_lossy()).ok_or_else(|| {
        bad(anyhow::anyhow!(
            "{}: no such file, and no example policy of that name (see `apflab list`)",
            module.display()
        ))
    })
}

/// `--param NAME=VALUE` options as `[policy] params`.
fn policy_params(params: &[String]) -> Result<apflab::policy_config::PolicyParams, Failure> {
    let mut table = toml::Table::new();
    for p in params {
        let Some((name, value)) = p.split_once('=') else {
            return Err(bad(anyhow::anyhow!(
                "--param {p}: expected NAME=VALUE (VALUE in TOML: 50000, 0.5, true, \"text\")"
            )));
        };
        let parsed: toml::Table = toml::from_str(&format!("v = {value}")).map_err(|_| {
            bad(anyhow::anyhow!(
                "--param {p}: the value `{value}` is not TOML (50000, 0.5, true, \"text\")"
            ))
        })?;
        table.insert(name.trim().to_owned(), parsed["v"].clone());
    }
    apflab::policy_config::PolicyParams::from_table(&table)
        .map_err(|e| bad(anyhow::Error::new(e).context("--param")))
}

fn policy_check(module: &Path, json: bool, params: &[String]) -> Result<(), Failure> {
    let path = policy_path(module)?;
    let params = policy_params(params)?;
    let loaded = apflab::policy_bench::load_module(&path).map_err(bad)?;
    let text = params.record_text();
    let report = apflab_policy_host::sample_calls(&loaded, &apflab_policy_host::Params::new(&text))
        .map_err(bad)?;
    if json {
        let text = serde_json::to_string_pretty(&report).context("serializing the module info")?;
        outln!("{text}");
    } else {
        out!("{report}");
    }
    if report.passed() {
        Ok(())
    } else {
        Err(bad(anyhow::anyhow!(
            "{}: a call failed with sample inputs; a run would decide those faults sync",
            path.display()
        )))
    }
}

fn policy_test(module: &Path, calls: &Path, params: &[String], quiet: bool) -> Result<(), Failure> {
    let path = policy_path(module)?;
    let params = policy_params(params)?;
    let text = apflab_files::read_regular_to_string(calls, 1 << 30, "a policy input log")
        .with_context(|| format!("{}: cannot read", calls.display()))
        .map_err(Failure::BadInput)?;
    let rows = apflab::policy_calls::parse(&calls.display().to_string(), &text).map_err(bad)?;
    let loaded = apflab::policy_bench::load_module(&path).map_err(bad)?;
    let report = apflab::policy_bench::test_module(&loaded, &params, &rows)
        .map_err(|e| bad(anyhow::Error::new(e).context(path.display().to_string())))?;
    outln!(
        "{} on {}: (served: as the engine would, if the guest accepted every feature with IRQs \
         unmasked)",
        path.display(),
        calls.display()
    );
    for line in &report.lines {
        if !quiet || line.contains("DIFFERS") || line.contains("FAILED") {
            outln!("{line}");
        }
    }
    if !report.log.is_empty() {
        outln!("policy log:");
        out!("{}", report.log);
    }
    outln!("{}", report.summary());
    if report.passed() {
        Ok(())
    } else {
        Err(Failure::Failed(anyhow::anyhow!(
            "{}: {}",
            path.display(),
            report.summary()
        )))
    }
}

fn policy_new(name: &str, lang: NewLang, dir: &Path) -> Result<(), Failure> {
    let lang = match lang {
        NewLang::Rust => apflab::policy_bench::Lang::Rust,
        NewLang::Wat => apflab::policy_bench::Lang::Wat,
    };
    let files = apflab::policy_bench::new_policy(name, lang, dir).map_err(bad)?;
    for f in &files {
        outln!("wrote {}", f.display());
    }
    outln!("next: cd {} and follow README.md", dir.join(name).display());
    Ok(())
}

fn write_paper(template: &Path, results: &Path, out: &Path) -> Result<(), Failure> {
    // The paper may replace neither its template nor a file it reads
    // figures from.
    let mut outputs = apflab_files::Outputs::new();
    outputs.input(template);
    if results.is_dir() {
        let mut walk = apflab_files::walk::Walk::new(apflab_files::walk::MAX_DEPTH);
        let read = walk
            .files(results, |name| name == "result.json" || name == "table.csv")
            .map_err(bad)?;
        for path in &read {
            outputs.input(path);
        }
    }
    outputs
        .file(out)
        .map_err(|e| bad(anyhow::anyhow!("--out {e}")))?;
    let text = apflab_files::read_regular_to_string(
        template,
        apflab::paper::MAX_TEMPLATE_BYTES,
        "a paper template",
    )
    .with_context(|| format!("{}: cannot read", template.display()))
    .map_err(Failure::BadInput)?;
    let paper =
        apflab::paper::render(&template.display().to_string(), &text, results).map_err(bad)?;
    apflab_files::write_atomic(out, paper.as_bytes())
        .with_context(|| format!("{}: cannot write", out.display()))?;
    outln!("{} → {}", template.display(), out.display());
    Ok(())
}

fn write_report(dirs: &[PathBuf], out: &Path) -> Result<(), Failure> {
    let paths = report::find_all_results(dirs).map_err(bad)?;
    // The report and its figures may replace none of the results it reads,
    // and must be writable, before anything is read or drawn.
    let mut outputs = apflab_files::Outputs::new();
    for path in &paths {
        outputs.input(path);
    }
    outputs
        .file(out)
        .map_err(|e| bad(anyhow::anyhow!("--out {e}")))?;
    let mut results = Vec::new();
    for path in paths {
        let r = report::load_result(&path).map_err(bad)?;
        results.push((path, r));
    }
    if results.is_empty() {
        return Err(bad(anyhow::anyhow!(
            "no result.json files under {}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let stem = out
        .file_stem()
        .map_or_else(|| "report".to_owned(), |s| s.to_string_lossy().into_owned());
    let figures = report::figures(&results);
    let figure_stem = |name: &str| out.with_file_name(format!("{stem}-{name}"));
    for figure in &figures {
        for file in apflab::plot::Figure::files(&figure_stem(figure.name)) {
            outputs
                .file(&file)
                .map_err(|e| bad(anyhow::anyhow!("a figure of --out {}: {e}", out.display())))?;
        }
    }
    let mut md = report::markdown(&results, dirs);
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create", parent.display()))?;
    }
    for figure in figures {
        let files = figure
            .figure
            .save(&figure_stem(figure.name))
            .map_err(|e| Failure::Failed(e.into()))?;
        md.push_str(&report::figure_section(&figure, &files, &results));
    }
    apflab_files::write_atomic(out, md.as_bytes())
        .with_context(|| format!("{}: cannot write", out.display()))?;
    outln!("{} results → {}", results.len(), out.display());
    Ok(())
}
