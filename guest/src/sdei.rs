//! The SDEI client (Arm DEN0054 over HVC): the calls, and the handler
//! entry the firmware dispatches to.
//!
//! The firmware enters [`sdei_entry`] at EL1h with every exception masked,
//! x0 = event, x1 = the argument given at registration, x2/x3 = the
//! interrupted PC and PSTATE, on the interrupted stack (SP_EL1). It has
//! saved x0..x17 of the interrupted context; the entry keeps x18 and x30,
//! the Rust handler keeps x19..x29 and the stack balanced, so that when the
//! handler returns only the completing call is left: `EVENT_COMPLETE`
//! (the handler returned 0) or `EVENT_COMPLETE_AND_RESUME` at the address
//! it returned. Neither returns.

use apflab_abi::sdei as abi;

/// What a handler registered with argument `arg` is for.
pub mod arg {
    /// The conformance self-test ([`crate::sdei_selftest`]).
    pub const SELFTEST: u64 = 1;
}

core::arch::global_asm!(
    ".balign 4",
    ".global sdei_entry",
    "sdei_entry:",
    "stp x18, x30, [sp, #-16]!",
    "bl {handler}",
    "ldp x18, x30, [sp], #16",
    "cbnz x0, 1f",
    "mov x1, #{handled}",
    "movz x0, #{complete_lo}",
    "movk x0, #{complete_hi}, lsl #16",
    "hvc #0",
    "b {failed}",
    "1:",
    "mov x1, x0",
    "movz x0, #{resume_lo}",
    "movk x0, #{resume_hi}, lsl #16",
    "hvc #0",
    "b {failed}",
    handler = sym sdei_handler,
    failed = sym complete_failed,
    handled = const abi::EV_HANDLED,
    complete_lo = const abi::FN_EVENT_COMPLETE & 0xffff,
    complete_hi = const abi::FN_EVENT_COMPLETE >> 16,
    resume_lo = const abi::FN_EVENT_COMPLETE_AND_RESUME & 0xffff,
    resume_hi = const abi::FN_EVENT_COMPLETE_AND_RESUME >> 16,
);

unsafe extern "C" {
    /// The handler entry point registered with the firmware (never called
    /// from Rust).
    fn sdei_entry();
}

/// The address to register as the handler's entry point.
pub fn entry_point() -> u64 {
    sdei_entry as *const () as u64
}

/// Handles one event; returns 0 to complete it, or the address to resume
/// at (as if an IRQ had been taken in the interrupted context).
extern "C" fn sdei_handler(event: u64, arg: u64, pc: u64, pstate: u64) -> u64 {
    match arg {
        arg::SELFTEST => crate::sdei_selftest::on_event(event, arg, pc, pstate),
        _ => panic!("SDEI event {event:#x} with unknown argument {arg:#x} (pc {pc:#x})"),
    }
}

extern "C" fn complete_failed() -> ! {
    panic!("SDEI: the completing call returned (no handler was running?)")
}

/// An SDEI call with up to four arguments; x0 as a signed status or value.
pub fn call(function: u32, a1: u64, a2: u64, a3: u64, a4: u64) -> i64 {
    let mut args = [0u64; 17];
    args[..4].copy_from_slice(&[a1, a2, a3, a4]);
    smccc::hvc64(function, args)[0] as i64
}

/// `SDEI_VERSION`: (major, minor), or `None` without an SDEI firmware
/// (plain QEMU answers NOT_SUPPORTED).
pub fn version() -> Option<(u64, u64)> {
    let v = call(abi::FN_VERSION, 0, 0, 0, 0);
    (v >= 0).then_some(((v as u64 >> 48) & 0x7fff, (v as u64 >> 32) & 0xffff))
}
