//! The kernel side of the system calls ([`crate::uapi`] has the numbers
//! and the EL0 side).

use crate::uapi::*;
use crate::{apf, apf_abuse, arch, checksum, console, kv, metrics, mmu, run_end, sched};
use apflab_abi::memory_map::PAGE_SIZE;

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
        SYS_EXIT => sched::exit_current::<run_end::Shutdown>(),
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
        SYS_REQUEST_WAIT => kv::request_wait(),
        SYS_REQUEST_DONE => kv::request_done(args[0]),
        SYS_MISUSE => apf_abuse::misuse(args[0]),
        _ => E_NOSYS,
    }
}
