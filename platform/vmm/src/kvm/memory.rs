//! Guest RAM for the kvm backend: one memfd mapped twice.
//!
//! * The **VMM view** is a vm-memory [`GuestMemoryMmap`] over the memfd; it
//!   is always readable and writable, so devices, the ELF loader, the pager
//!   (filling or saving a page) and the fault locator's stage-1 walk never
//!   trip over a withheld page.
//! * The **guest view** is a second shared mapping of the same memfd that
//!   is registered as the KVM memslot. A page is withheld from the guest by
//!   `mprotect(PROT_NONE)` on this view only: the guest's next access makes
//!   `KVM_RUN` fail with `EFAULT` (measured on 6.1 and 6.12, `KVM-NOTES.md`),
//!   and the mmu notifier that mprotect fires removes any stage-2 mapping.
//!   Making it resident again is `mprotect(PROT_READ | PROT_WRITE)`; the
//!   content written through the VMM view is what the guest then sees.
//!
//! Each withheld page splits the guest view's VMA, so the number of pages
//! withheld at once is bounded by `vm.max_map_count` / 2 (about 32,000 with
//! the default); [`GuestRam::set_resident`] reports the ENOMEM clearly.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use apflab_abi::memory_map::{PAGE_SHIFT, PAGE_SIZE};
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use super::KvmError;
use super::stage1::GuestPhysMem;

/// Guest RAM: a contiguous range of guest physical addresses.
pub struct GuestRam {
    base: u64,
    size: u64,
    vmm_view: GuestMemoryMmap,
    guest_view: *mut u8,
    /// One bit per page, set = withheld from the guest.
    withheld: Vec<AtomicU64>,
}

// SAFETY: `guest_view` is a shared mapping owned by this struct for its
// whole life; it is only passed to the kernel (memslot, mprotect), never
// dereferenced by the VMM, so sharing the pointer between threads is sound.
unsafe impl Send for GuestRam {}
// SAFETY: as above; the residency bitmap is atomic.
unsafe impl Sync for GuestRam {}

fn os_err(op: impl Into<String>) -> KvmError {
    KvmError::Ioctl {
        op: op.into(),
        errno: std::io::Error::last_os_error(),
    }
}

