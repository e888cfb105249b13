//! The one seam between the backends and the fault engine (`platform/apf`).
//!
//! Both backends report the same three things to a [`FaultHook`]: a guest
//! access to a page that is not resident, an apflab async-PF hypercall, and
//! the passing of time (a wait the hook ordered has ended, or the hook's own
//! deadline has come). The hook answers with [`Action`]s in the backends'
//! vocabulary, and each backend's run loop applies them in one place
//! (the VMM's `run_loop::apply`). Everything the protocol decides (sync or
//! async, which exception, when "ready" is raised) stays behind this trait,
//! so it can grow without touching a backend.
//!
//! Times are in ns: virtual on emu, host time since the start of the run on
//! kvm.
//!
//! ```
//! use apflab_hypervisor::{NotResidentFault, Residency};
//! use apflab_hypervisor::{Action, FaultHook, HookInitError};
//!
//! /// Every fault waits 10 µs, then the page is made resident and retried.
//! struct FixedDelay;
//!
//! impl FaultHook for FixedDelay {
//!     fn init(&mut self, _pages: &mut dyn Residency) -> Result<(), HookInitError> {
//!         Ok(())
//!     }
//!     fn on_not_resident(
//!         &mut self,
//!         _vcpu: u32,
//!         _fault: &NotResidentFault,
//!         now_ns: u64,
//!         _pages: &mut dyn Residency,
//!     ) -> Action {
//!         Action::StallUntil(now_ns + 10_000)
//!     }
//!     fn on_wait_end(&mut self, _vcpu: u32, _now_ns: u64, _pages: &mut dyn Residency) -> Action {
//!         Action::Retry
//!     }
//!     // `on_hypercall`: the default offers no async PF.
//! }
//! ```

use std::error::Error;
use std::ops::Range;
use std::sync::Arc;

use apflab_abi::addr::Gpa;
use apflab_abi::hypercall as hc;

use crate::backend::{NotResidentFault, Residency, SyncException};

/// What a backend does next with the vCPU a hook answered for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run on: the faulting access is retried (or the call returns).
    Retry,
    /// Do not run the vCPU until this time, then call
    /// [`FaultHook::on_wait_end`]. The time counts as stalled.
    StallUntil(u64),
    /// Enter the guest's EL1 synchronous exception vector as the CPU would
    /// for this exception, then run on.
    InjectException(SyncException),
    /// Signal the SDEI event ([`apflab_abi::sdei::EVENT_APF`]) on this
    /// vCPU and deliver it as the firmware's dispatch rules allow, then run
    /// on (the control block already says what it is for).
    SignalSdei,
    /// Set the level of this vCPU's "page ready" PPI
    /// ([`apflab_abi::memory_map::APF_READY_PPI`]), then run on.
    SetReadyLine(bool),
    /// The run cannot go on: it ends as a crash saying why (the backend
    /// prefixes the vCPU).
    Fail(HookFailure),
}

/// A cause behind a [`HookFailure`], shared so that an [`Action`] stays
/// cheap to clone.
pub type FailureSource = Arc<dyn Error + Send + Sync>;

/// Why a hook ends the run ([`Action::Fail`]).
#[derive(Clone, Debug, thiserror::Error)]
pub enum HookFailure {
    /// A page the guest needs could not be fetched (the store failed after
    /// its retries, or the page is outside what the pager manages).
    #[error("page {gpa:#x} unavailable: {source}")]
    Unavailable {
        /// The page.
        gpa: Gpa,
        /// Why.
        #[source]
        source: FailureSource,
    },
    /// A fetched page could not be installed and mapped.
    #[error("page {gpa:#x} could not be made resident: {source}")]
    NotMadeResident {
        /// The page.
        gpa: Gpa,
        /// Why.
        #[source]
        source: FailureSource,
    },
    /// The vCPU's async-PF control block, checked when it was registered,
    /// can no longer be written.
    #[error("the control block of vCPU {vcpu} became unwritable")]
    ControlBlockUnwritable {
        /// The vCPU.
        vcpu: u32,
    },
    /// A page is not resident in a run without a pager ([`NoFarMemory`]).
    #[error("access to not-resident page {gpa:#x} at pc {pc:#x} with no pager")]
    NoPager {
        /// The page.
        gpa: Gpa,
        /// PC of the access.
        pc: u64,
    },
    /// A hook's own failure (hooks other than the fault engine: tests,
    /// benchmarks).
    #[error(transparent)]
    Hook(FailureSource),
}

