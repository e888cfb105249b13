//! The async page fault client, in the shape of Linux's
//! `arch/x86/kernel/kvm.c`: discovery with `FEATURES`, `APF_ENABLE` per CPU
//! with its control block, "not present" taken on the faulting instruction
//! of an EL0 task (a dedicated exception class, a data abort whose control
//! block says so, or the SDEI event of [`crate::sdei`]), the task parked on
//! its token (or the CPU halted until it is ready), "page ready" from the
//! ready ring behind the PPI, acknowledged, or as an exception, and dummy
//! entries for a ready that finds no sleeper.
//!
//! A fault taken by the kernel itself (a system call reading a task's page
//! with IRQs unmasked) is async only as async-halt, which the client
//! accepts with `KERNEL_MODE_ASYNC`: the kernel cannot give its CPU away in
//! the middle of a call, so it waits in the halt loop for its token. The
//! host never sends "not present" while IRQs are masked, so never while the
//! kernel holds the run-queue lock. "Ready" is taken only where no lock is
//! held (from EL0 tasks, in the idle loop, in the halt loop below and in
//! such a system call), and a CPU halting for its own token finds it among
//! the dummy entries, so no wake ever has to be delayed.

use core::cell::UnsafeCell;
use core::ptr::{addr_of, addr_of_mut};

use apflab_abi::apf::{
    ACTION_HALT, ACTION_REQUEST_PAGE, ACTION_SLEEP_MASK, ControlBlock, GUEST_CAN_RESCHEDULE,
    GUEST_IN_IDLE, READY_RING_SLOTS, REASON_NONE, REASON_NOT_PRESENT, REASON_PAGE_READY,
    TOKEN_WAKE_ALL, Token, features,
};
use apflab_abi::trace::BLOCK_KEY_TOKEN;
use apflab_guest_core::DummyEntries;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::Once;
use spin::mutex::SpinMutex;

use crate::percpu::{MAX_CPUS, cpu_index};
use crate::{arch, gic, hypercall, metrics, sched};

/// The features this client handles.
const ACCEPTED: u64 = features::NOT_PRESENT_DATA_ABORT
    | features::NOT_PRESENT_DEDICATED_EC
    | features::NOT_PRESENT_SDEI
    | features::READY_EXCEPTION
    | features::READY_INTERRUPT
    | features::READY_RING
    | features::GUEST_INITIATED
    | features::KERNEL_MODE_ASYNC;

/// One control block per CPU, shared with the host.
struct Blocks([UnsafeCell<ControlBlock>; MAX_CPUS]);

// SAFETY: each CPU reads and writes only its own block (by its CPU index),
// with volatile accesses, and the host writes it only while that CPU is in
// an exception it injected or between the guest's ring accesses (the
// protocol of `apflab_abi::apf`).
unsafe impl Sync for Blocks {}

static BLOCKS: Blocks = Blocks([const { UnsafeCell::new(ControlBlock::new()) }; MAX_CPUS]);

/// The boot options allow async PF (`apflab.apf=off` clears it).
static ALLOWED: AtomicBool = AtomicBool::new(false);
/// What the boot CPU does around its `APF_ENABLE` besides the enable, if
/// anything registered it ([`around_enable`]).
static AROUND_ENABLE: Once<&'static AroundEnable> = Once::new();
/// What the host offered at boot (`FEATURES`), of what this client handles.
static OFFERED: AtomicU64 = AtomicU64::new(0);

/// Per CPU: async PF is enabled.
static ENABLED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Per CPU: tokens whose "ready" came before anyone slept on them.
static EARLY: [SpinMutex<DummyEntries>; MAX_CPUS] =
    [const { SpinMutex::new(DummyEntries::EMPTY) }; MAX_CPUS];

fn block(cpu: usize) -> *mut ControlBlock {
    BLOCKS.0[cpu].get()
}

/// Calls the boot CPU makes around its `APF_ENABLE`, besides the enable:
/// in a normal guest none. The abusive guest ([`crate::apf_abuse`])
/// registers its misuses of the protocol here, and only when the boot
/// options ask for it, so this client knows nothing of them.
pub struct AroundEnable {
    /// Before the control block `cb` is registered with `offered`; leaves
    /// it as it was.
    pub before: fn(cb: *mut ControlBlock, offered: u64),
    /// Once the host accepted it; leaves it registered with `offered`.
    pub after: fn(cb: *mut ControlBlock, offered: u64),
    /// Last, whether or not the host accepted it.
    pub done: fn(),
}

