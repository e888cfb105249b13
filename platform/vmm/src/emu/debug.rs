//! The self-hosted debug exceptions a kernel arms through MDSCR_EL1 and
//! the breakpoint and watchpoint registers: hardware breakpoints
//! (`DBGBVR<n>_EL1` / `DBGBCR<n>_EL1`, unlinked address match), watchpoints
//! (`DBGWVR<n>_EL1` / `DBGWCR<n>_EL1`, byte select or power-of-two mask) and
//! software step (MDSCR_EL1.SS with PSTATE.SS set by an exception return).
//!
//! The software CPU has its own model of these registers, but it would
//! report what it finds as a bare exception number the interrupt hook
//! cannot tell from a BRK or an UNDEFINED instruction. So the VMM keeps
//! them: writes at EL1 land in `debug_regs.rs` (the engine never sees
//! them), and this file does what the architecture does with them:
//! - a breakpoint becomes a code hook limited to its one instruction, which
//!   stops the engine before that instruction executes, when MDSCR_EL1.MDE
//!   is set and debug exceptions are enabled at the current EL (from EL0
//!   always, at EL1 only with MDSCR_EL1.KDE set and PSTATE.D clear; never
//!   while the OS lock is set);
//! - while a watchpoint is armed, a code hook decodes each load and store
//!   before it executes and stops the engine there when the bytes it
//!   accesses meet a watchpoint for that direction and EL (FAR = the first
//!   watched byte accessed, ISS.WnR = the direction);
//! - while MDSCR_EL1.SS is set, the engine runs one instruction at a time
//!   and this file keeps PSTATE.SS (an exception return executed with
//!   debug exceptions disabled copies it from SPSR_EL1.SS, if stepping is
//!   active where it returns to; executing an instruction while stepping
//!   is active clears it; exception entry saves it in SPSR_EL1.SS and
//!   clears it); stepping
//!   active with PSTATE.SS clear takes the Software Step exception before
//!   the next instruction, whose address is ELR_EL1.
//!
//! - a linked address breakpoint (BT 0b0001) or a linked watchpoint
//!   (DBGWCR.WT) also needs the breakpoint its LBN names to be an enabled,
//!   context-aware linked context ID match (BT 0b0011) whose DBGBVR holds
//!   CONTEXTIDR_EL1, checked when the instruction or access is reached.
//!
//! A guest that arms none runs without any of it: no hook, no
//! single-instruction runs (an armed watchpoint costs a check per
//! instruction, an armed breakpoint a call at its one address). Not
//! modelled, as on QEMU: unlinked context ID breakpoints (which never
//! fire) and VMID matches (there is no EL2 for the guest); halting debug.

use unicorn_engine::{RegisterARM64, UcHookId, Unicorn};

use super::debug_regs::MDSCR_KDE;
use super::fault::GuestFault;
use super::insn_watch;
use super::regs::{EngineRegs, SPSR_EL1, engine_err, read_sysreg};
use super::state::{HookState, end_slice, read_insn, request_stop};
use apflab_hypervisor::HypervisorError;
use apflab_hypervisor::arch::access::data_access;
use apflab_hypervisor::arch::{SysRegId, pstate, syndrome};

/// OSLSR_EL1, whose OSLK bit (1) says the OS lock is set.
const OSLSR_EL1: SysRegId = SysRegId::new(2, 0, 1, 1, 4);
/// `eret`.
const ERET: u32 = 0xd69f_03e0;
/// CONTEXTIDR_EL1, which linked context ID breakpoints compare.
const CONTEXTIDR_EL1: SysRegId = SysRegId::new(3, 0, 13, 0, 1);

/// The code hook while a watchpoint is armed: the Watchpoint exception,
/// before the load or store at `pc` executes, if it meets one.
fn watch_hook(uc: &mut Unicorn<'_, HookState>, pc: u64, _size: u32) {
    let Ok(p) = uc.reg_read(RegisterARM64::PSTATE) else {
        return;
    };
    if !enabled(uc, uc.get_data().debug.mdscr, p) {
        return;
    }
    let Some(word) = read_insn(uc, pc) else {
        return;
    };
    let Ok(access) = data_access(word, pc, &mut EngineRegs(uc)) else {
        return;
    };
    let el0 = p & pstate::MODE_MASK == pstate::EL0T;
    let hit =
        uc.get_data()
            .debug
            .watch_hit(access.va, access.size, access.write, el0, context_id(uc));
    if let Some(far) = hit {
        uc.get_data_mut().fault = Some(GuestFault::Watchpoint {
            far,
            write: access.write,
        });
        request_stop(uc);
    }
}

/// Whether debug exceptions (to EL1) are enabled at the EL of `pstate`.
fn enabled(uc: &Unicorn<'_, HookState>, mdscr: u64, pstate: u64) -> bool {
    let os_locked = read_sysreg(uc, OSLSR_EL1).is_ok_and(|v| v & 2 != 0);
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
    let kept = uc.get_data_mut().debug.write(reg, value);
    if kept {
        end_slice(uc);
    }
    kept
}

