//! The user-space ABI: system call numbers and error codes, and the thin
//! `svc #0` wrappers EL0 code calls (number in x8, arguments in x0..x5,
//! result in x0, negative = error). The kernel side is
//! [`crate::syscall::dispatch`].

use core::arch::asm;

/// Give the CPU to the next runnable task.
pub const SYS_YIELD: u64 = 0;
/// Sleep for x0 nanoseconds.
pub const SYS_SLEEP: u64 = 1;
/// End the task.
pub const SYS_EXIT: u64 = 2;
/// Write x1 bytes at x0 to the console.
pub const SYS_WRITE: u64 = 3;
/// Add x1 to metric x0 ([`metrics::metric`]).
pub const SYS_REPORT: u64 = 4;
/// `kv`: wait for the next request; returns its index, or
/// [`user::NO_MORE_REQUESTS`] when all have been handed out.
pub const SYS_REQUEST_WAIT: u64 = 5;
/// `kv`: request x0 is served (records its latency).
pub const SYS_REQUEST_DONE: u64 = 6;

/// Checksum x1 bytes at x0 ([`checksum`]), read by the kernel with IRQs
/// unmasked: `memtouch`'s `reader = kernel`, which makes the kernel itself
/// take faults on the task's far-memory pages.
pub const SYS_CHECKSUM: u64 = 7;

/// The hostile guest's task (`apflab.apf_abuse=on`): has the kernel make
/// misuse x0 of the host (EL0 cannot make hypercalls itself); returns 1 if
/// the host answered as it must, 0 if not.
pub const SYS_MISUSE: u64 = 8;

/// Unknown syscall number.
pub const E_NOSYS: i64 = -1;
/// Bad argument (unknown metric, buffer not readable by EL0, ...).
pub const E_INVAL: i64 = -2;

/// [`SYS_REQUEST_WAIT`]'s answer when no request is left.
pub const NO_MORE_REQUESTS: i64 = i64::MAX;

#[inline(always)]
fn svc(number: u64, a0: u64, a1: u64) -> i64 {
    let ret: i64;
    // SAFETY: `svc #0` enters the kernel, which only writes x0 and
    // returns to the next instruction (or never, for exit).
    unsafe {
        asm!(
            "svc #0",
            inlateout("x0") a0 => ret,
            in("x1") a1,
            in("x8") number,
            options(nostack),
        );
    }
    ret
}

/// Gives up the CPU.
pub fn yield_now() {
    svc(SYS_YIELD, 0, 0);
}

/// Sleeps for `ns` nanoseconds.
#[expect(
    dead_code,
    reason = "syscall API for workloads; no workload sleeps yet"
)]
pub fn sleep_ns(ns: u64) {
    svc(SYS_SLEEP, ns, 0);
}

/// Ends the task.
pub fn exit() -> ! {
    svc(SYS_EXIT, 0, 0);
    unreachable!("exit returned")
}

/// Writes `s` to the console.
pub fn write(s: &str) -> i64 {
    svc(SYS_WRITE, s.as_ptr() as u64, s.len() as u64)
}

/// Adds `value` to metric `id`.
pub fn report(id: u64, value: u64) -> i64 {
    svc(SYS_REPORT, id, value)
}

/// The kernel's checksum of the `len` bytes at `ptr`, or a negative
/// error.
pub fn checksum(ptr: u64, len: u64) -> i64 {
    svc(SYS_CHECKSUM, ptr, len)
}

/// Has the kernel make misuse `index` of the host ([`SYS_MISUSE`]).
pub fn misuse(index: u64) -> i64 {
    svc(SYS_MISUSE, index, 0)
}

/// Waits for the next `kv` request.
pub fn request_wait() -> i64 {
    svc(SYS_REQUEST_WAIT, 0, 0)
}

/// Marks `kv` request `index` served.
pub fn request_done(index: u64) -> i64 {
    svc(SYS_REQUEST_DONE, index, 0)
}
