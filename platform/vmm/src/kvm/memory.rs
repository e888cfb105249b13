//! Guest RAM for the kvm backend: one memfd mapped twice.
//!
//! * The **VMM view** is a vm-memory [`GuestMemoryMmap`] over the memfd; it
//!   is always readable and writable, so devices, the ELF loader, the pager
//!   (filling or saving a page) and the fault locator's stage-1 walk never
//!   trip over a withheld page.
//! * The **guest view** is a second shared mapping of the same memfd that
//!   is registered as the KVM memslot, and with a userfaultfd in minor-fault
//!   mode with `UFFD_FEATURE_SIGBUS`. A page is withheld from the guest by
//!   dropping it from the guest view only (`MADV_DONTNEED`: the content
//!   stays in the memfd, the mmu notifier removes the stage-2 mapping). The
//!   guest's next access is then a minor fault, which userfaultfd turns into
//!   SIGBUS, so `KVM_RUN` fails with `EFAULT` and the VMM locates the page
//!   itself (measured on Debian 6.1 and 6.12). Giving it back is `UFFDIO_CONTINUE`, which maps
//!   the memfd page, with whatever was written through the VMM view meanwhile.
//!
//! Unlike withholding by `mprotect`, this keeps the guest view one VMA, so
//! any number of pages can be withheld at once.
//!
//! The memfd and its guest view are a [`MemfdRam`] of the backend seam,
//! the same layout the pager's page server is tested and benchmarked on;
//! only the VMM view is mapped here, by vm-memory, which must own it (the
//! [`GuestMemoryMmap`] is cloned into the machine). A page server in the
//! host kernel's fault path gets both views' addresses ([`HostRam`]).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use apflab_abi::memory_map::{PAGE_SHIFT, PAGE_SIZE};
use userfaultfd::{FeatureFlags, RegisterMode, Uffd, UffdBuilder};
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap};

use super::error::{KvmError, RamLayoutError};
use apflab_hypervisor::HostRam;
use apflab_hypervisor::arch::stage1::GuestPhysMem;
use apflab_hypervisor::host_memory::{HostMemoryError, MemfdRam};

/// Guest RAM: a contiguous range of guest physical addresses.
pub struct GuestRam {
    base: u64,
    size: u64,
    vmm_view: GuestMemoryMmap,
    /// The memfd behind both views (pages are allocated in it before they
    /// are withheld) and the guest view, unmapped on drop; KVM's memslot
    /// goes away with the VM fd, which the hypervisor drops first.
    memfd: MemfdRam,
    /// The userfaultfd the guest view is registered with.
    uffd: Uffd,
    /// One bit per page, set = withheld from the guest.
    withheld: Vec<AtomicU64>,
}

fn os_err(op: impl Into<String>) -> KvmError {
    KvmError::Ioctl {
        op: op.into(),
        errno: std::io::Error::last_os_error(),
    }
}

fn uffd_err(op: impl Into<String>, e: userfaultfd::Error) -> KvmError {
    let errno = match e {
        userfaultfd::Error::SystemError(errno) => std::io::Error::from_raw_os_error(errno as i32),
        other => std::io::Error::other(other.to_string()),
    };
    KvmError::Ioctl {
        op: op.into(),
        errno,
    }
}

/// The error for building the memfd and its guest view.
fn memfd_err(size: u64) -> impl FnOnce(HostMemoryError) -> KvmError {
    move |e| KvmError::Ioctl {
        op: format!("{} for {size:#x} bytes", e.op),
        errno: e.source,
    }
}

/// A userfaultfd that raises SIGBUS on every fault instead of waiting for
/// an answer: a vCPU's access to a withheld page then fails `KVM_RUN` with
/// `EFAULT`.
fn new_sigbus_uffd() -> Result<Uffd, KvmError> {
    UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        // KVM reaches guest memory from kernel mode on the vCPU's behalf.
        .user_mode_only(false)
        .require_features(FeatureFlags::SIGBUS)
        .create()
        .map_err(|e| {
            uffd_err(
                "userfaultfd(SIGBUS) for guest RAM residency (needs root or \
                 vm.unprivileged_userfaultfd=1)",
                e,
            )
        })
}

