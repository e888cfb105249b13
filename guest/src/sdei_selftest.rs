//! Conformance test of the SDEI firmware, run at boot with
//! `apflab.selftest=sdei` on the boot CPU before anything else uses SDEI:
//! one `sdei-selftest: PASS <check>` or `FAIL <check>: ...` line per check,
//! then the totals. The event is triggered with apflab's signal call
//! ([`abi::FN_APFLAB_SIGNAL`]), the same path the VMM takes when it
//! delivers "not present".
//!
//! Calls that may dispatch go through `sdei_probe_hvc`, an HVC whose return
//! address (`sdei_probe_return`) is known, so the interrupted PC the handler
//! sees, and the ELR_EL1 that `EVENT_COMPLETE_AND_RESUME` writes, can be
//! checked exactly.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use aarch64_cpu::registers::{CurrentEL, DAIF, Readable, SPSel};
use apflab_abi::sdei as abi;

use crate::console::println;
use crate::sdei_calls::{self, call};

const EV: u64 = abi::EVENT_APF as u64;
/// Left in x5 and x17 across a probe call, for `EVENT_CONTEXT` to find.
const MARKER: u64 = 0x5eed_0000_cafe;
/// PSTATE.D, A, I and F.
const DAIF_ALL: u64 = 0xf << 6;

/// What the handler does, set by the check that triggers it.
static MODE: AtomicU32 = AtomicU32::new(0);
/// Complete.
const MODE_COMPLETE: u32 = 0;
/// Read the interrupted context with `EVENT_CONTEXT`, then complete.
const MODE_CONTEXT: u32 = 1;
/// Signal the event again (it must wait for the completion), then complete.
const MODE_SIGNAL_AGAIN: u32 = 2;
/// Complete and resume at `sdei_resume_target`.
const MODE_RESUME: u32 = 3;
/// Unregister (which must be pending), then complete.
const MODE_UNREGISTER: u32 = 4;

/// Handler entries.
static ENTRIES: AtomicU64 = AtomicU64::new(0);
/// x0..x3 of the last entry.
static ENTRY_ARGS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
/// DAIF, CurrentEL and SPSel inside the last handler.
static IN_HANDLER: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
/// What the handler's own calls answered (by mode).
static HANDLER_SAW: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// ELR_EL1, SPSR_EL1 and DAIF at `sdei_resume_target`, and how often it ran
/// (written by the assembly below).
#[unsafe(no_mangle)]
static SDEI_RESUMED: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

core::arch::global_asm!(
    ".balign 4",
    ".global sdei_probe_hvc",
    "sdei_probe_hvc:",
    "mov x5, x4",
    "mov x17, x4",
    "hvc #0",
    ".global sdei_probe_return",
    "sdei_probe_return:",
    "ret",
    // Entered as an IRQ would be: records what it was entered with and
    // returns to the interrupted context, every register intact.
    ".balign 4",
    ".global sdei_resume_target",
    "sdei_resume_target:",
    "stp x9, x10, [sp, #-16]!",
    "adrp x9, {resumed}",
    "add x9, x9, :lo12:{resumed}",
    "mrs x10, elr_el1",
    "str x10, [x9]",
    "mrs x10, spsr_el1",
    "str x10, [x9, #8]",
    "mrs x10, daif",
    "str x10, [x9, #16]",
    "ldr x10, [x9, #24]",
    "add x10, x10, #1",
    "str x10, [x9, #24]",
    "ldp x9, x10, [sp], #16",
    "eret",
    resumed = sym SDEI_RESUMED,
);

unsafe extern "C" {
    /// HVC `function` with x1..x3 = `a1..a3` and x5 = x17 = `marker`; x0.
    fn sdei_probe_hvc(function: u64, a1: u64, a2: u64, a3: u64, marker: u64) -> i64;
    /// The instruction after the probe's HVC.
    fn sdei_probe_return();
    /// Where `MODE_RESUME` resumes.
    fn sdei_resume_target();
}

