//! The self-hosted debug exceptions a kernel arms through MDSCR_EL1 and
//! the breakpoint registers: hardware breakpoints (DBGBVR<n>_EL1 /
//! DBGBCR<n>_EL1, unlinked address match) and software step
//! (MDSCR_EL1.SS with PSTATE.SS set by an exception return).
//!
//! The software CPU stores these registers and would act on them itself,
//! but raises what it finds as a bare exception number the interrupt hook
//! cannot tell from a BRK or an UNDEFINED instruction. So the VMM keeps
//! them: writes at EL1 land here (the engine never sees them), and this
//! file does what the architecture does with them:
//! - a breakpoint becomes a code hook limited to its one instruction, which
//!   stops the engine before that instruction executes, when MDSCR_EL1.MDE
//!   is set and debug exceptions are enabled at the current EL (from EL0
//!   always, at EL1 only with MDSCR_EL1.KDE set and PSTATE.D clear; never
//!   while the OS lock is set);
//! - while MDSCR_EL1.SS is set, the engine runs one instruction at a time
//!   and this file keeps PSTATE.SS (an exception return executed with
//!   debug exceptions disabled copies it from SPSR_EL1.SS, if stepping is
//!   active where it returns to; executing an instruction while stepping is active clears
//!   it; exception entry saves it in SPSR_EL1.SS and clears it); stepping
//!   active with PSTATE.SS clear takes the Software Step exception before
//!   the next instruction, whose address is ELR_EL1.
//!
//! A guest that arms neither runs without any of it: no hook, no
//! single-instruction runs. Not modelled: watchpoints (DBGWVR/DBGWCR are
//! stored by the engine, which never acts on them since MDSCR_EL1 is kept
//! from it: ID_AA64DFR0_EL1.WRPs still reports the engine's four), linked
//! and context-matching breakpoints, halting debug.

use unicorn_engine::{RegisterARM64, Unicorn};

use super::exception::GuestFault;
use super::hooks::{read_insn, request_stop};
use super::regs::{SPSR_EL1, cp, engine_err};
use super::state::HookState;
use super::vcpu::EmuVcpu;
use crate::arch::{SysRegId, pstate, syndrome};
use crate::hypervisor::HypervisorError;

/// MDSCR_EL1.
const MDSCR_EL1: SysRegId = SysRegId::new(2, 0, 0, 2, 2);
/// OSLSR_EL1, whose OSLK bit (1) says the OS lock is set.
const OSLSR_EL1: SysRegId = SysRegId::new(2, 0, 1, 1, 4);
/// MDSCR_EL1.SS: software step enabled.
const MDSCR_SS: u64 = 1 << 0;
/// MDSCR_EL1.KDE: debug exceptions enabled at EL1 (with PSTATE.D clear).
const MDSCR_KDE: u64 = 1 << 13;
/// MDSCR_EL1.MDE: breakpoint and watchpoint exceptions enabled.
const MDSCR_MDE: u64 = 1 << 15;
/// The most breakpoints the architecture defines.
const MAX_BREAKPOINTS: usize = 16;
/// `eret`.
const ERET: u32 = 0xd69f_03e0;

/// The debug registers of one vCPU, as the guest wrote them, and the
/// software step state.
#[derive(Debug)]
pub(super) struct DebugRegs {
    mdscr: u64,
    bvr: [u64; MAX_BREAKPOINTS],
    bcr: [u64; MAX_BREAKPOINTS],
    /// Breakpoints implemented (ID_AA64DFR0_EL1.BRPs + 1).
    breakpoints: usize,
    /// PSTATE.SS.
    ss: bool,
    /// An instruction was stepped and the step exception is due: whether
    /// it was a load-exclusive (ISS.EX).
    stepped: Option<bool>,
    /// A breakpoint register or MDSCR_EL1 changed since the hooks were
    /// installed.
    changed: bool,
}

impl DebugRegs {
    /// Reset state, for a CPU with `breakpoints` breakpoints.
    pub(super) fn new(breakpoints: usize) -> Self {
        DebugRegs {
            mdscr: 0,
            bvr: [0; MAX_BREAKPOINTS],
            bcr: [0; MAX_BREAKPOINTS],
            breakpoints: breakpoints.min(MAX_BREAKPOINTS),
            ss: false,
            stepped: None,
            changed: false,
        }
    }

