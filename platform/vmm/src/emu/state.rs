//! What the hooks of one engine share: the vCPU's clock and slice budget,
//! the exit a hook decided on, and the pieces of the VM the hooks reach;
//! and the engine operations every hook uses (stopping it, reading an
//! instruction).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use unicorn_engine::{Prot, Unicorn};
use vm_memory::GuestMemoryMmap;

use super::absent::AbsentPages;
use super::block_watch::BlockWatch;
use super::debug_regs::DebugRegs;
use super::fault::GuestFault;
use super::icount::Icount;
use super::shootdown::Shootdowns;
use crate::config::CostModel;
use apflab_hypervisor::{VmExit, VmOps};

/// Per-engine state the hooks work on.
pub(super) struct HookState {
    pub(super) index: u32,
    pub(super) ops: Arc<dyn VmOps>,
    pub(super) cost: CostModel,
    /// Instructions executed in total up to the last engine run that
    /// ended: counted per block as the block is entered, less the part of
    /// it a stop cut short (see [`HookState::finish_run`]). The run under
    /// way adds `run_budget` less the engine's budget left.
    pub(super) insns: u64,
    /// Instructions in the current slice (up to the last engine run).
    pub(super) slice_insns: u64,
    /// Slice budget.
    pub(super) budget: u64,
    /// The engine's instruction counter.
    pub(super) icount: Icount,
    /// The engine's budget when `insns` was last brought up to date.
    pub(super) run_budget: i64,
    /// Virtual ns not due to instructions (host costs, halts, stalls).
    pub(super) extra_ns: u64,
    /// The exit a hook decided on.
    pub(super) pending: Option<VmExit>,
    /// The synchronous exception a hook saw the guest take.
    pub(super) fault: Option<GuestFault>,
    /// The VMM itself is translating an address (reading the instruction
    /// at PC): a failed fill is no guest fault.
    pub(super) probing: Cell<bool>,
    /// A hook asked the engine to stop.
    pub(super) stop_requested: bool,
    /// A hook asked for the slice to end at the next block boundary (see
    /// [`end_slice`]).
    pub(super) end_slice: bool,
    /// An interrupt is signalled to this vCPU while it has IRQs masked:
    /// the first block entered with PSTATE.I clear ends the slice, so that
    /// the interrupt is taken at the instruction that follows the unmask
    /// (`msr daifclr`, `msr daif` and `eret` all end a block).
    pub(super) irq_waiting: bool,
    /// The debug registers and software step state (see `debug_regs.rs`).
    pub(super) debug: DebugRegs,
    /// The FP trap and alignment watch (see `insn_watch.rs`).
    pub(super) watch: BlockWatch,
    /// Guest RAM, for the stage-1 walks of TLB fills.
    pub(super) memory: GuestMemoryMmap,
    /// Pages the pager withholds.
    pub(super) absent: Rc<AbsentPages>,
    /// The VM's broadcast TLB invalidations, and how many of them this
    /// engine's TLB has seen.
    pub(super) shootdowns: Rc<Shootdowns>,
    pub(super) shootdowns_seen: u64,
    /// The last instruction fetch's TLB fill: (engine page's virtual
    /// address, its physical address), for a fetch from a device window
    /// (`hooks.rs`).
    pub(super) last_fetch: (u64, u64),
}

impl HookState {
    /// Gives the engine what is left of the slice budget (at least one
    /// block) before it runs.
    pub(super) fn start_run(&mut self) {
        let left = self.budget.saturating_sub(self.slice_insns).max(1);
        let left = i64::try_from(left).unwrap_or(i64::MAX);
        self.icount.set_budget(left);
        self.run_budget = left;
    }

    /// Counts what the engine ran, once it stopped with `pc`: every block
    /// entered, less the instructions at and after `pc` of the last one if
    /// the engine stopped inside it (a fault, an exception the guest
    /// takes, or a hook's stop before that instruction completed). Returns
    /// that last block (`[start, end)`), if the engine did not stop before
    /// a block.
    pub(super) fn finish_run(&mut self, pc: u64) -> Option<(u64, u64)> {
        let r = self.icount.read();
        let mut ran = u64::try_from(self.run_budget - r.budget).unwrap_or(0);
        if let Some((start, end)) = r.block
            && (start..end).contains(&pc)
        {
            ran -= (end - pc) / 4;
        }
        self.insns += ran;
        self.slice_insns += ran;
        self.run_budget = r.budget;
        r.block
    }

    /// Instructions executed so far, the block under way included (hooks
    /// call this while the engine runs).
    pub(super) fn live_insns(&self) -> u64 {
        let left = self.icount.read().budget;
        self.insns + u64::try_from(self.run_budget - left).unwrap_or(0)
    }

    pub(super) fn now_ns(&self) -> u64 {
        self.extra_ns + (self.live_insns() as f64 * self.cost.ns_per_instruction) as u64
    }
}

/// Ends the slice at the next block boundary: the engine takes the stop
/// request at the next block's start (it tests for none after loads,
/// stores and system register hooks).
pub(super) fn end_slice(uc: &mut Unicorn<'_, HookState>) {
    uc.get_data_mut().end_slice = true;
    request_stop(uc);
}

/// Stops the engine at the next point it tests for a stop request (a
/// block's start), once.
pub(super) fn request_stop(uc: &mut Unicorn<'_, HookState>) {
    let st = uc.get_data_mut();
    if !st.stop_requested {
        st.stop_requested = true;
        // Cannot fail on a running engine; if it did, the slice budget
        // still ends the run.
        let _ = uc.emu_stop();
    }
}

/// Reads the instruction word at virtual address `va` as the CPU would
/// fetch it.
pub(super) fn read_insn(uc: &Unicorn<'_, HookState>, va: u64) -> Option<u32> {
    let mut b = [0u8; 4];
    let probing = &uc.get_data().probing;
    probing.set(true);
    let read = uc.vmem_read(va, Prot::EXEC, &mut b);
    uc.get_data().probing.set(false);
    read.ok().map(|()| u32::from_le_bytes(b))
}
