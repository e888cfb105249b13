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
    Memory(String),
}