fn probe(function: u32, a1: u64) -> i64 {
    // SAFETY: the probe is an HVC and a return; it clobbers only x0..x17,
    // which the C ABI lets a callee clobber.
    unsafe { sdei_probe_hvc(u64::from(function), a1, 0, 0, MARKER) }
}

fn address(f: unsafe extern "C" fn()) -> u64 {
    f as *const () as u64
}

/// The handler's part of the test (argument [`sdei_calls::arg::SELFTEST`]).
pub fn on_event(event: u64, arg: u64, pc: u64, pstate: u64) -> u64 {
    ENTRIES.fetch_add(1, Relaxed);
    for (slot, v) in ENTRY_ARGS.iter().zip([event, arg, pc, pstate]) {
        slot.store(v, Relaxed);
    }
    for (slot, v) in IN_HANDLER
        .iter()
        .zip([DAIF.get(), CurrentEL.get(), SPSel.get()])
    {
        slot.store(v, Relaxed);
    }
    let saw = |i: usize, v: i64| HANDLER_SAW[i].store(v as u64, Relaxed);
    match MODE.swap(MODE_COMPLETE, Relaxed) {
        MODE_CONTEXT => {
            for (i, reg) in [0, 5, 17, 18].into_iter().enumerate() {
                saw(i, call(abi::FN_EVENT_CONTEXT, reg, 0, 0, 0));
            }
        }
        MODE_SIGNAL_AGAIN => saw(0, call(abi::FN_APFLAB_SIGNAL, 0, 0, 0, 0)),
        MODE_RESUME => return address(sdei_resume_target),
        MODE_UNREGISTER => {
            saw(0, call(abi::FN_EVENT_UNREGISTER, EV, 0, 0, 0));
            saw(1, call(abi::FN_EVENT_STATUS, EV, 0, 0, 0));
            saw(2, call(abi::FN_EVENT_ENABLE, EV, 0, 0, 0));
        }
        _ => {}
    }
    0
}

/// Counts and prints the checks.
struct Checks {
    passed: u32,
    failed: u32,
}

impl Checks {
    fn check(&mut self, name: &str, ok: bool, detail: core::fmt::Arguments) {
        if ok {
            self.passed += 1;
            println!("sdei-selftest: PASS {name}");
        } else {
            self.failed += 1;
            println!("sdei-selftest: FAIL {name}: {detail}");
        }
    }

    /// `got == want`, printing both when not.
    fn eq(&mut self, name: &str, got: i64, want: i64) {
        self.check(name, got == want, format_args!("got {got}, want {want}"));
    }
}

fn entries() -> u64 {
    ENTRIES.load(Relaxed)
}

fn status() -> i64 {
    call(abi::FN_EVENT_STATUS, EV, 0, 0, 0)
}

