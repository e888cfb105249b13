//! A check the software CPU does not make: SCTLR_EL1.A alignment checking
//! (it only checks the accesses that must always be aligned, such as
//! exclusives). While the guest has it on, a code hook looks at the loads
//! and stores before they execute and stops the engine at one whose
//! address is not a multiple of its element size, with the alignment fault
//! the architecture takes (the syndrome is built in `exception.rs`). FP
//! traps (CPACR_EL1.FPEN) are the engine's own (third_party/unicorn,
//! patch 0004).
//!
//! A code hook on every instruction makes a guest many times slower (36
//! times on our guest's `cpu` workload, measured when FP traps were
//! watched here). So the watch goes by blocks: while it is on, a block
//! hook asks [`must_hook`] about each block entered, which decodes a block
//! once to see whether it holds a load or store. A block that does is
//! stopped before it runs, gets a code hook limited to its own addresses
//! and is translated again; every other block runs at full speed. Which
//! blocks were found clean is forgotten whenever the code at an address may
//! have changed for the CPU: a write to TTBR0/TTBR1/TCR/SCTLR_EL1, a TLB or
//! instruction cache invalidation (a guest that rewrites code without the
//! instruction cache maintenance the architecture asks for may run stale
//! decodes here, as it may on hardware). Past [`MAX_HOOKED_BLOCKS`] blocks
//! the watch falls back to one hook on every instruction. A guest that
//! leaves alignment checking off, as Linux and ours do, runs without any
//! of it, block hook included.

use std::collections::{HashMap, HashSet};

use unicorn_engine::Unicorn;

use super::exception::{EngineRegs, GuestFault};
use super::hooks::{read_insn, request_stop};
use super::regs::{SCTLR_A, SCTLR_EL1, TCR_EL1, TTBR0_EL1, TTBR1_EL1, cp, engine_err};
use super::state::HookState;
use super::vcpu::EmuVcpu;
use apflab_hypervisor::HypervisorError;
use apflab_hypervisor::arch::SysRegId;
use apflab_hypervisor::arch::access::{alignment_unit, data_access};

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
    fn watches(self, word: u32) -> bool {
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
    classified: HashMap<u64, (u32, bool)>,
    /// Blocks that have a code hook of their own (by start address).
    hooked: HashSet<u64>,
    /// The watch covers every instruction.
    everywhere: bool,
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

/// Called by the block hook for the block `[addr, addr + size)` it
/// entered: whether the block must get a code hook before it runs (the
/// engine is then stopped before it, with the block left in `wanted`).
pub(super) fn must_hook(uc: &mut Unicorn<'_, HookState>, addr: u64, size: u32) -> bool {
    let w = &uc.get_data().watch;
    if w.everywhere || w.hooked.contains(&addr) {
        return false;
    }
    let watched = match w.classified.get(&addr) {
        Some(&(s, watched)) if s == size => watched,
        _ => {
            let mode = w.mode;
            // An unreadable word cannot be decoded: hook the block.
            let watched = (0..u64::from(size / 4))
                .any(|i| read_insn(uc, addr + 4 * i).is_none_or(|word| mode.watches(word)));
            uc.get_data_mut()
                .watch
                .classified
                .insert(addr, (size, watched));
            watched
        }
    };
    if watched {
        uc.get_data_mut().watch.wanted = Some((addr, size));
        request_stop(uc);
    }
    watched
}

fn read(uc: &Unicorn<'_, HookState>, reg: SysRegId) -> Option<u64> {
    let mut c = cp(reg);
    uc.reg_read_arm64_coproc(&mut c).ok().map(|()| c.val)
}

/// The alignment fault the instruction at `pc` raises before it executes,
/// if the guest checks alignment and its address is misaligned.
pub(super) fn check(uc: &mut Unicorn<'_, HookState>, pc: u64) -> Option<GuestFault> {
    let word = read_insn(uc, pc)?;
    let misaligned = read(uc, SCTLR_EL1).is_some_and(|s| s & SCTLR_A != 0)
        && data_access(word, pc, &mut EngineRegs(uc))
            .is_ok_and(|a| a.va % alignment_unit(word, a.size) != 0);
    misaligned.then_some(GuestFault::Alignment)
}

/// The block hook, while the watch is on.
fn watch_block(uc: &mut Unicorn<'_, HookState>, addr: u64, size: u32) {
    // A stepping engine runs one instruction at a time, each checked
    // before it runs (debug.rs).
    if !uc.get_data().debug.stepping() {
        must_hook(uc, addr, size);
    }
}

/// The code hook of a watched block: stops the engine before the
/// instruction at `pc` with the fault it raises.
fn watch(uc: &mut Unicorn<'_, HookState>, pc: u64, _size: u32) {
    if let Some(fault) = check(uc, pc) {
        uc.get_data_mut().fault = Some(fault);
        request_stop(uc);
    }
}

impl EmuVcpu {
    /// Matches the watch to the guest's SCTLR_EL1; called before the
    /// engine runs (a write that changes the watch ends the slice, see
    /// hooks.rs).
    pub(super) fn sync_insn_watch(&mut self) -> Result<(), HypervisorError> {
        let mode = WatchMode::of(read(&self.uc, SCTLR_EL1).unwrap_or(0));
        if mode == self.uc.get_data().watch.mode {
            return Ok(());
        }
        // Deleting a hook drops the code translated with it.
        for id in self.insn_watch.drain(..) {
            self.uc
                .remove_hook(id)
                .map_err(|e| engine_err("remove the instruction watch", e))?;
        }
        self.uc.get_data_mut().watch = BlockWatch {
            mode,
            ..BlockWatch::default()
        };
        if mode.is_on() {
            // (1, 0) is the engine's range for every address.
            let id = self
                .uc
                .add_block_hook(1, 0, watch_block)
                .map_err(|e| engine_err("add the instruction watch", e))?;
            self.insn_watch.push(id);
            // Code translated before the hook runs without it.
            self.uc
                .ctl_flush_tb()
                .map_err(|e| engine_err("flush translated code", e))?;
        }
        Ok(())
    }

    /// Gives the block the block hook stopped before (if any) its code
    /// hook; whether there was one (the engine then runs again from it).
    pub(super) fn hook_wanted_block(&mut self) -> Result<bool, HypervisorError> {
        let Some((addr, size)) = self.uc.get_data_mut().watch.wanted.take() else {
            return Ok(false);
        };
        let everywhere = self.uc.get_data().watch.hooked.len() >= MAX_HOOKED_BLOCKS;
        // (1, 0) is the engine's range for every address.
        let (begin, end) = if everywhere {
            (1, 0)
        } else {
            (addr, addr + u64::from(size) - 1)
        };
        let id = self
            .uc
            .add_code_hook(begin, end, watch)
            .map_err(|e| engine_err("add the instruction watch", e))?;
        self.insn_watch.push(id);
        let w = &mut self.uc.get_data_mut().watch;
        if everywhere {
            w.everywhere = true;
            // Code translated before the hook runs without it.
            self.uc
                .ctl_flush_tb()
                .map_err(|e| engine_err("flush translated code", e))?;
        } else {
            w.hooked.insert(addr);
            // The block was translated without the hook.
            self.uc
                .ctl_remove_cache(addr, addr + u64::from(size))
                .map_err(|e| engine_err("drop a translated block", e))?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!changes_code_view(super::super::regs::CPACR_EL1));
    }
}
