//! The apflab virtual machine monitor: the machine (QEMU `virt`-like), its
//! devices, the vCPU loop and the backends that run guest code.
//!
//! The entry point is [`Vm`]: build a [`VmConfig`], call [`Vm::run`], get a
//! [`RunOutcome`].

pub mod config;
pub mod kvm;
pub mod outcome;

pub use config::{BackendKind, CostModel, VmConfig};
pub use outcome::{GuestExit, RunOutcome, VmMetrics};
