//! Serving non-resident pages inside the host kernel's fault path
//! (`[pager] fault_path = "kernel"`, kvm only): the vCPU blocks in
//! `KVM_RUN` on a userfaultfd and a [`PageServer`]'s own threads answer, so
//! the VMM sees no exit. Faults that do exit to the VMM go to the
//! [`crate::FaultHook`] instead.

use std::error::Error;
use std::sync::Arc;

/// Why a [`PageServer`] could not start, or stopped serving (the server's
/// own error, shared: the server keeps it too).
pub type PageServerError = Arc<dyn Error + Send + Sync>;

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
/// [`crate::FaultHook`], where the fault exits to the VMM.
pub trait PageServer: Send + Sync {
    /// Takes over guest RAM before any vCPU runs.
    ///
    /// # Safety
    /// `ram`'s mappings must stay valid until [`PageServer::stop`] returns.
    unsafe fn start(&self, ram: HostRam) -> Result<(), PageServerError>;

    /// Attributes the stalls of the calling thread to vCPU `vcpu`. Each
    /// vCPU thread calls it before it first enters the guest.
    fn register_vcpu_thread(&self, vcpu: u32);

    /// The first fatal error. The page it names stays absent and the vCPU
    /// waiting for it stays blocked, so the run must end.
    fn failure(&self) -> Option<PageServerError>;

    /// Stops serving and lets go of the mappings. A thread still blocked on
    /// a page is let through to whatever the memory holds, so the VMM calls
    /// this only once the run is over and its vCPUs told to stop.
    fn stop(&self);
}
