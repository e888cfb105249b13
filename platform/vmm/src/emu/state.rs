//! What the hooks of one engine share: the vCPU's clock and slice budget,
//! the exit a hook decided on, and the pieces of the VM the hooks reach.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::absent::AbsentPages;
use super::debug::DebugRegs;
use super::exception::GuestFault;
use super::insn_watch::BlockWatch;
use super::shootdown::Shootdowns;
use crate::config::CostModel;
use crate::hypervisor::{VmExit, VmOps};

/// Per-engine state the hooks work on.
pub(super) struct HookState {
    pub(super) index: u32,
    pub(super) ops: Arc<dyn VmOps>,
    pub(super) cost: CostModel,
    /// Instructions executed in total: counted per block as the block is
    /// entered, less the part of it a stop cut short (see
    /// [`HookState::uncount_cut_block`]).
    pub(super) insns: u64,
    /// Instructions in the current slice.
    pub(super) slice_insns: u64,
    /// Slice budget.
    pub(super) budget: u64,
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
    /// A hook asked for the slice to end at the next block boundary.
    pub(super) end_slice: bool,
    /// An interrupt is signalled to this vCPU while it has IRQs masked:
    /// the first block entered with PSTATE.I clear ends the slice, so that
    /// the interrupt is taken at the instruction that follows the unmask
    /// (`msr daifclr`, `msr daif` and `eret` all end a block).
    pub(super) irq_waiting: bool,
    /// The debug registers and software step state (see `debug.rs`).
    pub(super) debug: DebugRegs,
    /// The FP trap and alignment watch (see `insn_watch.rs`).
    pub(super) watch: BlockWatch,
    /// `[start, end)` of the last block counted (its end also recognises
    /// WFI, which ends the engine's run right after it).
    pub(super) block: (u64, u64),
    /// The engine may have stopped inside `block`: no later block was
    /// entered.
    pub(super) block_open: bool,
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
    /// Takes back the instructions of the last block counted that did not
    /// run: the engine stopped with `pc` inside it (a fault, an exception
    /// the guest takes, or a hook's stop before that instruction completed).
    pub(super) fn uncount_cut_block(&mut self, pc: u64) {
        let (start, end) = self.block;
        if self.block_open && (start..end).contains(&pc) {
            let cut = (end - pc) / 4;
            self.insns -= cut;
            self.slice_insns -= cut;
        }
        self.block_open = false;
    }

    pub(super) fn now_ns(&self) -> u64 {
        self.extra_ns + (self.insns as f64 * self.cost.ns_per_instruction) as u64
    }
}