/// CONTEXTIDR_EL1 (0 if the engine cannot read it).
fn context_id(uc: &Unicorn<'_, HookState>) -> u64 {
    read_sysreg(uc, CONTEXTIDR_EL1).unwrap_or(0)
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
    if enabled(uc, debug.mdscr, p) && debug.breakpoint_matches(pc, el0, context_id(uc)) {
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

/// The engine hooks the guest's debug registers ask for.
#[derive(Default)]
pub(super) struct DebugHooks {
    /// The code hooks of the armed hardware breakpoints, by address.
    breakpoints: Vec<(u64, UcHookId)>,
    /// The code hook that checks loads and stores while a watchpoint is
    /// armed.
    watch: Option<UcHookId>,
}

impl DebugHooks {
    /// Installs the breakpoint hooks the guest's registers ask for, if they
    /// changed; returns whether software step is enabled.
    pub(super) fn sync(
        &mut self,
        uc: &mut Unicorn<'static, HookState>,
    ) -> Result<bool, HypervisorError> {
        let st = uc.get_data_mut();
        let stepping = st.debug.stepping();
        if !st.debug.changed {
            return Ok(stepping);
        }
        st.debug.changed = false;
        let want = st.debug.armed_addresses();
        let watching = st.debug.watching();
        let have: Vec<u64> = self.breakpoints.iter().map(|&(a, _)| a).collect();
        if want != have {
            for (_, id) in self.breakpoints.drain(..) {
                uc.remove_hook(id)
                    .map_err(|e| engine_err("remove a breakpoint hook", e))?;
            }
            for a in want {
                let id = uc
                    .add_code_hook(a, a + 3, breakpoint_hook)
                    .map_err(|e| engine_err("add a breakpoint hook", e))?;
                self.breakpoints.push((a, id));
            }
        }
        if watching != self.watch.is_some() {
            match self.watch.take() {
                Some(id) => uc
                    .remove_hook(id)
                    .map_err(|e| engine_err("remove the watchpoint hook", e))?,
                None => {
                    let id = uc
                        .add_code_hook(1, 0, watch_hook)
                        .map_err(|e| engine_err("add the watchpoint hook", e))?;
                    self.watch = Some(id);
                }
            }
        }
        // Code already translated was compiled without (or with) the
        // hooks, and without the engine's instruction counter, which the
        // first single-instruction run adds.
        uc.ctl_flush_tb()
            .map_err(|e| engine_err("flush translated code", e))?;
        Ok(stepping)
    }
}

/// Runs the one instruction at `pc` with software step enabled, and
/// keeps PSTATE.SS; when stepping is active with PSTATE.SS clear, takes
/// the Software Step exception instead.
pub(super) fn step(uc: &mut Unicorn<'static, HookState>, pc: u64) -> Result<Step, HypervisorError> {
    let p = uc
        .reg_read(RegisterARM64::PSTATE)
        .map_err(|e| engine_err("read PSTATE", e))?;
    let active = enabled(uc, uc.get_data().debug.mdscr, p);
    let st = uc.get_data_mut();
    if active && !st.debug.ss {
        let stepped = st.debug.stepped.take();
        st.fault = Some(GuestFault::SoftwareStep {
            isv: stepped.is_some(),
            ex: stepped.unwrap_or(false),
        });
        return Ok(Step::Stop(Ok(())));
    }
    if uc.get_data().watch.mode.is_on()
        && let Some(fault) = insn_watch::check(uc, pc)
    {
        uc.get_data_mut().fault = Some(fault);
        return Ok(Step::Stop(Ok(())));
    }
    let word = read_insn(uc, pc);
    let eret_ss = if word == Some(ERET) {
        let spsr = read_sysreg(uc, SPSR_EL1).map_err(|e| engine_err("read SPSR_EL1", e))?;
        Some(spsr & pstate::SS != 0)
    } else {
        None
    };
    // The engine counts whole blocks, and would end the run on the
    // budget or an unmask before the instruction: here the caller does
    // both, per instruction.
    let st = uc.get_data_mut();
    let (insns, slice_insns) = (st.insns, st.slice_insns);
    st.icount.set_budget(i64::MAX);
    st.icount.stop_on_irq_unmask(false);
    let result = uc.emu_start(pc, 0, 0, 1);
    let st = uc.get_data_mut();
    st.icount.stop_on_irq_unmask(st.irq_waiting);
    // Counted here, not by the engine.
    st.run_budget = st.icount.read().budget;
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
        let p = uc
            .reg_read(RegisterARM64::PSTATE)
            .map_err(|e| engine_err("read PSTATE", e))?;
        let active_after = enabled(uc, uc.get_data().debug.mdscr, p);
        let debug = &mut uc.get_data_mut().debug;
        debug.ss = spsr_ss && !active && active_after;
        if !active {
            debug.stepped = None;
        }
    }
    let st = uc.get_data();
    if result.is_err()
        || !executed
        || st.pending.is_some()
        || st.stop_requested
        || word == Some(apflab_hypervisor::arch::insn::WFI)
    {
        return Ok(Step::Stop(result));
    }
    Ok(Step::Next)
}
