//! The self-hosted debug exceptions a kernel arms through MDSCR_EL1 and
//! the breakpoint and watchpoint registers: hardware breakpoints
//! (`DBGBVR<n>_EL1` / `DBGBCR<n>_EL1`, unlinked address match), watchpoints
//! (`DBGWVR<n>_EL1` / `DBGWCR<n>_EL1`, byte select or power-of-two mask) and
//! software step (MDSCR_EL1.SS with PSTATE.SS set by an exception return).
//!
//! The software CPU has its own model of these registers, but it would
//! report what it finds as a bare exception number the interrupt hook
//! cannot tell from a BRK or an UNDEFINED instruction. So the VMM keeps
//! them: writes at EL1 land here (the engine never sees them), and this
//! file does what the architecture does with them:
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

use unicorn_engine::{RegisterARM64, Unicorn};

use super::exception::{EngineRegs, GuestFault};
use super::hooks::{read_insn, request_stop};
use super::insn_watch;
use super::regs::{SPSR_EL1, cp, engine_err};
use super::state::{HookState, end_slice};
use super::vcpu::EmuVcpu;
use apflab_hypervisor::HypervisorError;
use apflab_hypervisor::arch::access::data_access;
use apflab_hypervisor::arch::{SysRegId, pstate, syndrome};

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
/// The most breakpoints (and watchpoints) the architecture defines.
const MAX_BREAKPOINTS: usize = 16;
/// `eret`.
const ERET: u32 = 0xd69f_03e0;
/// CONTEXTIDR_EL1, which linked context ID breakpoints compare.
const CONTEXTIDR_EL1: SysRegId = SysRegId::new(3, 0, 13, 0, 1);
/// DBGBCR.BT: unlinked and linked address match, linked context ID match.
const BT_ADDRESS: u64 = 0b0000;
const BT_LINKED_ADDRESS: u64 = 0b0001;
const BT_LINKED_CONTEXT: u64 = 0b0011;

