//! Exception and IRQ entry to EL1, as the CPU does it: the software CPU
//! never takes an exception itself (its interrupt hook sees them), so the
//! VMM builds every entry to the guest's vectors.

use super::regs::{SCTLR_A, SCTLR_C, SCTLR_EL1, SCTLR_I, SCTLR_M, cp, engine_err, read_sysreg};
use super::vcpu::EmuVcpu;
use apflab_hypervisor::arch::{self, EntryKind, Reg, pstate};
use apflab_hypervisor::{HypervisorError, Vcpu};

impl EmuVcpu {
    /// Exception entry to EL1 at `VBAR_EL1 + vector`, as the CPU does it
    /// (the software CPU never takes exceptions itself).
    pub(super) fn enter_el1(
        &mut self,
        kind: EntryKind,
        return_pc: u64,
        esr: Option<u64>,
        far: Option<u64>,
    ) -> Result<(), HypervisorError> {
        let old_pstate = self.get_reg(Reg::Pstate)?;
        let vector = arch::vector_offset(old_pstate, kind);
        let from_el0 = old_pstate & pstate::MODE_MASK == pstate::EL0T;
        if from_el0 {
            let sp = self.get_reg(Reg::Sp)?;
            self.set_reg(Reg::SpEl0, sp)?;
        }
        self.set_reg(Reg::ElrEl1, return_pc)?;
        if let Some(esr) = esr {
            self.set_reg(Reg::EsrEl1, esr)?;
        }
        if let Some(far) = far {
            self.set_reg(Reg::FarEl1, far)?;
        }
        self.set_reg(Reg::Pstate, pstate::EL1H_MASKED)?;
        // The SPSR write goes through the coprocessor interface, which also
        // makes the new PSTATE's exception level take effect.
        let ss = self.uc.get_data_mut().debug.take_step_state();
        self.set_reg(Reg::SpsrEl1, old_pstate | ss)?;
        if from_el0 || old_pstate & pstate::MODE_MASK == pstate::EL1T {
            let sp1 = self.get_reg(Reg::SpEl1)?;
            self.set_reg(Reg::Sp, sp1)?;
        }
        let vbar = self.get_reg(Reg::VbarEl1)?;
        self.set_reg(Reg::Pc, vbar + vector)
    }

    /// Starts this vCPU as PSCI CPU_ON does: at EL1h with every interrupt
    /// masked, the MMU and caches off (a CPU turned off with them on comes
    /// back without), at `entry` with x0 = `context_id`.
    pub(super) fn power_on(&mut self, entry: u64, context_id: u64) -> Result<(), HypervisorError> {
        let sctlr =
            read_sysreg(&self.uc, SCTLR_EL1).map_err(|e| engine_err("read SCTLR_EL1", e))?;
        let off = sctlr & !(SCTLR_M | SCTLR_A | SCTLR_C | SCTLR_I);
        if off != sctlr {
            self.uc
                .reg_write_arm64_coproc(&cp(SCTLR_EL1).val(off))
                .map_err(|e| engine_err("write SCTLR_EL1", e))?;
            self.flush_tlb()?;
        }
        self.set_reg(Reg::Pstate, pstate::EL1H_MASKED)?;
        self.set_reg(Reg::X(0), context_id)?;
        self.set_reg(Reg::Pc, entry)
    }

    /// Takes an IRQ now, as the CPU would, if the guest has IRQs unmasked
    /// (PSTATE.I clear); returns whether it did. This backend has no
    /// interrupt input: the run loop calls this between slices when the
    /// emulated GIC signals an interrupt.
    pub fn enter_irq(&mut self) -> Result<bool, HypervisorError> {
        if self.get_reg(Reg::Pstate)? & pstate::I != 0 {
            return Ok(false);
        }
        let pc = self.get_reg(Reg::Pc)?;
        self.enter_el1(EntryKind::Irq, pc, None, None)?;
        Ok(true)
    }
}
