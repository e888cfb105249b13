//! The debug registers of one vCPU as the guest programs them (MDSCR_EL1,
//! `DBGBVR<n>_EL1`/`DBGBCR<n>_EL1`, `DBGWVR<n>_EL1`/`DBGWCR<n>_EL1`) and the
//! software step state, with what the architecture makes of them: which
//! breakpoints are armed and match, which bytes a watchpoint watches. No
//! engine here: `debug.rs` enforces them on the engine.

use apflab_hypervisor::arch::{SysRegId, pstate};

/// MDSCR_EL1.
const MDSCR_EL1: SysRegId = SysRegId::new(2, 0, 0, 2, 2);
/// MDSCR_EL1.SS: software step enabled.
const MDSCR_SS: u64 = 1 << 0;
/// MDSCR_EL1.KDE: debug exceptions enabled at EL1 (with PSTATE.D clear).
pub(super) const MDSCR_KDE: u64 = 1 << 13;
/// MDSCR_EL1.MDE: breakpoint and watchpoint exceptions enabled.
const MDSCR_MDE: u64 = 1 << 15;
/// The most breakpoints (and watchpoints) the architecture defines.
const MAX_BREAKPOINTS: usize = 16;
/// DBGBCR.BT: unlinked and linked address match, linked context ID match.
const BT_ADDRESS: u64 = 0b0000;
const BT_LINKED_ADDRESS: u64 = 0b0001;
const BT_LINKED_CONTEXT: u64 = 0b0011;

/// The debug registers of one vCPU, as the guest wrote them, and the
/// software step state.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct DebugRegs {
    pub(super) mdscr: u64,
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
    pub(super) ss: bool,
    /// An instruction was stepped and the step exception is due: whether
    /// it was a load-exclusive (ISS.EX).
    pub(super) stepped: Option<bool>,
    /// A breakpoint register or MDSCR_EL1 changed since the hooks were
    /// installed.
    pub(super) changed: bool,
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

    /// PSTATE.SS for the SPSR_EL1 of an exception entry, which clears it.
    pub(super) fn take_step_state(&mut self) -> u64 {
        self.stepped = None;
        if std::mem::take(&mut self.ss) {
            pstate::SS
        } else {
            0
        }
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

    pub(super) fn read(&self, reg: SysRegId) -> Option<u64> {
        Some(match self.slot(reg)? {
            Slot::Mdscr => self.mdscr,
            Slot::Bvr(n) => self.bvr[n],
            Slot::Bcr(n) => self.bcr[n],
            Slot::Wvr(n) => self.wvr[n],
            Slot::Wcr(n) => self.wcr[n],
        })
    }

    pub(super) fn write(&mut self, reg: SysRegId, value: u64) -> bool {
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
    pub(super) fn watching(&self) -> bool {
        self.mdscr & MDSCR_MDE != 0 && (0..self.watchpoints).any(|n| self.watched(n).is_some())
    }

    /// The first watched byte an access of `size` bytes at `va` (a store
    /// with `write`) at EL0 (`el0`) or EL1 meets, if any, with
    /// CONTEXTIDR_EL1 = `context`.
    pub(super) fn watch_hit(
        &self,
        va: u64,
        size: u64,
        write: bool,
        el0: bool,
        context: u64,
    ) -> Option<u64> {
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
    pub(super) fn armed_addresses(&self) -> Vec<u64> {
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
    pub(super) fn breakpoint_matches(&self, pc: u64, el0: bool, context: u64) -> bool {
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
