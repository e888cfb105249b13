//! The engine's own instruction counter (`third_party/unicorn/patches`,
//! 0001 and 0003): every translated block tests, at its start, for a stop
//! request and for a used-up budget (either stops the engine before the
//! block runs), then subtracts its length from the budget and records its
//! address range. This is QEMU's icount, done in the generated code with
//! no call back into the VMM; it replaced a host callback per block.
//!
//! The budget is a whole-block one: a block entered with any budget left
//! runs to its end, so a slice ends at the first block boundary at or
//! past its budget, exactly where the callback used to end it. A block an
//! exception or a hook cuts short keeps its whole count in the engine;
//! [`super::state::HookState::finish_run`] takes back the instructions at
//! and after the PC the engine stopped at.

use std::ptr::NonNull;

use unicorn_engine_sys::{
    uc_engine, uc_error, uc_icount_enable, uc_icount_read, uc_icount_set_budget,
    uc_icount_stop_on_irq_unmask,
};

/// The counter of one engine ([`Icount::default`]: none yet, while the
/// engine is being created; it reads as an empty budget).
#[derive(Debug, Default)]
pub(super) struct Icount {
    engine: Option<NonNull<uc_engine>>,
}

/// What the counter holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Reading {
    /// Budget left (negative: the last block ran past it).
    pub(super) budget: i64,
    /// `[start, end)` of the last block entered; `None` if the engine
    /// stopped before a block, or none ran since the budget was set.
    pub(super) block: Option<(u64, u64)>,
}

impl Icount {
    /// Turns counting on in `engine` (before any guest code runs: it drops
    /// translated code).
    ///
    /// # Safety
    ///
    /// `engine` must be a live unicorn engine that outlives the returned
    /// value, used on this thread only.
    pub(super) unsafe fn enable(engine: *mut uc_engine) -> Result<Self, uc_error> {
        let engine = NonNull::new(engine).ok_or(uc_error::HANDLE)?;
        // SAFETY: a live engine, per this function's contract.
        let e = unsafe { uc_icount_enable(engine.as_ptr()) };
        if e != uc_error::OK {
            return Err(e);
        }
        Ok(Icount {
            engine: Some(engine),
        })
    }

    /// Sets the budget of the next run (and forgets the last block).
    pub(super) fn set_budget(&self, budget: i64) {
        if let Some(e) = self.engine {
            // SAFETY: the engine outlives `self` (see `enable`); the call
            // only stores into the engine's CPU state. It cannot fail on a
            // live engine.
            let _ = unsafe { uc_icount_set_budget(e.as_ptr(), budget) };
        }
    }

    /// The budget left and the last block entered; also from hooks, where
    /// the current block is already subtracted.
    pub(super) fn read(&self) -> Reading {
        let (mut budget, mut start, mut end) = (0i64, 0u64, 0u64);
        if let Some(e) = self.engine {
            // SAFETY: the engine outlives `self`; the pointers are to
            // locals.
            let _ = unsafe { uc_icount_read(e.as_ptr(), &mut budget, &mut start, &mut end) };
        }
        Reading {
            budget,
            block: (end != 0).then_some((start, end)),
        }
    }

    /// With `on`, the engine stops as soon as the guest clears PSTATE.I
    /// (the interrupt waiting for it is entered at the next instruction).
    pub(super) fn stop_on_irq_unmask(&self, on: bool) {
        if let Some(e) = self.engine {
            // SAFETY: the engine outlives `self`; the call sets a flag and
            // an interrupt request of the engine's CPU.
            let _ = unsafe { uc_icount_stop_on_irq_unmask(e.as_ptr(), on) };
        }
    }
}
