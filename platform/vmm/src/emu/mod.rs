//! The emu backend: guest code runs on unicorn-engine's software arm64 CPU
//! (QEMU TCG), one engine per vCPU, all on the calling thread (`Unicorn` is
//! `!Send`, and one thread makes exclusives exact and runs deterministic).
//!
//! Measured facts about unicorn this relies on: exceptions never
//! reach the guest's vectors (the interrupt hook sees them and this backend
//! builds the exception entry), there is no GIC and no timer output (the
//! [`crate::machine::Machine`] emulates them through system register hooks),
//! the counters must be hooked to be deterministic, and SCR_EL3/HCR_EL2 need
//! fixing before EL1 code can turn its MMU on.
//!
//! Virtual time of a vCPU = instructions (counted by a block hook) x
//! `ns_per_instruction` + host costs charged by the cost model + time spent
//! halted or stalled.
//!
//! One file per concept: [`vcpu`] (the engine of one vCPU and its
//! registers), `hooks` (what unicorn calls back: counting, MMIO, system
//! registers, CPU exceptions), `tlb` (the virtual TLB fill: the guest's
//! stage-1 walk plus the pager's word on the page), `entry` (exception and
//! IRQ entry, which the software CPU never does itself), [`residency`]
//! (absent pages) and `run` (the scheduler of all vCPUs in virtual time).

mod entry;
mod hooks;
mod residency;
pub(crate) mod run;
mod tlb;
pub mod vcpu;

pub use residency::EmuResidency;
pub use vcpu::EmuVcpu;

use std::rc::Rc;
use std::sync::Arc;

use unicorn_engine::{RegisterARM64, RegisterARM64CP};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use self::residency::AbsentPages;
use crate::arch::SysRegId;
use crate::config::CostModel;
use crate::hypervisor::{Hypervisor, HypervisorError, VmOps};

/// SCR_EL3 = NS | HCE | RW: EL1 is AArch64 non-secure and HVC is enabled
/// (at reset SCR_EL3 is 0 and EL1 translation breaks).
const SCR_EL3_VALUE: u64 = (1 << 0) | (1 << 8) | (1 << 10);
/// HCR_EL2 = RW: EL1 is AArch64.
const HCR_EL2_VALUE: u64 = 1 << 31;

fn cp(reg: SysRegId) -> RegisterARM64CP {
    RegisterARM64CP::new()
        .op0(u32::from(reg.op0))
        .op1(u32::from(reg.op1))
        .crn(u32::from(reg.crn))
        .crm(u32::from(reg.crm))
        .op2(u32::from(reg.op2))
}

const SCR_EL3: SysRegId = SysRegId::new(3, 6, 1, 1, 0);
/// DAIF, written by `msr daif, xN`.
const DAIF: SysRegId = SysRegId::new(3, 3, 4, 2, 1);
const SCTLR_EL1: SysRegId = SysRegId::new(3, 0, 1, 0, 0);
const TCR_EL1: SysRegId = SysRegId::new(3, 0, 2, 0, 2);
const HCR_EL2: SysRegId = SysRegId::new(3, 4, 1, 1, 0);
const SPSR_EL1: SysRegId = SysRegId::new(3, 0, 4, 0, 0);

/// General purpose registers in unicorn's numbering.
const XREGS: [RegisterARM64; 31] = {
    use RegisterARM64 as R;
    [
        R::X0,
        R::X1,
        R::X2,
        R::X3,
        R::X4,
        R::X5,
        R::X6,
        R::X7,
        R::X8,
        R::X9,
        R::X10,
        R::X11,
        R::X12,
        R::X13,
        R::X14,
        R::X15,
        R::X16,
        R::X17,
        R::X18,
        R::X19,
        R::X20,
        R::X21,
        R::X22,
        R::X23,
        R::X24,
        R::X25,
        R::X26,
        R::X27,
        R::X28,
        R::X29,
        R::X30,
    ]
};

fn engine_err(op: impl Into<String>, e: unicorn_engine::uc_error) -> HypervisorError {
    HypervisorError::Engine {
        backend: "emu",
        op: op.into(),
        detail: format!("{e:?}"),
    }
}

/// The emu VM: guest RAM and the engines' common settings.
pub struct EmuVm {
    memory: GuestMemoryMmap,
    cost: CostModel,
    vcpus: u32,
    absent: Rc<AbsentPages>,
}

impl EmuVm {
    /// A VM over `memory` (one region at RAM_BASE) for `vcpus` vCPUs.
    pub fn new(memory: GuestMemoryMmap, vcpus: u32, cost: CostModel) -> Self {
        let ram_size = memory.iter().map(|r| r.len()).sum();
        EmuVm {
            memory,
            cost,
            vcpus,
            absent: Rc::new(AbsentPages::new(ram_size)),
        }
    }

    /// Page residency of this VM's RAM (all resident at first).
    pub fn residency(&self) -> EmuResidency {
        EmuResidency::new(self.memory.clone(), self.absent.clone())
    }
}

impl Hypervisor for EmuVm {
    type Vcpu = EmuVcpu;

    fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    fn create_vcpu(&mut self, index: u32, ops: Arc<dyn VmOps>) -> Result<EmuVcpu, HypervisorError> {
        if index >= self.vcpus {
            return Err(HypervisorError::NoSuchVcpu(index));
        }
        EmuVcpu::new(
            index,
            &self.memory,
            self.absent.clone(),
            self.vcpus,
            ops,
            self.cost,
        )
    }
}
