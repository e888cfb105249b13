//! What a VM is made of, as the CLI hands it to the VMM (already validated
//! for syntax; [`VmConfig::validate`] checks what only the VMM knows).

use std::path::PathBuf;

use apflab_abi::limits::MAX_MEMORY_MIB;
use apflab_abi::memory_map::MAX_VCPUS;

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
/// emu results model a host. All in nanoseconds. Which values a run uses is
/// a [`CostPreset`] plus any field a config overrides; every preset says
/// where each of its values comes from.
///
/// Where each cost is charged (emu, `emu/run.rs` and `emu/hooks.rs`):
/// - [`exit_ns`](Self::exit_ns): an exit that KVM hands to the VMM in user
///   space: a not-resident fault with `fault_path = "vmm"`, a hypercall
///   (forwarded by the SMCCC filter, or the MMIO doorbell), an access to a
///   device the VMM emulates (UART, RTC, virtio);
/// - [`kernel_exit_ns`](Self::kernel_exit_ns): an exit KVM handles in the
///   host kernel without returning to user space: a not-resident fault
///   with `fault_path = "kernel"` (the stage-2 fault blocks in the kernel),
///   an access to the in-kernel vGIC (distributor, redistributor, an SGI
///   generated through ICC_SGI1R_EL1), a wake-up from WFI;
/// - [`hypercall_ns`](Self::hypercall_ns): the VMM's work for one
///   hypercall, on top of its exit;
/// - [`inject_ns`](Self::inject_ns): entering an injected exception,
///   interrupt or SDEI event;
/// - [`kick_ns`](Self::kick_ns): "page ready" for a vCPU that is running
///   guest code: the host must interrupt it (an IPI that forces an exit)
///   before it can deliver anything.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CostModel {
    /// Virtual time per guest instruction.
    pub ns_per_instruction: f64,
    /// One exit to the VMM in user space and back into the guest.
    pub exit_ns: u64,
    /// One exit handled in the host kernel and back into the guest.
    pub kernel_exit_ns: u64,
    /// The VMM's handling of one hypercall (on top of the exit).
    pub hypercall_ns: u64,
    /// Injecting an exception or interrupt.
    pub inject_ns: u64,
    /// Forcing a running vCPU out of the guest to deliver "page ready".
    pub kick_ns: u64,
}

impl CostModel {
    /// Every field by its config key, as a number (for listings and
    /// results).
    pub fn fields(&self) -> [(&'static str, f64); 6] {
        [
            ("ns_per_instruction", self.ns_per_instruction),
            ("exit_ns", self.exit_ns as f64),
            ("kernel_exit_ns", self.kernel_exit_ns as f64),
            ("hypercall_ns", self.hypercall_ns as f64),
            ("inject_ns", self.inject_ns as f64),
            ("kick_ns", self.kick_ns as f64),
        ]
    }
}

impl Default for CostModel {
    /// [`CostPreset::Uncalibrated`]: 0.33 ns per instruction (about three
    /// instructions per ns), 1.5 us per exit, in the kernel or to the VMM,
    /// no kick. These are the values every emu figure before the presets
    /// was computed with, and no published measurement backs them: a run
    /// that should model a machine names a preset.
    fn default() -> Self {
        CostPreset::Uncalibrated.model()
    }
}

/// A named set of cost-model values (`[backend.cost] preset`), each traced
/// to the measurement it comes from. A value no measurement gives is marked
/// as assumed, with the reasoning, in [`CostPreset::sources`]; the
/// sensitivity experiment (`experiments/cost-sensitivity.toml`) varies
/// each of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CostPreset {
    /// The values apflab used before it had presets; not a machine.
    Uncalibrated,
    /// KVM/arm64 on real hardware as published: Dall et al., "ARM
    /// Virtualization: Performance and Architectural Implications", ISCA
    /// 2016, measured on HP Moonshot m400 nodes (APM X-Gene, 8 Armv8-A
    /// cores at 2.4 GHz) with Linux 4.0-rc4 (KVM without VHE): a no-op
    /// hypercall round trip of 6,500 cycles.
    M400Kvm,
    /// KVM/arm64 nested in QEMU TCG on this project's x86 machines, as
    /// measured in `../shared/KVM-NOTES.md`: about 1.5-1.6 G guest
    /// instructions per second and 210-230 us per exit to user space.
    NestedTcg,
}

