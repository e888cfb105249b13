//! What a hook saw the guest fault on, recorded while the engine runs for
//! `exception.rs` to turn into ESR_EL1 and FAR_EL1 once it has stopped.

use unicorn_engine::MemType;

use apflab_hypervisor::arch::syndrome::FaultStatus;

/// The kind of access that faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Access {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Fetch,
}

impl Access {
    pub(super) fn of(kind: MemType) -> Self {
        match kind {
            MemType::WRITE | MemType::WRITE_UNMAPPED | MemType::WRITE_PROT => Access::Write,
            MemType::FETCH | MemType::FETCH_UNMAPPED | MemType::FETCH_PROT => Access::Fetch,
            _ => Access::Read,
        }
    }
}

/// A synchronous exception a hook saw the guest take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GuestFault {
    /// The guest's own stage-1 translation refuses the access to the
    /// engine page at `page_va`.
    Abort {
        /// First address of the engine page whose fill failed.
        page_va: u64,
        /// What was attempted.
        access: Access,
        /// Why.
        status: FaultStatus,
    },
    /// The access reached a physical address nothing answers at.
    External {
        /// What was attempted.
        access: Access,
    },
    /// The engine's undefined-instruction exception (FP/SIMD traps, WFx
    /// and system register traps from EL0 included: it raises them all the
    /// same way).
    Undefined,
    /// `brk #imm`.
    Breakpoint,
    /// The engine's own alignment check failed a data access.
    Alignment,
    /// A hardware breakpoint matched the instruction at PC (`debug.rs`).
    HwBreakpoint,
    /// A watchpoint matched the load or store at PC (`debug.rs`): the
    /// first watched byte it accesses, and its direction.
    Watchpoint {
        /// FAR_EL1.
        far: u64,
        /// A store.
        write: bool,
    },
    /// Software step: the stepped instruction completed (`isv`; `ex`: it
    /// was a load-exclusive), or stepping is active with PSTATE.SS clear
    /// (`isv` false). PC is the next instruction to step.
    SoftwareStep {
        /// An instruction was stepped.
        isv: bool,
        /// It was a load-exclusive.
        ex: bool,
    },
}
