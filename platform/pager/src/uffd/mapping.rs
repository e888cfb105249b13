//! Guest RAM's host memory in the two layouts the pager serves.
//!
//! The pager itself takes guest RAM as plain addresses ([`RamMapping`]):
//! the VMM maps it (with vm-memory) and keeps owning it. The owning types
//! here exist so that tests, benchmarks and the kvm backend build those
//! layouts one way: [`MemfdRam`] is the memfd the kvm backend's guest RAM
//! lives in, and [`SharedMapping`] adds to it the second view that the kvm
//! backend maps with vm-memory instead, so what the pager is tested on is
//! what it serves.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use super::error::UffdError;

/// One page, as the host maps it.
pub(super) const PAGE: usize = apflab_abi::memory_map::PAGE_SIZE as usize;

/// A read-write mapping this value owns, unmapped on drop.
struct Mmap {
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; sharing its
// address between threads is what userfaultfd serving needs, and every
// access through it goes through raw pointers with their own SAFETY notes.
unsafe impl Send for Mmap {}
// SAFETY: as above; `&Mmap` only hands out the address.
unsafe impl Sync for Mmap {}

impl Mmap {
    /// A new read-write mapping of `len` bytes at an address of the
    /// kernel's choosing: anonymous with `fd` -1, else of the open file `fd`.
    fn new(len: usize, flags: i32, fd: i32, op: &'static str) -> Result<Self, UffdError> {
        // SAFETY: no address is given, so no existing mapping is affected; the
        // result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(UffdError::Os {
                op,
                source: std::io::Error::last_os_error(),
            });
        }
        let addr = NonNull::new(p.cast()).ok_or(UffdError::Os {
            op,
            source: std::io::Error::other("returned NULL"),
        })?;
        Ok(Mmap { addr, len })
    }

    fn as_ptr(&self) -> *mut u8 {
        self.addr.as_ptr()
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value created and owns.
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}

/// An anonymous private mapping, unmapped on drop. Guest RAM for tests and
/// benchmarks (the VMM passes its own vm-memory mapping instead).
pub struct AnonMapping {
    map: Mmap,
}

impl AnonMapping {
    /// Maps `len` bytes (rounded up to pages) of zeroed anonymous memory.
    pub fn new(len: usize) -> Result<Self, UffdError> {
        let len = len.div_ceil(PAGE) * PAGE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        Ok(AnonMapping {
            map: Mmap::new(len, flags, -1, "mmap")?,
        })
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len
    }

    /// Whether the mapping is empty (never: at least one page).
    pub fn is_empty(&self) -> bool {
        self.map.len == 0
    }
}

/// Guest RAM in a memfd, mapped shared once: the guest's view (the KVM
/// memslot), populated, unmapped on drop. A second view of the same pages,
/// the VMM's, is mapped from [`MemfdRam::file`]: the kvm backend maps it
/// with vm-memory, which must own that mapping (its `GuestMemoryMmap` is
/// cloned and may outlive this value); [`SharedMapping`] maps it here.
///
/// ```
/// use std::os::unix::fs::FileExt;
///
/// use apflab_pager::uffd::MemfdRam;
///
/// let ram = MemfdRam::new(4 * 4096)?;
/// // What is written to the memfd, by any view, is what the guest's view
/// // reads.
/// ram.file().write_all_at(&7u64.to_ne_bytes(), 4096)?;
/// // SAFETY: an aligned word inside the guest's view, which `ram` keeps
/// // mapped.
/// let word = unsafe { ram.guest_ptr().add(4096).cast::<u64>().read() };
/// assert_eq!(word, 7);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MemfdRam {
    /// The memfd behind every view.
    file: File,
    guest: Mmap,
}

impl MemfdRam {
    /// Creates a zeroed memfd of `len` bytes (rounded up to pages), maps
    /// it as the guest's view and maps every page in that view.
    pub fn new(len: usize) -> Result<Self, UffdError> {
        let len = len.div_ceil(PAGE) * PAGE;
        let os = |op| move |source| UffdError::Os { op, source };
        // SAFETY: memfd_create with a valid NUL-terminated name; the result
        // is checked before use.
        let fd = unsafe { libc::memfd_create(c"apflab-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(os("memfd_create(guest RAM)")(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(len as u64)
            .map_err(os("ftruncate(guest RAM)"))?;
        let guest = Self::map_view(&file, len, "mmap(guest view of RAM)")?;
        // Minor faults are raised for any page of the memfd that the guest
        // view does not map yet, which would include every page the VMM
        // writes first (the kernel image, the device tree, the pager's
        // initial content). Mapping all of RAM in the guest view up front
        // leaves only withheld pages unmapped. It also puts every page in
        // the page cache from the start, so the guest's view raises minor
        // faults only (a page missing from the memfd would be filled with
        // zeros by the kernel, unseen by userfaultfd in minor mode).
        // SAFETY: populates the guest view mapped just above, which `guest`
        // owns.
        if unsafe { libc::madvise(guest.as_ptr().cast(), len, libc::MADV_POPULATE_WRITE) } != 0 {
            return Err(os("madvise(guest view of RAM, MADV_POPULATE_WRITE)")(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(MemfdRam { file, guest })
    }

    /// A new shared mapping of the whole memfd.
    fn map_view(file: &File, len: usize, op: &'static str) -> Result<Mmap, UffdError> {
        let flags = libc::MAP_SHARED | libc::MAP_NORESERVE;
        Mmap::new(len, flags, file.as_raw_fd(), op)
    }

    /// The memfd, for mapping more views of it or for allocating its pages.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The guest's view.
    pub fn guest_ptr(&self) -> *mut u8 {
        self.guest.as_ptr()
    }

    /// Length of the memfd and of the guest's view.
    pub fn len(&self) -> usize {
        self.guest.len
    }

    /// Whether the memfd is empty (never: at least one page).
    pub fn is_empty(&self) -> bool {
        self.guest.len == 0
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
    vmm: Mmap,
}

impl SharedMapping {
    /// Creates a zeroed memfd of `len` bytes (rounded up to pages) and maps
    /// it twice.
    pub fn new(len: usize) -> Result<Self, UffdError> {
        let memfd = MemfdRam::new(len)?;
        let vmm = MemfdRam::map_view(&memfd.file, memfd.len(), "mmap(VMM view of RAM)")?;
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
