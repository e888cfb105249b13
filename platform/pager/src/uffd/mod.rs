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
//!   RAM (both build it on
//!   [`apflab_hypervisor::host_memory::MemfdRam`]). The guest's view is registered
//!   for minor faults; the VMM's view is always accessible. A page is
//!   installed by writing its content through the VMM's view and mapping
//!   it in the guest's with `UFFDIO_CONTINUE`.
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

mod error;
mod mapping;
mod region;
mod server;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use apflab_abi::memory_map::{PAGE_SHIFT, RAM_BASE};

pub use error::UffdError;
use mapping::PAGE;
pub use mapping::{AnonMapping, RamMapping, SharedMapping};
pub use region::UffdRegion;
use server::{Shared, serve, spawn};

use crate::config::{DirtyTracking, ManagedRange};
use crate::engine::{FaultEngine, PagerError, Prepared};
use crate::metrics::PagerMetrics;

/// Most page-server threads, whatever the queue depth.
const MAX_SERVERS: u32 = 64;

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
    pub fn failure(&self) -> Option<Arc<PagerError>> {
        self.shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits up to `timeout` for a fatal error and takes it.
    pub fn wait_failure(&self, timeout: Duration) -> Option<Arc<PagerError>> {
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