    /// The register `reg` names, if it is one kept here: MDSCR_EL1 (`None`)
    /// or breakpoint `n`'s value (`Some((n, false))`) or control
    /// (`Some((n, true))`) register.
    fn slot(&self, reg: SysRegId) -> Option<Option<(usize, bool)>> {
        if reg == MDSCR_EL1 {
            return Some(None);
        }
        let n = usize::from(reg.crm);
        let is_bp = reg.op0 == 2 && reg.op1 == 0 && reg.crn == 0 && n < self.breakpoints;
        match reg.op2 {
            4 if is_bp => Some(Some((n, false))),
            5 if is_bp => Some(Some((n, true))),
            _ => None,
        }
    }

    fn read(&self, reg: SysRegId) -> Option<u64> {
        Some(match self.slot(reg)? {
            None => self.mdscr,
            Some((n, false)) => self.bvr[n],
            Some((n, true)) => self.bcr[n],
        })
    }

    fn write(&mut self, reg: SysRegId, value: u64) -> bool {
        // The upper halves of MDSCR_EL1 and DBGBCR<n>_EL1 are RES0.
        match self.slot(reg) {
            None => return false,
            Some(None) => {
                if value & MDSCR_SS == 0 {
                    self.ss = false;
                    self.stepped = None;
                }
                self.mdscr = value & 0xffff_ffff;
            }
            Some(Some((n, false))) => self.bvr[n] = value,
            Some(Some((n, true))) => self.bcr[n] = value & 0xffff_ffff,
        }
        self.changed = true;
        true
    }

    /// Whether software step is enabled (the engine must run one
    /// instruction at a time).
    fn stepping(&self) -> bool {
        self.mdscr & MDSCR_SS != 0
    }

    /// The instruction address of breakpoint `n`, if it is an enabled
    /// unlinked address match for non-secure EL0/EL1.
    fn breakpoint_address(&self, n: usize) -> Option<u64> {
        let bcr = self.bcr[n];
        let enabled = bcr & 1 != 0;
        let unlinked_address = (bcr >> 20) & 0xf == 0;
        // HMC = 0 and SSC = 0b00 or 0b01: the EL1/EL0 matches of PMC.
        let el1_el0 = bcr & (1 << 13) == 0 && (bcr >> 14) & 0b11 <= 0b01;
        if !(enabled && unlinked_address && el1_el0 && (bcr >> 1) & 0b11 != 0) {
            return None;
        }
        // DBGBVR holds VA[52:2]; the bits above are a sign extension.
        Some(((self.bvr[n] << 11) as i64 >> 11) as u64 & !3)
    }

