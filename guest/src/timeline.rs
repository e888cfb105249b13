//! The timeline log (`apflab.trace=on`): which task each CPU runs, what
//! each task waits for, and when a CPU is in an exception handler, for
//! `apflab run --trace` (layout and protocol in [`apflab_abi::trace`]).
//!
//! Each CPU appends to a buffer of its own and hands it to the host with
//! `TRACE` only where that costs least and no lock is held: when the CPU
//! goes idle, on the way back to EL0 once the buffer is half full, and at
//! the end of the run. A record that finds the buffer full, or finds it in
//! use by the code an exception interrupted (an SDEI event can be entered
//! anywhere), is not kept but counted, and the count goes to the host with
//! the next buffer. Off, every call is one load and a branch.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering, compiler_fence};

use apflab_abi::trace::{Handler, TRACE_BATCH, TraceKind, TraceRecord};

use crate::percpu::{MAX_CPUS, cpu_index};
use crate::{arch, hypercall};

static ENABLED: AtomicBool = AtomicBool::new(false);

struct Buffer {
    /// Set while this CPU's code between two exception boundaries works on
    /// the buffer; a nested record finding it set is dropped.
    busy: bool,
    len: usize,
    /// Records not kept since the last hand-over.
    dropped: u64,
    records: [TraceRecord; TRACE_BATCH],
}

struct Buffers([UnsafeCell<Buffer>; MAX_CPUS]);

// SAFETY: each CPU touches only its own buffer (by its CPU index); an
// exception nested on the same CPU backs off through `busy`.
unsafe impl Sync for Buffers {}

static BUFFERS: Buffers = Buffers(
    [const {
        UnsafeCell::new(Buffer {
            busy: false,
            len: 0,
            dropped: 0,
            records: [TraceRecord {
                ticks: 0,
                kind: 0,
                task: 0,
                arg: 0,
            }; TRACE_BATCH],
        })
    }; MAX_CPUS],
);

/// Turns the log on (at boot, before any task exists).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Runs `f` on this CPU's buffer unless it is already in use below us.
fn with_buffer(f: impl FnOnce(&mut Buffer)) {
    let b = BUFFERS.0[cpu_index()].get();
    // SAFETY: only this CPU uses its buffer; `busy` keeps a nested
    // exception's record from making a second reference while one is live
    // (the fences keep the compiler from moving the buffer's accesses out
    // from between setting and clearing it).
    unsafe {
        if (*b).busy {
            (*b).dropped += 1;
            return;
        }
        (*b).busy = true;
        compiler_fence(Ordering::SeqCst);
        f(&mut *b);
        compiler_fence(Ordering::SeqCst);
        (*b).busy = false;
    }
}

/// Logs `kind` for `task` now.
pub fn record(kind: TraceKind, task: u32, arg: u64) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let r = TraceRecord::new(arch::counter(), kind, task, arg);
    with_buffer(|b| match b.records.get_mut(b.len) {
        Some(slot) => {
            *slot = r;
            b.len += 1;
        }
        None => b.dropped += 1,
    });
}

/// Logs the entry into a handler doing `what`; its exit is logged when the
/// returned guard goes (which may be after the task was switched away and
/// back).
#[must_use = "the handler's exit is logged when the guard is dropped"]
pub fn handler(what: Handler) -> HandlerGuard {
    record(TraceKind::HandlerEnter, 0, what.code());
    HandlerGuard
}

/// Logs a handler's exit when dropped (see [`handler`]).
pub struct HandlerGuard;

impl Drop for HandlerGuard {
    fn drop(&mut self) {
        record(TraceKind::HandlerExit, 0, 0);
    }
}

/// Hands this CPU's records to the host if it holds at least `min`.
fn hand_over(min: usize) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    with_buffer(|b| {
        if b.len < min.max(1) && b.dropped == 0 {
            return;
        }
        if hypercall::trace(&b.records[..b.len], b.dropped) != 0 {
            // No host to take them (plain QEMU) or one that refuses: stop.
            ENABLED.store(false, Ordering::Relaxed);
        }
        b.len = 0;
        b.dropped = 0;
    });
}

/// Hands over what this CPU logged (it is going idle, or the run ends).
pub fn hand_over_all() {
    hand_over(1);
}

/// On the way back to EL0: hands over once the buffer is half full.
pub fn hand_over_if_half_full() {
    hand_over(TRACE_BATCH / 2);
}
