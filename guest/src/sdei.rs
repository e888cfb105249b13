//! The SDEI handler: the entry the firmware dispatches to, and the Rust
//! handler it calls, which sends each event where the argument it was
//! registered with ([`crate::sdei_calls::arg`]) says: to the self-test or
//! to async PF. The calls and the registration are [`crate::sdei_calls`].
//!
//! The firmware enters `sdei_entry` (below) at EL1h with every exception
//! masked, x0 = event, x1 = the argument given at registration, x2/x3 =
//! the interrupted PC and PSTATE, on the interrupted stack (SP_EL1). It has
//! saved x0..x17 of the interrupted context; the entry keeps x18 and x30,
//! the Rust handler keeps x19..x29 and the stack balanced, so that when the
//! handler returns only the completing call is left: `EVENT_COMPLETE`
//! (the handler returned 0) or `EVENT_COMPLETE_AND_RESUME` at the address
//! it returned. Neither returns.
//!
//! For async PF the handler takes the token from the control block and
//! completes-and-resumes into the IRQ vector of the interrupted task, as if
//! an interrupt had come from it; the IRQ path
//! ([`take_deferred_not_present`]) then puts the task to sleep on the token.
//! Only a task's faults (EL0) come this way.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use aarch64_cpu::registers::{Readable, VBAR_EL1};
use apflab_abi::sdei as abi;

use crate::percpu::{MAX_CPUS, cpu_index};
use crate::sdei_calls::arg;
use crate::{apf, sdei_selftest, timeline};

/// Offset of "IRQ from a lower exception level, AArch64" in the vectors.
const VECTOR_LOWER_EL_IRQ: u64 = 0x480;
/// PSTATE.M\[3:0\] of EL0t.
const PSTATE_EL0T: u64 = 0;
const PSTATE_MODE_MASK: u64 = 0xf;

/// Per CPU: a "not present" the handler took, for the IRQ path.
struct Deferred {
    pending: AtomicBool,
    token: AtomicU64,
    action: AtomicU32,
}

static DEFERRED: [Deferred; MAX_CPUS] = [const {
    Deferred {
        pending: AtomicBool::new(false),
        token: AtomicU64::new(0),
        action: AtomicU32::new(0),
    }
}; MAX_CPUS];

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

/// Handles one event; returns 0 to complete it, or the address to resume
/// at (as if an IRQ had been taken in the interrupted context).
extern "C" fn sdei_handler(event: u64, arg: u64, pc: u64, pstate: u64) -> u64 {
    match arg {
        arg::SELFTEST => sdei_selftest::on_event(event, arg, pc, pstate),
        arg::APF => {
            let _h = timeline::handler(apflab_abi::trace::Handler::Sdei);
            apf_event(pstate)
        }
        _ => panic!("SDEI event {event:#x} with unknown argument {arg:#x} (pc {pc:#x})"),
    }
}

/// "Not present" for the task this CPU was running: noted for the IRQ path,
/// which the handler resumes into. Anything else (no token in the control
/// block, or not a task that was interrupted) just completes; the access is
/// then retried and the host sees the fault again.
fn apf_event(pstate: u64) -> u64 {
    if pstate & PSTATE_MODE_MASK != PSTATE_EL0T {
        return 0;
    }
    let Some((token, action)) = apf::take_not_present() else {
        return 0;
    };
    let d = &DEFERRED[cpu_index()];
    d.token.store(token, Ordering::Relaxed);
    d.action.store(action, Ordering::Relaxed);
    d.pending.store(true, Ordering::Relaxed);
    VBAR_EL1.get() + VECTOR_LOWER_EL_IRQ
}

/// The "not present" the SDEI handler left for this CPU's IRQ path, if any:
/// (token, action) as [`apf::take_not_present`] gives them.
pub fn take_deferred_not_present() -> Option<(u64, u32)> {
    let d = &DEFERRED[cpu_index()];
    d.pending.swap(false, Ordering::Relaxed).then(|| {
        (
            d.token.load(Ordering::Relaxed),
            d.action.load(Ordering::Relaxed),
        )
    })
}

extern "C" fn complete_failed() -> ! {
    panic!("SDEI: the completing call returned (no handler was running?)")
}
