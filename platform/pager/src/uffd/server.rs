//! The page-server threads, apart from the [`UffdPager`](super::UffdPager)
//! facade: what they share and how they take turns at the userfaultfd is
//! the part that must hold under concurrency (every lock, and the order of
//! install, bookkeeping and wake-up), so it is read in one place.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use apflab_abi::memory_map::PAGE_SHIFT;
use userfaultfd::{Event, FaultKind, ReadWrite};

use super::error::UffdError;
use super::mapping::PAGE;
use super::region::UffdRegion;
use crate::config::ManagedRange;
use crate::engine::{Access, Begin, Eviction, FaultEngine, PagerError};
use crate::residency::PageState;
use crate::store::{Page, Store};

/// A fault as read from the userfaultfd.
struct Request {
    offset: usize,
    access: Access,
    tid: i32,
    at: Instant,
}

/// What the page servers and the pager share.
pub(super) struct Shared {
    pub(super) region: UffdRegion,
    pub(super) range: ManagedRange,
    /// The pager's decisions (which page, which victim, when ready), shared
    /// by every page-server thread.
    pub(super) engine: Mutex<FaultEngine>,
    pub(super) store: Arc<dyn Store>,
    pub(super) retries: u32,
    pub(super) epoch: Instant,
    pub(super) vcpus: Mutex<HashMap<i32, usize>>,
    pub(super) failure: Mutex<Option<Arc<PagerError>>>,
    pub(super) failed: Condvar,
    pub(super) stop: AtomicBool,
    /// How long the server holding the turn busy-polls before blocking.
    pub(super) poll_for: Duration,
}

impl Shared {
    pub(super) fn engine(&self) -> MutexGuard<'_, FaultEngine> {
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
            *f = Some(Arc::new(e));
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

pub(super) fn spawn(
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, UffdError> {
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
                    source: Box::new(e),
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
                    source: Box::new(e),
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
pub(super) fn serve(s: &Shared, turn: &Mutex<()>, stop_fd: i32) {
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
                other => s.fail(PagerError::HostPage {
                    what: "serving a page through userfaultfd",
                    pfn: s.pfn(req.offset),
                    source: Box::new(other),
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
                let latency = e.sample_latencies(attempts);
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
