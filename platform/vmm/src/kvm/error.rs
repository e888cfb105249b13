//! Errors of the kvm backend: every failed ioctl names itself and its
//! errno.

/// Errors of the kvm backend. Every failed ioctl names itself and its errno.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// An ioctl (or mmap/mprotect/signal call) failed.
    #[error("{op} failed: {errno}")]
    Ioctl {
        /// The ioctl and what it was for, e.g. `KVM_SET_ONE_REG(ESR_EL1)`.
        op: String,
        /// The error number and its text.
        errno: std::io::Error,
    },
    /// The host kernel lacks something the backend requires.
    #[error("the host kernel does not support {0}")]
    Unsupported(String),
    /// A guest-memory layout the backend cannot set up.
    #[error("guest memory: {0}")]
    Memory(#[source] RamLayoutError),
}

/// Why guest RAM cannot be laid out or addressed as the backend needs it.
#[derive(Debug, thiserror::Error)]
pub enum RamLayoutError {
    /// Empty, or not whole pages, or not page aligned.
    #[error("RAM at {base:#x} of {size:#x} bytes is not a non-empty whole number of pages")]
    NotWholePages {
        /// Guest physical base.
        base: u64,
        /// Bytes.
        size: u64,
    },
    /// More bytes than this host can address.
    #[error("{0:#x} bytes do not fit this host")]
    TooLarge(u64),
    /// The VMM's mapping of the RAM memfd failed.
    #[error("mapping the VMM view of RAM: {0}")]
    VmmMapping(#[source] vm_memory::mmap::MmapRegionError),
    /// The region would end past the top of the address space.
    #[error("RAM at {0:#x} overflows")]
    Overflows(u64),
    /// vm-memory refused the region.
    #[error(transparent)]
    Regions(#[from] vm_memory::GuestRegionCollectionError),
    /// A page asked for is not in guest RAM.
    #[error("{0:#x} is outside guest RAM")]
    OutsideRam(u64),
    /// The VMM's view has no host address for guest RAM.
    #[error("the VMM view of RAM: {0}")]
    VmmView(#[source] vm_memory::GuestMemoryError),
}
