//! The async page fault client, in the shape of Linux's
//! `arch/x86/kernel/kvm.c`: discovery with `FEATURES`, `APF_ENABLE` per CPU
//! with its control block, "not present" taken on the faulting instruction
//! of an EL0 task (a dedicated exception class, or a data abort whose
//! control block says so), the task parked on its token (or the CPU halted
//! until it is ready), "page ready" from the ready ring behind the PPI,
//! acknowledged, and dummy entries for a ready that finds no sleeper.
//!
//! Only faults taken from EL0 are async: the host never delivers "not
//! present" to the kernel. "Ready" arrives as an interrupt, which the
//! kernel takes only from EL0 tasks, in the idle loop and in the halt loop
//! below, never while it holds the run-queue lock and never for the task
//! that is running, so no wake has to be delayed.

use core::cell::UnsafeCell;
use core::ptr::{addr_of, addr_of_mut};

use apflab_abi::apf::{
    ACTION_HALT, ACTION_REQUEST_PAGE, ACTION_SLEEP_MASK, ControlBlock, GUEST_CAN_RESCHEDULE,
    GUEST_IN_IDLE, READY_RING_SLOTS, REASON_NONE, REASON_NOT_PRESENT, REASON_PAGE_READY,
    TOKEN_WAKE_ALL, Token, features,
};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    | features::GUEST_INITIATED;

/// Tags a scheduler wait key as an async PF token (tokens never use the
/// top bit; other keys in the kernel are ASCII tags, which do not either).
const KEY_TAG: u64 = 1 << 63;

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
/// What the host offered at boot (`FEATURES`), of what this client handles.
static OFFERED: AtomicU64 = AtomicU64::new(0);

/// Per CPU: async PF is enabled.
static ENABLED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Tokens whose "ready" came before anyone slept on them (Linux's dummy
/// entries): the sleeper finds its token here and does not sleep.
struct EarlyReady {
    tokens: [u64; READY_RING_SLOTS],
    len: usize,
}

impl EarlyReady {
    const EMPTY: EarlyReady = EarlyReady {
        tokens: [0; READY_RING_SLOTS],
        len: 0,
    };

    fn insert(&mut self, token: u64) {
        // At most 64 tokens are outstanding per CPU, so it never fills.
        if self.len < self.tokens.len() {
            self.tokens[self.len] = token;
            self.len += 1;
        }
    }

    fn take(&mut self, token: u64) -> bool {
        match self.tokens[..self.len].iter().position(|&t| t == token) {
            Some(i) => {
                self.len -= 1;
                self.tokens[i] = self.tokens[self.len];
                true
            }
            None => false,
        }
    }
}

static EARLY: [SpinMutex<EarlyReady>; MAX_CPUS] =
    [const { SpinMutex::new(EarlyReady::EMPTY) }; MAX_CPUS];

fn block(cpu: usize) -> *mut ControlBlock {
    BLOCKS.0[cpu].get()
}

/// Records whether the boot options allow async PF and what the host
/// offers (boot CPU, before any [`init_cpu`]).
pub fn init(allowed: bool, offered: u64) {
    ALLOWED.store(allowed, Ordering::Relaxed);
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
    if offered & features::NOT_PRESENT_SDEI != 0 && !crate::sdei::enable_for_apf() {
        offered &= !features::NOT_PRESENT_SDEI;
    }
    let cb = block(cpu);
    // SAFETY: this CPU's own block, not yet registered with the host.
    unsafe {
        cb.write_volatile(ControlBlock::new());
        addr_of_mut!((*cb).guest_state).write_volatile(GUEST_CAN_RESCHEDULE);
    }
    gic::enable_apf_ready(cpu);
    // The kernel runs on an identity map: the address is the physical one.
    if hypercall::apf_enable(cb as u64, offered) == 0 {
        ENABLED[cpu].store(true, Ordering::Relaxed);
        metrics::APF_ENABLED.add(1);
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
/// if the exception being handled is one: its token and action.
fn take_notification(reason: u32) -> Option<(u64, u32)> {
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
        let token = addr_of!((*cb).token).read_volatile();
        let action = addr_of!((*cb).action).read_volatile();
        addr_of_mut!((*cb).reason).write_volatile(REASON_NONE);
        Some((token, action))
    }
}

/// The "not present" being handled, if it is one: its token and what to
/// do.
pub fn take_not_present() -> Option<(u64, u32)> {
    take_notification(REASON_NOT_PRESENT)
}

/// The "page ready" exception being handled, if it is one: its token.
pub fn take_page_ready() -> Option<u64> {
    take_notification(REASON_PAGE_READY).map(|(token, _)| token)
}

/// "Page ready" as an exception (taken from a task, or in a wait marked
/// with [`wait_marked`]): wakes the token's sleeper.
pub fn page_ready(token: u64) {
    wake(cpu_index(), token);
}

/// Waits for an interrupt with this CPU's control block saying so
/// (`GUEST_IN_IDLE`), the one place besides EL0 where the host may enter a
/// "page ready" exception: no lock is held here. Interrupts are taken after
/// the mark is cleared.
pub fn wait_marked() {
    let cpu = cpu_index();
    let enabled = ENABLED[cpu].load(Ordering::Relaxed);
    let state = {
        let cb = block(cpu);
        // SAFETY: this CPU's own block: a plain field the host only reads.
        unsafe { addr_of_mut!((*cb).guest_state) }
    };
    if enabled {
        // SAFETY: as above.
        unsafe { state.write_volatile(GUEST_CAN_RESCHEDULE | GUEST_IN_IDLE) };
    }
    arch::wfi();
    if enabled {
        // SAFETY: as above.
        unsafe { state.write_volatile(GUEST_CAN_RESCHEDULE) };
    }
    arch::take_interrupts();
}

/// Handles "not present" for `token` taken by the current EL0 task: asks
/// for the page if the host wants it to, then parks the task (or halts the
/// CPU) until the token is ready. Returning retries the faulting access.
pub fn not_present(token: u64, action: u32) {
    let cpu = cpu_index();
    metrics::APF_NOT_PRESENT.add(1);
    if action & ACTION_REQUEST_PAGE != 0 {
        let _ = hypercall::apf_page_request(token);
    }
    if action & ACTION_SLEEP_MASK == ACTION_HALT {
        metrics::APF_HALTS.add(1);
        // Interrupts are taken in the wait window: the ready interrupt
        // finds no sleeper for this token and leaves a dummy entry.
        while !EARLY[cpu].lock().take(token) {
            wait_marked();
        }
        return;
    }
    if EARLY[cpu].lock().take(token) {
        metrics::APF_EARLY_READY.add(1);
        return;
    }
    metrics::APF_PARKED.add(1);
    sched::block_current(sched::Wait::Key(KEY_TAG | token));
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
        sched::wake_matching(|key| key & KEY_TAG != 0);
        *EARLY[cpu].lock() = EarlyReady::EMPTY;
        return;
    }
    metrics::APF_READY.add(1);
    if sched::wake_key(KEY_TAG | token) == 0 {
        EARLY[cpu].lock().insert(token);
    } else {
        // The woken task waited for its page; let it run now rather than
        // after the current task's slice.
        sched::request_preempt();
    }
}
