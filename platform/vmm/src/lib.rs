//! The apflab virtual machine monitor: the machine (QEMU `virt`-like), its
//! devices, the vCPU loop and the backends that run guest code.
//!
//! The entry point is [`Vm`]: build a [`VmConfig`], call [`Vm::new`] then
//! [`Vm::run`], get a [`RunOutcome`].
//!
//! Layout: [`hypervisor`] is the backend interface ([`hypervisor::Vcpu`],
//! [`hypervisor::VmExit`], [`hypervisor::VmOps`]); [`emu`] implements it on
//! unicorn-engine; [`machine`] holds the devices, PSCI and the apflab
//! hypercalls shared by every backend; [`loader`] and [`fdt`] prepare guest
//! memory; [`pager_hook`] is where the pager plugs in.

pub mod arch;
pub mod config;
pub mod devices;
#[cfg(feature = "emu")]
pub mod emu;
pub mod fdt;
pub mod hypervisor;
pub mod kvm;
pub mod loader;
pub mod machine;
pub mod outcome;
pub mod pager_hook;
mod vm;

pub use config::{BackendKind, CostModel, VmConfig};
pub use outcome::{GuestExit, RunOutcome, VmMetrics};
pub use pager_hook::{FaultDecision, HostRam, NotResidentHandler, PageServer};
pub use vm::{Vm, VmError, host_memory_mib};
