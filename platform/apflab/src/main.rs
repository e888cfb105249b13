//! `apflab`: run async page fault experiments on the apflab VMM.
//!
//! Exit status: 0 success, 1 a run failed (guest panic, crash, timeout, bad
//! results, VMM error), 2 bad input (config, experiment or image), 3 the
//! guest asked for a reset (`apflab boot`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use apflab::config::{Backend, Config};
use apflab::matrix::{Experiment, MatrixSummary, Table};
use apflab::{catalog, report, runner};
use apflab_vmm::{CostModel, GuestExit, VmConfig};
use clap::{Parser, Subcommand};

/// Exit status for bad input.
const EXIT_BAD_INPUT: u8 = 2;
/// Exit status for a failed run.
const EXIT_FAILED: u8 = 1;
/// Exit status when the guest asked for SYSTEM_RESET (`apflab boot`).
const EXIT_RESET: u8 = 3;

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
    },
    /// Boot any bare-metal arm64 image built for QEMU's virt board (ELF, or
    /// a raw image loaded at the start of RAM like QEMU's -kernel), with the
    /// guest console on stdout. Exit status 0 on PSCI SYSTEM_OFF, 3 on
    /// SYSTEM_RESET, 1 on a guest panic, crash or timeout.
    Boot {
        /// The image.
        image: PathBuf,
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
    },
    /// List the configs in a directory, the guest's workloads and the
    /// policies built with apflab.
    List {
        /// Where to look for configs.
        #[arg(long, value_name = "DIR", default_value = "configs")]
        configs: PathBuf,
    },
    /// Run every point of an experiment grid (base config x axes x
    /// repetitions) with a progress bar; writes DIR/table.csv and
    /// DIR/<run>/result.json.
    Matrix {
        /// The experiment file (TOML; see experiments/).
        experiment: PathBuf,
        /// Engine for every run, overriding the configs.
        #[arg(long, value_enum)]
        backend: Option<Backend>,
        /// Directory for the results [default: results/<experiment-stem>].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
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
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy module (core Wasm, binary or text) the way a run
    /// would load it, and print its ABI version, exports and imports.
    /// Exit status 2 if it is not a usable policy.
    Check {
        /// The module: a .wasm/.wat file, or the name of an example policy
        /// built with apflab (see `apflab list`).
        module: PathBuf,
        /// Print the module's description as JSON.
        #[arg(long)]
        json: bool,
    },
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
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run {
            config,
            backend,
            out,
            console,
        } => run(&config, backend, out, console),
        Command::Boot {
            image,
            append,
            vcpus,
            memory,
            backend,
            max_virtual_ms,
        } => boot(&image, append, vcpus, memory, backend, max_virtual_ms),
        Command::List { configs } => {
            list(&configs);
            Ok(())
        }
        Command::Matrix {
            experiment,
            backend,
            out,
        } => matrix(&experiment, backend, out),
        Command::Policy {
            command: PolicyCommand::Check { module, json },
        } => policy_check(&module, json),
        Command::Report { results, out } => write_report(&results, &out),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BadInput(e)) => {
            eprintln!("apflab: error: {e:#}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("apflab: failed: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
        Err(Failure::Status(s)) => ExitCode::from(s),
    }
}

