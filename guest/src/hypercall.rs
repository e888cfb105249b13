//! apflab hypercalls and PSCI power calls.
//!
//! apflab calls go through HVC (smccc crate) or, where the host kernel
//! cannot forward HVCs to the VMM (arm64 KVM before the SMCCC filter of
//! Linux 6.4), through the MMIO doorbell the device tree advertises:
//! [`init`] picks whichever answers. On plain QEMU every apflab call answers
//! `NOT_SUPPORTED`; the kernel then runs without async PF and reports only
//! on the console. PSCI is always HVC.

use core::sync::atomic::{AtomicBool, Ordering};

use apflab_abi::boot_point::FN_BOOT_DONE;
use apflab_abi::hypercall::{
    FN_APF_ACK, FN_APF_DISABLE, FN_APF_ENABLE, FN_APF_PAGE_REQUEST, FN_FEATURES, FN_PANIC,
    FN_REPORT, FN_TASK_DONE, FN_TRACE, PANIC_MSG_MAX, SMCCC_NOT_SUPPORTED, doorbell,
};
use apflab_abi::memory_map::DOORBELL_BASE;
use apflab_abi::trace::TraceRecord;
use smccc::Hvc;

/// apflab calls go through the doorbell rather than HVC.
static USE_DOORBELL: AtomicBool = AtomicBool::new(false);

/// Chooses the conduit: HVC if the host answers apflab calls there, else
/// the doorbell if the device tree has one (`doorbell_present`) and the
/// host answers there.
pub fn init(doorbell_present: bool) {
    if hvc(FN_FEATURES, &[0, 0]) != SMCCC_NOT_SUPPORTED || !doorbell_present {
        return;
    }
    if doorbell_call(FN_FEATURES, &[0, 0]) != SMCCC_NOT_SUPPORTED {
        USE_DOORBELL.store(true, Ordering::Relaxed);
    }
}

/// An SMCCC call through HVC with the arguments `a` (at most 17; the rest
/// zero); x0 as a signed status or value. For the calls that never go
/// through the doorbell (PSCI, SDEI) and the conduit probe.
pub fn hvc(function: u32, a: &[u64]) -> i64 {
    let mut args = [0u64; 17];
    args[..a.len()].copy_from_slice(a);
    smccc::hvc64(function, args)[0] as i64
}

/// One call through the doorbell page (identity-mapped as a device): every
/// register is accessed with a single 64-bit load or store, which the VMM
/// can decode on every host. Only the arguments given are written (each
/// write is an exit on kvm).
fn doorbell_call(function: u32, a: &[u64]) -> i64 {
    let reg = |offset: u64| (DOORBELL_BASE + offset) as *mut u64;
    // SAFETY: the doorbell page is mapped (identity, device memory) and
    // only exists where the device tree says so; these are MMIO accesses.
    unsafe {
        for (offset, value) in doorbell::ARGS.iter().zip(a) {
            reg(*offset).write_volatile(*value);
        }
        reg(doorbell::FUNCTION).write_volatile(u64::from(function));
        reg(doorbell::RESULT0).read_volatile() as i64
    }
}

/// Makes an apflab call with arguments `a` (at most five) and returns x0
/// as a signed SMCCC status or value.
fn call_with(function: u32, a: &[u64]) -> i64 {
    if USE_DOORBELL.load(Ordering::Relaxed) {
        doorbell_call(function, a)
    } else {
        hvc(function, a)
    }
}

/// Any apflab call, as [`call_with`] makes it (for a guest that misuses
/// the protocol on purpose).
pub fn raw(function: u32, a: &[u64]) -> i64 {
    call_with(function, a)
}

/// [`call_with`] two arguments.
fn call(function: u32, a1: u64, a2: u64) -> i64 {
    call_with(function, &[a1, a2])
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

/// `APF_ENABLE`: registers this CPU's control block (physical address)
/// and the features the guest accepts; 0 on success.
pub fn apf_enable(control_block: u64, features: u64) -> i64 {
    call(FN_APF_ENABLE, control_block, features)
}

/// `APF_DISABLE`: stops async PF on this CPU.
pub fn apf_disable() -> i64 {
    call(FN_APF_DISABLE, 0, 0)
}

/// `APF_ACK`: the ready ring was consumed up to its published tail.
pub fn apf_ack() -> i64 {
    call(FN_APF_ACK, 0, 0)
}

/// `APF_PAGE_REQUEST`: asks the host to fetch the page behind `token`.
pub fn apf_page_request(token: u64) -> i64 {
    call(FN_APF_PAGE_REQUEST, token, 0)
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

/// `TRACE`: hands `records` of the timeline log to the host, and how many
/// records were not kept since the last call.
pub fn trace(records: &[TraceRecord], dropped: u64) -> i64 {
    call_with(
        FN_TRACE,
        &[records.as_ptr() as u64, records.len() as u64, dropped],
    )
}

/// `PANIC`: hands the panic message to the host (returns on plain QEMU).
pub fn panic(msg: &[u8]) {
    let len = (msg.len() as u64).min(PANIC_MSG_MAX);
    call(FN_PANIC, msg.as_ptr() as u64, len);
}

/// `BOOT_DONE`: the boot is over and the workload is read next (see
/// [`apflab_abi::boot_point`]). Always HVC, so that the call is one exit
/// on every backend; its answer changes nothing (plain QEMU refuses it).
pub fn boot_done() {
    hvc(FN_BOOT_DONE, &[]);
}

/// PSCI `SYSTEM_OFF`; spins if the firmware returns.
pub fn system_off() -> ! {
    let _ = smccc::psci::system_off::<Hvc>();
    loop {
        aarch64_cpu::asm::wfi();
    }
}
