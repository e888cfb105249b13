//! Thin wrappers over the few architectural operations the kernel needs
//! that aarch64-cpu does not already provide as safe calls.

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{CNTFRQ_EL0, CNTVCT_EL0, DAIF, Readable, VBAR_EL1, Writeable};

/// Masks IRQs on this CPU (the kernel runs with IRQs masked except in the
/// idle loop's wait window).
#[inline]
pub fn mask_irqs() {
    DAIF.write(DAIF::I::Masked + DAIF::F::Masked + DAIF::A::Masked + DAIF::D::Masked);
}

/// Waits for an interrupt (or an event), IRQs staying as they are: the
/// kernel waits with IRQs masked, then takes what is pending in the window
/// of [`take_interrupts`]. WFI wakes on a pending interrupt even while it is
/// masked, so no wake-up is lost between checking for work and waiting.
#[inline]
pub fn wfi() {
    aarch64_cpu::asm::wfi();
}

/// Encoding of `wfi`.
const WFI: u32 = 0xD503_207F;

/// Whether the kernel instruction at `pc` is a WFI.
pub fn is_wfi(pc: u64) -> bool {
    // SAFETY: `pc` is the return address of an exception taken at EL1, so
    // it lies in the kernel's own code, mapped readable and aligned.
    pc.is_multiple_of(4) && unsafe { (pc as *const u32).read_volatile() } == WFI
}

/// Opens the short window in which pending IRQs are taken at EL1 (the
/// `irq_current` handler), then masks again.
#[inline]
pub fn take_interrupts() {
    DAIF.write(DAIF::I::Unmasked + DAIF::F::Masked + DAIF::A::Masked + DAIF::D::Masked);
    barrier::isb(barrier::SY);
    mask_irqs();
}

/// Runs `f` with IRQs unmasked at EL1 (a system call that may wait on a
/// page in the kernel, as async-halt does), masking them again after.
#[inline]
pub fn with_irqs_unmasked<R>(f: impl FnOnce() -> R) -> R {
    DAIF.write(DAIF::I::Unmasked + DAIF::F::Masked + DAIF::A::Masked + DAIF::D::Masked);
    let r = f();
    mask_irqs();
    r
}

/// The virtual counter (CNTVCT_EL0).
#[inline]
pub fn counter() -> u64 {
    barrier::isb(barrier::SY);
    CNTVCT_EL0.get()
}

/// Counter frequency in Hz (CNTFRQ_EL0).
pub fn counter_hz() -> u64 {
    CNTFRQ_EL0.get()
}

/// Converts counter ticks to nanoseconds.
pub fn ticks_to_ns(ticks: u64) -> u64 {
    (ticks as u128 * 1_000_000_000 / counter_hz().max(1) as u128) as u64
}

/// Converts nanoseconds to counter ticks (rounded up, so a sleep never ends
/// early).
pub fn ns_to_ticks(ns: u64) -> u64 {
    let hz = counter_hz().max(1) as u128;
    (ns as u128 * hz).div_ceil(1_000_000_000) as u64
}

/// The size of an AArch64 vector table (16 vectors of 128 bytes).
const VECTOR_TABLE_SIZE: u64 = 0x800;

/// The kernel's no-inject window (`ControlBlock::no_inject_start`): its
/// vector table. aarch64-rt's vectors save ELR and SPSR and restore them
/// for the `eret` within each 128-byte vector, so the only code that runs
/// with them unsaved is in the table. (`sched`'s `apflab_enter_el0` writes
/// them too, but touches no memory before its `eret`, so nothing can fault
/// there.)
pub fn no_inject_window() -> core::ops::Range<u64> {
    let base = VBAR_EL1.get();
    base..base + VECTOR_TABLE_SIZE
}