/// Has the boot CPU make `calls` around its `APF_ENABLE` (boot CPU,
/// before [`init_cpu`]; the first registration holds).
pub fn around_enable(calls: &'static AroundEnable) {
    AROUND_ENABLE.call_once(|| calls);
}

/// Records whether the boot options allow async PF and what the host
/// offers (boot CPU, before any [`init_cpu`]).
pub fn init(allowed: bool, offered: u64) {
    ALLOWED.store(allowed, Ordering::Relaxed);
    sched::observe_run_queue(note_runnable);
    OFFERED.store(offered & ACCEPTED, Ordering::Relaxed);
}

/// Enables async PF on this CPU if the boot options allow it and the host
/// offers what this client handles.
pub fn init_cpu() {
    let cpu = cpu_index();
    let mut offered = OFFERED.load(Ordering::Relaxed);
    let delivers_not_present = offered
        & (features::NOT_PRESENT_DATA_ABORT
            | features::NOT_PRESENT_DEDICATED_EC
            | features::NOT_PRESENT_SDEI)
        != 0;
    let delivers_ready = offered & (features::READY_INTERRUPT | features::READY_EXCEPTION) != 0;
    if !ALLOWED.load(Ordering::Relaxed) || !delivers_not_present || !delivers_ready {
        return;
    }
    // SDEI "not present" only once this CPU's handler can take it.
    if offered & features::NOT_PRESENT_SDEI != 0 && !crate::sdei_calls::enable_for_apf() {
        offered &= !features::NOT_PRESENT_SDEI;
    }
    let cb = block(cpu);
    let window = arch::no_inject_window();
    // SAFETY: this CPU's own block, not yet registered with the host.
    unsafe {
        cb.write_volatile(ControlBlock::new());
        addr_of_mut!((*cb).guest_state).write_volatile(GUEST_CAN_RESCHEDULE);
        addr_of_mut!((*cb).no_inject_start).write_volatile(window.start);
        addr_of_mut!((*cb).no_inject_end).write_volatile(window.end);
    }
    gic::enable_apf_ready(cpu);
    let around = if cpu == 0 { AROUND_ENABLE.get() } else { None };
    if let Some(around) = around {
        (around.before)(cb, offered);
    }
    // The kernel runs on an identity map: the address is the physical one.
    if hypercall::apf_enable(cb as u64, offered) == 0 {
        ENABLED[cpu].store(true, Ordering::Relaxed);
        metrics::APF_ENABLED.add(1);
        if let Some(around) = around {
            (around.after)(cb, offered);
        }
    }
    if let Some(around) = around {
        (around.done)();
    }
}

/// Disables async PF on this CPU (at shutdown) and wakes its sleepers.
pub fn disable_cpu() {
    let cpu = cpu_index();
    if ENABLED[cpu].swap(false, Ordering::Relaxed) {
        let _ = hypercall::apf_disable();
        wake(cpu, TOKEN_WAKE_ALL);
    }
}

/// The notification of kind `reason` this CPU's control block describes,
/// if the exception being handled is one: its token and action. The
/// notification stays current until [`end_notification`].
fn notification(reason: u32) -> Option<(u64, u32)> {
    let cpu = cpu_index();
    if !ENABLED[cpu].load(Ordering::Relaxed) {
        return None;
    }
    let cb = block(cpu);
    // SAFETY: this CPU's own block; the host wrote it before injecting the
    // exception being handled.
    unsafe {
        if addr_of!((*cb).reason).read_volatile() != reason {
            return None;
        }
        Some((
            addr_of!((*cb).token).read_volatile(),
            addr_of!((*cb).action).read_volatile(),
        ))
    }
}

/// Tells the host the current notification was read: it injects the next
/// exception only after this.
fn end_notification() {
    let cb = block(cpu_index());
    // SAFETY: this CPU's own block; the host writes `reason` only while it
    // reads REASON_NONE here.
    unsafe { addr_of_mut!((*cb).reason).write_volatile(REASON_NONE) };
}

