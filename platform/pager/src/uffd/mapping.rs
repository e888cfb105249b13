//! Guest RAM's host memory in the two layouts the pager serves.
//!
//! The pager itself takes guest RAM as plain addresses ([`RamMapping`]):
//! the VMM maps it (with vm-memory) and keeps owning it. The owning types
//! here exist for tests and benchmarks: [`SharedMapping`] is the kvm
//! backend's layout, built on the same [`MemfdRam`] its guest RAM lives in
//! plus the second view the backend maps with vm-memory instead, so what
//! the pager is tested on is what it serves.

use apflab_hypervisor::HostRam;
use apflab_hypervisor::host_memory::{HostMapping, HostMemoryError, MemfdRam};

use super::error::UffdError;

/// One page, as the host maps it.
pub(super) const PAGE: usize = apflab_abi::memory_map::PAGE_SIZE as usize;

impl From<HostMemoryError> for UffdError {
    fn from(e: HostMemoryError) -> Self {
        UffdError::Os {
            op: e.op,
            source: e.source,
        }
    }
}

/// An anonymous private mapping, unmapped on drop. Guest RAM for tests and
/// benchmarks (the VMM passes its own vm-memory mapping instead).
pub struct AnonMapping {
    map: HostMapping,
}

impl AnonMapping {
    /// Maps `len` bytes (rounded up to pages) of zeroed anonymous memory.
    pub fn new(len: usize) -> Result<Self, UffdError> {
        Ok(AnonMapping {
            map: HostMapping::anonymous(len)?,
        })
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the mapping is empty (never: at least one page).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// One memfd mapped twice, shared: the guest's view and the VMM's, the
/// layout of the kvm backend's guest RAM. For tests and benchmarks of the
/// [`RamMapping::SharedFile`] layout.
///
/// ```
/// use apflab_pager::uffd::SharedMapping;
///
/// let ram = SharedMapping::new(4 * 4096)?;
/// // SAFETY: aligned words inside the two views, which `ram` keeps mapped
/// // and no other thread touches.
/// unsafe {
///     ram.vmm_ptr().add(4096).cast::<u64>().write(7);
///     assert_eq!(ram.guest_ptr().add(4096).cast::<u64>().read(), 7);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SharedMapping {
    memfd: MemfdRam,
    vmm: HostMapping,
}

impl SharedMapping {
    /// Creates a zeroed memfd of `len` bytes (rounded up to pages) and maps
    /// it twice.
    pub fn new(len: usize) -> Result<Self, UffdError> {
        let memfd = MemfdRam::new(len)?;
        let vmm = memfd.map_view()?;
        Ok(SharedMapping { memfd, vmm })
    }

    /// The guest's view.
    pub fn guest_ptr(&self) -> *mut u8 {
        self.memfd.guest_ptr()
    }

    /// The VMM's view.
    pub fn vmm_ptr(&self) -> *mut u8 {
        self.vmm.as_ptr()
    }

    /// Length of each view.
    pub fn len(&self) -> usize {
        self.memfd.len()
    }

    /// Whether the mapping is empty (never: at least one page).
    pub fn is_empty(&self) -> bool {
        self.memfd.is_empty()
    }

    /// This mapping as the pager takes it.
    pub fn ram(&self) -> RamMapping {
        RamMapping::SharedFile {
            guest: self.guest_ptr(),
            vmm: self.vmm_ptr(),
            len: self.len(),
        }
    }
}

/// Where the guest RAM a [`UffdPager`](super::UffdPager) serves lives in
/// this process.
#[derive(Clone, Copy, Debug)]
pub enum RamMapping {
    /// A private anonymous mapping of `len` bytes at `addr`.
    Anonymous {
        /// Host address of guest physical `RAM_BASE`.
        addr: *mut u8,
        /// Bytes.
        len: usize,
    },
    /// A memfd mapped twice, `len` bytes each: `guest` (the KVM memslot) and
    /// `vmm` (the VMM's always-accessible view).
    SharedFile {
        /// Host address of guest physical `RAM_BASE` in the guest's view.
        guest: *mut u8,
        /// The same in the VMM's view.
        vmm: *mut u8,
        /// Bytes.
        len: usize,
    },
}

/// The VMM's guest RAM as it hands it to a page server: its memfd mapped
/// twice.
impl From<HostRam> for RamMapping {
    fn from(ram: HostRam) -> Self {
        RamMapping::SharedFile {
            guest: ram.guest_view,
            vmm: ram.vmm_view,
            len: ram.len,
        }
    }
}

impl RamMapping {
    pub(super) fn len(&self) -> usize {
        match *self {
            RamMapping::Anonymous { len, .. } | RamMapping::SharedFile { len, .. } => len,
        }
    }

    /// The same layout from byte `offset`, `len` bytes long.
    ///
    /// # Safety
    /// `offset + len` must not exceed the mapping.
    pub(super) unsafe fn sub(&self, offset: usize, len: usize) -> RamMapping {
        // SAFETY: the caller keeps the range inside the mappings.
        unsafe {
            match *self {
                RamMapping::Anonymous { addr, .. } => RamMapping::Anonymous {
                    addr: addr.add(offset),
                    len,
                },
                RamMapping::SharedFile { guest, vmm, .. } => RamMapping::SharedFile {
                    guest: guest.add(offset),
                    vmm: vmm.add(offset),
                    len,
                },
            }
        }
    }
}