impl HookFailure {
    /// [`HookFailure::Unavailable`] for `gpa` because of `source`.
    pub fn unavailable(gpa: Gpa, source: impl Error + Send + Sync + 'static) -> Self {
        HookFailure::Unavailable {
            gpa,
            source: Arc::new(source),
        }
    }

    /// [`HookFailure::NotMadeResident`] for `gpa` because of `source`.
    pub fn not_made_resident(gpa: Gpa, source: impl Error + Send + Sync + 'static) -> Self {
        HookFailure::NotMadeResident {
            gpa,
            source: Arc::new(source),
        }
    }
}

/// Two failures are equal when they are of the same kind and say the same
/// thing (their causes are compared by what they say, as a crash reports
/// them).
impl PartialEq for HookFailure {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.to_string() == other.to_string()
    }
}

impl Eq for HookFailure {}

/// Where a vCPU is as it resumes ([`FaultHook::on_resume`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumeState {
    /// Exception level it runs at (0: a user task, 1: the kernel).
    pub el: u8,
    /// The instruction it resumes at (an exception entered now returns
    /// there).
    pub pc: u64,
}

/// An apflab async-PF hypercall ([`is_engine_call`]) as the guest made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineCall {
    /// Function id (x0).
    pub function: u32,
    /// x1..x5.
    pub args: [u64; 5],
}

/// A hook's answer to an [`EngineCall`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HypercallAnswer {
    /// x0..x3 for the caller.
    pub regs: [u64; 4],
    /// What the calling vCPU does next ([`Action::Retry`]: return to the
    /// guest).
    pub action: Action,
}

impl HypercallAnswer {
    /// `SMCCC_NOT_SUPPORTED`, and the guest runs on.
    pub fn not_supported() -> Self {
        HypercallAnswer::returning(hc::SMCCC_NOT_SUPPORTED as u64)
    }

    /// x0 = `x0`, and the guest runs on.
    pub fn returning(x0: u64) -> Self {
        HypercallAnswer {
            regs: [x0, 0, 0, 0],
            action: Action::Retry,
        }
    }
}

/// Whether `function` is a call the fault engine answers (feature discovery
/// and the async-PF protocol) rather than the machine.
pub const fn is_engine_call(function: u32) -> bool {
    matches!(
        function,
        hc::FN_FEATURES
            | hc::FN_APF_ENABLE
            | hc::FN_APF_DISABLE
            | hc::FN_APF_ACK
            | hc::FN_APF_PAGE_REQUEST
    )
}

/// Why a hook could not set up before the run (the run does not start).
pub type HookInitError = Box<dyn std::error::Error + Send + Sync>;

/// The fault engine as a backend sees it. One value serves one run; on kvm
/// it lives on the control thread and the vCPU threads reach it through
/// messages.
pub trait FaultHook {
    /// Called once before any vCPU runs (e.g. to mark pages absent for a
    /// post-copy start).
    fn init(&mut self, pages: &mut dyn Residency) -> Result<(), HookInitError>;

    /// Called once, before [`FaultHook::init`], with the physical ranges
    /// the kernel image loads read-only (its code and constants; none for
    /// a raw image), which the guest has no business asking the host to
    /// write.
    fn kernel_loaded(&mut self, read_only: &[Range<u64>]) {
        let _ = read_only;
    }

