//! Guest RAM's host memory as the kvm backend lays it out, and the
//! mappings the pager's tests and benchmarks build the same way.
//!
//! Guest RAM is one memfd ([`MemfdRam`]) mapped twice: the guest's view
//! (the KVM memslot, where pages are withheld) and the VMM's, always
//! accessible. The VMM owns both (its vm-memory `GuestMemoryMmap` maps the
//! second view from [`MemfdRam::file`]); a pager serving inside the host
//! kernel's fault path only gets their addresses ([`crate::HostRam`]).
//! Both sides build the layout here, so what the pager is tested on is
//! what it serves.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use apflab_abi::memory_map::PAGE_SIZE;

/// One page, as the host maps it.
const PAGE: usize = PAGE_SIZE as usize;

/// A system call on host memory failed.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct HostMemoryError {
    /// The call and what it was for.
    pub op: &'static str,
    /// The error it returned.
    #[source]
    pub source: std::io::Error,
}

/// A read-write mapping this value owns, unmapped on drop.
pub struct HostMapping {
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; sharing its
// address between threads is what userfaultfd serving needs, and every
// access through it goes through raw pointers with their own SAFETY notes.
unsafe impl Send for HostMapping {}
// SAFETY: as above; `&HostMapping` only hands out the address.
unsafe impl Sync for HostMapping {}

impl HostMapping {
    /// A new read-write mapping of `len` bytes at an address of the
    /// kernel's choosing: anonymous with `fd` -1, else of the open file `fd`.
    fn new(len: usize, flags: i32, fd: i32, op: &'static str) -> Result<Self, HostMemoryError> {
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
            return Err(HostMemoryError {
                op,
                source: std::io::Error::last_os_error(),
            });
        }
        let addr = NonNull::new(p.cast()).ok_or(HostMemoryError {
            op,
            source: std::io::Error::other("returned NULL"),
        })?;
        Ok(HostMapping { addr, len })
    }

    /// `len` bytes (rounded up to pages) of zeroed private anonymous
    /// memory.
    pub fn anonymous(len: usize) -> Result<Self, HostMemoryError> {
        let len = len.div_ceil(PAGE) * PAGE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        Self::new(len, flags, -1, "mmap")
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: at least one page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value created and owns.
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}

/// Guest RAM in a memfd, mapped shared once: the guest's view (the KVM
/// memslot), populated, unmapped on drop. A second view of the same pages,
/// the VMM's, is mapped from [`MemfdRam::file`] (the kvm backend maps it
/// with vm-memory, which must own that mapping: its `GuestMemoryMmap` is
/// cloned and may outlive this value) or by [`MemfdRam::map_view`].
///
/// ```
/// use std::os::unix::fs::FileExt;
///
/// use apflab_hypervisor::host_memory::MemfdRam;
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
    guest: HostMapping,
}

impl MemfdRam {
    /// Creates a zeroed memfd of `len` bytes (rounded up to pages), maps
    /// it as the guest's view and maps every page in that view.
    pub fn new(len: usize) -> Result<Self, HostMemoryError> {
        let len = len.div_ceil(PAGE) * PAGE;
        let os = |op| move |source| HostMemoryError { op, source };
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
        let guest = Self::map_file(&file, len, "mmap(guest view of RAM)")?;
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
    fn map_file(file: &File, len: usize, op: &'static str) -> Result<HostMapping, HostMemoryError> {
        let flags = libc::MAP_SHARED | libc::MAP_NORESERVE;
        HostMapping::new(len, flags, file.as_raw_fd(), op)
    }

    /// A second view of the whole memfd (the VMM's), owned by the caller.
    pub fn map_view(&self) -> Result<HostMapping, HostMemoryError> {
        Self::map_file(&self.file, self.len(), "mmap(VMM view of RAM)")
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
