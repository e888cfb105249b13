//! The apflab virtual machine monitor: the machine (QEMU `virt`-like), its
//! devices, the run loops and the backends that run guest code.
//!
//! The entry point is [`Vm`]: build a [`VmConfig`], call [`Vm::new`] then
//! [`Vm::run`] with a [`FaultHook`] (the fault engine of `platform/apf`, or
//! [`NoFarMemory`]), get a [`RunOutcome`].
//!
//! Layout: the backend interface ([`apflab_hypervisor::Vcpu`],
//! [`apflab_hypervisor::VmExit`], [`apflab_hypervisor::VmOps`]), the seam
//! to the fault engine ([`FaultHook`]), the one to a pager serving faults
//! inside the host kernel ([`apflab_hypervisor::PageServer`], kvm) and the
//! arm64 code both sides use are the `apflab-hypervisor` crate's;
//! [`emu`] implements the backend on unicorn-engine and [`kvm`] on arm64
//! KVM; [`machine`] holds the devices, PSCI and the apflab hypercalls
//! shared by every backend, [`sdei`] the SDEI firmware interface they
//! offer; `run_loop` is what both backends' loops share;
//! [`loader`] (with [`arm64_image`] for Linux) and [`fdt`] prepare guest
//! memory; [`watchdog`] stops a run whose guest shows no sign of life;
//! [`snapshot`] saves the machine at the end of the guest's boot and
//! resumes runs from there (emu).

pub mod arm64_image;
pub mod config;
pub mod devices;
mod effect;
#[cfg(feature = "emu")]
pub mod emu;
mod error;
mod exit_counts;
pub mod fdt;
mod guest_calls;
pub mod kvm;
pub mod loader;
pub mod machine;
pub mod outcome;
mod psci;
mod run_loop;
#[cfg(test)]
mod scripted_hook;
#[cfg(test)]
mod scripted_vcpu;
pub mod sdei;
#[cfg(all(test, feature = "emu"))]
mod seam_conformance;
pub mod snapshot;
mod vm;
pub mod watchdog;

pub use apflab_hypervisor::{
    Action, CrashReason, EngineCall, FaultHook, HookFailure, HookInitError, HypercallAnswer,
    NoFarMemory, ResumeState, is_engine_call, no_async_pf,
};
pub use apflab_hypervisor::{HostRam, PageServer, PageServerError};
pub use config::{
    BackendKind, ConfigError, CostModel, CostPreset, CostSource, VmConfig, host_memory_mib,
};
pub use error::VmError;
pub use outcome::{
    GuestCrash, GuestExit, GuestTimeline, Halt, MAX_RECORDED_HALTS, MAX_TIMELINE_RECORDS,
    RunOutcome, VmMetrics,
};
pub use snapshot::{Refusal, SnapshotError, SnapshotPlan, SnapshotRequest};
pub use vm::Vm;
pub use watchdog::HangDiagnosis;
