//! The arm64 KVM backend.
//!
//! The backend proper (`KvmHypervisor`, `KvmVcpu`: VM, memslots,
//! in-kernel vGICv3 and PSCI, exception and PPI injection, kicking) exists
//! only on aarch64 Linux with the `kvm` feature. The logic that finds the
//! guest page behind a `KVM_RUN` → `EFAULT` ([`apflab_hypervisor::arch::fault_site`],
//! built on [`apflab_hypervisor::arch::stage1`] and [`apflab_hypervisor::arch::access`]) is shared
//! arch code, compiled and tested on any host; [`unavailable_reason`] is
//! compiled everywhere too, so the VM can refuse `--backend kvm` with one
//! clear sentence on hosts that cannot run it.

#[cfg(all(target_arch = "aarch64", target_os = "linux", feature = "kvm"))]
mod backend;
mod error;
#[cfg(all(target_arch = "aarch64", target_os = "linux", feature = "kvm"))]
mod kick;
pub mod mailbox;

pub use error::KvmError;
#[cfg(all(target_os = "linux", feature = "kvm"))]
mod memory;
#[cfg(all(target_arch = "aarch64", target_os = "linux", feature = "kvm"))]
pub mod regs;
#[cfg(all(target_arch = "aarch64", target_os = "linux", feature = "kvm"))]
pub(crate) mod run;
#[cfg(any(
    test,
    all(target_arch = "aarch64", target_os = "linux", feature = "kvm")
))]
pub(crate) mod threads;

#[cfg(all(target_arch = "aarch64", target_os = "linux", feature = "kvm"))]
pub use backend::{HypercallConduit, KvmHypervisor, KvmIrqLine, KvmVcpu, KvmVcpuKicker};
#[cfg(all(target_os = "linux", feature = "kvm"))]
pub use memory::GuestRam;

/// Why this process cannot run the kvm backend, or `None` if it can (an
/// aarch64 Linux host whose `/dev/kvm` opens, with the backend compiled in).
///
/// The text is one sentence that names the alternative, for the CLI to
/// print as is.
pub fn unavailable_reason() -> Option<String> {
    #[cfg(all(target_arch = "aarch64", target_os = "linux", feature = "kvm"))]
    {
        match kvm_ioctls::Kvm::new() {
            Ok(_) => None,
            Err(e) => Some(format!(
                "the kvm backend cannot open /dev/kvm ({e}): run on an aarch64 Linux host with \
                 KVM enabled, or use --backend emu"
            )),
        }
    }
    #[cfg(all(target_arch = "aarch64", target_os = "linux", not(feature = "kvm")))]
    {
        Some(
            "this apflab was built without the `kvm` feature: rebuild with `--features kvm`, or \
             use --backend emu"
                .to_string(),
        )
    }
    #[cfg(not(all(target_arch = "aarch64", target_os = "linux")))]
    {
        Some(format!(
            "the kvm backend needs an aarch64 Linux host with /dev/kvm and this host is {} {}: \
             use --backend emu",
            std::env::consts::ARCH,
            std::env::consts::OS
        ))
    }
}

#[cfg(test)]
mod tests {
    #[cfg(not(all(target_arch = "aarch64", target_os = "linux")))]
    #[test]
    fn non_aarch64_hosts_are_refused_with_the_alternative() {
        let why = super::unavailable_reason().expect("kvm cannot run here");
        assert!(why.contains("--backend emu"), "{why}");
        assert!(why.contains(std::env::consts::ARCH), "{why}");
    }
}
