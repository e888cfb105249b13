//! The apflab virtual machine monitor: the machine (QEMU `virt`-like), its
//! devices, the run loops and the backends that run guest code.
//!
//! The entry point is [`Vm`]: build a [`VmConfig`], call [`Vm::new`] then
//! [`Vm::run`] with a [`FaultHook`] (the fault engine of `platform/apf`, or
//! [`NoFarMemory`]), get a [`RunOutcome`].
//!
//! Layout: [`hypervisor`] is the backend interface ([`hypervisor::Vcpu`],
//! [`hypervisor::VmExit`], [`hypervisor::VmOps`]); [`emu`] implements it on
//! unicorn-engine and [`kvm`] on arm64 KVM; [`machine`] holds the devices,
//! PSCI and the apflab hypercalls shared by every backend, [`sdei`] the
//! SDEI firmware interface they offer; [`fault_hook`]
//! is the one seam to the fault engine, and `run_loop` what both backends'
//! loops share; [`arch`] has the architecture facts and the stage-1 walk
//! and instruction decode both backends use to find a faulting page;
//! [`loader`] (with [`arm64_image`] for Linux) and [`fdt`] prepare guest
//! memory; [`page_server`] is where
//! a pager serving faults inside the host kernel plugs in (kvm);
//! [`watchdog`] stops a run whose guest shows no sign of life.

pub mod arch;
pub mod arm64_image;
pub mod config;
pub mod devices;
#[cfg(feature = "emu")]
pub mod emu;
mod error;
pub mod fault_hook;
pub mod fdt;
pub mod hypervisor;
pub mod kvm;
pub mod loader;
pub mod machine;
pub mod outcome;
pub mod page_server;
mod run_loop;
pub mod sdei;
mod vm;
pub mod watchdog;

pub use config::{BackendKind, CostModel, VmConfig, host_memory_mib};
pub use error::VmError;
pub use fault_hook::{
    Action, EngineCall, FaultHook, HookInitError, HypercallAnswer, NoFarMemory, ResumeState,
    is_engine_call, no_async_pf,
};
pub use outcome::{
    GuestExit, GuestTimeline, Halt, MAX_RECORDED_HALTS, MAX_TIMELINE_RECORDS, RunOutcome, VmMetrics,
};
pub use page_server::{HostRam, PageServer};
pub use vm::Vm;
pub use watchdog::HangDiagnosis;
