//! What a VM is made of, as the CLI hands it to the VMM (already validated
//! for syntax; [`VmConfig::validate`] checks what only the VMM knows).

use std::path::PathBuf;

use apflab_abi::limits::MAX_MEMORY_MIB;
use apflab_abi::memory_map::MAX_VCPUS;

use crate::error::VmError;

/// Smallest guest RAM accepted (room for the device tree and a kernel).
pub const MIN_MEMORY_MIB: u64 = 8;

/// Fewest instructions in an emu slice. The engine translates up to 512
/// instructions (QEMU's `TCG_MAX_INSNS`) into one block and ends a slice
/// only at a block's start, after the block that reaches the budget: a
/// slice may run up to 511 instructions past it, which would be most of a
/// slice shorter than the longest block.
pub const MIN_SLICE_INSTRUCTIONS: u64 = 513;

/// Most instructions in an emu slice. The run's virtual-time limit is
/// checked between slices (and a slice is cut at timer deadlines only), so
/// a spinning guest overshoots the limit by up to one slice: at most 10^9
/// instructions keeps that to seconds of host time.
pub const MAX_SLICE_INSTRUCTIONS: u64 = 1_000_000_000;

/// Why the slice has the bounds it has (for error messages).
pub const SLICE_INSTRUCTIONS_WHY: &str = "a slice must be longer than the 512 instructions the \
     engine runs as one block, or it never finishes one; and short enough that the virtual-time \
     limit, checked between slices, is reached";

/// Least virtual time per instruction, ns: no CPU retires instructions
/// faster (100 instructions per ns), and below it the virtual clock of a
/// spinning guest would hardly move, so its time limit would never come.
pub const MIN_NS_PER_INSTRUCTION: f64 = 0.01;

/// Virtual time per instruction must be below this, ns.
pub const MAX_NS_PER_INSTRUCTION: f64 = 1e6;

/// Most virtual time one exit, hypercall or injection may cost, ns (one
/// second). With slices of at most [`MAX_SLICE_INSTRUCTIONS`] the clock
/// cannot wrap within a slice even if every instruction exits.
pub const MAX_COST_NS: u64 = 1_000_000_000;

/// Longest run, in ms of virtual time (about 11.6 days): the clock is a
/// `u64` of ns, and this leaves it four orders of magnitude of headroom.
pub const MAX_VIRTUAL_MS: u64 = 1_000_000_000;

/// [`MAX_VIRTUAL_MS`] in ns.
pub const MAX_VIRTUAL_NS: u64 = MAX_VIRTUAL_MS * 1_000_000;

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
    /// 0.33 ns per instruction (an IPC of about 1 at 3 GHz) and 1.5 us per
    /// exit round trip to the VMM: orders of magnitude, not yet taken from a
    /// published measurement of arm64 KVM (the paper says so).
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
    /// An initial RAM disk for a Linux kernel, loaded after the kernel and
    /// its device tree and named in `/chosen`.
    pub initrd: Option<PathBuf>,
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
    /// Stop the run ([`crate::GuestExit::Hang`]) once the guest has shown
    /// no sign of life for this long: virtual ns on emu, host ns on kvm
    /// (see [`crate::watchdog`]).
    pub watchdog_ns: u64,
    /// Stop the run ([`crate::GuestExit::WallTimeout`]) after this much
    /// host wall-clock time, whatever the guest does; `None`: never.
    pub wall_timeout: Option<std::time::Duration>,
    /// Echo the guest console to stdout as it is written.
    pub echo_console: bool,
}

impl VmConfig {
    /// Checks what only the VMM knows: vCPU and memory limits (including the
    /// host's RAM), the cost model, the slice size and the time limit (so
    /// that the virtual clock can neither stall nor wrap). The kernel file
    /// is checked when it is loaded.
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
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(VmError::BadValue {
                key: "memory",
                value: format!("{} MiB", self.memory_mib),
                expected: "at most 1047552 MiB (RAM from 1 GiB to the end of the machine's \
                           1 TiB physical address space)",
            });
        }
        let nspi = self.cost.ns_per_instruction;
        if !(nspi.is_finite() && (MIN_NS_PER_INSTRUCTION..MAX_NS_PER_INSTRUCTION).contains(&nspi)) {
            return Err(VmError::BadValue {
                key: "cost.ns_per_instruction",
                value: nspi.to_string(),
                expected: "at least 0.01 ns (no CPU is faster, and virtual time must advance) \
                           and below 1e6 ns",
            });
        }
        for (key, ns) in [
            ("cost.exit_ns", self.cost.exit_ns),
            ("cost.hypercall_ns", self.cost.hypercall_ns),
            ("cost.inject_ns", self.cost.inject_ns),
        ] {
            if ns > MAX_COST_NS {
                return Err(VmError::BadValue {
                    key,
                    value: ns.to_string(),
                    expected: "at most 1000000000 ns (one second), so the virtual clock \
                               cannot wrap",
                });
            }
        }
        if !(MIN_SLICE_INSTRUCTIONS..=MAX_SLICE_INSTRUCTIONS).contains(&self.slice_instructions) {
            return Err(VmError::BadValue {
                key: "slice_instructions",
                value: self.slice_instructions.to_string(),
                expected: "513..=1000000000 instructions: a slice must be longer than the \
                           512 instructions the engine runs as one block, and short enough \
                           that the virtual-time limit, checked between slices, is reached",
            });
        }
        if self.max_virtual_ns == 0 || self.max_virtual_ns > MAX_VIRTUAL_NS {
            return Err(VmError::BadValue {
                key: "max_virtual_ns",
                value: self.max_virtual_ns.to_string(),
                expected: "1..=10^15 ns (about 11.6 days of guest time)",
            });
        }
        if self.watchdog_ns == 0 || self.watchdog_ns > MAX_VIRTUAL_NS {
            return Err(VmError::BadValue {
                key: "watchdog_ns",
                value: self.watchdog_ns.to_string(),
                expected: "1..=10^15 ns (about 11.6 days)",
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