fn run(
    config_path: &Path,
    backend: Option<Backend>,
    out: Option<PathBuf>,
    console: bool,
) -> Result<(), Failure> {
    let loaded = Config::load(config_path).map_err(bad)?;
    let out = out.unwrap_or_else(|| runner::default_out_dir(&loaded));
    let result = runner::run_config(&loaded, backend, &out, console).map_err(|e| {
        if e.is_bad_input() {
            bad(e)
        } else {
            Failure::Failed(e.into())
        }
    })?;
    println!("{}", result.summary());
    println!("  results: {}", out.join("result.json").display());
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

fn boot(
    image: &Path,
    bootargs: String,
    vcpus: u32,
    memory_mib: u64,
    backend: Backend,
    max_virtual_ms: u64,
) -> Result<(), Failure> {
    let max = apflab_abi::memory_map::MAX_VCPUS;
    if !(1..=max).contains(&vcpus) {
        return Err(bad(anyhow::anyhow!("--vcpus {vcpus}: expected 1..={max}")));
    }
    if memory_mib == 0 {
        return Err(bad(anyhow::anyhow!("--memory 0: expected at least 1 MiB")));
    }
    if !image.is_file() {
        return Err(bad(anyhow::anyhow!(
            "{}: guest image not found",
            image.display()
        )));
    }
    let config = VmConfig {
        backend: backend.kind(),
        vcpus,
        memory_mib,
        kernel: image.to_path_buf(),
        bootargs,
        cost: CostModel::default(),
        slice_instructions: apflab::config::defaults::SLICE_INSTRUCTIONS,
        max_virtual_ns: max_virtual_ms.saturating_mul(1_000_000),
        echo_console: true,
    };
    let outcome = runner::execute(config, None).map_err(|e| {
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
        GuestExit::Crash(m) => Err(Failure::Failed(anyhow::anyhow!("guest crash: {m}"))),
        GuestExit::Timeout => Err(Failure::Failed(anyhow::anyhow!(
            "no power-off within {max_virtual_ms} ms of virtual time"
        ))),
    }
}

fn list(configs: &Path) {
    println!("configs ({}):", configs.display());
    print!("{}", catalog::describe_configs(configs));
    println!("workloads (and their [workload] parameters):");
    print!("{}", catalog::describe_workloads());
    println!("policies:");
    print!("{}", catalog::describe_policies());
}

fn matrix(path: &Path, backend: Option<Backend>, out: Option<PathBuf>) -> Result<(), Failure> {
    let experiment = Experiment::load(path).map_err(bad)?;
    let out = out.unwrap_or_else(|| Path::new("results").join(&experiment.name));
    std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create", out.display()))?;
    let table_path = out.join("table.csv");
    let mut table = Table::create(&table_path, &experiment.axes)
        .with_context(|| format!("{}: cannot write", table_path.display()))?;
    let bar = indicatif::ProgressBar::new(experiment.points.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
        )
        .expect("the template is valid"),
    );
    let mut summary = MatrixSummary::default();
    for point in &experiment.points {
        bar.set_message(point.label());
        let dir = out.join(&point.id);
        match runner::run_config(&point.config, backend, &dir, false) {
            Ok(result) => {
                if result.outcome.success {
                    summary.ok += 1;
                } else {
                    let why = result
                        .outcome
                        .message
                        .clone()
                        .or(result.outcome.failure.clone())
                        .unwrap_or_else(|| result.outcome.exit.clone());
                    bar.println(format!("{} ({}): FAILED: {why}", point.id, point.label()));
                    summary.failed.insert(point.id.clone(), why);
                }
                table
                    .append(point, Ok((&result, &dir.join("result.json"))))
                    .with_context(|| format!("{}: cannot write", table_path.display()))?;
            }
            // A setup error (bad image, backend missing) would fail every
            // run the same way: stop at the first.
            Err(e) if e.is_bad_input() => {
                bar.abandon();
                return Err(bad(
                    anyhow::Error::new(e).context(format!("run {}", point.id))
                ));
            }
            Err(e) => {
                let message = e.to_string();
                bar.println(format!(
                    "{} ({}): ERROR: {message}",
                    point.id,
                    point.label()
                ));
                table
                    .append(point, Err(&message))
                    .with_context(|| format!("{}: cannot write", table_path.display()))?;
                summary.failed.insert(point.id.clone(), message);
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "{}: {} runs, {} ok, {} failed; table: {}",
        experiment.name,
        experiment.points.len(),
        summary.ok,
        summary.failed.len(),
        table_path.display()
    );
    if summary.failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Failed(anyhow::anyhow!(
            "{} of {} runs failed: {}",
            summary.failed.len(),
            experiment.points.len(),
            summary
                .failed
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

fn policy_check(module: &Path, json: bool) -> Result<(), Failure> {
    let path = if module.exists() {
        module.to_path_buf()
    } else {
        catalog::policy_by_name(&module.to_string_lossy()).ok_or_else(|| {
            bad(anyhow::anyhow!(
                "{}: no such file, and no example policy of that name (see `apflab list`)",
                module.display()
            ))
        })?
    };
    let info = apflab_policy_host::check(&path).map_err(bad)?;
    if json {
        let text = serde_json::to_string_pretty(&info).context("serializing the module info")?;
        println!("{text}");
    } else {
        print!("{info}");
    }
    Ok(())
}

fn write_report(dirs: &[PathBuf], out: &Path) -> Result<(), Failure> {
    let mut results = Vec::new();
    for dir in dirs {
        for path in report::find_results(dir).map_err(bad)? {
            let r = report::load_result(&path).map_err(bad)?;
            results.push((path, r));
        }
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
    let md = report::markdown(&results, dirs);
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create", parent.display()))?;
    }
    std::fs::write(out, md).with_context(|| format!("{}: cannot write", out.display()))?;
    println!("{} results → {}", results.len(), out.display());
    Ok(())
}