impl GuestRam {
    /// Creates `size` bytes of zeroed RAM at guest physical `base`.
    pub fn new(base: u64, size: u64) -> Result<Self, KvmError> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) || !base.is_multiple_of(PAGE_SIZE) {
            return Err(KvmError::Memory(RamLayoutError::NotWholePages {
                base,
                size,
            }));
        }
        // SAFETY: sysconf has no preconditions.
        let host_page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if host_page as u64 != PAGE_SIZE {
            return Err(KvmError::Unsupported(format!(
                "per-page residency with {host_page}-byte host pages (apflab withholds 4 KiB pages)"
            )));
        }
        let len =
            usize::try_from(size).map_err(|_| KvmError::Memory(RamLayoutError::TooLarge(size)))?;
        let uffd = new_sigbus_uffd()?;
        let memfd = MemfdRam::new(len).map_err(memfd_err(size))?;
        let region_file = memfd.file().try_clone().map_err(|errno| KvmError::Ioctl {
            op: "dup(guest RAM memfd)".into(),
            errno,
        })?;
        let region = MmapRegion::from_file(FileOffset::new(region_file, 0), len)
            .map_err(|e| KvmError::Memory(RamLayoutError::VmmMapping(e)))?;
        let region = GuestRegionMmap::new(region, GuestAddress(base))
            .ok_or(KvmError::Memory(RamLayoutError::Overflows(base)))?;
        let vmm_view =
            GuestMemoryMmap::from_regions(vec![region]).map_err(|e| KvmError::Memory(e.into()))?;
        let pages = size >> PAGE_SHIFT;
        let ram = GuestRam {
            base,
            size,
            vmm_view,
            memfd,
            uffd,
            withheld: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        };
        // The registration ends when `ram` unmaps the guest view on drop.
        if let Err(e) =
            ram.uffd
                .register_with_mode(ram.memfd.guest_ptr().cast(), len, RegisterMode::MINOR)
        {
            return Err(match e {
                userfaultfd::Error::SystemError(errno) if errno as i32 == libc::EINVAL => {
                    KvmError::Unsupported(
                        "userfaultfd minor faults on shared memory (Linux 5.14+), which \
                         withhold guest pages"
                            .into(),
                    )
                }
                e => uffd_err("UFFDIO_REGISTER(guest view of RAM, minor faults)", e),
            });
        }
        Ok(ram)
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
        self.memfd.guest_ptr() as u64
    }

    /// Hands residency over to a page server in the host kernel's fault
    /// path: the guest view leaves this struct's SIGBUS userfaultfd (so
    /// the server can register it with its own, where faults wait instead
    /// of failing `KVM_RUN`), and both views are returned. Pages withheld
    /// through [`Self::set_resident`] before this stay unmapped.
    pub fn hand_over_residency(&self) -> Result<HostRam, KvmError> {
        self.uffd
            .unregister(self.memfd.guest_ptr().cast(), self.size as usize)
            .map_err(|e| uffd_err("UFFDIO_UNREGISTER(guest view of RAM)", e))?;
        let vmm_view = self
            .vmm_view
            .get_host_address(GuestAddress(self.base))
            .map_err(|e| KvmError::Memory(RamLayoutError::VmmView(e)))?;
        Ok(HostRam {
            guest_view: self.memfd.guest_ptr(),
            vmm_view,
            len: self.size as usize,
        })
    }

    fn page_index(&self, ipa: u64) -> Option<u64> {
        (ipa >= self.base && ipa - self.base < self.size).then(|| (ipa - self.base) >> PAGE_SHIFT)
    }

    /// Withholds the page holding `ipa` from the guest (false) or gives it
    /// back (true). Its content (read and written through [`Self::memory`])
    /// is kept either way.
    pub fn set_resident(&self, ipa: u64, resident: bool) -> Result<(), KvmError> {
        let page = self
            .page_index(ipa)
            .ok_or(KvmError::Memory(RamLayoutError::OutsideRam(ipa)))?;
        let bit = 1u64 << (page % 64);
        let word = &self.withheld[(page / 64) as usize];
        let offset = page << PAGE_SHIFT;
        // SAFETY: `offset` is a page inside the guest view this struct owns.
        let host = unsafe { self.memfd.guest_ptr().add(offset as usize) };
        if resident {
            if word.load(Ordering::Acquire) & bit == 0 {
                return Ok(());
            }
            self.uffd_continue(host as u64, ipa)?;
            word.fetch_and(!bit, Ordering::AcqRel);
        } else {
            // The page must exist in the memfd: a minor fault is only raised
            // for a page that does, a hole would be filled with zeros. (RAM
            // is populated at start, so this only guards against a hole
            // punched since.)
            // SAFETY: fallocate of one page inside the memfd, keeping its size.
            let rc = unsafe {
                libc::fallocate(
                    self.memfd.file().as_raw_fd(),
                    0,
                    offset as libc::off_t,
                    PAGE_SIZE as libc::off_t,
                )
            };
            if rc != 0 {
                return Err(os_err(format!("fallocate(guest page {ipa:#x})")));
            }
            // Marked first: a vCPU faulting on it from now on must find it
            // withheld when the VMM locates the fault.
            word.fetch_or(bit, Ordering::AcqRel);
            // SAFETY: drops only the guest view's mapping of the page (the
            // memfd keeps it); the VMM never dereferences the guest view.
            if unsafe { libc::madvise(host.cast(), PAGE_SIZE as usize, libc::MADV_DONTNEED) } != 0 {
                word.fetch_and(!bit, Ordering::AcqRel);
                return Err(os_err(format!(
                    "madvise(guest page {ipa:#x}, MADV_DONTNEED)"
                )));
            }
        }
        Ok(())
    }

    /// Maps the memfd page back into the guest view at `host`.
    fn uffd_continue(&self, host: u64, ipa: u64) -> Result<(), KvmError> {
        // EAGAIN means the mappings changed meanwhile; it cannot persist.
        for _ in 0..1000 {
            // Nobody sleeps on a SIGBUS-mode userfaultfd, so no wake-up is
            // needed; waking costs nothing either.
            match self
                .uffd
                .r#continue(host as *mut libc::c_void, PAGE_SIZE as usize, true)
            {
                Ok(_) => return Ok(()),
                // Already mapped (a racing access by the kernel itself).
                Err(userfaultfd::Error::SystemError(e)) if e as i32 == libc::EEXIST => {
                    return Ok(());
                }
                Err(userfaultfd::Error::SystemError(e)) if e as i32 == libc::EAGAIN => {}
                Err(e) => return Err(uffd_err(format!("UFFDIO_CONTINUE(guest page {ipa:#x})"), e)),
            }
        }
        Err(KvmError::Ioctl {
            op: format!("UFFDIO_CONTINUE(guest page {ipa:#x}), retried"),
            errno: std::io::Error::from_raw_os_error(libc::EAGAIN),
        })
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

    /// Whether the page at `addr` is mapped in this process (bit 63 of its
    /// /proc/self/pagemap entry).
    fn mapped(addr: u64) -> bool {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open("/proc/self/pagemap").unwrap();
        f.seek(SeekFrom::Start(addr / PAGE_SIZE * 8)).unwrap();
        let mut entry = [0u8; 8];
        f.read_exact(&mut entry).unwrap();
        u64::from_le_bytes(entry) >> 63 == 1
    }

    /// Reads the u64 at `addr` the way KVM reaches guest memory: through
    /// get_user_pages (process_vm_readv on ourselves), which fails with
    /// EFAULT where KVM_RUN would.
    fn gup_read(addr: u64) -> Result<u64, i32> {
        let mut v = 0u64;
        let local = libc::iovec {
            iov_base: (&raw mut v).cast(),
            iov_len: 8,
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: 8,
        };
        // SAFETY: reads 8 bytes of our own address space into `v`.
        let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        if n == 8 {
            Ok(v)
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    }

    #[test]
    fn withholding_unmaps_only_the_guest_view_and_faults_guest_accesses() {
        let ram = GuestRam::new(0x4000_0000, 16 * PAGE_SIZE).unwrap();
        let page = 0x4000_0000 + 5 * PAGE_SIZE;
        let guest_addr = ram.guest_view_addr() + 5 * PAGE_SIZE;
        ram.memory()
            .write_obj(0xfeed_u64, GuestAddress(page + 8))
            .unwrap();
        assert_eq!(gup_read(guest_addr + 8), Ok(0xfeed));

        ram.set_resident(page + 100, false).unwrap();
        assert!(!ram.is_resident(page));
        assert!(ram.is_resident(page + PAGE_SIZE));
        assert!(!mapped(guest_addr));
        // A guest access now fails as it does for KVM.
        assert_eq!(gup_read(guest_addr + 8), Err(libc::EFAULT));
        // The VMM still reads and writes it.
        assert_eq!(GuestPhysMem::read_u64(&ram, page + 8), Some(0xfeed));
        ram.memory()
            .write_obj(0xbeef_u64, GuestAddress(page + 16))
            .unwrap();
        // Withholding twice is harmless.
        ram.set_resident(page, false).unwrap();

        ram.set_resident(page, true).unwrap();
        assert!(ram.is_resident(page));
        assert!(mapped(guest_addr), "UFFDIO_CONTINUE maps the page");
        // Both views are the same memory.
        assert_eq!(gup_read(guest_addr + 16), Ok(0xbeef));
        ram.set_resident(page, true).unwrap();
    }

    #[test]
    fn a_never_touched_page_is_withheld_too() {
        let ram = GuestRam::new(0x4000_0000, 8 * PAGE_SIZE).unwrap();
        let page = 0x4000_0000 + 3 * PAGE_SIZE;
        let guest_addr = ram.guest_view_addr() + 3 * PAGE_SIZE;
        ram.set_resident(page, false).unwrap();
        assert_eq!(gup_read(guest_addr), Err(libc::EFAULT));
        ram.memory().write_obj(7_u64, GuestAddress(page)).unwrap();
        ram.set_resident(page, true).unwrap();
        assert_eq!(gup_read(guest_addr), Ok(7));
    }

    #[test]
    fn thousands_of_pages_can_be_withheld_at_once() {
        // Every other page withheld: one VMA per page would need more than
        // vm.max_map_count of them.
        let max_maps: u64 = std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(65_530);
        let pages = max_maps.min(200_000) + 1_000;
        let ram = GuestRam::new(0x4000_0000, pages * PAGE_SIZE).unwrap();
        for i in (0..pages).step_by(2) {
            ram.set_resident(0x4000_0000 + i * PAGE_SIZE, false)
                .unwrap();
        }
        for i in (0..pages).step_by(2) {
            ram.set_resident(0x4000_0000 + i * PAGE_SIZE, true).unwrap();
        }
    }

    /// Registers the guest view of `ram` for minor faults with a new
    /// userfaultfd (as a page server does); the errno, or 0.
    fn register_with_new_uffd(ram: &GuestRam) -> i32 {
        let uffd = UffdBuilder::new().close_on_exec(true).create().unwrap();
        let view = ram.guest_view_addr() as *mut libc::c_void;
        match uffd.register_with_mode(view, ram.size() as usize, RegisterMode::MINOR) {
            Ok(_) => 0,
            Err(userfaultfd::Error::SystemError(errno)) => errno as i32,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn residency_hands_over_to_a_page_server() {
        let ram = GuestRam::new(0x4000_0000, 8 * PAGE_SIZE).unwrap();
        assert_eq!(register_with_new_uffd(&ram), libc::EBUSY);
        let host = ram.hand_over_residency().unwrap();
        assert_eq!(host.len, 8 * PAGE_SIZE as usize);
        assert_eq!(host.guest_view as u64, ram.guest_view_addr());
        // The two views returned are the same memory.
        ram.memory()
            .write_obj(0x1234_u64, GuestAddress(0x4000_0000 + PAGE_SIZE))
            .unwrap();
        // SAFETY: an aligned word inside the mapped guest view.
        let seen = unsafe { *host.guest_view.add(PAGE_SIZE as usize).cast::<u64>() };
        assert_eq!(seen, 0x1234);
        // SAFETY: an aligned word inside the VMM view.
        unsafe { *host.vmm_view.add(16).cast::<u64>() = 9 };
        assert_eq!(
            ram.memory()
                .read_obj::<u64>(GuestAddress(0x4000_0010))
                .unwrap(),
            9
        );
        assert_eq!(register_with_new_uffd(&ram), 0);
    }

    #[test]
    fn bad_layouts_and_addresses_are_errors() {
        assert!(matches!(
            GuestRam::new(0x4000_0000, 0),
            Err(KvmError::Memory(_))
        ));
        assert!(matches!(
            GuestRam::new(0x4000_0001, PAGE_SIZE),
            Err(KvmError::Memory(_))
        ));
        let ram = GuestRam::new(0x4000_0000, 4 * PAGE_SIZE).unwrap();
        let e = ram
            .set_resident(0x4000_0000 + 4 * PAGE_SIZE, false)
            .unwrap_err();
        assert!(e.to_string().contains("outside guest RAM"), "{e}");
        // Outside RAM counts as resident (devices).
        assert!(ram.is_resident(0x0900_0000));
    }
}
