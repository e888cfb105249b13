//! The arm64 KVM backend.
//!
//! The backend proper (VM, vCPU threads, in-kernel vGICv3, exception and PPI
//! injection) exists only on aarch64 Linux with the `kvm` feature. The
//! logic that finds the guest page behind a `KVM_RUN` → `EFAULT`
//! ([`fault_site`], with [`stage1`] and [`access`]) is host independent and
//! compiled and tested everywhere.

pub mod access;
pub mod fault_site;
pub mod stage1;