/// The debug registers of one vCPU, as the guest wrote them, and the
/// software step state.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct DebugRegs {
    mdscr: u64,
    bvr: [u64; MAX_BREAKPOINTS],
    bcr: [u64; MAX_BREAKPOINTS],
    wvr: [u64; MAX_BREAKPOINTS],
    wcr: [u64; MAX_BREAKPOINTS],
    /// Breakpoints implemented (ID_AA64DFR0_EL1.BRPs + 1).
    breakpoints: usize,
    /// Watchpoints implemented (ID_AA64DFR0_EL1.WRPs + 1).
    watchpoints: usize,
    /// Of the breakpoints, the highest this many can match a context
    /// (ID_AA64DFR0_EL1.CTX_CMPs + 1).
    context_aware: usize,
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
    /// Reset state, for a CPU with `breakpoints` breakpoints (the highest
    /// `context_aware` of which can match a context) and `watchpoints`
    /// watchpoints.
    pub(super) fn new(breakpoints: usize, watchpoints: usize, context_aware: usize) -> Self {
        let breakpoints = breakpoints.min(MAX_BREAKPOINTS);
        DebugRegs {
            mdscr: 0,
            bvr: [0; MAX_BREAKPOINTS],
            bcr: [0; MAX_BREAKPOINTS],
            wvr: [0; MAX_BREAKPOINTS],
            wcr: [0; MAX_BREAKPOINTS],
            breakpoints,
            watchpoints: watchpoints.min(MAX_BREAKPOINTS),
            context_aware: context_aware.min(breakpoints),
            ss: false,
            stepped: None,
            changed: false,
        }
    }

    /// Has the hooks brought up to date at the next run (after a restore).
    pub(super) fn mark_changed(&mut self) {
        self.changed = true;
    }

    /// The register `reg` names, if it is one kept here.
    fn slot(&self, reg: SysRegId) -> Option<Slot> {
        if reg == MDSCR_EL1 {
            return Some(Slot::Mdscr);
        }
        let n = usize::from(reg.crm);
        if !(reg.op0 == 2 && reg.op1 == 0 && reg.crn == 0) {
            return None;
        }
        match reg.op2 {
            4 if n < self.breakpoints => Some(Slot::Bvr(n)),
            5 if n < self.breakpoints => Some(Slot::Bcr(n)),
            6 if n < self.watchpoints => Some(Slot::Wvr(n)),
            7 if n < self.watchpoints => Some(Slot::Wcr(n)),
            _ => None,
        }
    }

    fn read(&self, reg: SysRegId) -> Option<u64> {
        Some(match self.slot(reg)? {
            Slot::Mdscr => self.mdscr,
            Slot::Bvr(n) => self.bvr[n],
            Slot::Bcr(n) => self.bcr[n],
            Slot::Wvr(n) => self.wvr[n],
            Slot::Wcr(n) => self.wcr[n],
        })
    }

    fn write(&mut self, reg: SysRegId, value: u64) -> bool {
        // The upper halves of MDSCR_EL1 and the control registers are RES0.
        match self.slot(reg) {
            None => return false,
            Some(Slot::Mdscr) => {
                if value & MDSCR_SS == 0 {
                    self.ss = false;
                    self.stepped = None;
                }
                self.mdscr = value & 0xffff_ffff;
            }
            Some(Slot::Bvr(n)) => self.bvr[n] = value,
            Some(Slot::Bcr(n)) => self.bcr[n] = value & 0xffff_ffff,
            Some(Slot::Wvr(n)) => self.wvr[n] = value,
            Some(Slot::Wcr(n)) => self.wcr[n] = value & 0xffff_ffff,
        }
        self.changed = true;
        true
    }

    /// The bytes watchpoint `n` watches, `[start, end)` (a byte select
    /// may leave holes: `bytes` are the selected ones of the doubleword at
    /// `start`), if it is enabled for loads or stores at EL0/EL1.
    fn watched(&self, n: usize) -> Option<Watched> {
        let wcr = self.wcr[n];
        let enabled = wcr & 1 != 0;
        let pac = (wcr >> 1) & 0b11;
        let lsc = (wcr >> 3) & 0b11;
        let el1_el0 = wcr & (1 << 13) == 0 && (wcr >> 14) & 0b11 <= 0b01;
        if !(enabled && pac != 0 && lsc != 0 && el1_el0) {
            return None;
        }
        // DBGWCR.WT: linked to the context breakpoint DBGWCR.LBN.
        let link = (wcr & (1 << 20) != 0).then_some(((wcr >> 16) & 0xf) as usize);
        let va = ((self.wvr[n] << 11) as i64 >> 11) as u64;
        let mask = (wcr >> 24) & 0x1f;
        let (start, len, bytes) = match mask {
            0 => (va & !7, 8, ((wcr >> 5) & 0xff) as u8),
            // Masks 1 and 2 are reserved.
            1 | 2 => return None,
            m => (va & !((1u64 << m) - 1), 1u64 << m, 0xff),
        };
        Some(Watched {
            start,
            len,
            bytes,
            pac,
            lsc,
            link,
        })
    }

    /// Whether a watchpoint is armed (the watch hook must be installed).
    fn watching(&self) -> bool {
        self.mdscr & MDSCR_MDE != 0 && (0..self.watchpoints).any(|n| self.watched(n).is_some())
    }

    /// The first watched byte an access of `size` bytes at `va` (a store
    /// with `write`) at EL0 (`el0`) or EL1 meets, if any, with
    /// CONTEXTIDR_EL1 = `context`.
    fn watch_hit(&self, va: u64, size: u64, write: bool, el0: bool, context: u64) -> Option<u64> {
        let end = va.saturating_add(size.max(1));
        (0..self.watchpoints)
            .filter_map(|n| self.watched(n))
            .filter(|w| {
                let el_ok = if el0 {
                    w.pac & 0b10 != 0
                } else {
                    w.pac & 0b01 != 0
                };
                let dir_ok = if write {
                    w.lsc & 0b10 != 0
                } else {
                    w.lsc & 0b01 != 0
                };
                el_ok && dir_ok && w.link.is_none_or(|l| self.context_matches(l, context))
            })
            .filter_map(|w| {
                let first = va.max(w.start);
                let last = end.min(w.start.saturating_add(w.len));
                (first..last).find(|&b| w.len > 8 || w.bytes & (1 << (b - w.start)) != 0)
            })
            .min()
    }

    /// Whether software step is enabled (the engine must run one
    /// instruction at a time).
    pub(super) fn stepping(&self) -> bool {
        self.mdscr & MDSCR_SS != 0
    }

    /// The instruction address of breakpoint `n`, if it is an enabled
    /// address match (unlinked or linked) for non-secure EL0/EL1.
    fn breakpoint_address(&self, n: usize) -> Option<u64> {
        let bcr = self.bcr[n];
        let enabled = bcr & 1 != 0;
        let address = matches!((bcr >> 20) & 0xf, BT_ADDRESS | BT_LINKED_ADDRESS);
        // HMC = 0 and SSC = 0b00 or 0b01: the EL1/EL0 matches of PMC.
        let el1_el0 = bcr & (1 << 13) == 0 && (bcr >> 14) & 0b11 <= 0b01;
        if !(enabled && address && el1_el0 && (bcr >> 1) & 0b11 != 0) {
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
    /// or EL1, with CONTEXTIDR_EL1 = `context`.
    fn breakpoint_matches(&self, pc: u64, el0: bool, context: u64) -> bool {
        (0..self.breakpoints).any(|n| {
            let bcr = self.bcr[n];
            let pmc = (bcr >> 1) & 0b11;
            let el_ok = if el0 {
                pmc & 0b10 != 0
            } else {
                pmc & 0b01 != 0
            };
            let link_ok = (bcr >> 20) & 0xf != BT_LINKED_ADDRESS
                || self.context_matches(((bcr >> 16) & 0xf) as usize, context);
            el_ok && link_ok && self.breakpoint_address(n) == Some(pc & !3)
        })
    }

    /// Whether breakpoint `lbn`, which a linked breakpoint or watchpoint
    /// names, is an enabled linked context ID match on `context`. A link
    /// to a breakpoint that cannot match a context behaves as disabled
    /// (one of the CONSTRAINED UNPREDICTABLE choices, QEMU's).
    fn context_matches(&self, lbn: usize, context: u64) -> bool {
        (self.breakpoints - self.context_aware..self.breakpoints).contains(&lbn)
            && self.bcr[lbn] & 1 != 0
            && (self.bcr[lbn] >> 20) & 0xf == BT_LINKED_CONTEXT
            && context as u32 == self.bvr[lbn] as u32
    }
}

/// A register kept here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Mdscr,
    Bvr(usize),
    Bcr(usize),
    Wvr(usize),
    Wcr(usize),
}

