//! Register plumbing shared by the emu backend's files: unicorn's register
//! ids for the general registers, the coprocessor-interface ids of the
//! system registers the backend reads or writes itself, the error type
//! of a refused engine operation, and the engine's registers as the source
//! of an address computation.

use unicorn_engine::{RegisterARM64, RegisterARM64CP, Unicorn};

use apflab_hypervisor::HypervisorError;
use apflab_hypervisor::arch::SysRegId;
use apflab_hypervisor::arch::access::{AddrReg, RegisterSource};

/// SCR_EL3 = NS | HCE | RW: EL1 is AArch64 non-secure and HVC is enabled
/// (at reset SCR_EL3 is 0 and EL1 translation breaks).
pub(super) const SCR_EL3_VALUE: u64 = (1 << 0) | (1 << 8) | (1 << 10);
/// HCR_EL2 = RW: EL1 is AArch64.
pub(super) const HCR_EL2_VALUE: u64 = 1 << 31;

/// System register `reg` of the engine's CPU.
pub(super) fn read_sysreg<D>(
    uc: &Unicorn<'_, D>,
    reg: SysRegId,
) -> Result<u64, unicorn_engine::uc_error> {
    let mut c = cp(reg);
    uc.reg_read_arm64_coproc(&mut c).map(|()| c.val)
}

pub(super) fn cp(reg: SysRegId) -> RegisterARM64CP {
    RegisterARM64CP::new()
        .op0(u32::from(reg.op0))
        .op1(u32::from(reg.op1))
        .crn(u32::from(reg.crn))
        .crm(u32::from(reg.crm))
        .op2(u32::from(reg.op2))
}

pub(super) const SCR_EL3: SysRegId = SysRegId::new(3, 6, 1, 1, 0);
pub(super) const SCTLR_EL1: SysRegId = SysRegId::new(3, 0, 1, 0, 0);
/// SCTLR_EL1 bits PSCI CPU_ON clears: MMU, alignment check, data and
/// instruction caches.
pub(super) const SCTLR_M: u64 = 1 << 0;
pub(super) const SCTLR_A: u64 = 1 << 1;
pub(super) const SCTLR_C: u64 = 1 << 2;
pub(super) const SCTLR_I: u64 = 1 << 12;
pub(super) const TCR_EL1: SysRegId = SysRegId::new(3, 0, 2, 0, 2);
pub(super) const TTBR0_EL1: SysRegId = SysRegId::new(3, 0, 2, 0, 0);
pub(super) const TTBR1_EL1: SysRegId = SysRegId::new(3, 0, 2, 0, 1);
pub(super) const HCR_EL2: SysRegId = SysRegId::new(3, 4, 1, 1, 0);
pub(super) const SPSR_EL1: SysRegId = SysRegId::new(3, 0, 4, 0, 0);
pub(super) const CPACR_EL1: SysRegId = SysRegId::new(3, 0, 1, 0, 2);
/// What MPIDR_EL1 reads at EL1 while EL2 is enabled.
pub(super) const VMPIDR_EL2: SysRegId = SysRegId::new(3, 4, 0, 0, 5);
/// MDCR_EL2, whose TPM and TPMCR bits trap EL1's PMU accesses to EL2.
pub(super) const MDCR_EL2: SysRegId = SysRegId::new(3, 4, 1, 1, 1);
/// MDCR_EL2.TPM | TPMCR: with no EL2 software, a trapped access is
/// UNDEFINED at EL1, as on a CPU without a PMU.
pub(super) const MDCR_EL2_NO_PMU: u64 = (1 << 6) | (1 << 5);
/// ID_AA64DFR0_EL1, whose PMUVer field (11:8) says whether a PMU exists.
pub(super) const ID_AA64DFR0_EL1: SysRegId = SysRegId::new(3, 0, 0, 5, 0);
/// MPIDR_EL1 bit 31, RES1.
pub(super) const MPIDR_RES1: u64 = 1 << 31;

/// General purpose registers in unicorn's numbering.
pub(super) const XREGS: [RegisterARM64; 31] = {
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

/// An error code of the CPU engine, shown as unicorn names it
/// (`UC_ERR_` left out, e.g. `EXCEPTION`).
#[derive(Debug, thiserror::Error)]
#[error("{0:?}")]
pub(super) struct EngineCode(pub unicorn_engine::uc_error);

pub(super) fn engine_err(op: impl Into<String>, e: unicorn_engine::uc_error) -> HypervisorError {
    HypervisorError::Engine {
        backend: "emu",
        op: op.into(),
        source: Box::new(EngineCode(e)),
    }
}

/// The registers an address computation reads, from the engine.
pub(super) struct EngineRegs<'a, 'b, D>(pub(super) &'a Unicorn<'b, D>);

impl<D> RegisterSource for EngineRegs<'_, '_, D> {
    type Error = unicorn_engine::uc_error;

    fn read(&mut self, reg: AddrReg) -> Result<u64, Self::Error> {
        match reg {
            AddrReg::X(n) => self
                .0
                .reg_read(*XREGS.get(usize::from(n)).unwrap_or(&RegisterARM64::XZR)),
            AddrReg::Sp => self.0.reg_read(RegisterARM64::SP),
        }
    }
}