/// One value of a preset and where it comes from.
#[derive(Clone, Copy, Debug)]
pub struct CostSource {
    /// The [`CostModel`] field (as the config key).
    pub key: &'static str,
    /// `"published"`, `"measured"`, `"derived"` or `"assumed"`.
    pub kind: &'static str,
    /// The source and the arithmetic, or the reason for an assumption.
    pub note: &'static str,
}

/// The m400's clock, GHz (HP Moonshot m400: APM X-Gene, 2.4 GHz).
const M400_GHZ: f64 = 2.4;
/// Dall et al. (ISCA 2016), KVM ARM on the m400: a no-op hypercall from
/// the guest to the host kernel and back, in cycles.
const M400_HYPERCALL_CYCLES: f64 = 6_500.0;
/// `../shared/KVM-NOTES.md`: guest instructions per second of a tight loop
/// under nested KVM on QEMU TCG (1.5 G on 6.1, 1.6 G on 6.12; the mean).
const NESTED_INSNS_PER_S: f64 = 1.55e9;
/// `../shared/KVM-NOTES.md`: KVM_RUN round trip per MMIO exit to user
/// space under nested KVM (230 us on 6.1, 210 us on 6.12; the mean).
const NESTED_USER_EXIT_NS: u64 = 220_000;
/// `../shared/KVM-NOTES.md`: one KVM_GET_ONE_REG ioctl under nested KVM
/// (33 us on 6.1, 26 us on 6.12; rounded mean), the cost of a return to
/// user space and an ioctl back that an in-kernel exit does not pay.
const NESTED_IOCTL_NS: u64 = 30_000;

impl CostPreset {
    /// Every preset, in the order `apflab list` prints them.
    pub const ALL: [CostPreset; 3] = [
        CostPreset::Uncalibrated,
        CostPreset::M400Kvm,
        CostPreset::NestedTcg,
    ];