/// What an armed watchpoint watches.
#[derive(Clone, Copy, Debug)]
struct Watched {
    start: u64,
    len: u64,
    /// With `len` 8: the selected bytes (DBGWCR.BAS).
    bytes: u8,
    /// DBGWCR.PAC: bit 0 EL1, bit 1 EL0.
    pac: u64,
    /// DBGWCR.LSC: bit 0 loads, bit 1 stores.
    lsc: u64,
    /// The context breakpoint a linked watchpoint needs to match.
    link: Option<usize>,
}

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
    let kept = uc.get_data_mut().debug.write(reg, value);
    if kept {
        end_slice(uc);
    }
    kept
}

/// CONTEXTIDR_EL1 (0 if the engine cannot read it).
fn context_id(uc: &Unicorn<'_, HookState>) -> u64 {
    let mut c = cp(CONTEXTIDR_EL1);
    uc.reg_read_arm64_coproc(&mut c).map_or(0, |()| c.val)
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
        let watching = st.debug.watching();
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
        if watching != self.watch_hook.is_some() {
            match self.watch_hook.take() {
                Some(id) => self
                    .uc
                    .remove_hook(id)
                    .map_err(|e| engine_err("remove the watchpoint hook", e))?,
                None => {
                    let id = self
                        .uc
                        .add_code_hook(1, 0, watch_hook)
                        .map_err(|e| engine_err("add the watchpoint hook", e))?;
                    self.watch_hook = Some(id);
                }
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
        if self.uc.get_data().watch.mode.is_on()
            && let Some(fault) = insn_watch::check(&mut self.uc, pc)
        {
            self.uc.get_data_mut().fault = Some(fault);
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
        // The engine counts whole blocks, and would end the run on the
        // budget or an unmask before the instruction: here the caller does
        // both, per instruction.
        let st = self.uc.get_data_mut();
        let (insns, slice_insns) = (st.insns, st.slice_insns);
        st.icount.set_budget(i64::MAX);
        st.icount.stop_on_irq_unmask(false);
        let result = self.uc.emu_start(pc, 0, 0, 1);
        let st = self.uc.get_data_mut();
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
            || word == Some(apflab_hypervisor::arch::insn::WFI)
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
        let mut d = DebugRegs::new(6, 4, 2);
        assert!(d.write(BVR0, 0x4008_1002));
        // E, PMC = EL1 only, BAS = 0xf.
        assert!(d.write(BCR0, 0x1e3));
        assert!(d.armed_addresses().is_empty(), "MDE clear");
        assert!(d.write(MDSCR_EL1, MDSCR_MDE | MDSCR_KDE));
        assert_eq!(d.armed_addresses(), vec![0x4008_1000]);
        assert!(d.breakpoint_matches(0x4008_1000, false, 0));
        assert!(!d.breakpoint_matches(0x4008_1000, true, 0));
        assert!(!d.breakpoint_matches(0x4008_1004, false, 0));
    }

    #[test]
    fn a_linked_breakpoint_matches_only_in_its_context() {
        const BVR5: SysRegId = SysRegId::new(2, 0, 0, 5, 4);
        const BCR5: SysRegId = SysRegId::new(2, 0, 0, 5, 5);
        const BCR1: SysRegId = SysRegId::new(2, 0, 0, 1, 5);
        let mut d = DebugRegs::new(6, 4, 2);
        d.write(MDSCR_EL1, MDSCR_MDE | MDSCR_KDE);
        d.write(BVR0, 0x4008_1000);
        // Linked address match (BT 0b0001) to breakpoint 5 (LBN).
        d.write(BCR0, 0x1e7 | (BT_LINKED_ADDRESS << 20) | (5 << 16));
        assert_eq!(d.armed_addresses(), vec![0x4008_1000]);
        assert!(!d.breakpoint_matches(0x4008_1000, false, 0x42), "link off");
        // Breakpoint 5: linked context ID match on 0x42.
        d.write(BVR5, 0x42);
        d.write(BCR5, 1 | (0b11 << 1) | (BT_LINKED_CONTEXT << 20));
        assert!(d.breakpoint_matches(0x4008_1000, false, 0x42));
        assert!(d.breakpoint_matches(0x4008_1000, true, 0x42));
        assert!(!d.breakpoint_matches(0x4008_1000, false, 0x43));
        // A context breakpoint on its own never fires.
        assert!(!d.breakpoint_matches(0x42, false, 0x42));
        // Breakpoint 1 cannot match a context (only 4 and 5 can).
        d.write(BCR1, 1 | (0b11 << 1) | (BT_LINKED_CONTEXT << 20));
        d.write(BCR0, 0x1e7 | (BT_LINKED_ADDRESS << 20) | (1 << 16));
        assert!(!d.breakpoint_matches(0x4008_1000, false, 0));
        // A linked watchpoint needs the same.
        const WVR0: SysRegId = SysRegId::new(2, 0, 0, 0, 6);
        const WCR0: SysRegId = SysRegId::new(2, 0, 0, 0, 7);
        d.write(WVR0, 0x4010_0000);
        d.write(
            WCR0,
            1 | (0b11 << 1) | (0b11 << 3) | (0xff << 5) | (1 << 20) | (5 << 16),
        );
        assert_eq!(
            d.watch_hit(0x4010_0000, 8, true, false, 0x42),
            Some(0x4010_0000)
        );
        assert_eq!(d.watch_hit(0x4010_0000, 8, true, false, 7), None);
    }

    #[test]
    fn breakpoint_addresses_are_sign_extended_and_slots_bounded() {
        let mut d = DebugRegs::new(6, 4, 2);
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
    fn watchpoints_match_selected_bytes_and_direction() {
        const WVR0: SysRegId = SysRegId::new(2, 0, 0, 0, 6);
        const WCR0: SysRegId = SysRegId::new(2, 0, 0, 0, 7);
        let mut d = DebugRegs::new(6, 4, 2);
        d.write(WVR0, 0x4010_0008);
        // E, PAC = EL1 and EL0, LSC = stores, BAS = bytes 4..8.
        d.write(WCR0, 1 | (0b11 << 1) | (0b10 << 3) | (0xf0 << 5));
        assert!(!d.watching(), "MDE clear");
        d.write(MDSCR_EL1, MDSCR_MDE);
        assert!(d.watching());
        assert_eq!(
            d.watch_hit(0x4010_0008, 8, true, false, 0),
            Some(0x4010_000c)
        );
        assert_eq!(d.watch_hit(0x4010_0008, 4, true, true, 0), None);
        assert_eq!(d.watch_hit(0x4010_0008, 8, false, false, 0), None);
        // A masked range: 2^12 bytes, all of them.
        d.write(WCR0, 1 | (0b01 << 1) | (0b11 << 3) | (12 << 24));
        assert_eq!(
            d.watch_hit(0x4010_0ffc, 8, false, false, 0),
            Some(0x4010_0ffc)
        );
        assert_eq!(d.watch_hit(0x4010_0ff8, 8, false, true, 0), None);
        assert_eq!(d.watch_hit(0x4010_1000, 8, true, false, 0), None);
    }

    #[test]
    fn clearing_mdscr_ss_leaves_no_step_pending() {
        let mut d = DebugRegs::new(6, 4, 2);
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