/// The "not present" being handled, if it is one: its token and what to
/// do. ("Not present" is only injected on a faulting access, never into
/// this handler, so it ends at once.)
pub fn take_not_present() -> Option<(u64, u32)> {
    let n = notification(REASON_NOT_PRESENT)?;
    end_notification();
    Some(n)
}

/// What the control block says an exception carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notification {
    /// "Not present" for `token`; `action` says what to do.
    NotPresent {
        /// The token.
        token: u64,
        /// `ACTION_*` of the protocol.
        action: u32,
    },
    /// "Page ready" for `token` ([`page_ready`] handles it).
    PageReady {
        /// The token.
        token: u64,
    },
}

/// The notification the exception being handled carries, if it is one.
pub fn take_notification() -> Option<Notification> {
    if let Some((token, action)) = take_not_present() {
        return Some(Notification::NotPresent { token, action });
    }
    notification(REASON_PAGE_READY).map(|(token, _)| Notification::PageReady { token })
}

/// Handles a "page ready" exception for `token` taken from a task: wakes
/// the token's sleeper. The notification ends only after the wake, once no
/// lock is held (the host may enter the next "page ready" once it has
/// ended and the CPU is back where it may take one).
pub fn page_ready(token: u64) {
    wake(cpu_index(), token);
    end_notification();
}

/// Handles a "page ready" exception for `token` entered in a wait marked
/// with [`wait_marked`]: the wait is over (the handler returns past its
/// WFI), so the mark comes off before the notification ends. Left on, it
/// would let the host enter the next "page ready" into this handler itself,
/// at any instruction, including the exception return after ELR_EL1 and
/// SPSR_EL1 have been reloaded from the frame: the nested entry overwrites
/// both, and the outer `eret` then goes back to the return sequence instead
/// of to the wait, popping one frame more each time round.
pub fn page_ready_in_wait(token: u64) {
    let cb = block(cpu_index());
    // SAFETY: this CPU's own block: a plain field the host only reads.
    unsafe {
        let state = addr_of_mut!((*cb).guest_state);
        state.write_volatile(state.read_volatile() & !GUEST_IN_IDLE);
    }
    page_ready(token);
}

/// Publishes how many tasks wait in this CPU's run queue (a policy input:
/// with none, rescheduling a faulting task only idles the CPU). Called by
/// the scheduler, on this CPU, whenever the number changes.
fn note_runnable(tasks: usize) {
    let cpu = cpu_index();
    if ENABLED[cpu].load(Ordering::Relaxed) {
        let cb = block(cpu);
        // SAFETY: this CPU's own block: a plain field the host only reads.
        unsafe { addr_of_mut!((*cb).runnable_tasks).write_volatile(tasks as u32) };
    }
}

/// Runs `f`, a part of a system call that reads a task's pages, with IRQs
/// unmasked and this CPU's control block saying the kernel cannot
/// reschedule (preemption disabled): a fault there is the kernel's, which
/// the host may make async only as async-halt.
pub fn kernel_reads<R>(f: impl FnOnce() -> R) -> R {
    let cpu = cpu_index();
    let enabled = ENABLED[cpu].load(Ordering::Relaxed);
    let cb = block(cpu);
    if enabled {
        // SAFETY: this CPU's own block: plain fields the host only reads.
        unsafe {
            addr_of_mut!((*cb).preempt_count).write_volatile(1);
            addr_of_mut!((*cb).guest_state).write_volatile(0);
        }
    }
    let r = arch::with_irqs_unmasked(f);
    if enabled {
        // SAFETY: as above.
        unsafe {
            addr_of_mut!((*cb).guest_state).write_volatile(GUEST_CAN_RESCHEDULE);
            addr_of_mut!((*cb).preempt_count).write_volatile(0);
        }
    }
    r
}

/// Waits for an interrupt with this CPU's control block saying so
/// (`GUEST_IN_IDLE`), the one place besides EL0 where the host may enter a
/// "page ready" exception: no lock is held here. The mark covers only the
/// WFI (the handler of such an exception takes it off, see
/// [`page_ready_in_wait`]). Interrupts are taken after the mark is cleared.
pub fn wait_marked() {
    let cpu = cpu_index();
    let enabled = ENABLED[cpu].load(Ordering::Relaxed);
    let state = {
        let cb = block(cpu);
        // SAFETY: this CPU's own block: a plain field the host only reads.
        unsafe { addr_of_mut!((*cb).guest_state) }
    };
    // The mark is added to what the state says (the kernel halting in a
    // system call stays unable to reschedule) and taken off after.
    // SAFETY: as above.
    let before = unsafe { state.read_volatile() };
    if enabled {
        // SAFETY: as above.
        unsafe { state.write_volatile(before | GUEST_IN_IDLE) };
    }
    arch::wfi();
    if enabled {
        // SAFETY: as above.
        unsafe { state.write_volatile(before) };
    }
    arch::take_interrupts();
}

