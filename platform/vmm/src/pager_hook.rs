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

/// Guest RAM as the host maps it, for a [`PageServer`].
#[derive(Clone, Copy, Debug)]
pub struct HostRam {
    /// Host address of guest physical `RAM_BASE` in the mapping the guest
    /// uses (the KVM memslot: a shared mapping of the RAM memfd).
    pub guest_view: *mut u8,
    /// The same memory as the VMM maps it, always accessible.
    pub vmm_view: *mut u8,
    /// Bytes in each view.
    pub len: usize,
}

/// Serves non-resident guest pages inside the host kernel's fault path (kvm
/// only): a vCPU touching one blocks in the kernel until the server's own
/// threads make it resident, and the VMM sees no exit. The other way in is
/// [`NotResidentHandler`], where the fault exits to the VMM.
pub trait PageServer: Send + Sync {
    /// Takes over guest RAM before any vCPU runs.
    ///
    /// # Safety
    /// `ram`'s mappings must stay valid until [`PageServer::stop`] returns.
    unsafe fn start(&self, ram: HostRam) -> Result<(), String>;

    /// Attributes the stalls of the calling thread to vCPU `vcpu`. Each
    /// vCPU thread calls it before it first enters the guest.
    fn register_vcpu_thread(&self, vcpu: u32);

    /// The first fatal error. The page it names stays absent and the vCPU
    /// waiting for it stays blocked, so the run must end.
    fn failure(&self) -> Option<String>;

    /// Stops serving and lets go of the mappings. A thread still blocked on
    /// a page is let through to whatever the memory holds, so the VMM calls
    /// this only once the run is over and its vCPUs told to stop.
    fn stop(&self);
}
