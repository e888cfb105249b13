//! The kvm half: serving guest pages with userfaultfd, in real time.
//!
//! The managed part of the guest RAM mapping is registered with a
//! userfaultfd. A non-resident page is unmapped, so whoever touches it — a
//! vCPU inside `KVM_RUN`, or any host thread — blocks in the kernel until
//! the page is installed. Two layouts of guest RAM are served
//! ([`RamMapping`]):
//!
//! * **Anonymous**: one private mapping, registered for missing-page faults
//!   (plus write-protect where the kernel supports it for anonymous memory).
//!   A page is installed with `UFFDIO_COPY`.
//! * **Shared file**: one memfd mapped twice, as the kvm backend maps guest
//!   RAM. The guest's view is registered for minor faults; the VMM's view
//!   is always accessible. A page is installed by writing its content
//!   through the VMM's view and mapping it in the guest's with
//!   `UFFDIO_CONTINUE`.
//!
//! [`UffdPager`] runs `queue_depth` page-server threads that make the same
//! decisions as the emu half ([`FaultEngine`]) on the monotonic clock,
//! sleep until the modeled fetch completes, and install the page (then wake
//! every thread waiting on it). The servers take turns reading the
//! userfaultfd (leader/follower): the one holding the turn polls, and
//! hands the turn on as soon as it has a fault, then serves that fault
//! itself. A fault thus costs one thread wake-up on its way in, not two,
//! which matters where waking a thread is slow (on this project's test
//! hosts, themselves VMs, it is tens of microseconds).
//!
//! Eviction must not lose a write that races with it.
//! * Shared file: the page is unmapped from the guest's view first (a
//!   writer now faults and waits), then its content is read through the
//!   VMM's view, which no guest write can reach any more.
//! * Anonymous with write-protect support: the victim is write-protected
//!   first (writers now block), its content copied and written back, the
//!   page dropped with `MADV_DONTNEED`, then the protection lifted with a
//!   wake-up. A blocked writer retries, finds the page missing and faults
//!   it back in with its written-back content.
//! * Anonymous without it (arm64 kernels before 6.10 lack uffd-wp): a write
//!   landing between the copy and `MADV_DONTNEED` could be lost. The pager
//!   says so in a warning at start, and such hosts should use the shared
//!   file layout or keep `resident_limit` unset.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use apflab_abi::memory_map::{PAGE_SHIFT, PAGE_SIZE, RAM_BASE};
use userfaultfd::{
    Event, FaultKind, FeatureFlags, IoctlFlags, ReadWrite, RegisterMode, Uffd, UffdBuilder,
};

use crate::config::{DirtyTracking, ManagedRange};
use crate::engine::{Access, Begin, Eviction, FaultEngine, PagerError, Prepared};
use crate::metrics::PagerMetrics;
use crate::residency::PageState;
use crate::store::{Page, Store};

const PAGE: usize = PAGE_SIZE as usize;
/// Most page-server threads, whatever the queue depth.
const MAX_SERVERS: u32 = 64;

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

