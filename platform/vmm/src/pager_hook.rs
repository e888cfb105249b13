//! How the VMM asks what to do with a guest access to a not-resident page:
//! the interface the pager (platform/pager) implements.
//!
//! On the emu backend the whole exchange runs in virtual time: the handler
//! answers a fault with a virtual completion time; the faulting vCPU does
//! not run until then (the other vCPUs do), then the handler makes the page
//! resident and the instruction is retried.

use crate::hypervisor::{NotResidentFault, Residency};

/// The handler's answer to a fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultDecision {
    /// The handler made the page resident already: retry now.
    Retry,
    /// Stall the vCPU until this virtual time, then call
    /// [`NotResidentHandler::on_stall_end`] and retry.
    StallUntil(u64),
    /// The page cannot be provided: the run fails with this message.
    Fail(String),
}

/// Decides what happens when a vCPU touches a page that is not resident.
pub trait NotResidentHandler {
    /// Called once before any vCPU runs (e.g. to mark pages absent for a
    /// post-copy start). An error fails the run with its message.
    fn init(&mut self, residency: &mut dyn Residency) -> Result<(), String>;

    /// vCPU `vcpu` touched the not-resident page of `fault.ipa` at virtual
    /// time `now_ns`.
    fn on_fault(
        &mut self,
        vcpu: u32,
        fault: &NotResidentFault,
        now_ns: u64,
        residency: &mut dyn Residency,
    ) -> FaultDecision;

    /// The stall ordered for `fault` has ended at `now_ns`: the page must
    /// be made resident (its content written through
    /// [`Residency::guest_memory`]) before the instruction is retried. If it
    /// is still absent, the retry faults again.
    fn on_stall_end(
        &mut self,
        vcpu: u32,
        fault: &NotResidentFault,
        now_ns: u64,
        residency: &mut dyn Residency,
    ) -> Result<(), String>;
}
