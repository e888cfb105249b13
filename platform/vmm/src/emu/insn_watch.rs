//! Two checks the software CPU does not make: CPACR_EL1.FPEN traps (its FP
//! access check always passes) and SCTLR_EL1.A alignment checking (it only
//! checks the accesses that must always be aligned, such as exclusives).
//! While the guest has either on, a code hook looks at each instruction
//! before it executes and stops the engine there with the exception the
//! architecture takes: EC 0x07 for an FP/SIMD instruction at a trapped
//! level, an alignment fault for a load or store whose address is not a
//! multiple of its element size (the syndromes are built in
//! `exception.rs`). A guest that leaves FP enabled and alignment checking
//! off, as most do after boot, runs without the hook and pays nothing.

use unicorn_engine::{RegisterARM64, Unicorn};

use super::exception::{EngineRegs, GuestFault};
use super::hooks::{read_insn, request_stop};
use super::regs::{CPACR_EL1, SCTLR_A, SCTLR_EL1, cp, engine_err};
use super::state::HookState;
use super::vcpu::EmuVcpu;
use crate::arch::access::{alignment_unit, data_access};
use crate::arch::{SysRegId, pstate, syndrome};
use crate::hypervisor::HypervisorError;

/// Whether the watch is needed with these CPACR_EL1 and SCTLR_EL1 values.
pub(super) fn needed(cpacr: u64, sctlr: u64) -> bool {
    syndrome::fp_trapped(cpacr, true) || sctlr & SCTLR_A != 0
}

fn read(uc: &Unicorn<'_, HookState>, reg: SysRegId) -> Option<u64> {
    let mut c = cp(reg);
    uc.reg_read_arm64_coproc(&mut c).ok().map(|()| c.val)
}

/// Whether the watch is needed after `value` is written to `reg` (one of
/// CPACR_EL1 and SCTLR_EL1; the other keeps its current value).
pub(super) fn needed_after_write(uc: &Unicorn<'_, HookState>, reg: SysRegId, value: u64) -> bool {
    let (cpacr, sctlr) = if reg == CPACR_EL1 {
        (value, read(uc, SCTLR_EL1).unwrap_or(0))
    } else {
        (read(uc, CPACR_EL1).unwrap_or(0), value)
    };
    needed(cpacr, sctlr)
}

/// The code hook of a watched engine: raises the trap or the alignment
/// fault before the instruction at `pc` executes.
fn watch(uc: &mut Unicorn<'_, HookState>, pc: u64, _size: u32) {
    let el0 = uc
        .reg_read(RegisterARM64::PSTATE)
        .is_ok_and(|p| p & pstate::MODE_MASK == pstate::EL0T);
    let Some(word) = read_insn(uc, pc) else {
        return;
    };
    let fp_trapped = read(uc, CPACR_EL1).is_some_and(|c| syndrome::fp_trapped(c, el0));
    let fault = if fp_trapped && syndrome::is_fp_simd(word) {
        Some(GuestFault::Undefined)
    } else if read(uc, SCTLR_EL1).is_some_and(|s| s & SCTLR_A != 0)
        && data_access(word, pc, &mut EngineRegs(uc))
            .is_ok_and(|a| a.va % alignment_unit(word, a.size) != 0)
    {
        Some(GuestFault::Alignment)
    } else {
        None
    };
    if fault.is_some() {
        uc.get_data_mut().fault = fault;
        request_stop(uc);
    }
}

impl EmuVcpu {
    /// Installs or removes the watch to match the guest's CPACR_EL1 and
    /// SCTLR_EL1; called before the engine runs (a write to either that
    /// changes whether the watch is needed ends the slice, see hooks.rs).
    pub(super) fn sync_insn_watch(&mut self) -> Result<(), HypervisorError> {
        let on = needed(
            read(&self.uc, CPACR_EL1).unwrap_or(0),
            read(&self.uc, SCTLR_EL1).unwrap_or(0),
        );
        if on == self.insn_watch.is_some() {
            return Ok(());
        }
        match self.insn_watch.take() {
            Some(id) => self
                .uc
                .remove_hook(id)
                .map_err(|e| engine_err("remove the instruction watch", e))?,
            None => {
                let id = self
                    .uc
                    .add_code_hook(1, 0, watch)
                    .map_err(|e| engine_err("add the instruction watch", e))?;
                self.insn_watch = Some(id);
            }
        }
        self.uc.get_data_mut().watching = on;
        // Code already translated was compiled without (or with) the hook.
        self.uc
            .ctl_flush_tb()
            .map_err(|e| engine_err("flush translated code", e))
    }
}
