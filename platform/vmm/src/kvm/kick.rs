//! Kicking a vCPU thread out of `KVM_RUN`.
//!
//! The VMM must sometimes act on a vCPU that is running guest code (inject
//! "page ready" as an exception, stop the VM). The kicker sets a flag, then
//! sends a real-time signal to the vCPU thread. The signal handler sets
//! `kvm_run.immediate_exit`, which closes the race where the signal lands
//! after the vCPU thread checked the flag but before it entered `KVM_RUN`:
//! the ioctl then returns `EINTR` at once instead of running the guest.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use kvm_bindings::kvm_run;
use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

use super::error::KvmError;

thread_local! {
    /// The `kvm_run` of the vCPU this thread runs (null before binding).
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal used for kicks.
pub fn kick_signal() -> c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_: c_int, _: *mut siginfo_t, _: *mut c_void) {
    // A const-initialised thread local without destructor is a plain TLS
    // slot read: async-signal-safe.
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer was set by this thread from its own vCPU's
        // mapped kvm_run, which outlives the binding (cleared on drop).
        // A volatile byte store is what the kernel reads on entry.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the process-wide kick handler (idempotent).
pub fn install_handler() -> Result<(), KvmError> {
    static RESULT: OnceLock<Option<i32>> = OnceLock::new();
    let failed = RESULT.get_or_init(|| {
        register_signal_handler(kick_signal(), on_kick)
            .err()
            .map(|e| e.errno())
    });
    match *failed {
        None => Ok(()),
        Some(errno) => Err(KvmError::Ioctl {
            op: "sigaction(vCPU kick signal)".into(),
            errno: std::io::Error::from_raw_os_error(errno),
        }),
    }
}

/// Binds the calling thread to a vCPU's `kvm_run` so kicks reach it.
pub fn bind_current_thread(run: *mut kvm_run) {
    KVM_RUN.with(|c| c.set(run));
}

/// Unbinds the calling thread.
pub fn unbind_current_thread() {
    KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
}

/// Shared state between a vCPU and those who kick it.
#[derive(Default)]
pub struct KickState {
    /// A kick is pending.
    pub pending: AtomicBool,
    /// `pthread_t` of the vCPU thread, 0 while no thread runs the vCPU.
    pub thread: AtomicU64,
}

/// Kicks one vCPU. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Kicker {
    pub(crate) state: Arc<KickState>,
}

impl Kicker {
    /// Makes the vCPU's current or next `run()` return as soon as possible.
    pub fn kick(&self) -> Result<(), KvmError> {
        self.state.pending.store(true, Ordering::SeqCst);
        let thread = self.state.thread.load(Ordering::SeqCst);
        if thread != 0 {
            // SAFETY: `thread` is the pthread_t of a live vCPU thread: it is
            // cleared by the vCPU before its thread stops running it.
            let rc = unsafe { libc::pthread_kill(thread as libc::pthread_t, kick_signal()) };
            if rc != 0 {
                return Err(KvmError::Ioctl {
                    op: "pthread_kill(vCPU kick)".into(),
                    errno: std::io::Error::from_raw_os_error(rc),
                });
            }
        }
        Ok(())
    }
}