    /// The addresses the breakpoint hooks must watch, in slot order, no
    /// address twice.
    fn armed_addresses(&self) -> Vec<u64> {
        let mut out = Vec::new();
        if self.mdscr & MDSCR_MDE == 0 {
            return out;
        }
        for a in (0..self.breakpoints).filter_map(|n| self.breakpoint_address(n)) {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }

    /// Whether a breakpoint matches the instruction at `pc` at EL0 (`el0`)
    /// or EL1.
    fn breakpoint_matches(&self, pc: u64, el0: bool) -> bool {
        (0..self.breakpoints).any(|n| {
            let pmc = (self.bcr[n] >> 1) & 0b11;
            let el_ok = if el0 {
                pmc & 0b10 != 0
            } else {
                pmc & 0b01 != 0
            };
            el_ok && self.breakpoint_address(n) == Some(pc & !3)
        })
    }
}

/// Whether debug exceptions (to EL1) are enabled at the EL of `pstate`.
fn enabled(uc: &Unicorn<'_, HookState>, mdscr: u64, pstate: u64) -> bool {
    let mut c = cp(OSLSR_EL1);
    let os_locked = uc
        .reg_read_arm64_coproc(&mut c)
        .is_ok_and(|()| c.val & 2 != 0);
    if os_locked {
        return false;
    }
    let el0 = pstate & pstate::MODE_MASK == pstate::EL0T;
    el0 || (mdscr & MDSCR_KDE != 0 && pstate & pstate::D == 0)
}

/// An MRS of a register kept here: its value (`None` if `reg` is not one,
/// or the access is from EL0, where the engine makes it UNDEFINED).
pub(super) fn on_mrs(uc: &Unicorn<'_, HookState>, reg: SysRegId) -> Option<u64> {
    if at_el0(uc) {
        return None;
    }
    uc.get_data().debug.read(reg)
}

/// An MSR to a register kept here: whether it was one (else the engine
/// handles the write). A write ends the slice, so that the hooks and the
/// stepping mode follow it before the next block (the guest's ISB ends
/// the block).
pub(super) fn on_msr(uc: &mut Unicorn<'_, HookState>, reg: SysRegId, value: u64) -> bool {
    if at_el0(uc) {
        return false;
    }
    let st = uc.get_data_mut();
    let kept = st.debug.write(reg, value);
    st.end_slice |= kept;
    kept
}

fn at_el0(uc: &Unicorn<'_, HookState>) -> bool {
    uc.reg_read(RegisterARM64::PSTATE)
        .is_ok_and(|p| p & pstate::MODE_MASK == pstate::EL0T)
}

/// The code hook on an armed breakpoint's instruction: the Breakpoint
/// exception, before the instruction executes, if debug exceptions are
/// enabled at this EL and a breakpoint for this EL matches.
fn breakpoint_hook(uc: &mut Unicorn<'_, HookState>, pc: u64, _size: u32) {
    let Ok(p) = uc.reg_read(RegisterARM64::PSTATE) else {
        return;
    };
    let debug = &uc.get_data().debug;
    let el0 = p & pstate::MODE_MASK == pstate::EL0T;
    if enabled(uc, debug.mdscr, p) && debug.breakpoint_matches(pc, el0) {
        uc.get_data_mut().fault = Some(GuestFault::HwBreakpoint);
        request_stop(uc);
    }
}

/// What one single-instruction run of a stepping engine came to.
pub(super) enum Step {
    /// The instruction executed and nothing stopped the engine: go on.
    Next,
    /// The engine stopped for a reason of its own (a hook, an exit, a
    /// fault, WFI), or the step exception is due: the run's result.
    Stop(Result<(), unicorn_engine::uc_error>),
}

impl EmuVcpu {
    /// Installs the breakpoint hooks the guest's registers ask for, if they
    /// changed; returns whether software step is enabled.
    pub(super) fn sync_debug(&mut self) -> Result<bool, HypervisorError> {
        let st = self.uc.get_data_mut();
        let stepping = st.debug.stepping();
        if !st.debug.changed {
            return Ok(stepping);
        }
        st.debug.changed = false;
        let want = st.debug.armed_addresses();
        let have: Vec<u64> = self.breakpoint_hooks.iter().map(|&(a, _)| a).collect();
        if want != have {
            for (_, id) in self.breakpoint_hooks.drain(..) {
                self.uc
                    .remove_hook(id)
                    .map_err(|e| engine_err("remove a breakpoint hook", e))?;
            }
            for a in want {
                let id = self
                    .uc
                    .add_code_hook(a, a + 3, breakpoint_hook)
                    .map_err(|e| engine_err("add a breakpoint hook", e))?;
                self.breakpoint_hooks.push((a, id));
            }
        }
        // Code already translated was compiled without (or with) the
        // hooks, and without the engine's instruction counter, which the
        // first single-instruction run adds.
        self.uc
            .ctl_flush_tb()
            .map_err(|e| engine_err("flush translated code", e))?;
        Ok(stepping)
    }

