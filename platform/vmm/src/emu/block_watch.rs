//! What the alignment watch of one engine knows (see `insn_watch.rs`): the
//! check the guest has on, and which translated blocks it has looked at
//! since the code they hold could last have changed for the CPU.

use std::collections::{HashMap, HashSet};

use super::regs::{SCTLR_A, SCTLR_EL1, TCR_EL1, TTBR0_EL1, TTBR1_EL1};
use apflab_hypervisor::arch::SysRegId;

/// Blocks with a code hook of their own before the watch covers every
/// instruction instead (each hook is one more entry the engine scans for
/// every instruction it translates).
pub(super) const MAX_HOOKED_BLOCKS: usize = 64;

/// What the watch checks, from SCTLR_EL1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct WatchMode {
    /// SCTLR_EL1.A: every load and store is checked for alignment.
    align: bool,
}

impl WatchMode {
    /// The watch SCTLR_EL1 value `sctlr` needs.
    pub(super) fn of(sctlr: u64) -> Self {
        WatchMode {
            align: sctlr & SCTLR_A != 0,
        }
    }

    pub(super) fn is_on(self) -> bool {
        self.align
    }

    /// Whether the instruction `word` must be seen before it executes.
    pub(super) fn watches(self, word: u32) -> bool {
        self.align && is_load_store(word)
    }
}

/// The loads and stores class (op0 = x1x0), and system instructions (op0
/// = 1: DC by VA), over-approximated: a block with one gets the hook.
fn is_load_store(word: u32) -> bool {
    (word >> 25) & 0b0101 == 0b0100 || word & 0xfff8_0000 == 0xd508_0000
}

/// The watch's state in one engine.
#[derive(Debug, Default)]
pub(super) struct BlockWatch {
    pub(super) mode: WatchMode,
    /// Blocks looked at since the code was last allowed to change: start →
    /// (size, holds a watched instruction).
    pub(super) classified: HashMap<u64, (u32, bool)>,
    /// Blocks that have a code hook of their own (by start address).
    pub(super) hooked: HashSet<u64>,
    /// The watch covers every instruction.
    pub(super) everywhere: bool,
    /// The block the block hook stopped before, to be hooked.
    pub(super) wanted: Option<(u64, u32)>,
}

impl BlockWatch {
    /// Forgets which blocks were found clean (the code they hold may have
    /// changed for the CPU).
    pub(super) fn forget_blocks(&mut self) {
        // Called on every TTBR write and TLBI, with or without the watch:
        // clearing an empty map would still sweep its allocation.
        if !self.classified.is_empty() {
            self.classified.clear();
        }
    }
}

/// Whether a write of `reg` may change the code an address holds for the
/// CPU.
pub(super) fn changes_code_view(reg: SysRegId) -> bool {
    [TTBR0_EL1, TTBR1_EL1, TCR_EL1, SCTLR_EL1].contains(&reg)
}

/// Whether the system instruction (SYS, op0 = 1) with `crn` invalidates
/// TLB entries (TLBI, CRn = 8) or instruction cache lines (IC, CRn = 7,
/// CRm = 1 or 5).
pub(super) fn invalidates_code(crn: u32, crm: u32) -> bool {
    crn == 8 || (crn == 7 && (crm == 1 || crm == 5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emu::regs::CPACR_EL1;

    #[test]
    fn the_watch_looks_only_at_what_its_mode_checks() {
        let off = WatchMode::of(0);
        assert!(!off.is_on());
        assert!(!off.watches(0xf940_0000)); // ldr x0, [x0]
        let align = WatchMode::of(SCTLR_A);
        assert!(align.watches(0xf940_0000)); // ldr x0, [x0]
        assert!(align.watches(0xa9bf_7bfd)); // stp x29, x30, [sp, #-16]!
        assert!(align.watches(0xd50b_7420)); // dc zva, x0
        assert!(!align.watches(0x8b01_0000)); // add x0, x0, x1
        assert!(!align.watches(0x9e67_0000)); // fmov d0, x0
    }

    #[test]
    fn tlb_and_instruction_cache_invalidations_change_the_code_view() {
        assert!(invalidates_code(8, 7)); // tlbi vmalle1
        assert!(invalidates_code(7, 5)); // ic iallu / ic ivau
        assert!(invalidates_code(7, 1)); // ic ialluis
        assert!(!invalidates_code(7, 4)); // dc zva
        assert!(!invalidates_code(7, 14)); // dc civac
        assert!(changes_code_view(TTBR0_EL1));
        assert!(!changes_code_view(CPACR_EL1));
    }
}
