//! PSCI 1.0 firmware: which vCPUs are powered on, and the calls that start,
//! stop, suspend and query them or power off the system.
//!
//! A call's effect on vCPUs comes back as an [`Effect`] for the machine to
//! queue; the firmware itself only keeps the power state. Arguments are the
//! guest's and hostile: a bad one gets a PSCI error code, never a panic.

use apflab_abi::hypercall::{self as hc, PSCI_AFFINITY_INFO};
use apflab_hypervisor::arch::mpidr_of;
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::effect::{Answer, Effect};

/// PSCI CPU_ON, SMC32 calling convention.
const PSCI_CPU_ON_SMC32: u32 = 0x8400_0003;
/// PSCI CPU_SUSPEND, SMC32 and SMC64.
const PSCI_CPU_SUSPEND_SMC32: u32 = 0x8400_0001;
const PSCI_CPU_SUSPEND: u32 = 0xC400_0001;
/// PSCI AFFINITY_INFO, SMC32 (SMC64: [`PSCI_AFFINITY_INFO`]).
const PSCI_AFFINITY_INFO_SMC32: u32 = 0x8400_0004;
/// PSCI MIGRATE_INFO_TYPE.
const PSCI_MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
/// MIGRATE_INFO_TYPE: no Trusted OS, nothing to migrate.
const PSCI_TOS_NOT_PRESENT_MP: i64 = 2;
/// AFFINITY_INFO answers.
const PSCI_AFFINITY_ON: i64 = 0;
const PSCI_AFFINITY_OFF: i64 = 1;
/// PSCI INVALID_ADDRESS.
const PSCI_INVALID_ADDRESS: i64 = -9;
/// CPU_SUSPEND power_state bits that must be zero: only the original
/// format's StateID (15:0) and StateType (16) are accepted, as QEMU's
/// firmware does; every state is a standby (the caller resumes after the
/// call once an interrupt is pending).
const PSCI_POWER_STATE_RESERVED: u64 = 0xfffe_0000;

/// Whether a vCPU is powered on (PSCI's view).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Power {
    On,
    Off,
}

/// The PSCI firmware of a machine: the power state of each vCPU.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Psci {
    power: Vec<Power>,
}

impl Psci {
    /// Firmware for `vcpus` CPUs: CPU 0 on, the others off.
    pub fn new(vcpus: u32) -> Self {
        let mut power = vec![Power::Off; vcpus as usize];
        if let Some(p) = power.first_mut() {
            *p = Power::On;
        }
        Psci { power }
    }

    /// How many vCPUs it knows.
    pub fn vcpus(&self) -> usize {
        self.power.len()
    }

    /// Whether `function` is a call of this firmware's (SMCCC owner 4,
    /// standard secure services, which is PSCI's range).
    pub fn owns(function: u32) -> bool {
        hc::smccc_owner(function) == 4
    }

    /// Answers `function` from `vcpu` with `args`; `memory` is the guest's,
    /// where a CPU_ON entry point must lie. `None`: not a call this
    /// firmware implements.
    pub fn call(
        &mut self,
        vcpu: u32,
        function: u32,
        args: [u64; 5],
        memory: &GuestMemoryMmap,
    ) -> Option<Answer> {
        let answer = match function {
            hc::PSCI_VERSION => Answer::regs([hc::PSCI_VERSION_1_0, 0, 0, 0]),
            hc::PSCI_FEATURES => Answer::returning(if Self::implements(args[0] as u32) {
                hc::SMCCC_SUCCESS
            } else {
                hc::SMCCC_NOT_SUPPORTED
            }),
            hc::PSCI_CPU_ON | PSCI_CPU_ON_SMC32 => {
                let [mpidr, entry, context_id, ..] = if function == PSCI_CPU_ON_SMC32 {
                    args.map(|a| a & 0xffff_ffff)
                } else {
                    args
                };
                self.cpu_on(memory, mpidr, entry, context_id)
            }
            hc::PSCI_CPU_OFF => {
                if let Some(p) = self.power.get_mut(vcpu as usize) {
                    *p = Power::Off;
                }
                Answer::success_with(Effect::CpuOff { vcpu })
            }
            PSCI_CPU_SUSPEND | PSCI_CPU_SUSPEND_SMC32 => {
                if args[0] & PSCI_POWER_STATE_RESERVED != 0 {
                    return Some(Answer::returning(hc::SMCCC_INVALID_PARAMETERS));
                }
                Answer::success_with(Effect::CpuSuspend { vcpu })
            }
            PSCI_AFFINITY_INFO | PSCI_AFFINITY_INFO_SMC32 => {
                let target = if function == PSCI_AFFINITY_INFO_SMC32 {
                    args[0] & 0xffff_ffff
                } else {
                    args[0]
                };
                // Only level 0 (one CPU) is answered, as QEMU does.
                Answer::returning(match self.vcpu_of(target) {
                    Some(t) if args[1] == 0 => match self.power[t as usize] {
                        Power::On => PSCI_AFFINITY_ON,
                        Power::Off => PSCI_AFFINITY_OFF,
                    },
                    _ => hc::SMCCC_INVALID_PARAMETERS,
                })
            }
            PSCI_MIGRATE_INFO_TYPE => Answer::returning(PSCI_TOS_NOT_PRESENT_MP),
            hc::PSCI_SYSTEM_OFF => Answer::success_with(Effect::SystemOff),
            hc::PSCI_SYSTEM_RESET => Answer::success_with(Effect::SystemReset),
            _ => return None,
        };
        Some(answer)
    }