    /// Runs the one instruction at `pc` with software step enabled, and
    /// keeps PSTATE.SS; when stepping is active with PSTATE.SS clear, takes
    /// the Software Step exception instead.
    pub(super) fn step(&mut self, pc: u64) -> Result<Step, HypervisorError> {
        let p = self
            .uc
            .reg_read(RegisterARM64::PSTATE)
            .map_err(|e| engine_err("read PSTATE", e))?;
        let active = enabled(&self.uc, self.uc.get_data().debug.mdscr, p);
        let st = self.uc.get_data_mut();
        if active && !st.debug.ss {
            let stepped = st.debug.stepped.take();
            st.fault = Some(GuestFault::SoftwareStep {
                isv: stepped.is_some(),
                ex: stepped.unwrap_or(false),
            });
            return Ok(Step::Stop(Ok(())));
        }
        let word = read_insn(&self.uc, pc);
        let eret_ss = if word == Some(ERET) {
            let mut c = cp(SPSR_EL1);
            self.uc
                .reg_read_arm64_coproc(&mut c)
                .map_err(|e| engine_err("read SPSR_EL1", e))?;
            Some(c.val & pstate::SS != 0)
        } else {
            None
        };
        // The counting block hook counts whole blocks, and would end the
        // run on the budget or an unmask before the instruction: here the
        // caller does both, per instruction.
        let st = self.uc.get_data_mut();
        let (insns, slice_insns) = (st.insns, st.slice_insns);
        let (budget, irq_waiting) = (st.budget, st.irq_waiting);
        st.budget = u64::MAX;
        st.irq_waiting = false;
        let result = self.uc.emu_start(pc, 0, 0, 1);
        let st = self.uc.get_data_mut();
        st.budget = budget;
        st.irq_waiting = irq_waiting;
        let executed = st.fault.is_none();
        st.insns = insns + u64::from(executed);
        st.slice_insns = slice_insns + u64::from(executed);
        if executed && active {
            st.debug.ss = false;
            st.debug.stepped = Some(word.is_some_and(syndrome::is_load_exclusive));
        }
        if let (true, Some(spsr_ss)) = (executed, eret_ss) {
            // An exception return keeps SPSR_EL1.SS only if it is executed
            // with debug exceptions disabled and returns to where stepping
            // is active.
            let p = self
                .uc
                .reg_read(RegisterARM64::PSTATE)
                .map_err(|e| engine_err("read PSTATE", e))?;
            let active_after = enabled(&self.uc, self.uc.get_data().debug.mdscr, p);
            let debug = &mut self.uc.get_data_mut().debug;
            debug.ss = spsr_ss && !active && active_after;
            if !active {
                debug.stepped = None;
            }
        }
        let st = self.uc.get_data();
        if result.is_err()
            || !executed
            || st.pending.is_some()
            || st.stop_requested
            || word == Some(crate::arch::insn::WFI)
        {
            return Ok(Step::Stop(result));
        }
        Ok(Step::Next)
    }

    /// PSTATE.SS for the SPSR_EL1 of an exception entry, which clears it.
    pub(super) fn take_step_state(&mut self) -> u64 {
        let debug = &mut self.uc.get_data_mut().debug;
        debug.stepped = None;
        if std::mem::take(&mut debug.ss) {
            pstate::SS
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BVR0: SysRegId = SysRegId::new(2, 0, 0, 0, 4);
    const BCR0: SysRegId = SysRegId::new(2, 0, 0, 0, 5);
    const BCR6: SysRegId = SysRegId::new(2, 0, 0, 6, 5);

    #[test]
    fn breakpoints_arm_with_mde_and_match_their_el() {
        let mut d = DebugRegs::new(6);
        assert!(d.write(BVR0, 0x4008_1002));
        // E, PMC = EL1 only, BAS = 0xf.
        assert!(d.write(BCR0, 0x1e3));
        assert!(d.armed_addresses().is_empty(), "MDE clear");
        assert!(d.write(MDSCR_EL1, MDSCR_MDE | MDSCR_KDE));
        assert_eq!(d.armed_addresses(), vec![0x4008_1000]);
        assert!(d.breakpoint_matches(0x4008_1000, false));
        assert!(!d.breakpoint_matches(0x4008_1000, true));
        assert!(!d.breakpoint_matches(0x4008_1004, false));
        // Linked (BT = 0b0001): not an unlinked address match.
        assert!(d.write(BCR0, 0x1e3 | (1 << 20)));
        assert!(d.armed_addresses().is_empty());
    }

    #[test]
    fn breakpoint_addresses_are_sign_extended_and_slots_bounded() {
        let mut d = DebugRegs::new(6);
        d.write(MDSCR_EL1, MDSCR_MDE);
        d.write(BVR0, 0x001f_ffff_8000_0000);
        d.write(BCR0, 0x1e7);
        assert_eq!(d.armed_addresses(), vec![0xffff_ffff_8000_0000]);
        // Slot 6 does not exist on a CPU with 6: the engine handles it.
        assert!(!d.write(BCR6, 1));
        assert_eq!(d.read(BCR6), None);
        assert_eq!(d.read(BCR0), Some(0x1e7));
    }

    #[test]
    fn clearing_mdscr_ss_leaves_no_step_pending() {
        let mut d = DebugRegs::new(6);
        d.write(MDSCR_EL1, MDSCR_SS | MDSCR_KDE);
        assert!(d.stepping());
        d.ss = true;
        d.stepped = Some(false);
        d.write(MDSCR_EL1, MDSCR_KDE);
        assert!(!d.stepping());
        assert!(!d.ss);
        assert_eq!(d.stepped, None);
    }
}
