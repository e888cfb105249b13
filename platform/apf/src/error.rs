//! Why the engine could not serve a fault. The texts name the guest page;
//! the engine puts them into the run's crash message.

use apflab_abi::addr::Gpa;
use apflab_hypervisor::HypervisorError;
use apflab_pager::PagerError;

/// A failure of the page side.
#[derive(Debug, thiserror::Error)]
pub enum ApfError {
    /// The guest touched an absent page the pager does not manage (nothing
    /// but the pager makes pages absent, so this is a VMM bug).
    #[error("guest page {0:#x} is absent but outside the pager's range")]
    OutsideRange(Gpa),
    /// The store failed after its retries; nothing was installed.
    #[error(transparent)]
    Pager(#[from] PagerError),
    /// A page to write back could not be read from guest memory.
    #[error("reading guest page {gpa:#x}: {source}")]
    ReadPage {
        /// The page.
        gpa: Gpa,
        /// Why.
        source: vm_memory::GuestMemoryError,
    },
    /// A fetched page could not be written into guest memory.
    #[error("writing guest page {gpa:#x}: {source}")]
    WritePage {
        /// The page.
        gpa: Gpa,
        /// Why.
        source: vm_memory::GuestMemoryError,
    },
    /// The backend refused a residency change.
    #[error(transparent)]
    Residency(#[from] HypervisorError),
}
