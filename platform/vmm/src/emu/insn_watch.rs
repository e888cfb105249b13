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

use unicorn_engine::{UcHookId, Unicorn};

use super::block_watch::{BlockWatch, MAX_HOOKED_BLOCKS, WatchMode};
use super::fault::GuestFault;
use super::regs::{EngineRegs, SCTLR_A, SCTLR_EL1, engine_err, read_sysreg};
use super::state::{HookState, read_insn, request_stop};
use apflab_hypervisor::HypervisorError;
use apflab_hypervisor::arch::access::{alignment_unit, data_access};

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

/// The alignment fault the instruction at `pc` raises before it executes,
/// if the guest checks alignment and its address is misaligned.
pub(super) fn check(uc: &mut Unicorn<'_, HookState>, pc: u64) -> Option<GuestFault> {
    let word = read_insn(uc, pc)?;
    let misaligned = read_sysreg(uc, SCTLR_EL1).is_ok_and(|s| s & SCTLR_A != 0)
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

/// The code hooks that raise alignment faults, while the guest has the
/// check on.
#[derive(Default)]
pub(super) struct InsnWatchHooks(Vec<UcHookId>);

impl InsnWatchHooks {
    /// Matches the watch to the guest's SCTLR_EL1; called before the
    /// engine runs (a write that changes the watch ends the slice, see
    /// hooks.rs).
    pub(super) fn sync(
        &mut self,
        uc: &mut Unicorn<'static, HookState>,
    ) -> Result<(), HypervisorError> {
        let mode = WatchMode::of(read_sysreg(uc, SCTLR_EL1).unwrap_or(0));
        if mode == uc.get_data().watch.mode {
            return Ok(());
        }
        // Deleting a hook drops the code translated with it.
        for id in self.0.drain(..) {
            uc.remove_hook(id)
                .map_err(|e| engine_err("remove the instruction watch", e))?;
        }
        uc.get_data_mut().watch = BlockWatch {
            mode,
            ..BlockWatch::default()
        };
        if mode.is_on() {
            // (1, 0) is the engine's range for every address.
            let id = uc
                .add_block_hook(1, 0, watch_block)
                .map_err(|e| engine_err("add the instruction watch", e))?;
            self.0.push(id);
            // Code translated before the hook runs without it.
            uc.ctl_flush_tb()
                .map_err(|e| engine_err("flush translated code", e))?;
        }
        Ok(())
    }

    /// Gives the block the block hook stopped before (if any) its code
    /// hook; whether there was one (the engine then runs again from it).
    pub(super) fn hook_wanted_block(
        &mut self,
        uc: &mut Unicorn<'static, HookState>,
    ) -> Result<bool, HypervisorError> {
        let Some((addr, size)) = uc.get_data_mut().watch.wanted.take() else {
            return Ok(false);
        };
        let everywhere = uc.get_data().watch.hooked.len() >= MAX_HOOKED_BLOCKS;
        // (1, 0) is the engine's range for every address.
        let (begin, end) = if everywhere {
            (1, 0)
        } else {
            (addr, addr + u64::from(size) - 1)
        };
        let id = uc
            .add_code_hook(begin, end, watch)
            .map_err(|e| engine_err("add the instruction watch", e))?;
        self.0.push(id);
        let w = &mut uc.get_data_mut().watch;
        if everywhere {
            w.everywhere = true;
            // Code translated before the hook runs without it.
            uc.ctl_flush_tb()
                .map_err(|e| engine_err("flush translated code", e))?;
        } else {
            w.hooked.insert(addr);
            // The block was translated without the hook.
            uc.ctl_remove_cache(addr, addr + u64::from(size))
                .map_err(|e| engine_err("drop a translated block", e))?;
        }
        Ok(true)
    }
}
