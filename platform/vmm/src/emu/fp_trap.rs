//! CPACR_EL1.FPEN traps, which the software CPU does not implement (its FP
//! access check always passes). While the guest keeps FP/SIMD trapped at
//! some exception level, a code hook looks at each instruction before it
//! executes and, for an FP/SIMD one at a trapped level, stops the engine
//! there with the exception the architecture takes (EC 0x07, built in
//! `exception.rs`). A guest that leaves FP enabled, as most do after boot,
//! runs without the hook and pays nothing.

use unicorn_engine::{RegisterARM64, Unicorn};

use super::exception::GuestFault;
use super::hooks::{read_insn, request_stop};
use super::regs::{CPACR_EL1, cp, engine_err};
use super::state::HookState;
use super::vcpu::EmuVcpu;
use crate::arch::{pstate, syndrome};
use crate::hypervisor::HypervisorError;

/// Whether CPACR_EL1 value `cpacr` traps FP/SIMD at EL0 or EL1.
pub(super) fn traps_any(cpacr: u64) -> bool {
    syndrome::fp_trapped(cpacr, true)
}

fn cpacr(uc: &Unicorn<'_, HookState>) -> Option<u64> {
    let mut c = cp(CPACR_EL1);
    uc.reg_read_arm64_coproc(&mut c).ok().map(|()| c.val)
}

/// The code hook of a watched engine: raises the trap before a trapped
/// FP/SIMD instruction at `pc` executes.
fn watch(uc: &mut Unicorn<'_, HookState>, pc: u64, _size: u32) {
    let el0 = uc
        .reg_read(RegisterARM64::PSTATE)
        .is_ok_and(|p| p & pstate::MODE_MASK == pstate::EL0T);
    let trapped = cpacr(uc).is_some_and(|c| syndrome::fp_trapped(c, el0));
    if trapped && read_insn(uc, pc).is_some_and(syndrome::is_fp_simd) {
        uc.get_data_mut().fault = Some(GuestFault::Undefined);
        request_stop(uc);
    }
}

impl EmuVcpu {
    /// Installs or removes the watch to match the guest's CPACR_EL1;
    /// called before the engine runs (a CPACR_EL1 write that changes
    /// whether FP traps ends the slice, see hooks.rs).
    pub(super) fn sync_fp_watch(&mut self) -> Result<(), HypervisorError> {
        let trapping = cpacr(&self.uc).is_some_and(traps_any);
        if trapping == self.fp_watch.is_some() {
            return Ok(());
        }
        match self.fp_watch.take() {
            Some(id) => self
                .uc
                .remove_hook(id)
                .map_err(|e| engine_err("remove the FP trap watch", e))?,
            None => {
                let id = self
                    .uc
                    .add_code_hook(1, 0, watch)
                    .map_err(|e| engine_err("add the FP trap watch", e))?;
                self.fp_watch = Some(id);
            }
        }
        self.uc.get_data_mut().fp_watching = trapping;
        // Code already translated was compiled without (or with) the hook.
        self.uc
            .ctl_flush_tb()
            .map_err(|e| engine_err("flush translated code", e))
    }
}
