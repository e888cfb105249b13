//! What a VM is made of, as the CLI hands it to the VMM (already validated
//! for syntax; [`VmConfig::validate`] checks what only the VMM knows).

use std::path::PathBuf;

use apflab_abi::memory_map::MAX_VCPUS;

use crate::error::VmError;

/// Smallest guest RAM accepted (room for the device tree and a kernel).
pub const MIN_MEMORY_MIB: u64 = 8;

/// Which engine runs the guest's instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Software arm64 CPU (unicorn-engine) in virtual time; any host.
    Emu,
    /// arm64 KVM; needs an aarch64 Linux host with /dev/kvm.
    Kvm,
}

/// Host-side costs charged to virtual time on the emu backend, so that the
/// emu results model a real host. All in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CostModel {
    /// Virtual time per guest instruction.
    pub ns_per_instruction: f64,
    /// One exit to the VMM and back (MMIO, sysreg trap, WFI wake-up).
    pub exit_ns: u64,
    /// One hypercall (on top of the exit).
    pub hypercall_ns: u64,
    /// Injecting an exception or interrupt.
    pub inject_ns: u64,
}

impl Default for CostModel {
    /// Figures in the range of a current arm64 server: ~1 ns per instruction
    /// (IPC ~3 at 3 GHz, rounded), ~1.5 us per userspace exit round trip.
    fn default() -> Self {
        CostModel {
            ns_per_instruction: 0.33,
            exit_ns: 1_500,
            hypercall_ns: 200,
            inject_ns: 300,
        }
    }
}

/// Everything needed to build and run one VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Engine.
    pub backend: BackendKind,
    /// Number of vCPUs (1..=[`apflab_abi::memory_map::MAX_VCPUS`]).
    pub vcpus: u32,
    /// Guest RAM in MiB, at [`apflab_abi::memory_map::RAM_BASE`].
    pub memory_mib: u64,
    /// Guest kernel: an ELF, or a raw image loaded at
    /// [`apflab_abi::memory_map::RAW_IMAGE_LOAD_ADDR`] like QEMU's `-kernel`.
    pub kernel: PathBuf,
    /// `/chosen/bootargs` (see [`apflab_abi::boot`]).
    pub bootargs: String,
    /// Emu backend: virtual-time costs.
    pub cost: CostModel,
    /// Emu backend: instructions per scheduling slice of one vCPU before
    /// the round-robin moves to the next one (also bounded by the next
    /// timer deadline).
    pub slice_instructions: u64,
    /// Stop the run (as a failure) after this much virtual time.
    pub max_virtual_ns: u64,
    /// Echo the guest console to stdout as it is written.
    pub echo_console: bool,
}

impl VmConfig {
    /// Checks what only the VMM knows: vCPU and memory limits (including the
    /// host's RAM), the cost model and slice size. The kernel file is
    /// checked when it is loaded.
    pub fn validate(&self) -> Result<(), VmError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(VmError::Vcpus(self.vcpus));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(VmError::MemoryTooSmall {
                requested: self.memory_mib,
                minimum: MIN_MEMORY_MIB,
            });
        }
        if let Some(host) = host_memory_mib()
            && self.memory_mib > host
        {
            return Err(VmError::MemoryTooLarge {
                requested: self.memory_mib,
                host,
            });
        }
        let nspi = self.cost.ns_per_instruction;
        if !(nspi.is_finite() && nspi > 0.0 && nspi < 1e6) {
            return Err(VmError::BadValue {
                key: "cost.ns_per_instruction",
                value: nspi.to_string(),
                expected: "a positive number of nanoseconds below 1e6",
            });
        }
        if self.slice_instructions == 0 {
            return Err(VmError::BadValue {
                key: "slice_instructions",
                value: "0".into(),
                expected: "at least 1",
            });
        }
        Ok(())
    }
}

/// Host RAM in MiB, from /proc/meminfo (None if it cannot be read: the
/// allocation itself then reports the failure).
pub fn host_memory_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