impl GuestRam {
    /// Creates `size` bytes of zeroed RAM at guest physical `base`.
    pub fn new(base: u64, size: u64) -> Result<Self, KvmError> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) || !base.is_multiple_of(PAGE_SIZE) {
            return Err(KvmError::Memory(format!(
                "RAM at {base:#x} of {size:#x} bytes is not a non-empty whole number of pages"
            )));
        }
        // SAFETY: sysconf has no preconditions.
        let host_page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if host_page as u64 != PAGE_SIZE {
            return Err(KvmError::Unsupported(format!(
                "per-page residency with {host_page}-byte host pages (apflab withholds 4 KiB pages)"
            )));
        }
        let len = usize::try_from(size)
            .map_err(|_| KvmError::Memory(format!("{size:#x} bytes do not fit this host")))?;
        // SAFETY: memfd_create with a valid NUL-terminated name; the result
        // is checked before use.
        let fd = unsafe { libc::memfd_create(c"apflab-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(os_err("memfd_create(guest RAM)"));
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size).map_err(|errno| KvmError::Ioctl {
            op: format!("ftruncate(guest RAM, {size:#x})"),
            errno,
        })?;
        // SAFETY: a new shared mapping of the memfd, no fixed address; the
        // result is checked. The memfd stays referenced by the mapping.
        let guest_view = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                0,
            )
        };
        if guest_view == libc::MAP_FAILED {
            return Err(os_err("mmap(guest view of RAM)"));
        }
        let region = MmapRegion::from_file(FileOffset::new(file, 0), len)
            .map_err(|e| KvmError::Memory(format!("mapping the VMM view of RAM: {e}")))?;
        let region = GuestRegionMmap::new(region, GuestAddress(base))
            .ok_or_else(|| KvmError::Memory(format!("RAM at {base:#x} overflows")))?;
        let vmm_view = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| KvmError::Memory(format!("{e}")))?;
        let pages = size >> PAGE_SHIFT;
        Ok(GuestRam {
            base,
            size,
            vmm_view,
            guest_view: guest_view.cast(),
            withheld: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// The VMM's always-accessible view.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.vmm_view
    }

    /// Guest physical base.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host address of the guest view (for the memslot).
    pub fn guest_view_addr(&self) -> u64 {
        self.guest_view as u64
    }

    fn page_index(&self, ipa: u64) -> Option<u64> {
        (ipa >= self.base && ipa - self.base < self.size).then(|| (ipa - self.base) >> PAGE_SHIFT)
    }

    /// Withholds the page holding `ipa` from the guest (false) or gives it
    /// back (true).
    pub fn set_resident(&self, ipa: u64, resident: bool) -> Result<(), KvmError> {
        let page = self
            .page_index(ipa)
            .ok_or_else(|| KvmError::Memory(format!("{ipa:#x} is outside guest RAM")))?;
        let prot = if resident {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_NONE
        };
        // SAFETY: the address is a page inside the guest view this struct
        // owns; changing its protection affects only guest accesses (the VMM
        // never dereferences the guest view).
        let rc = unsafe {
            libc::mprotect(
                self.guest_view.add((page << PAGE_SHIFT) as usize).cast(),
                PAGE_SIZE as usize,
                prot,
            )
        };
        if rc != 0 {
            let errno = std::io::Error::last_os_error();
            let hint = if errno.raw_os_error() == Some(libc::ENOMEM) {
                " (too many withheld pages for vm.max_map_count)"
            } else {
                ""
            };
            return Err(KvmError::Ioctl {
                op: format!("mprotect(guest page {ipa:#x}){hint}"),
                errno,
            });
        }
        let bit = 1u64 << (page % 64);
        let word = &self.withheld[(page / 64) as usize];
        if resident {
            word.fetch_and(!bit, Ordering::AcqRel);
        } else {
            word.fetch_or(bit, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Whether the guest can access the page holding `ipa` (addresses
    /// outside RAM count as resident: they are devices or nothing).
    pub fn is_resident(&self, ipa: u64) -> bool {
        match self.page_index(ipa) {
            Some(page) => {
                self.withheld[(page / 64) as usize].load(Ordering::Acquire) & (1 << (page % 64))
                    == 0
            }
            None => true,
        }
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the guest view mapped in `new`; KVM's
        // memslot goes away with the VM fd, which the hypervisor drops first.
        unsafe {
            libc::munmap(self.guest_view.cast(), self.size as usize);
        }
    }
}

impl GuestPhysMem for GuestRam {
    fn is_resident(&self, ipa: u64) -> bool {
        GuestRam::is_resident(self, ipa)
    }

    fn read_u64(&self, ipa: u64) -> Option<u64> {
        use vm_memory::Bytes;
        self.vmm_view.read_obj::<u64>(GuestAddress(ipa)).ok()
    }

    fn read_u32(&self, ipa: u64) -> Option<u32> {
        use vm_memory::Bytes;
        self.vmm_view.read_obj::<u32>(GuestAddress(ipa)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    /// Permissions of the mapping holding `addr`, from /proc/self/maps.
    fn perms_at(addr: u64) -> String {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for line in maps.lines() {
            let (range, rest) = line.split_once(' ').unwrap();
            let (lo, hi) = range.split_once('-').unwrap();
            let lo = u64::from_str_radix(lo, 16).unwrap();
            let hi = u64::from_str_radix(hi, 16).unwrap();
            if (lo..hi).contains(&addr) {
                return rest[..4].to_string();
            }
        }
        panic!("{addr:#x} not mapped");
    }

    #[test]
    fn withholding_protects_only_the_guest_view() {
        let ram = GuestRam::new(0x4000_0000, 16 * PAGE_SIZE).unwrap();
        let page = 0x4000_0000 + 5 * PAGE_SIZE;
        ram.memory().write_obj(0xfeed_u64, GuestAddress(page + 8)).unwrap();
        let guest_addr = ram.guest_view_addr() + 5 * PAGE_SIZE;
        assert_eq!(perms_at(guest_addr), "rw-s");

        ram.set_resident(page + 100, false).unwrap();
        assert!(!ram.is_resident(page));
        assert!(ram.is_resident(page + PAGE_SIZE));
        assert_eq!(perms_at(guest_addr), "---s");
        assert_eq!(perms_at(guest_addr + PAGE_SIZE), "rw-s");
        // The VMM still reads and writes it.
        assert_eq!(GuestPhysMem::read_u64(&ram, page + 8), Some(0xfeed));
        ram.memory().write_obj(0xbeef_u64, GuestAddress(page + 16)).unwrap();

        ram.set_resident(page, true).unwrap();
        assert!(ram.is_resident(page));
        assert_eq!(perms_at(guest_addr), "rw-s");
        // Both views are the same memory.
        // SAFETY: the page is resident (read-write) in the guest view.
        let seen = unsafe { std::ptr::read_volatile((guest_addr + 16) as *const u64) };
        assert_eq!(seen, 0xbeef);
    }

    #[test]
    fn bad_layouts_and_addresses_are_errors() {
        assert!(matches!(GuestRam::new(0x4000_0000, 0), Err(KvmError::Memory(_))));
        assert!(matches!(GuestRam::new(0x4000_0001, PAGE_SIZE), Err(KvmError::Memory(_))));
        let ram = GuestRam::new(0x4000_0000, 4 * PAGE_SIZE).unwrap();
        let e = ram.set_resident(0x4000_0000 + 4 * PAGE_SIZE, false).unwrap_err();
        assert!(e.to_string().contains("outside guest RAM"), "{e}");
        // Outside RAM counts as resident (devices).
        assert!(ram.is_resident(0x0900_0000));
    }
}