    /// The guest announced the end of its boot at `now_ns`
    /// ([`apflab_abi::boot_point::FN_BOOT_DONE`]), after any snapshot of
    /// the boot was saved, or as a run resumed from one starts: e.g. to
    /// start far memory there. Called once, by the emu backend (the kvm
    /// backend does not stop at the boot point, so a config that needs
    /// this is refused there).
    fn boot_point(&mut self, now_ns: u64, pages: &mut dyn Residency) -> Result<(), HookInitError> {
        let _ = (now_ns, pages);
        Ok(())
    }

    /// vCPU `vcpu` touched the not-resident page of `fault.gpa` at `now_ns`;
    /// the instruction has not executed.
    fn on_not_resident(
        &mut self,
        vcpu: u32,
        fault: &NotResidentFault,
        now_ns: u64,
        pages: &mut dyn Residency,
    ) -> Action;

    /// The [`Action::StallUntil`] ordered for `vcpu` has ended at
    /// `now_ns`.
    fn on_wait_end(&mut self, vcpu: u32, now_ns: u64, pages: &mut dyn Residency) -> Action;

    /// vCPU `vcpu` made the engine call `call` at `now_ns`. By default the
    /// hook offers no async PF ([`no_async_pf`]).
    fn on_hypercall(
        &mut self,
        vcpu: u32,
        call: EngineCall,
        now_ns: u64,
        pages: &mut dyn Residency,
    ) -> HypercallAnswer {
        let _ = (vcpu, now_ns, pages);
        no_async_pf(call)
    }

    /// The earliest time at which the hook wants [`FaultHook::on_time`]
    /// called, if any.
    fn next_deadline(&self) -> Option<u64> {
        None
    }

    /// Since when the hook has something for `vcpu` that it can only
    /// deliver when it sees where the guest is ([`FaultHook::on_resume`]),
    /// if it has. A halted vCPU is woken for it from then on.
    fn resume_pending_since(&self, vcpu: u32) -> Option<u64> {
        let _ = vcpu;
        None
    }

    /// `vcpu` is about to run guest code in `state` at `now_ns` and the hook
    /// said it has something pending for it: what to do first (e.g. enter
    /// an exception the guest can take there, or nothing yet).
    fn on_resume(
        &mut self,
        vcpu: u32,
        state: ResumeState,
        now_ns: u64,
        pages: &mut dyn Residency,
    ) -> Action {
        let _ = (vcpu, state, now_ns, pages);
        Action::Retry
    }

    /// What the hook still owes the guest (a stall on a page, a token not
    /// yet consumed...), one line each, for the diagnosis of a run the
    /// watchdog stops.
    fn pending(&self) -> Vec<String> {
        Vec::new()
    }

    /// Time has reached [`FaultHook::next_deadline`]; the answer says what
    /// to do with which vCPUs (by index).
    fn on_time(&mut self, now_ns: u64, pages: &mut dyn Residency) -> Vec<(u32, Action)> {
        let _ = (now_ns, pages);
        Vec::new()
    }
}

/// The hook of a run without far memory: no async PF is offered, and a
/// not-resident page (which nothing made absent) ends the run.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoFarMemory;

impl FaultHook for NoFarMemory {
    fn init(&mut self, _pages: &mut dyn Residency) -> Result<(), HookInitError> {
        Ok(())
    }

    fn on_not_resident(
        &mut self,
        _vcpu: u32,
        fault: &NotResidentFault,
        _now_ns: u64,
        _pages: &mut dyn Residency,
    ) -> Action {
        Action::Fail(HookFailure::NoPager {
            gpa: fault.gpa,
            pc: fault.pc,
        })
    }

    fn on_wait_end(&mut self, _vcpu: u32, _now_ns: u64, _pages: &mut dyn Residency) -> Action {
        Action::Retry
    }
}

/// The answer of a machine that offers no async PF: no feature bits, and
/// every protocol call refused.
pub fn no_async_pf(call: EngineCall) -> HypercallAnswer {
    match call.function {
        hc::FN_FEATURES => HypercallAnswer::returning(0),
        _ => HypercallAnswer::not_supported(),
    }
}
