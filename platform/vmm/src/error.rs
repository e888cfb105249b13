//! Why a VM could not be built or run. A guest that misbehaves is not an
//! error: its run ends with a [`crate::GuestExit`] that says what happened.

use crate::config::ConfigError;
use crate::fdt::FdtError;
use crate::loader::LoadError;
use apflab_hypervisor::HypervisorError;
use apflab_hypervisor::{HookInitError, PageServerError};

/// Why a VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The config asks for what this VMM or host cannot give.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Guest RAM could not be allocated.
    #[error("cannot allocate {mib} MiB of guest RAM: {detail}")]
    Allocate {
        /// Size.
        mib: u64,
        /// Why.
        detail: String,
    },
    /// The backend is not available on this host/build.
    #[error("the {backend} backend is not available: {why}")]
    BackendUnavailable {
        /// Which one.
        backend: &'static str,
        /// Why, and what to use instead.
        why: &'static str,
    },
    /// `--backend kvm` on a host or build that cannot run it; the text is
    /// one sentence naming the alternative (the CLI exits with code 2).
    #[error("{0}")]
    KvmUnavailable(String),
    /// The kernel could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The device tree could not be built.
    #[error(transparent)]
    Fdt(#[from] FdtError),
    /// A backend operation failed.
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    /// A snapshot could not be written, or does not fit this run.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// The fault hook failed at start-up (e.g. the pager could not read the
    /// pages of a post-copy start).
    #[error("pager set-up failed: {0}")]
    HookInit(#[source] HookInitError),
    /// The page server failed at start-up (kvm, `fault_path = "kernel"`).
    #[error("pager set-up failed: {0}")]
    PageServer(#[source] PageServerError),
}