/// Runs every check on this CPU and prints the totals.
pub fn run() {
    let mut c = Checks {
        passed: 0,
        failed: 0,
    };
    let Some((major, minor)) = sdei_calls::version() else {
        println!("sdei-selftest: FAIL version: no SDEI firmware");
        return;
    };
    c.check(
        "version",
        (major, minor) == (1, 0),
        format_args!("{major}.{minor}"),
    );
    let entry = sdei_calls::entry_point();
    let arg = sdei_calls::arg::SELFTEST;
    let (inval, denied) = (abi::INVALID_PARAMETERS, abi::DENIED);

    // Wrong arguments and calls in the wrong state.
    c.eq("pe-starts-masked", call(abi::FN_PE_MASK, 0, 0, 0, 0), 0);
    for bad in [0, 0x1234, EV + 1, EV | 1 << 32] {
        c.eq(
            "register-bad-event",
            call(abi::FN_EVENT_REGISTER, bad, entry, arg, 0),
            inval,
        );
        c.eq(
            "status-bad-event",
            call(abi::FN_EVENT_STATUS, bad, 0, 0, 0),
            inval,
        );
        c.eq(
            "enable-bad-event",
            call(abi::FN_EVENT_ENABLE, bad, 0, 0, 0),
            inval,
        );
    }
    c.eq(
        "register-unaligned-entry",
        call(abi::FN_EVENT_REGISTER, EV, entry + 2, arg, 0),
        inval,
    );
    c.eq(
        "register-unknown-flags",
        call(abi::FN_EVENT_REGISTER, EV, entry, arg, 6),
        inval,
    );
    c.eq(
        "enable-unregistered",
        call(abi::FN_EVENT_ENABLE, EV, 0, 0, 0),
        denied,
    );
    c.eq(
        "disable-unregistered",
        call(abi::FN_EVENT_DISABLE, EV, 0, 0, 0),
        denied,
    );
    c.eq(
        "unregister-unregistered",
        call(abi::FN_EVENT_UNREGISTER, EV, 0, 0, 0),
        denied,
    );
    c.eq(
        "signal-unregistered",
        call(abi::FN_APFLAB_SIGNAL, 0, 0, 0, 0),
        denied,
    );
    c.eq(
        "context-outside-handler",
        call(abi::FN_EVENT_CONTEXT, 0, 0, 0, 0),
        denied,
    );
    c.eq(
        "complete-outside-handler",
        call(abi::FN_EVENT_COMPLETE, 0, 0, 0, 0),
        denied,
    );
    c.eq(
        "complete-and-resume-outside-handler",
        call(abi::FN_EVENT_COMPLETE_AND_RESUME, entry, 0, 0, 0),
        denied,
    );
    c.eq(
        "info-type",
        call(abi::FN_EVENT_GET_INFO, EV, abi::INFO_TYPE, 0, 0),
        0,
    );
    c.eq(
        "info-routing-of-a-private-event",
        call(abi::FN_EVENT_GET_INFO, EV, abi::INFO_ROUTING_MODE, 0, 0),
        inval,
    );
    c.eq(
        "routing-set-not-supported",
        call(abi::FN_EVENT_ROUTING_SET, EV, 0, 0, 0),
        abi::NOT_SUPPORTED,
    );

    // Register, enable; a masked PE holds the event.
    c.eq(
        "register",
        call(abi::FN_EVENT_REGISTER, EV, entry, arg, 0),
        0,
    );
    c.eq(
        "register-twice",
        call(abi::FN_EVENT_REGISTER, EV, entry, arg, 0),
        denied,
    );
    c.eq("status-registered", status(), abi::STATUS_REGISTERED as i64);
    c.eq("enable", call(abi::FN_EVENT_ENABLE, EV, 0, 0, 0), 0);
    let reg_en = (abi::STATUS_REGISTERED | abi::STATUS_ENABLED) as i64;
    c.eq("status-enabled", status(), reg_en);
    c.eq("signal-while-masked", probe(abi::FN_APFLAB_SIGNAL, 0), 0);
    c.eq("masked-pe-holds-the-event", entries() as i64, 0);

    // PE_UNMASK dispatches it right after the call returns.
    MODE.store(MODE_CONTEXT, Relaxed);
    c.eq("unmask-returns-success", probe(abi::FN_PE_UNMASK, 0), 0);
    c.eq("dispatched-on-unmask", entries() as i64, 1);
    let at = |i: usize| ENTRY_ARGS[i].load(Relaxed);
    c.eq("handler-x0-is-the-event", at(0) as i64, EV as i64);
    c.eq("handler-x1-is-the-argument", at(1) as i64, arg as i64);
    c.check(
        "handler-x2-is-the-interrupted-pc",
        at(2) == address(sdei_probe_return),
        format_args!("{:#x}", at(2)),
    );
    c.check(
        "handler-x3-is-the-interrupted-pstate",
        at(3) & 0xf == 0b0101 && at(3) & DAIF_ALL == DAIF_ALL,
        format_args!("{:#x}", at(3)),
    );
    let h = |i: usize| IN_HANDLER[i].load(Relaxed);
    c.check(
        "handler-runs-at-el1h-with-exceptions-masked",
        h(0) & DAIF_ALL == DAIF_ALL && (h(1) >> 2) & 3 == 1 && h(2) & 1 == 1,
        format_args!("DAIF {:#x} CurrentEL {:#x} SPSel {:#x}", h(0), h(1), h(2)),
    );
    let saw = |i: usize| HANDLER_SAW[i].load(Relaxed) as i64;
    c.eq("context-x0", saw(0), 0);
    c.eq("context-x5", saw(1), MARKER as i64);
    c.eq("context-x17", saw(2), MARKER as i64);
    c.eq("context-x18-is-invalid", saw(3), inval);
    c.eq("status-after-complete", status(), reg_en);

    // A disabled event is held until enabled.
    c.eq("disable", call(abi::FN_EVENT_DISABLE, EV, 0, 0, 0), 0);
    c.eq("signal-while-disabled", probe(abi::FN_APFLAB_SIGNAL, 0), 0);
    c.eq("disabled-event-is-held", entries() as i64, 1);
    c.eq("enable-dispatches", probe(abi::FN_EVENT_ENABLE, EV), 0);
    c.eq("dispatched-on-enable", entries() as i64, 2);

    // A signal while the handler runs waits for its completion.
    MODE.store(MODE_SIGNAL_AGAIN, Relaxed);
    c.eq("signal", probe(abi::FN_APFLAB_SIGNAL, 0), 0);
    c.eq("signal-from-the-handler", saw(0), 0);
    c.eq("dispatched-again-after-complete", entries() as i64, 4);
    c.check(
        "second-dispatch-interrupts-the-same-context",
        at(2) == address(sdei_probe_return),
        format_args!("{:#x}", at(2)),
    );

    // COMPLETE_AND_RESUME enters the resume address as an IRQ would.
    MODE.store(MODE_RESUME, Relaxed);
    c.eq(
        "resumed-call-returns-success",
        probe(abi::FN_APFLAB_SIGNAL, 0),
        0,
    );
    let r = |i: usize| SDEI_RESUMED[i].load(Relaxed);
    c.eq("resume-target-ran-once", r(3) as i64, 1);
    c.check(
        "resume-elr-is-the-interrupted-pc",
        r(0) == address(sdei_probe_return),
        format_args!("{:#x}", r(0)),
    );
    c.check(
        "resume-spsr-is-the-interrupted-pstate",
        r(1) == at(3),
        format_args!("{:#x}, interrupted {:#x}", r(1), at(3)),
    );
    c.check(
        "resume-target-runs-with-exceptions-masked",
        r(2) & DAIF_ALL == DAIF_ALL,
        format_args!("{:#x}", r(2)),
    );

    // Unregistering from the handler is pending until it completes.
    MODE.store(MODE_UNREGISTER, Relaxed);
    c.eq("signal", probe(abi::FN_APFLAB_SIGNAL, 0), 0);
    c.eq("unregister-in-handler-is-pending", saw(0), abi::PENDING);
    c.check(
        "status-in-handler-shows-running",
        saw(1) & abi::STATUS_RUNNING as i64 != 0,
        format_args!("{:#x}", saw(1)),
    );
    c.eq("enable-while-unregister-pending", saw(2), denied);
    c.eq("unregistered-after-complete", status(), 0);
    c.eq(
        "register-again",
        call(abi::FN_EVENT_REGISTER, EV, entry, arg, 0),
        0,
    );
    c.eq("private-reset", call(abi::FN_PRIVATE_RESET, 0, 0, 0, 0), 0);
    c.eq("private-reset-unregisters", status(), 0);
    c.eq("shared-reset", call(abi::FN_SHARED_RESET, 0, 0, 0, 0), 0);
    c.eq("pe-mask-after-unmask", call(abi::FN_PE_MASK, 0, 0, 0, 0), 1);
    println!("sdei-selftest: {} passed, {} failed", c.passed, c.failed);
}