    /// Whether PSCI_FEATURES reports `function` as implemented.
    fn implements(function: u32) -> bool {
        matches!(
            function,
            hc::PSCI_VERSION
                | hc::PSCI_CPU_ON
                | PSCI_CPU_ON_SMC32
                | hc::PSCI_CPU_OFF
                | PSCI_CPU_SUSPEND
                | PSCI_CPU_SUSPEND_SMC32
                | PSCI_AFFINITY_INFO
                | PSCI_AFFINITY_INFO_SMC32
                | PSCI_MIGRATE_INFO_TYPE
                | hc::PSCI_SYSTEM_OFF
                | hc::PSCI_SYSTEM_RESET
                | hc::PSCI_FEATURES
        )
    }

    /// The vCPU whose affinity (MPIDR_EL1 Aff3..Aff0) is `mpidr`.
    fn vcpu_of(&self, mpidr: u64) -> Option<u32> {
        (0..self.power.len() as u32).find(|&i| mpidr_of(i) == mpidr)
    }

    /// CPU_ON: the target must exist and be off, and the entry point be an
    /// aligned address in guest RAM.
    fn cpu_on(
        &mut self,
        memory: &GuestMemoryMmap,
        mpidr: u64,
        entry: u64,
        context_id: u64,
    ) -> Answer {
        let Some(target) = self.vcpu_of(mpidr) else {
            return Answer::returning(hc::SMCCC_INVALID_PARAMETERS);
        };
        if self.power[target as usize] == Power::On {
            return Answer::returning(hc::PSCI_ALREADY_ON);
        }
        if memory
            .read_slice(&mut [0u8; 4], GuestAddress(entry))
            .is_err()
            || !entry.is_multiple_of(4)
        {
            return Answer::returning(PSCI_INVALID_ADDRESS);
        }
        self.power[target as usize] = Power::On;
        Answer::success_with(Effect::CpuOn {
            target,
            entry,
            context_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apflab_abi::memory_map::RAM_BASE;

    #[test]
    fn affinity_info_follows_cpu_on_and_off() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), 1 << 20)]).unwrap();
        let mut psci = Psci::new(2);
        let mut call = |vcpu, f, x1, x2| {
            psci.call(vcpu, f, [x1, x2, 0, 0, 0], &memory)
                .unwrap_or_else(|| panic!("{f:#x} is a PSCI call"))
        };
        let mut x0 = |f, x1, x2| call(0, f, x1, x2).regs[0] as i64;
        assert_eq!(x0(PSCI_AFFINITY_INFO, 1, 0), PSCI_AFFINITY_OFF);
        assert_eq!(x0(PSCI_AFFINITY_INFO, 0, 0), PSCI_AFFINITY_ON);
        assert_eq!(x0(PSCI_AFFINITY_INFO, 2, 0), hc::SMCCC_INVALID_PARAMETERS);
        assert_eq!(x0(PSCI_AFFINITY_INFO, 1, 1), hc::SMCCC_INVALID_PARAMETERS);
        assert_eq!(x0(hc::PSCI_CPU_ON, 1, RAM_BASE), hc::SMCCC_SUCCESS);
        assert_eq!(x0(PSCI_AFFINITY_INFO_SMC32, 1, 0), PSCI_AFFINITY_ON);
        assert_eq!(x0(PSCI_MIGRATE_INFO_TYPE, 0, 0), PSCI_TOS_NOT_PRESENT_MP);
        assert_eq!(
            x0(PSCI_CPU_SUSPEND, 1 << 17, 0),
            hc::SMCCC_INVALID_PARAMETERS
        );
        for f in [
            PSCI_CPU_SUSPEND,
            PSCI_CPU_SUSPEND_SMC32,
            PSCI_AFFINITY_INFO,
            PSCI_AFFINITY_INFO_SMC32,
            PSCI_MIGRATE_INFO_TYPE,
            hc::PSCI_CPU_OFF,
        ] {
            assert_eq!(x0(hc::PSCI_FEATURES, u64::from(f), 0), 0, "{f:#x}");
        }
        assert_eq!(
            call(1, hc::PSCI_CPU_OFF, 0, 0),
            Answer::success_with(Effect::CpuOff { vcpu: 1 })
        );
        assert_eq!(
            call(1, PSCI_CPU_SUSPEND, 1 << 16, 0),
            Answer::success_with(Effect::CpuSuspend { vcpu: 1 })
        );
        assert_eq!(
            call(0, PSCI_AFFINITY_INFO, 1, 0).regs[0] as i64,
            PSCI_AFFINITY_OFF
        );
    }

    #[test]
    fn functions_it_does_not_implement_are_not_answered() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), 1 << 20)]).unwrap();
        let mut psci = Psci::new(1);
        // SDEI_VERSION: in PSCI's range, answered by the SDEI firmware.
        assert_eq!(psci.call(0, 0xC400_0020, [0; 5], &memory), None);
        // A PSCI function this firmware does not have (PSCI_STAT_COUNT).
        assert_eq!(psci.call(0, 0x8400_0011, [0; 5], &memory), None);
    }
}
