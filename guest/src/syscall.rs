//! System calls: `svc #0` with the number in x8, arguments in x0..x5 and
//! the result in x0 (negative = error).
//!
//! The kernel side is [`dispatch`]; the EL0 side is [`user`], the only part
//! of the kernel the EL0 workload code calls.

use crate::{apf, arch, checksum, console, metrics, mmu, sched, workloads};
use apflab_abi::memory_map::PAGE_SIZE;

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

/// Unknown syscall number.
pub const E_NOSYS: i64 = -1;
/// Bad argument (unknown metric, buffer not readable by EL0, ...).
pub const E_INVAL: i64 = -2;

/// Runs syscall `number` for the current task.
pub fn dispatch(number: u64, args: [u64; 6]) -> i64 {
    match number {
        SYS_YIELD => {
            sched::yield_current();
            0
        }
        SYS_SLEEP => {
            if args[0] == 0 {
                sched::yield_current();
            } else {
                let deadline = arch::counter().saturating_add(arch::ns_to_ticks(args[0]));
                sched::block_current(sched::Wait::Until(deadline));
            }
            0
        }
        SYS_EXIT => sched::exit_current(),
        SYS_WRITE => {
            let (ptr, len) = (args[0], args[1]);
            if len > 4096 || !mmu::el0_readable(ptr, len, &sched::user_stacks()) {
                return E_INVAL;
            }
            // SAFETY: the range was checked to lie in memory mapped for EL0
            // (rodata, task stacks, workload window), which stays mapped.
            let bytes = unsafe { core::slice::from_raw_parts(ptr as *const u8, len as usize) };
            console::write_bytes(bytes);
            len as i64
        }
        SYS_REPORT => {
            if metrics::add_metric(args[0], args[1]) {
                if args[0] == metrics::metric::CPU_OPS {
                    sched::add_current_ops(args[1]);
                }
                0
            } else {
                E_INVAL
            }
        }
        SYS_CHECKSUM => {
            let (ptr, len) = (args[0], args[1]);
            if len > PAGE_SIZE
                || len % 8 != 0
                || ptr % 8 != 0
                || !mmu::el0_readable(ptr, len, &sched::user_stacks())
            {
                return E_INVAL;
            }
            let words = ptr as *const u64;
            let sum = apf::kernel_reads(|| {
                (0..(len / 8) as usize).fold(checksum::INITIAL, |acc, i| {
                    // SAFETY: the range was checked to lie in memory mapped
                    // for EL0, aligned; a not-resident page faults here and
                    // the access is retried once it is in.
                    checksum::fold(acc, i, unsafe { words.add(i).read_volatile() })
                })
            });
            checksum::finish(sum) as i64
        }
        SYS_REQUEST_WAIT => workloads::request_wait(),
        SYS_REQUEST_DONE => workloads::request_done(args[0]),
        _ => E_NOSYS,
    }
}

/// The EL0 side: thin `svc` wrappers.
pub mod user {
    use core::arch::asm;

    /// [`super::SYS_REQUEST_WAIT`]'s answer when no request is left.
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
    #[expect(
        dead_code,
        reason = "syscall API for workloads; no workload yields yet"
    )]
    pub fn yield_now() {
        svc(super::SYS_YIELD, 0, 0);
    }

    /// Sleeps for `ns` nanoseconds.
    #[expect(
        dead_code,
        reason = "syscall API for workloads; no workload sleeps yet"
    )]
    pub fn sleep_ns(ns: u64) {
        svc(super::SYS_SLEEP, ns, 0);
    }

    /// Ends the task.
    pub fn exit() -> ! {
        svc(super::SYS_EXIT, 0, 0);
        unreachable!("exit returned")
    }

    /// Writes `s` to the console.
    pub fn write(s: &str) -> i64 {
        svc(super::SYS_WRITE, s.as_ptr() as u64, s.len() as u64)
    }

    /// Adds `value` to metric `id`.
    pub fn report(id: u64, value: u64) -> i64 {
        svc(super::SYS_REPORT, id, value)
    }

    /// The kernel's checksum of the `len` bytes at `ptr`, or a negative
    /// error.
    pub fn checksum(ptr: u64, len: u64) -> i64 {
        svc(super::SYS_CHECKSUM, ptr, len)
    }

    /// Waits for the next `kv` request.
    pub fn request_wait() -> i64 {
        svc(super::SYS_REQUEST_WAIT, 0, 0)
    }

    /// Marks `kv` request `index` served.
    pub fn request_done(index: u64) -> i64 {
        svc(super::SYS_REQUEST_DONE, index, 0)
    }
}