/// Asks for the page of `token` if the host wants the guest to.
fn request_if_asked(token: u64, action: u32) {
    if action & ACTION_REQUEST_PAGE != 0 {
        let _ = hypercall::apf_page_request(token);
    }
}

/// The halt loop: waits until `token` is ready. Interrupts are taken in
/// the wait window: the ready interrupt finds no sleeper for this token and
/// leaves a dummy entry, which ends the loop.
fn halt_until_ready(cpu: usize, token: u64) {
    metrics::APF_HALTS.add(1);
    let start = arch::counter();
    while !EARLY[cpu].lock().take(token) {
        wait_marked();
    }
    metrics::APF_HALTED_TICKS.add(arch::counter().wrapping_sub(start));
}

/// Handles "not present" for `token` taken by the current EL0 task: asks
/// for the page if the host wants it to, then parks the task (or halts the
/// CPU) until the token is ready. Returning retries the faulting access.
pub fn not_present(token: u64, action: u32) {
    let cpu = cpu_index();
    metrics::APF_NOT_PRESENT.add(1);
    request_if_asked(token, action);
    if action & ACTION_SLEEP_MASK == ACTION_HALT {
        halt_until_ready(cpu, token);
        return;
    }
    if EARLY[cpu].lock().take(token) {
        metrics::APF_EARLY_READY.add(1);
        return;
    }
    metrics::APF_PARKED.add(1);
    sched::block_current(sched::Wait::Key(BLOCK_KEY_TOKEN | token));
}

/// Handles "not present" for `token` taken by the kernel itself: it halts
/// until the token is ready whatever the action says, since it cannot give
/// its CPU away in the middle of a call. Returning retries the access.
pub fn not_present_in_kernel(token: u64, action: u32) {
    metrics::APF_NOT_PRESENT.add(1);
    metrics::APF_KERNEL_HALTS.add(1);
    request_if_asked(token, action);
    halt_until_ready(cpu_index(), token);
}

/// The ready interrupt: wakes the sleeper of every token in the ring, then
/// acknowledges so the host can fill it again.
pub fn on_ready_interrupt() {
    let cpu = cpu_index();
    let cb = block(cpu);
    // SAFETY: this CPU's own block; the host publishes `ready_head` only
    // after writing the slots before it, and reads `ready_tail` only at the
    // ACK below.
    let (head, mut tail) = unsafe {
        (
            addr_of!((*cb).ready_head).read_volatile(),
            addr_of!((*cb).ready_tail).read_volatile(),
        )
    };
    while tail != head {
        let slot = tail as usize % READY_RING_SLOTS;
        // SAFETY: as above; `slot` is inside the ring.
        let token = unsafe { addr_of!((*cb).ready_ring[slot]).read_volatile() };
        wake(cpu, token);
        tail = tail.wrapping_add(1);
    }
    // SAFETY: as above.
    unsafe { addr_of_mut!((*cb).ready_tail).write_volatile(tail) };
    let _ = hypercall::apf_ack();
}

/// Wakes the task sleeping on `token`, or leaves a dummy entry for it;
/// the wake-all token wakes every sleeper of this CPU.
fn wake(cpu: usize, token: u64) {
    if Token(token).is_wake_all() {
        metrics::APF_WAKE_ALLS.add(1);
        sched::wake_matching(|key| key & BLOCK_KEY_TOKEN != 0);
        EARLY[cpu].lock().clear();
        return;
    }
    metrics::APF_READY.add(1);
    if sched::wake_key(BLOCK_KEY_TOKEN | token) == 0 {
        EARLY[cpu].lock().insert(token);
    } else {
        // The woken task waited for its page; let it run now rather than
        // after the current task's slice.
        sched::request_preempt();
    }
}