    /// The name a config gives it.
    pub fn name(self) -> &'static str {
        match self {
            CostPreset::Uncalibrated => "uncalibrated",
            CostPreset::M400Kvm => "m400-kvm",
            CostPreset::NestedTcg => "nested-tcg",
        }
    }

    /// The preset called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<CostPreset> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Every preset's name, for error messages.
    pub fn names() -> String {
        Self::ALL
            .iter()
            .map(|p| format!("\"{}\"", p.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One line on what the preset models.
    pub fn summary(self) -> &'static str {
        match self {
            CostPreset::Uncalibrated => {
                "the values of every emu figure before presets; orders of magnitude, no source"
            }
            CostPreset::M400Kvm => {
                "KVM/arm64 without VHE on an HP Moonshot m400 (APM X-Gene, 2.4 GHz), Dall et \
                 al. ISCA 2016"
            }
            CostPreset::NestedTcg => {
                "KVM/arm64 nested in QEMU TCG on this project's x86 machines, \
                 ../shared/KVM-NOTES.md"
            }
        }
    }

    /// The values.
    pub fn model(self) -> CostModel {
        match self {
            CostPreset::Uncalibrated => CostModel {
                ns_per_instruction: 0.33,
                exit_ns: 1_500,
                kernel_exit_ns: 1_500,
                hypercall_ns: 200,
                inject_ns: 300,
                kick_ns: 0,
            },
            CostPreset::M400Kvm => {
                let kernel_exit_ns = (M400_HYPERCALL_CYCLES / M400_GHZ).round() as u64;
                CostModel {
                    ns_per_instruction: 1.0 / M400_GHZ,
                    // Assumed: twice the in-kernel round trip (see sources).
                    exit_ns: 2 * kernel_exit_ns,
                    kernel_exit_ns,
                    hypercall_ns: 200,
                    inject_ns: 300,
                    kick_ns: kernel_exit_ns,
                }
            }
            CostPreset::NestedTcg => CostModel {
                ns_per_instruction: 1e9 / NESTED_INSNS_PER_S,
                exit_ns: NESTED_USER_EXIT_NS,
                kernel_exit_ns: NESTED_USER_EXIT_NS - NESTED_IOCTL_NS,
                hypercall_ns: 200,
                inject_ns: 300,
                kick_ns: NESTED_USER_EXIT_NS - NESTED_IOCTL_NS,
            },
        }
    }

    /// Where each value comes from (printed by `apflab list`; the paper's
    /// cost-model table says the same).
    pub fn sources(self) -> &'static [CostSource] {
        const fn s(key: &'static str, kind: &'static str, note: &'static str) -> CostSource {
            CostSource { key, kind, note }
        }
        const UNCALIBRATED: &[CostSource] = &[
            s(
                "ns_per_instruction",
                "assumed",
                "about 3 instructions per ns",
            ),
            s("exit_ns", "assumed", "order of magnitude"),
            s("kernel_exit_ns", "assumed", "the same as exit_ns"),
            s("hypercall_ns", "assumed", "order of magnitude"),
            s("inject_ns", "assumed", "order of magnitude"),
            s("kick_ns", "assumed", "no kick"),
        ];
        const M400_KVM: &[CostSource] = &[
            s(
                "ns_per_instruction",
                "assumed",
                "one instruction per cycle at the m400's 2.4 GHz; Dall et al. give no IPC",
            ),
            s(
                "kernel_exit_ns",
                "published",
                "Dall et al., ISCA 2016, KVM ARM on HP Moonshot m400 (APM X-Gene, 2.4 GHz, \
                     Linux 4.0-rc4, no VHE): no-op hypercall round trip 6,500 cycles, at 2.4 GHz",
            ),
            s(
                "exit_ns",
                "assumed",
                "twice the in-kernel round trip: the return to the VMM and its KVM_RUN \
                     back cross the kernel/user boundary twice more (not measured on arm64 here)",
            ),
            s(
                "kick_ns",
                "derived",
                "the IPI forces the running vCPU into the host kernel and back: one \
                     in-kernel round trip",
            ),
            s(
                "hypercall_ns",
                "assumed",
                "the VMM's own work per hypercall (a table look-up and a reply)",
            ),
            s(
                "inject_ns",
                "assumed",
                "writing ESR/ELR/SPSR or a list register before entry",
            ),
        ];
        const NESTED_TCG: &[CostSource] = &[
            s(
                "ns_per_instruction",
                "measured",
                "KVM-NOTES.md: 1.5 (6.1) and 1.6 (6.12) G guest instructions/s, mean 1.55 G",
            ),
            s(
                "exit_ns",
                "measured",
                "KVM-NOTES.md: KVM_RUN round trip per MMIO exit, 230 us (6.1) and 210 us \
                     (6.12), mean",
            ),
            s(
                "kernel_exit_ns",
                "derived",
                "exit_ns less one ioctl round trip (KVM_GET_ONE_REG, 33 and 26 us, about \
                     30 us), which an exit handled in the kernel does not make",
            ),
            s(
                "kick_ns",
                "derived",
                "one in-kernel round trip, as kernel_exit_ns",
            ),
            s(
                "hypercall_ns",
                "assumed",
                "as m400-kvm: the VMM's own work, not the nested exit",
            ),
            s("inject_ns", "assumed", "as m400-kvm"),
        ];
        match self {
            CostPreset::Uncalibrated => UNCALIBRATED,
            CostPreset::M400Kvm => M400_KVM,
            CostPreset::NestedTcg => NESTED_TCG,
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
    /// Emu backend: not-resident faults are handled in the host kernel
    /// (`[pager] fault_path = "kernel"`), so each is charged
    /// [`CostModel::kernel_exit_ns`] instead of an exit to the VMM. (On kvm
    /// the page server set with `Vm::set_page_server` is that path.)
    pub faults_in_kernel: bool,
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

/// A value of a [`VmConfig`] out of the range the VMM or the host can run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// vCPU count out of range.
    #[error("vcpus = {0}: must be between 1 and {MAX_VCPUS}")]
    Vcpus(u32),
    /// Memory too small.
    #[error("memory = {requested} MiB: must be at least {minimum} MiB")]
    MemoryTooSmall {
        /// Requested MiB.
        requested: u64,
        /// The least that works.
        minimum: u64,
    },
    /// Memory larger than the host has.
    #[error("memory = {requested} MiB is more than this host's {host} MiB of RAM")]
    MemoryTooLarge {
        /// Requested MiB.
        requested: u64,
        /// Host MiB.
        host: u64,
    },
    /// A cost model or slice value that makes no sense.
    #[error("{key} = {value}: {expected}")]
    BadValue {
        /// Config key.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is expected.
        expected: &'static str,
    },
}

impl VmConfig {
    /// Checks what only the VMM knows: vCPU and memory limits (including the
    /// host's RAM), the cost model, the slice size and the time limit (so
    /// that the virtual clock can neither stall nor wrap). The kernel file
    /// is checked when it is loaded.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::MemoryTooSmall {
                requested: self.memory_mib,
                minimum: MIN_MEMORY_MIB,
            });
        }
        if let Some(host) = host_memory_mib()
            && self.memory_mib > host
        {
            return Err(ConfigError::MemoryTooLarge {
                requested: self.memory_mib,
                host,
            });
        }
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(ConfigError::BadValue {
                key: "memory",
                value: format!("{} MiB", self.memory_mib),
                expected: "at most 1047552 MiB (RAM from 1 GiB to the end of the machine's \
                           1 TiB physical address space)",
            });
        }
        let nspi = self.cost.ns_per_instruction;
        if !(nspi.is_finite() && (MIN_NS_PER_INSTRUCTION..MAX_NS_PER_INSTRUCTION).contains(&nspi)) {
            return Err(ConfigError::BadValue {
                key: "cost.ns_per_instruction",
                value: nspi.to_string(),
                expected: "at least 0.01 ns (no CPU is faster, and virtual time must advance) \
                           and below 1e6 ns",
            });
        }
        for (key, ns) in [
            ("cost.exit_ns", self.cost.exit_ns),
            ("cost.kernel_exit_ns", self.cost.kernel_exit_ns),
            ("cost.hypercall_ns", self.cost.hypercall_ns),
            ("cost.inject_ns", self.cost.inject_ns),
            ("cost.kick_ns", self.cost.kick_ns),
        ] {
            if ns > MAX_COST_NS {
                return Err(ConfigError::BadValue {
                    key,
                    value: ns.to_string(),
                    expected: "at most 1000000000 ns (one second), so the virtual clock \
                               cannot wrap",
                });
            }
        }
        if !(MIN_SLICE_INSTRUCTIONS..=MAX_SLICE_INSTRUCTIONS).contains(&self.slice_instructions) {
            return Err(ConfigError::BadValue {
                key: "slice_instructions",
                value: self.slice_instructions.to_string(),
                expected: "513..=1000000000 instructions: a slice must be longer than the \
                           512 instructions the engine runs as one block, and short enough \
                           that the virtual-time limit, checked between slices, is reached",
            });
        }
        if self.max_virtual_ns == 0 || self.max_virtual_ns > MAX_VIRTUAL_NS {
            return Err(ConfigError::BadValue {
                key: "max_virtual_ns",
                value: self.max_virtual_ns.to_string(),
                expected: "1..=10^15 ns (about 11.6 days of guest time)",
            });
        }
        if self.watchdog_ns == 0 || self.watchdog_ns > MAX_VIRTUAL_NS {
            return Err(ConfigError::BadValue {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_found_by_its_name_and_cites_every_field() {
        for p in CostPreset::ALL {
            assert_eq!(CostPreset::from_name(p.name()), Some(p));
            let keys: Vec<_> = p.model().fields().iter().map(|(k, _)| *k).collect();
            let mut cited: Vec<_> = p.sources().iter().map(|s| s.key).collect();
            cited.sort_unstable();
            let mut want = keys.clone();
            want.sort_unstable();
            assert_eq!(cited, want, "{}", p.name());
            for s in p.sources() {
                assert!(
                    ["published", "measured", "derived", "assumed"].contains(&s.kind),
                    "{}: {}",
                    p.name(),
                    s.kind
                );
            }
        }
        assert_eq!(CostPreset::from_name("vhe"), None);
    }

    #[test]
    fn presets_hold_the_cited_figures() {
        // 6,500 cycles at 2.4 GHz.
        let m400 = CostPreset::M400Kvm.model();
        assert_eq!(m400.kernel_exit_ns, 2_708);
        assert_eq!(m400.kick_ns, 2_708);
        assert_eq!(m400.exit_ns, 5_416);
        // 1.55 G instructions per second; 220 us per exit to user space.
        let nested = CostPreset::NestedTcg.model();
        assert!((nested.ns_per_instruction - 0.645).abs() < 1e-3);
        assert_eq!(nested.exit_ns, 220_000);
        assert_eq!(nested.kernel_exit_ns, 190_000);
        // The default keeps the figures computed before presets.
        assert_eq!(CostModel::default(), CostPreset::Uncalibrated.model());
        assert_eq!(CostModel::default().exit_ns, 1_500);
    }
}
