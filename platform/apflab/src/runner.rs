//! Running one config: build the VM, run it, write `result.json`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use apflab_pager::{Prepared, VirtualPager};
use apflab_vmm::{RunOutcome, Vm, VmConfig};

use crate::config::{Backend, Config, LoadedConfig, sha256_hex};
use crate::far_memory::FarMemory;
use crate::result::{RunInputs, RunResult};

/// Why a run could not produce results.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The guest image could not be read.
    #[error("{path}: cannot read the guest image: {error}")]
    Kernel {
        /// The image.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// The VMM refused the configuration (bad image, unsupported backend on
    /// this host...).
    #[error("cannot start the VM: {0}")]
    Setup(String),
    /// The VMM failed during the run.
    #[error("the VM failed: {0}")]
    Vmm(String),
    /// The results could not be written.
    #[error("{path}: cannot write results: {error}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
}

impl RunError {
    /// Whether the error is the user's input (exit code 2) rather than a
    /// failed run (exit code 1).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, RunError::Kernel { .. } | RunError::Setup(_))
    }
}

/// Builds and runs one VM, with `far_memory` serving its not-resident
/// pages if given. This is the only place the CLI calls the VMM.
pub fn execute(config: VmConfig, far_memory: Option<&FarMemory>) -> Result<RunOutcome, RunError> {
    tracing::debug!(?config, "starting VM");
    let mut vm = Vm::new(config).map_err(|e| RunError::Setup(e.to_string()))?;
    if let Some(f) = far_memory {
        vm.set_not_resident_handler(f.handler());
    }
    vm.run().map_err(|e| RunError::Vmm(e.to_string()))
}

/// The pager of `config`'s `[pager]` section, if it has one.
fn far_memory(config: &Config) -> Result<Option<FarMemory>, RunError> {
    let Some(pager) = &config.pager else {
        return Ok(None);
    };
    // Both backends drive the same handler: emu in virtual time, kvm in
    // host time since the start of the run (fetch latencies become real
    // stalls of the faulting vCPU).
    let prepared = Prepared::new(pager, config.guest.memory_mib << 20, &config.base_dir)
        .map_err(|e| RunError::Setup(e.to_string()))?;
    Ok(Some(FarMemory::new(VirtualPager::new(prepared))))
}

/// Where a run's files go by default: `results/<config-stem>`.
pub fn default_out_dir(loaded: &LoadedConfig) -> PathBuf {
    Path::new("results").join(&loaded.name)
}

/// Runs a loaded config and writes `DIR/result.json` and `DIR/console.log`.
/// A run whose guest failed still writes its results (and
/// [`RunResult::outcome`] says why); only a run that produced no results
/// is an error.
pub fn run_config(
    loaded: &LoadedConfig,
    backend: Option<Backend>,
    out_dir: &Path,
    echo_console: bool,
) -> Result<RunResult, RunError> {
    let mut config = loaded.config.clone();
    if let Some(b) = backend {
        config.backend.kind = b;
    }
    let kernel = std::fs::read(&config.kernel_path).map_err(|error| RunError::Kernel {
        path: config.kernel_path.display().to_string(),
        error,
    })?;
    let kernel_sha256 = sha256_hex(&kernel);
    drop(kernel);

    let started_at = SystemTime::now();
    let far_memory = far_memory(&config)?;
    let outcome = execute(config.vm_config(echo_console), far_memory.as_ref())?;
    let mut result = RunResult::new(
        &RunInputs {
            name: &loaded.name,
            config_sha256: &loaded.sha256,
            kernel_sha256: &kernel_sha256,
            config: &config,
            config_path: &loaded.path,
            started_at,
        },
        &outcome,
    );
    if let Some(f) = &far_memory {
        result.set_pager(&f.metrics());
    }
    write_results(out_dir, &result, &outcome.console)?;
    Ok(result)
}

/// Writes `result.json` and `console.log` into `dir` (created if needed).
pub fn write_results(dir: &Path, result: &RunResult, console: &str) -> Result<(), RunError> {
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&path, bytes))
            .map_err(|error| RunError::Write {
                path: path.display().to_string(),
                error,
            })
    };
    let mut json = serde_json::to_string_pretty(result).expect("results serialize");
    json.push('\n');
    write("result.json", json.as_bytes())?;
    write("console.log", console.as_bytes())
}