/// An anonymous private mapping, unmapped on drop. Guest RAM for tests and
/// benchmarks (the VMM passes its own vm-memory mapping instead).
pub struct AnonMapping {
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; sharing its
// address between threads is what userfaultfd serving needs, and every
// access through it goes through raw pointers with their own SAFETY notes.
unsafe impl Send for AnonMapping {}
// SAFETY: as above; `&AnonMapping` only hands out the address.
unsafe impl Sync for AnonMapping {}

impl AnonMapping {
    /// Maps `len` bytes (rounded up to pages) of zeroed anonymous memory.
    pub fn new(len: usize) -> Result<Self, UffdError> {
        let len = len.div_ceil(PAGE) * PAGE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        Ok(AnonMapping {
            addr: mmap(len, flags, -1, "mmap")?,
            len,
        })
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

impl Drop for AnonMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value created and owns.
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}

/// A new read-write mapping of `len` bytes at an address of the kernel's
/// choosing: anonymous with `fd` -1, else of the open file `fd`.
fn mmap(len: usize, flags: i32, fd: i32, op: &'static str) -> Result<NonNull<u8>, UffdError> {
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
    NonNull::new(p.cast()).ok_or(UffdError::Os {
        op,
        source: std::io::Error::other("returned NULL"),
    })
}

/// One memfd mapped twice, shared: the guest's view and the VMM's, the
/// layout of the kvm backend's guest RAM. For tests and benchmarks of the
/// [`RamMapping::SharedFile`] layout.
pub struct SharedMapping {
    guest: NonNull<u8>,
    vmm: NonNull<u8>,
    len: usize,
}

// SAFETY: as for `AnonMapping`: plain memory owned by this value, reached
// only through raw pointers with their own SAFETY notes.
unsafe impl Send for SharedMapping {}
// SAFETY: as above; `&SharedMapping` only hands out the addresses.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Creates a zeroed memfd of `len` bytes (rounded up to pages) and maps
    /// it twice.
    pub fn new(len: usize) -> Result<Self, UffdError> {
        let len = len.div_ceil(PAGE) * PAGE;
        let os = |op| move |source| UffdError::Os { op, source };
        // SAFETY: memfd_create with a valid NUL-terminated name; the result
        // is checked before use.
        let fd = unsafe { libc::memfd_create(c"apflab-shared-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(os("memfd_create")(std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(len as u64).map_err(os("ftruncate"))?;
        let map = || mmap(len, libc::MAP_SHARED, file.as_raw_fd(), "mmap(memfd)");
        let guest = map()?;
        let vmm = match map() {
            Ok(v) => v,
            Err(e) => {
                // SAFETY: unmaps the view mapped just above, nothing else.
                unsafe { libc::munmap(guest.as_ptr().cast(), len) };
                return Err(e);
            }
        };
        // The page cache holds every page from the start, as in the kvm
        // backend, so the guest's view raises minor faults only.
        // SAFETY: writes zeros to the VMM view mapped above.
        unsafe { std::ptr::write_bytes(vmm.as_ptr(), 0, len) };
        Ok(SharedMapping { guest, vmm, len })
    }

    /// The guest's view.
    pub fn guest_ptr(&self) -> *mut u8 {
        self.guest.as_ptr()
    }

    /// The VMM's view.
    pub fn vmm_ptr(&self) -> *mut u8 {
        self.vmm.as_ptr()
    }

    /// Length of each view.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: at least one page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
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

impl Drop for SharedMapping {
    fn drop(&mut self) {
        for view in [self.guest, self.vmm] {
            // SAFETY: unmaps exactly the views this value mapped and owns.
            unsafe { libc::munmap(view.as_ptr().cast(), self.len) };
        }
    }
}

/// Where the guest RAM a [`UffdPager`] serves lives in this process.
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
    fn len(&self) -> usize {
        match *self {
            RamMapping::Anonymous { len, .. } | RamMapping::SharedFile { len, .. } => len,
        }
    }

    /// The same layout from byte `offset`, `len` bytes long.
    ///
    /// # Safety
    /// `offset + len` must not exceed the mapping.
    unsafe fn sub(&self, offset: usize, len: usize) -> RamMapping {
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

/// A range of host memory registered with a userfaultfd: the page-level
/// operations (install, evict) with their safety argument in one place.
pub struct UffdRegion {
    uffd: Uffd,
    /// Start of the registered range (the guest's view).
    addr: usize,
    len: usize,
    write_protect: bool,
    /// The VMM's view of the same pages, for the shared file layout.
    vmm_view: Option<usize>,
}

impl UffdRegion {
    /// Registers `ram` with its layout's fault mode (see the module docs).
    ///
    /// # Safety
    /// As for [`UffdRegion::register`] or [`UffdRegion::register_shared`].
    pub unsafe fn register_mapping(ram: RamMapping) -> Result<Self, UffdError> {
        // SAFETY: passed on from the caller.
        unsafe {
            match ram {
                RamMapping::Anonymous { addr, len } => Self::register(addr, len),
                RamMapping::SharedFile { guest, vmm, len } => {
                    Self::register_shared(guest, vmm, len)
                }
            }
        }
    }

    /// Registers the guest's view `[guest, guest + len)` of a memfd for
    /// minor faults; `vmm` maps the same file range. Pages mapped in the
    /// guest's view stay mapped; use [`UffdRegion::discard`] to make them
    /// fault.
    ///
    /// # Safety
    /// Both ranges must be page aligned, lie inside shared mappings of the
    /// same memfd pages, and stay mapped for the life of the region. Any
    /// thread touching a page unmapped in the guest's view blocks until the
    /// page is installed.
    pub unsafe fn register_shared(
        guest: *mut u8,
        vmm: *mut u8,
        len: usize,
    ) -> Result<Self, UffdError> {
        let a = guest as usize;
        for p in [a, vmm as usize] {
            if !p.is_multiple_of(PAGE) || len == 0 || !len.is_multiple_of(PAGE) {
                return Err(UffdError::Range {
                    what: "region",
                    value: p,
                });
            }
        }
        let uffd = UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            // KVM touches guest memory from kernel mode on the vCPU's
            // behalf: those faults must reach us too.
            .user_mode_only(false)
            .require_features(FeatureFlags::THREAD_ID)
            .create()
            .map_err(UffdError::Create)?;
        uffd.register_with_mode(guest.cast(), len, RegisterMode::MINOR)
            .map_err(|source| UffdError::Register {
                addr: a,
                len,
                source,
            })?;
        Ok(UffdRegion {
            uffd,
            addr: a,
            len,
            write_protect: false,
            vmm_view: Some(vmm as usize),
        })
    }

    /// Registers `[addr, addr + len)` for missing-page faults, and for
    /// write-protect faults when the kernel supports them on this range.
    /// Pages already present stay present; use [`UffdRegion::discard`] to
    /// make them fault.
    ///
    /// # Safety
    /// The range must be page aligned, lie inside one private anonymous
    /// mapping, and stay mapped for the life of the region. Any thread
    /// touching a missing page of it blocks until the page is installed.
    pub unsafe fn register(addr: *mut u8, len: usize) -> Result<Self, UffdError> {
        let a = addr as usize;
        if !a.is_multiple_of(PAGE) || len == 0 || !len.is_multiple_of(PAGE) {
            return Err(UffdError::Range {
                what: "region",
                value: a,
            });
        }
        let build = |features: FeatureFlags| {
            UffdBuilder::new()
                .close_on_exec(true)
                .non_blocking(true)
                // KVM touches guest memory from kernel mode on the vCPU's
                // behalf: those faults must reach us too.
                .user_mode_only(false)
                .require_features(features)
                .create()
        };
        let base = FeatureFlags::THREAD_ID;
        // Prefer write-protect support; fall back to missing-only.
        let (uffd, mut wp) = match build(base | FeatureFlags::PAGEFAULT_FLAG_WP) {
            Ok(u) => (u, true),
            Err(_) => (build(base).map_err(UffdError::Create)?, false),
        };
        let mode = if wp {
            RegisterMode::MISSING | RegisterMode::WRITE_PROTECT
        } else {
            RegisterMode::MISSING
        };
        let ioctls = match uffd.register_with_mode(addr.cast(), len, mode) {
            Ok(i) => i,
            Err(_) if wp => {
                wp = false;
                uffd.register_with_mode(addr.cast(), len, RegisterMode::MISSING)
                    .map_err(|source| UffdError::Register {
                        addr: a,
                        len,
                        source,
                    })?
            }
            Err(source) => {
                return Err(UffdError::Register {
                    addr: a,
                    len,
                    source,
                });
            }
        };
        wp &= ioctls.contains(IoctlFlags::WRITE_PROTECT);
        if !ioctls.contains(IoctlFlags::COPY | IoctlFlags::WAKE) {
            return Err(UffdError::Register {
                addr: a,
                len,
                source: userfaultfd::Error::UnsupportedIoctls(ioctls),
            });
        }
        Ok(UffdRegion {
            uffd,
            addr: a,
            len,
            write_protect: wp,
            vmm_view: None,
        })
    }

    /// Whether evictions are safe against racing writes: always for the
    /// shared file layout, with uffd write-protect for anonymous memory.
    pub fn evicts_safely(&self) -> bool {
        self.write_protect || self.vmm_view.is_some()
    }

    /// Length of the region.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn page_ptr(&self, offset: usize) -> Result<*mut libc::c_void, UffdError> {
        if !offset.is_multiple_of(PAGE) || offset >= self.len {
            return Err(UffdError::Range {
                what: "offset",
                value: offset,
            });
        }
        Ok((self.addr + offset) as *mut libc::c_void)
    }

    /// Installs `page` at `offset` (`UFFDIO_COPY`; for the shared file
    /// layout a write through the VMM's view and `UFFDIO_CONTINUE`), waking
    /// the threads waiting for it if `wake`. Returns false if a page was
    /// already there (with `UFFDIO_COPY` nothing is overwritten).
    pub fn install(&self, offset: usize, page: &Page, wake: bool) -> Result<bool, UffdError> {
        let dst = self.page_ptr(offset)?;
        let (op, result) = match self.vmm_view {
            Some(vmm) => {
                // SAFETY: the same page in the VMM's view, which the
                // registration contract keeps mapped. The pager installs
                // only pages it holds absent, which the guest's view does
                // not map, so no guest access sees the write half done.
                unsafe {
                    std::ptr::copy_nonoverlapping(page.as_ptr(), (vmm + offset) as *mut u8, PAGE)
                };
                let r = self.uffd.r#continue(dst, PAGE, wake).map(drop);
                ("UFFDIO_CONTINUE", r)
            }
            // SAFETY: `dst` is a page of the registered range (checked
            // above), which the registration contract keeps mapped; `page`
            // is a valid 4 KiB source. UFFDIO_COPY only fills a missing page
            // atomically.
            None => ("UFFDIO_COPY", unsafe {
                self.uffd
                    .copy(page.as_ptr().cast(), dst, PAGE, wake)
                    .map(drop)
            }),
        };
        match result {
            Ok(()) => Ok(true),
            Err(userfaultfd::Error::CopyFailed(e) | userfaultfd::Error::SystemError(e))
                if e as i32 == libc::EEXIST =>
            {
                if wake {
                    self.wake(offset)?;
                }
                Ok(false)
            }
            Err(source) => Err(UffdError::Ioctl { op, offset, source }),
        }
    }

    /// Wakes threads waiting on the page at `offset`.
    pub fn wake(&self, offset: usize) -> Result<(), UffdError> {
        let p = self.page_ptr(offset)?;
        self.uffd.wake(p, PAGE).map_err(|source| UffdError::Ioctl {
            op: "UFFDIO_WAKE",
            offset,
            source,
        })
    }

    /// Removes the page at `offset` so the next touch faults, copying its
    /// last content into `content` first (for write-back). With
    /// write-protect support no write can slip between copy and removal.
    pub fn evict(&self, offset: usize, content: Option<&mut Page>) -> Result<(), UffdError> {
        let p = self.page_ptr(offset)?;
        if let Some(vmm) = self.vmm_view {
            self.discard(offset, PAGE)?;
            if let Some(out) = content {
                // SAFETY: the page in the VMM's view, always mapped; the
                // guest's view no longer maps it, so it cannot change.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        (vmm + offset) as *const u8,
                        out.as_mut_ptr(),
                        PAGE,
                    )
                };
            }
            return Ok(());
        }
        if self.write_protect {
            self.uffd
                .write_protect(p, PAGE)
                .map_err(|source| UffdError::Ioctl {
                    op: "UFFDIO_WRITEPROTECT",
                    offset,
                    source,
                })?;
        }
        if let Some(out) = content {
            // SAFETY: the page is inside the registered range and present
            // (the caller evicts only resident pages), so the read does not
            // fault; with write protection on it cannot change under us.
            unsafe { std::ptr::copy_nonoverlapping(p.cast::<u8>(), out.as_mut_ptr(), PAGE) };
        }
        self.discard(offset, PAGE)?;
        if self.write_protect {
            // Wake writers that blocked on the protection: they retry and
            // now fault on the missing page.
            self.uffd
                .remove_write_protection(p, PAGE, true)
                .map_err(|source| UffdError::Ioctl {
                    op: "UFFDIO_WRITEPROTECT (clear)",
                    offset,
                    source,
                })?;
        }
        Ok(())
    }

    /// Drops `len` bytes from `offset` with `MADV_DONTNEED`: the pages read
    /// as missing (and fault) again.
    pub fn discard(&self, offset: usize, len: usize) -> Result<(), UffdError> {
        let p = self.page_ptr(offset)?;
        if !len.is_multiple_of(PAGE) || offset + len > self.len {
            return Err(UffdError::Range {
                what: "length",
                value: len,
            });
        }
        // SAFETY: the range is inside the registered mapping;
        // MADV_DONTNEED only drops its pages from it (they come back
        // through userfaultfd; a memfd keeps their content), it never
        // unmaps.
        if unsafe { libc::madvise(p, len, libc::MADV_DONTNEED) } != 0 {
            return Err(UffdError::Os {
                op: "madvise(MADV_DONTNEED)",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// A fault as read from the userfaultfd.
struct Request {
    offset: usize,
    access: Access,
    tid: i32,
    at: Instant,
}

struct Shared {
    region: UffdRegion,
    range: ManagedRange,
    /// Offset of the managed range's first page in the region (0: the
    /// region is exactly the managed range).
    engine: Mutex<FaultEngine>,
    store: Arc<dyn Store>,
    retries: u32,
    epoch: Instant,
    vcpus: Mutex<HashMap<i32, usize>>,
    failure: Mutex<Option<PagerError>>,
    failed: Condvar,
    stop: AtomicBool,
    /// How long the server holding the turn busy-polls before blocking.
    poll_for: Duration,
}

impl Shared {
    fn engine(&self) -> MutexGuard<'_, FaultEngine> {
        // A poisoned lock means a server thread panicked mid-update; the
        // bookkeeping is still the best we have, and the run is failing.
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn sleep_until(&self, t_ns: u64) {
        let now = self.now_ns();
        if t_ns > now {
            std::thread::sleep(Duration::from_nanos(t_ns - now));
        }
    }

    fn pfn(&self, offset: usize) -> u64 {
        self.range.first_pfn + (offset >> PAGE_SHIFT) as u64
    }

    fn offset(&self, pfn: u64) -> usize {
        ((pfn - self.range.first_pfn) << PAGE_SHIFT) as usize
    }

    fn fail(&self, e: PagerError) {
        tracing::error!(error = %e, "page server failed; the guest page stays absent");
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
        self.failed.notify_all();
    }

    fn record_stall(&self, tid: i32, ns: u64) {
        let vcpu = self
            .vcpus
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&tid)
            .copied();
        if let Some(v) = vcpu {
            self.engine().record_stall(v, ns);
        }
    }
}

/// Far memory in real time for the kvm backend (see the module docs).
pub struct UffdPager {
    shared: Arc<Shared>,
    stop_fd: OwnedFd,
    threads: Vec<JoinHandle<()>>,
}

impl UffdPager {
    /// Takes over the managed part of guest RAM mapped as `ram` (its
    /// addresses are those of guest physical [`RAM_BASE`]): registers it,
    /// drops its pages, installs the initially resident ones from the
    /// store, and starts the page servers.
    ///
    /// # Safety
    /// `ram` must describe live mappings of its layout that stay mapped
    /// until this pager is dropped, and the pager must be dropped only
    /// after every thread that may touch guest RAM (the vCPUs) has
    /// stopped: closing the userfaultfd lets blocked threads through (to
    /// zero pages, or to whatever the memfd holds).
    pub unsafe fn start(prepared: Prepared, ram: RamMapping) -> Result<Self, UffdError> {
        let ram_len = ram.len();
        let mut prepared = prepared;
        // userfaultfd does not report writes to present pages, so every
        // evicted page is written back.
        prepared.config.dirty_tracking = DirtyTracking::Conservative;
        let range = prepared.range;
        let start = (
            ((range.first_pfn << PAGE_SHIFT) - RAM_BASE) as usize,
            (range.pages as usize) * PAGE,
        );
        if start.0 + start.1 > ram_len {
            return Err(UffdError::TooSmall {
                len: ram_len,
                needed: start.0 + start.1,
            });
        }
        // SAFETY: the caller guarantees the mapping; the managed part is a
        // page-aligned subrange of it (checked above).
        let region = unsafe { UffdRegion::register_mapping(ram.sub(start.0, start.1))? };
        if !region.evicts_safely() && prepared.config.resident_limit.is_some() {
            tracing::warn!(
                "userfaultfd write-protect is not available for anonymous memory on this \
                 kernel: a guest write racing with an eviction can be lost"
            );
        }
        region.discard(0, region.len())?;
        let engine = FaultEngine::new(&prepared);
        let retries = engine.retries();
        let mut page = Box::new([0u8; PAGE]);
        for pfn in engine.resident_pfns() {
            FaultEngine::read_with_retries(retries, &*prepared.store, pfn, &mut page)?;
            region.install(
                ((pfn - range.first_pfn) << PAGE_SHIFT) as usize,
                &page,
                false,
            )?;
        }
        let servers = prepared.config.queue_depth.clamp(1, MAX_SERVERS);
        let shared = Arc::new(Shared {
            region,
            range,
            engine: Mutex::new(engine),
            store: prepared.store,
            retries,
            epoch: Instant::now(),
            vcpus: Mutex::new(HashMap::new()),
            failure: Mutex::new(None),
            failed: Condvar::new(),
            stop: AtomicBool::new(false),
            poll_for: Duration::from_micros(prepared.config.server_poll_us),
        });
        // SAFETY: eventfd creates a new descriptor; on success we own it.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(UffdError::Os {
                op: "eventfd",
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `efd` is a fresh descriptor nobody else owns.
        let stop_fd = unsafe { OwnedFd::from_raw_fd(efd) };
        let turn = Arc::new(Mutex::new(()));
        let mut threads = Vec::new();
        for n in 0..servers {
            let (s, turn, stop) = (shared.clone(), turn.clone(), stop_fd.as_raw_fd());
            threads.push(spawn(format!("apf-pager-{n}"), move || {
                serve(&s, &turn, stop)
            })?);
        }
        Ok(UffdPager {
            shared,
            stop_fd,
            threads,
        })
    }

    /// Attributes the stall time of faults from host thread `tid` (the
    /// vCPU thread's `gettid()`) to `vcpu`.
    pub fn register_vcpu_thread(&self, vcpu: usize, tid: i32) {
        self.shared
            .vcpus
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tid, vcpu);
    }

    /// The managed range.
    pub fn range(&self) -> ManagedRange {
        self.shared.range
    }

    /// Whether eviction is safe against racing writes (see
    /// [`UffdRegion::evicts_safely`]).
    pub fn evicts_safely(&self) -> bool {
        self.shared.region.evicts_safely()
    }

    /// Whether managed page `pfn` is resident now.
    pub fn is_resident(&self, pfn: u64) -> bool {
        self.shared.engine().is_resident(pfn)
    }

    /// Hint: `pfn` was accessed.
    pub fn note_access(&self, pfn: u64) {
        self.shared.engine().note_access(pfn);
    }

    /// The first fatal error, if a page could not be served. The threads
    /// waiting for that page stay blocked: stop the VM.
    pub fn failure(&self) -> Option<String> {
        self.shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|e| e.to_string())
    }

    /// Waits up to `timeout` for a fatal error and takes it.
    pub fn wait_failure(&self, timeout: Duration) -> Option<PagerError> {
        let g = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (mut g, _) = self
            .shared
            .failed
            .wait_timeout_while(g, timeout, |f| f.is_none())
            .unwrap_or_else(|p| p.into_inner());
        g.take()
    }

    /// Metrics so far.
    pub fn metrics(&self) -> PagerMetrics {
        self.shared.engine().metrics()
    }

    /// Stops serving, as dropping does, and returns the final metrics: a
    /// fetch a server had begun is finished and counted first.
    pub fn finish(mut self) -> PagerMetrics {
        self.shut_down();
        self.metrics()
    }

    fn shut_down(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.shared.stop.store(true, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a local u64 to our own eventfd.
        unsafe { libc::write(self.stop_fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        // Every server sees the eventfd (it stays readable) at its next
        // turn, after finishing the fault it is serving.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for UffdPager {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, UffdError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|source| UffdError::Os {
            op: "spawning a page-server thread",
            source,
        })
}

/// The next fault from the userfaultfd, waiting for one; None once
/// `stop_fd` fires (it stays readable, so every server sees it).
fn next_request(s: &Shared, stop_fd: i32) -> Option<Request> {
    let mut fds = [
        libc::pollfd {
            fd: s.region.uffd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop_fd,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let mut polling_since: Option<Instant> = None;
    loop {
        if s.stop.load(Ordering::Acquire) {
            return None;
        }
        match s.region.uffd.read_event() {
            Ok(Some(Event::Pagefault {
                kind,
                rw,
                addr,
                thread_id,
            })) => {
                // Write-protect faults are writers blocked by an eviction in
                // progress; the evicting server wakes them.
                if kind == FaultKind::WriteProtected {
                    continue;
                }
                let access = if rw == ReadWrite::Write {
                    Access::Write
                } else {
                    Access::Read
                };
                return Some(Request {
                    offset: (addr as usize - s.region.addr) & !(PAGE - 1),
                    access,
                    tid: thread_id.as_raw(),
                    at: Instant::now(),
                });
            }
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(userfaultfd::Error::SystemError(e)) if e as i32 == libc::EAGAIN => {}
            Err(e) => {
                s.fail(PagerError::Host {
                    what: "reading the userfaultfd",
                    detail: e.to_string(),
                });
                return None;
            }
        }
        // Nothing pending: keep polling for `poll_for`, then wait for a
        // fault or the stop.
        if !s.poll_for.is_zero() {
            let since = *polling_since.get_or_insert_with(Instant::now);
            if since.elapsed() < s.poll_for {
                std::hint::spin_loop();
                continue;
            }
        }
        // SAFETY: `fds` is a valid array of two pollfds for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                s.fail(PagerError::Host {
                    what: "polling the userfaultfd",
                    detail: e.to_string(),
                });
                return None;
            }
        }
        if fds[1].revents != 0 {
            return None;
        }
    }
}

/// Page-server thread: takes its turn at reading the userfaultfd, hands the
/// turn on, serves what it read; until the stop.
fn serve(s: &Shared, turn: &Mutex<()>, stop_fd: i32) {
    let mut page = Box::new([0u8; PAGE]);
    let mut victim = Box::new([0u8; PAGE]);
    loop {
        let req = {
            let _turn = turn.lock().unwrap_or_else(|p| p.into_inner());
            match next_request(s, stop_fd) {
                Some(r) => r,
                None => return,
            }
        };
        if let Err(e) = serve_one(s, &req, &mut page, &mut victim) {
            match e {
                UffdError::Pager(p) => s.fail(p),
                other => s.fail(PagerError::Host {
                    what: "serving a page through userfaultfd",
                    detail: format!("guest page {:#x}: {other}", s.pfn(req.offset)),
                }),
            }
        }
    }
}

fn serve_one(
    s: &Shared,
    req: &Request,
    page: &mut Page,
    victim: &mut Page,
) -> Result<(), UffdError> {
    let pfn = s.pfn(req.offset);
    loop {
        let (state, pending) = {
            let e = s.engine();
            let i = s.range.index(pfn).ok_or(PagerError::NotManaged {
                pfn,
                first: s.range.first_pfn,
                end: s.range.first_pfn + s.range.pages,
            })?;
            (e.residency().state(i), e.write_back_pending(pfn))
        };
        match state {
            // A stale message: the page came in meanwhile. Wake in case
            // the sender is still waiting.
            PageState::Resident => return s.region.wake(req.offset),
            // The fetching server wakes everyone when it installs.
            PageState::InFlight => {
                let mut e = s.engine();
                if let Begin::InFlight { ready_at_ns } = e.begin(pfn, s.now_ns())? {
                    let waited = (s.epoch + Duration::from_nanos(ready_at_ns))
                        .saturating_duration_since(req.at);
                    drop(e);
                    s.record_stall(req.tid, waited.as_nanos() as u64);
                }
                return Ok(());
            }
            PageState::Absent if pending => {
                // Our eviction of this page is between DONTNEED and its
                // bookkeeping; it is done in microseconds.
                std::thread::yield_now();
                continue;
            }
            PageState::Absent => {}
        }
        // Read outside the lock: the store may be slow.
        let attempts = FaultEngine::read_with_retries(s.retries, &*s.store, pfn, page)?;
        let now = s.now_ns();
        let mut e = s.engine();
        match e.begin(pfn, now)? {
            Begin::Fetch { evicted } => {
                let latency: u64 = (0..attempts).map(|_| e.sample_latency()).sum();
                let ready = e.schedule(pfn, now, attempts, latency);
                drop(e);
                if let Some(ev) = evicted {
                    evict(s, ev, victim)?;
                }
                s.sleep_until(ready);
                if !s.region.install(req.offset, page, false)? {
                    tracing::warn!(pfn, "page was already present when its fetch completed");
                }
                // Accounted before anyone waiting on the page runs again, so
                // what a woken thread can observe, the metrics already hold.
                s.engine().complete(pfn, req.access)?;
                s.region.wake(req.offset)?;
                s.record_stall(req.tid, req.at.elapsed().as_nanos() as u64);
                return Ok(());
            }
            Begin::NoFrame { retry_at_ns } => {
                drop(e);
                s.sleep_until(retry_at_ns);
            }
            // Someone else started or finished it while we read.
            Begin::InFlight { .. } | Begin::Resident => return Ok(()),
        }
    }
}

fn evict(s: &Shared, ev: Eviction, buf: &mut Page) -> Result<(), UffdError> {
    let offset = s.offset(ev.pfn);
    if ev.write_back {
        // The engine keeps the page "write-back pending" until the content
        // is in the store; a fault arriving after the drop waits for that,
        // so it reads the new content.
        s.region.evict_with(offset, buf, |content| {
            s.store
                .write_page(ev.pfn, content)
                .map_err(|source| PagerError::WriteBack {
                    pfn: ev.pfn,
                    source,
                })?;
            s.engine().written_back(ev.pfn, s.now_ns())
        })
    } else {
        s.region.evict(offset, None)
    }
}

impl UffdRegion {
    /// Like [`UffdRegion::evict`] with a copy, running `after_drop` on the
    /// copied content once the page is gone but before writers blocked on
    /// the protection are woken.
    fn evict_with(
        &self,
        offset: usize,
        buf: &mut Page,
        after_drop: impl FnOnce(&Page) -> Result<(), PagerError>,
    ) -> Result<(), UffdError> {
        if self.vmm_view.is_some() {
            self.evict(offset, Some(buf))?;
            return after_drop(buf).map_err(UffdError::Pager);
        }
        let p = self.page_ptr(offset)?;
        if self.write_protect {
            self.uffd
                .write_protect(p, PAGE)
                .map_err(|source| UffdError::Ioctl {
                    op: "UFFDIO_WRITEPROTECT",
                    offset,
                    source,
                })?;
        }
        // SAFETY: as in `evict`: a present page of the registered range.
        unsafe { std::ptr::copy_nonoverlapping(p.cast::<u8>(), buf.as_mut_ptr(), PAGE) };
        self.discard(offset, PAGE)?;
        let result = after_drop(buf);
        if self.write_protect {
            self.uffd
                .remove_write_protection(p, PAGE, true)
                .map_err(|source| UffdError::Ioctl {
                    op: "UFFDIO_WRITEPROTECT (clear)",
                    offset,
                    source,
                })?;
        }
        result.map_err(UffdError::Pager)
    }
}
