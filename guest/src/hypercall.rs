//! apflab hypercalls and PSCI power calls, made with HVC (smccc crate).
//!
//! On plain QEMU every apflab call answers `NOT_SUPPORTED`; the kernel then
//! runs without async PF and reports only on the console.

use apflab_abi::hypercall::{
    FN_FEATURES, FN_PANIC, FN_REPORT, FN_TASK_DONE, PANIC_MSG_MAX, SMCCC_NOT_SUPPORTED,
};
use smccc::Hvc;

/// Makes an apflab call with up to two arguments and returns x0 as a
/// signed SMCCC status or value.
fn call(function: u32, a1: u64, a2: u64) -> i64 {
    let mut args = [0u64; 17];
    args[0] = a1;
    args[1] = a2;
    smccc::hvc64(function, args)[0] as i64
}

/// `FEATURES`: the async PF features the host offers (0 when the host does
/// not implement apflab calls).
pub fn features() -> u64 {
    let r = call(FN_FEATURES, 0, 0);
    if r == SMCCC_NOT_SUPPORTED {
        0
    } else {
        r as u64
    }
}

/// `REPORT`: hands the report bytes to the host. The kernel runs on an
/// identity map, so the virtual address is the physical one.
pub fn report(bytes: &[u8]) -> i64 {
    call(FN_REPORT, bytes.as_ptr() as u64, bytes.len() as u64)
}

/// `TASK_DONE`: a workload task finished after `ops` operations.
pub fn task_done(task_id: u32, ops: u64) -> i64 {
    call(FN_TASK_DONE, u64::from(task_id), ops)
}

/// `PANIC`: hands the panic message to the host (returns on plain QEMU).
pub fn panic(msg: &[u8]) {
    let len = (msg.len() as u64).min(PANIC_MSG_MAX);
    call(FN_PANIC, msg.as_ptr() as u64, len);
}

/// PSCI `SYSTEM_OFF`; spins if the firmware returns.
pub fn system_off() -> ! {
    let _ = smccc::psci::system_off::<Hvc>();
    loop {
        aarch64_cpu::asm::wfi();
    }
}
