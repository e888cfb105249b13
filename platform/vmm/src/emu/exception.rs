//! Synchronous exceptions the guest takes to its own EL1 vectors.
//!
//! The software CPU reports them without syndrome (its interrupt hook gets
//! a bare exception number, a failed TLB fill only a page), so the hooks
//! record what they saw as a [`GuestFault`] and, once the engine has
//! stopped, this file builds ESR_EL1 and FAR_EL1 as the architecture
//! defines them (the instruction at PC is decoded for the exact data
//! address) and enters the guest's vector. The only case the run does not
//! survive is the one real hardware does not either: an exception taken at
//! the very vector it would enter, which repeats forever.
//!
//! The debug exceptions come from `debug.rs`: hardware breakpoints (EC
//! 0x30/0x31, ELR = the breakpoint's instruction, not executed),
//! watchpoints (EC 0x34/0x35 with WnR, FAR = the first watched byte
//! accessed, ELR = the load or store, not executed) and software step
//! (EC 0x32/0x33 with ISV/EX, ELR = the next instruction).
//!
//! Not modelled: SError (nothing in the machine raises one: unassigned
//! addresses answer with a synchronous external abort, and no device
//! reports an asynchronous error) and FIQ (the GIC signals only group 1
//! interrupts, as IRQs).

use super::fault::{Access, GuestFault};
use super::regs::{CPACR_EL1, EngineRegs, SCTLR_EL1, read_sysreg};
use super::state::read_insn;
use super::vcpu::EmuVcpu;
use apflab_hypervisor::arch::access::data_access;
use apflab_hypervisor::arch::syndrome::{self, FaultStatus};
use apflab_hypervisor::arch::{self, EntryKind, Reg, pstate};
use apflab_hypervisor::{CrashReason, HypervisorError, Vcpu, VmExit};

/// `DC <op>, Xt` other than DC ZVA: cache maintenance by VA.
fn is_cache_maintenance(word: u32) -> bool {
    let sys_crn7 = word & 0xfff8_f000 == 0xd508_7000;
    let zva = word & 0xffff_ffe0 == 0xd50b_7420;
    sys_crn7 && !zva
}

impl EmuVcpu {
    /// The data address and direction of the load/store at `pc`, if it
    /// decodes as one.
    fn data_address(&self, pc: u64) -> Option<(u64, u64, bool, bool)> {
        let word = read_insn(&self.uc, pc)?;
        let access = data_access(word, pc, &mut EngineRegs(&self.uc)).ok()?;
        Some((
            access.va,
            access.size,
            access.write,
            is_cache_maintenance(word),
        ))
    }

    /// ESR and FAR of `fault` taken at `pc` from EL0 (`el0`) or EL1.
    fn syndrome_of(&self, fault: GuestFault, pc: u64, el0: bool) -> (u64, Option<u64>) {
        match fault {
            GuestFault::Undefined => {
                let cpacr = read_sysreg(&self.uc, CPACR_EL1).unwrap_or(0);
                let sctlr = read_sysreg(&self.uc, SCTLR_EL1).unwrap_or(0);
                let word = read_insn(&self.uc, pc);
                let fp = word.is_some_and(syndrome::is_fp_simd);
                let el0_trap = word
                    .filter(|_| el0)
                    .and_then(|w| syndrome::el0_trap(w, sctlr));
                if fp && syndrome::fp_trapped(cpacr, el0) {
                    (syndrome::fp_access(), None)
                } else if let Some(esr) = el0_trap {
                    (esr, None)
                } else {
                    (syndrome::undefined(), None)
                }
            }
            // FAR is UNKNOWN for both.
            GuestFault::HwBreakpoint => (syndrome::hw_breakpoint(el0), None),
            GuestFault::Watchpoint { far, write } => {
                let cm = read_insn(&self.uc, pc).is_some_and(is_cache_maintenance);
                (syndrome::watchpoint(el0, write, cm), Some(far))
            }
            GuestFault::SoftwareStep { isv, ex } => (syndrome::software_step(el0, isv, ex), None),
            GuestFault::Breakpoint => {
                let imm = read_insn(&self.uc, pc).map_or(0, |w| ((w >> 5) & 0xffff) as u16);
                (syndrome::breakpoint(imm), None)
            }
            GuestFault::Abort {
                access: Access::Fetch,
                page_va,
                status,
            } => {
                // A fetch faults on the page it is in, unless the engine
                // reports a page the instruction is not on.
                let far = if pc & !0x3ff == page_va & !0x3ff {
                    pc
                } else {
                    page_va
                };
                (syndrome::instruction_abort(el0, status), Some(far))
            }
            GuestFault::External {
                access: Access::Fetch,
            } => (
                syndrome::instruction_abort(el0, FaultStatus::External),
                Some(pc),
            ),
            GuestFault::Abort {
                page_va,
                access,
                status,
            } => {
                let write = access == Access::Write;
                let (far, cm) = match self.data_address(pc) {
                    // An access that starts below the faulting page and
                    // runs into it faults at the page's first byte.
                    Some((va, size, _, cm)) if page_va > va && page_va - va < size => (page_va, cm),
                    Some((va, _, _, cm)) => (va, cm),
                    None => (page_va, false),
                };
                (syndrome::data_abort(el0, write, cm, status), Some(far))
            }
            GuestFault::External { access } => {
                let (far, write, cm) = self
                    .data_address(pc)
                    .map_or((0, access == Access::Write, false), |(va, _, w, cm)| {
                        (va, w, cm)
                    });
                (
                    syndrome::data_abort(el0, write, cm, FaultStatus::External),
                    Some(far),
                )
            }
            GuestFault::Alignment => {
                let (far, write, cm) = self
                    .data_address(pc)
                    .map_or((0, false, false), |(va, _, w, cm)| (va, w, cm));
                (
                    syndrome::data_abort(el0, write, cm, FaultStatus::Alignment),
                    Some(far),
                )
            }
        }
    }

    /// Enters the guest's synchronous exception vector for `fault`, taken
    /// at the current PC (the faulting instruction, which is ELR_EL1);
    /// the crash it is if that PC is the vector itself.
    pub(super) fn take_fault(
        &mut self,
        fault: GuestFault,
    ) -> Result<Option<VmExit>, HypervisorError> {
        let pc = self.get_reg(Reg::Pc)?;
        let old_pstate = self.get_reg(Reg::Pstate)?;
        let el0 = old_pstate & pstate::MODE_MASK == pstate::EL0T;
        let (esr, far) = self.syndrome_of(fault, pc, el0);
        let vbar = self.get_reg(Reg::VbarEl1)?;
        let offset = arch::vector_offset(old_pstate, EntryKind::Sync);
        if pc == vbar.wrapping_add(offset) {
            // The exception that led here left its syndrome in the EL1
            // registers: name it, it is the guest's real problem.
            let (elr, first_esr, first_far) = (
                self.get_reg(Reg::ElrEl1)?,
                self.get_reg(Reg::EsrEl1)?,
                self.get_reg(Reg::FarEl1)?,
            );
            return Ok(Some(VmExit::Crash {
                pc: elr,
                addr: Some(first_far),
                reason: CrashReason::NoVectorTable {
                    esr: first_esr,
                    far: first_far,
                    vbar,
                    offset,
                    again_esr: esr,
                },
            }));
        }
        self.enter_el1(EntryKind::Sync, pc, Some(esr), far)?;
        Ok(None)
    }
}
