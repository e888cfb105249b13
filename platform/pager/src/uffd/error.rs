//! What can go wrong setting up or running userfaultfd.

use crate::engine::PagerError;

/// What went wrong setting up or running userfaultfd.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// The userfaultfd could not be created (no permission, no kernel
    /// support, seccomp).
    #[error("cannot create a userfaultfd (needs root or vm.unprivileged_userfaultfd=1): {0}")]
    Create(userfaultfd::Error),
    /// Registering the range failed.
    #[error("cannot register {len:#x} bytes at {addr:#x} with userfaultfd: {source}")]
    Register {
        /// Host address.
        addr: usize,
        /// Length.
        len: usize,
        /// The error.
        source: userfaultfd::Error,
    },
    /// An address or length is not page aligned, or outside the region.
    #[error("{what} {value:#x} is not a page-aligned offset inside the region")]
    Range {
        /// What it is.
        what: &'static str,
        /// The value.
        value: usize,
    },
    /// The mapping is smaller than the guest RAM the pager manages.
    #[error(
        "the guest RAM mapping is {len:#x} bytes; the pager manages guest RAM up to offset {needed:#x}"
    )]
    TooSmall {
        /// Mapping length.
        len: usize,
        /// Offset the managed range ends at.
        needed: usize,
    },
    /// A userfaultfd ioctl failed.
    #[error("{op} at region offset {offset:#x}: {source}")]
    Ioctl {
        /// Which operation.
        op: &'static str,
        /// Offset in the region.
        offset: usize,
        /// The error.
        source: userfaultfd::Error,
    },
    /// A system call failed.
    #[error("{op}: {source}")]
    Os {
        /// Which call.
        op: &'static str,
        /// errno.
        source: std::io::Error,
    },
    /// Serving a page failed (store error: the guest page is named).
    #[error(transparent)]
    Pager(#[from] PagerError),
}
