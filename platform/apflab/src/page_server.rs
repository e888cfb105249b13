//! Far memory served in the host kernel's fault path (`[pager] fault_path =
//! "kernel"`, kvm only): [`apflab_pager::uffd::UffdPager`] behind the VMM's
//! [`PageServer`] hook.
//!
//! A vCPU touching a non-resident page blocks inside `KVM_RUN` on the
//! userfaultfd of the guest's view of RAM; `queue_depth` page-server threads
//! sleep the modeled fetch latency, write the page through the VMM's view
//! and map it with `UFFDIO_CONTINUE`. The VMM sees no exit: this is how
//! stock KVM waits for post-copy and swapped-out memory.

use std::sync::{Arc, Mutex, MutexGuard};

use apflab_pager::uffd::{RamMapping, UffdError, UffdPager};
use apflab_pager::{PagerMetrics, Prepared};
use apflab_vmm::{HostRam, PageServer, PageServerError};

/// Why the page server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// It was already serving (or done).
    #[error("the page server was started twice")]
    StartedTwice,
    /// Taking over guest RAM failed.
    #[error(transparent)]
    Uffd(#[from] UffdError),
}

/// The pager of one run, before, during and after it.
pub struct KernelPager {
    state: Mutex<State>,
}

enum State {
    /// Built from the config; not serving yet.
    Ready(Prepared),
    Serving(UffdPager),
    /// Stopped; what it did.
    Done(PagerMetrics),
    /// `start` failed; the run did not happen.
    Failed,
}

impl KernelPager {
    /// Wraps a pager built from the run's `[pager]` section.
    pub fn new(prepared: Prepared) -> Self {
        KernelPager {
            state: Mutex::new(State::Ready(prepared)),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves a valid state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the pager did, once it has served (None if it never started).
    pub fn metrics(&self) -> Option<PagerMetrics> {
        match &*self.state() {
            State::Serving(p) => Some(p.metrics()),
            State::Done(m) => Some(m.clone()),
            State::Ready(_) | State::Failed => None,
        }
    }
}

impl PageServer for KernelPager {
    unsafe fn start(&self, ram: HostRam) -> Result<(), PageServerError> {
        let mut state = self.state();
        let prepared = match std::mem::replace(&mut *state, State::Failed) {
            State::Ready(p) => p,
            other => {
                // A pager already serving must not be dropped here: that
                // would let its blocked vCPUs through.
                *state = other;
                return Err(Arc::new(StartError::StartedTwice));
            }
        };
        let mapping = RamMapping::from(ram);
        // SAFETY: the VMM keeps both views mapped until `stop` returns (the
        // contract of `PageServer::start`), and calls `stop` only after its
        // vCPUs were told to stop, which is what `UffdPager::start` needs.
        let pager = unsafe { UffdPager::start(prepared, mapping) }
            .map_err(|e| Arc::new(StartError::from(e)) as PageServerError)?;
        *state = State::Serving(pager);
        Ok(())
    }

    fn register_vcpu_thread(&self, vcpu: u32) {
        if let State::Serving(p) = &*self.state() {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            p.register_vcpu_thread(vcpu as usize, tid);
        }
    }

    fn failure(&self) -> Option<PageServerError> {
        match &*self.state() {
            State::Serving(p) => p.failure().map(|e| e as PageServerError),
            _ => None,
        }
    }

    fn stop(&self) {
        let mut state = self.state();
        *state = match std::mem::replace(&mut *state, State::Failed) {
            // Joins the page servers (a fetch in progress completes and is
            // counted), then closes the userfaultfd.
            State::Serving(p) => State::Done(p.finish()),
            // Stopping twice keeps what the first stop recorded.
            other => other,
        };
    }
}
