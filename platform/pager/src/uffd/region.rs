//! The userfaultfd operations on one registered range, kept apart from the
//! page servers so that the kernel contract behind each ioctl (what must
//! stay mapped, what a racing access sees) is argued once, next to the
//! call, whatever decides when to call it.

use userfaultfd::{FeatureFlags, IoctlFlags, RegisterMode, Uffd, UffdBuilder};

use super::error::UffdError;
use super::mapping::{PAGE, RamMapping};
use crate::engine::PagerError;
use crate::store::Page;

/// A range of host memory registered with a userfaultfd: the page-level
/// operations (install, evict) with their safety argument in one place.
pub struct UffdRegion {
    pub(super) uffd: Uffd,
    /// Start of the registered range (the guest's view).
    pub(super) addr: usize,
    len: usize,
    write_protect: bool,
    /// The VMM's view of the same pages, for the shared file layout.
    vmm_view: Option<usize>,
}

impl UffdRegion {
    /// Registers `ram` with its layout's fault mode (see the [module
    /// docs](super)).
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
        self.protect(p, offset)?;
        if let Some(out) = content {
            // SAFETY: the page is inside the registered range and present
            // (the caller evicts only resident pages), so the read does not
            // fault; with write protection on it cannot change under us.
            unsafe { std::ptr::copy_nonoverlapping(p.cast::<u8>(), out.as_mut_ptr(), PAGE) };
        }
        self.discard(offset, PAGE)?;
        self.unprotect(p, offset)?;
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

    /// Like [`UffdRegion::evict`] with a copy, running `after_drop` on the
    /// copied content once the page is gone but before writers blocked on
    /// the protection are woken.
    pub(super) fn evict_with(
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
        self.protect(p, offset)?;
        // SAFETY: as in `evict`: a present page of the registered range.
        unsafe { std::ptr::copy_nonoverlapping(p.cast::<u8>(), buf.as_mut_ptr(), PAGE) };
        self.discard(offset, PAGE)?;
        let result = after_drop(buf);
        self.unprotect(p, offset)?;
        result.map_err(UffdError::Pager)
    }

    /// Write-protects the page at `p` (region offset `offset`), where the
    /// kernel supports it, so no write slips in while it is copied out.
    fn protect(&self, p: *mut libc::c_void, offset: usize) -> Result<(), UffdError> {
        if !self.write_protect {
            return Ok(());
        }
        self.uffd
            .write_protect(p, PAGE)
            .map_err(|source| UffdError::Ioctl {
                op: "UFFDIO_WRITEPROTECT",
                offset,
                source,
            })
    }

    /// Lifts [`UffdRegion::protect`] and wakes writers that blocked on it:
    /// they retry and now fault on the missing page.
    fn unprotect(&self, p: *mut libc::c_void, offset: usize) -> Result<(), UffdError> {
        if !self.write_protect {
            return Ok(());
        }
        self.uffd
            .remove_write_protection(p, PAGE, true)
            .map_err(|source| UffdError::Ioctl {
                op: "UFFDIO_WRITEPROTECT (clear)",
                offset,
                source,
            })
    }
}
