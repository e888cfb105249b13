//! Tasks and the per-CPU scheduler.
//!
//! Every task runs at EL0 on its own user stack and enters the kernel on its
//! own kernel stack. A task belongs to one CPU for its whole life (chosen at
//! spawn: pinned, or spread round-robin), so each CPU's run queue and its
//! tasks' saved contexts are only touched by that CPU; the shared table is
//! behind one spin lock, which is never held across a context switch. The
//! kernel runs with IRQs masked, so nothing preempts it on its own CPU.
//!
//! Blocking is "sleep on a wait condition" ([`Wait`]): a deadline on the
//! virtual counter (the `sleep` syscall) or a key that some interrupt or
//! exception handler wakes with [`wake_key`] (`kv` request arrivals, async
//! PF "page ready" tokens). Whoever asked ([`observe_run_queue`]) is told
//! the number of tasks waiting in a CPU's run queue as it changes.
//!
//! Two policies pick the next task (`apflab.scheduler`):
//!
//! - round-robin: every runnable task in turn; the virtual timer preempts a
//!   task whose slice is over when another task is runnable. A slice that a
//!   synchronous stall ate (the vCPU stopped by the host, the counter going
//!   on) is the stalled task's, and nothing makes it up to the others.
//! - fair, in the spirit of Linux's CFS: each task is charged the counter
//!   time it spent as its CPU's current task (a synchronous stall included,
//!   as Linux charges a task for the time its vCPU did not run; time
//!   blocked on a token or a deadline is not charged), and the next task is
//!   the runnable one charged the least. At the end of a slice the current
//!   task goes on only while no runnable task has been charged less. A task
//!   that wakes is charged at least its CPU's least charge less half a
//!   slice (Linux's sleeper credit), a new task the least charge, so neither
//!   can take the CPU for as long as it slept.

use crate::percpu::{MAX_CPUS, cpu_index};
use crate::{arch, hypercall, metrics, timeline, timer};
use aarch64_rt::Stack;
use apflab_abi::trace::{IDLE_TASK, TraceKind};
use core::arch::global_asm;
use core::cell::UnsafeCell;
use core::ops::Range;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use spin::mutex::SpinMutex;

/// Most tasks the kernel runs (one report slot each).
pub const MAX_TASKS: usize = apflab_abi::report::MAX_REPORTED_TASKS;
/// Pages of each task's kernel stack.
const KSTACK_PAGES: usize = 4;
/// Pages of each task's EL0 stack, including one guard page at the bottom
/// that EL0 cannot access.
pub const USTACK_PAGES: usize = 5;

/// Callee-saved state of a kernel context: x19-x28, fp, lr, sp, SP_EL0.
/// Layout shared with `apflab_switch_context` below.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Context {
    x19_x28: [u64; 10],
    fp: u64,
    lr: u64,
    sp: u64,
    sp_el0: u64,
}

// switch_context(prev: *mut Context, next: *const Context): saves the
// callee-saved registers, SP and SP_EL0 of the running kernel context in
// `prev` and resumes `next` where it called switch_context (or, for a new
// task, at `apflab_enter_el0`). Only normal memory is accessed.
//
// apflab_enter_el0: first kernel entry of a new task; x19 = EL0 entry
// point, x21..x24 = its arguments (x0..x3). Drops to EL0 with IRQs unmasked
// (SPSR_EL1 = EL0t, DAIF clear) on the user stack already in SP_EL0; the
// kernel stack is empty, so SP_EL1 is its top for the next trap.
global_asm!(
    ".section .text.apflab_switch_context, \"ax\"",
    ".global apflab_switch_context",
    "apflab_switch_context:",
    "stp x19, x20, [x0, #0]",
    "stp x21, x22, [x0, #16]",
    "stp x23, x24, [x0, #32]",
    "stp x25, x26, [x0, #48]",
    "stp x27, x28, [x0, #64]",
    "stp x29, x30, [x0, #80]",
    "mov x9, sp",
    "mrs x10, sp_el0",
    "stp x9, x10, [x0, #96]",
    "ldp x19, x20, [x1, #0]",
    "ldp x21, x22, [x1, #16]",
    "ldp x23, x24, [x1, #32]",
    "ldp x25, x26, [x1, #48]",
    "ldp x27, x28, [x1, #64]",
    "ldp x29, x30, [x1, #80]",
    "ldp x9, x10, [x1, #96]",
    "mov sp, x9",
    "msr sp_el0, x10",
    "ret",
    "",
    ".section .text.apflab_enter_el0, \"ax\"",
    ".global apflab_enter_el0",
    "apflab_enter_el0:",
    "msr elr_el1, x19",
    "msr spsr_el1, xzr",
    "mov x0, x21",
    "mov x1, x22",
    "mov x2, x23",
    "mov x3, x24",
    // No kernel value may leak to EL0.
    "mov x4, xzr",
    "mov x5, xzr",
    "mov x6, xzr",
    "mov x7, xzr",
    "mov x8, xzr",
    "mov x9, xzr",
    "mov x10, xzr",
    "mov x11, xzr",
    "mov x12, xzr",
    "mov x13, xzr",
    "mov x14, xzr",
    "mov x15, xzr",
    "mov x16, xzr",
    "mov x17, xzr",
    "mov x18, xzr",
    "mov x19, xzr",
    "mov x20, xzr",
    "mov x21, xzr",
    "mov x22, xzr",
    "mov x23, xzr",
    "mov x24, xzr",
    "mov x25, xzr",
    "mov x26, xzr",
    "mov x27, xzr",
    "mov x28, xzr",
    "mov x29, xzr",
    "mov x30, xzr",
    "eret",
);

unsafe extern "C" {
    fn apflab_switch_context(prev: *mut Context, next: *const Context);
    fn apflab_enter_el0() -> !;
}

const _: () = {
    assert!(core::mem::offset_of!(Context, fp) == 80);
    assert!(core::mem::offset_of!(Context, sp) == 96);
    assert!(core::mem::size_of::<Context>() == 112);
};

/// The saved contexts: one per task and one per CPU's idle loop.
struct Contexts {
    tasks: [UnsafeCell<Context>; MAX_TASKS],
    idle: [UnsafeCell<Context>; MAX_CPUS],
}

// SAFETY: a task's context is only read or written by the CPU that owns the
// task, inside `schedule` with IRQs masked; an idle context only by its CPU.
unsafe impl Sync for Contexts {}

static CONTEXTS: Contexts = Contexts {
    tasks: [const { UnsafeCell::new(Context::ZERO) }; MAX_TASKS],
    idle: [const { UnsafeCell::new(Context::ZERO) }; MAX_CPUS],
};

impl Context {
    const ZERO: Context = Context {
        x19_x28: [0; 10],
        fp: 0,
        lr: 0,
        sp: 0,
        sp_el0: 0,
    };
}

/// Kernel stacks of the tasks.
static mut KERNEL_STACKS: [Stack<KSTACK_PAGES>; MAX_TASKS] = [const { Stack::new() }; MAX_TASKS];

/// EL0 stacks of the tasks; `mmu` maps them for EL0 (except each guard page).
#[unsafe(link_section = ".bss.apflab_user_stacks")]
static mut USER_STACKS: [Stack<USTACK_PAGES>; MAX_TASKS] = [const { Stack::new() }; MAX_TASKS];

/// Address range of all EL0 stacks.
pub fn user_stacks() -> Range<u64> {
    let start = (&raw const USER_STACKS) as u64;
    start..start + core::mem::size_of::<[Stack<USTACK_PAGES>; MAX_TASKS]>() as u64
}

/// What a blocked task waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The virtual counter reaching this value.
    Until(u64),
    /// [`wake_key`] with this key.
    Key(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    Runnable,
    Running,
    Blocked(Wait),
    Exited,
}

/// Where a new task runs.
#[derive(Clone, Copy, Debug)]
pub enum Placement {
    /// Always on this CPU.
    Pinned(usize),
    /// On the next CPU in round-robin order.
    Spread,
}

#[derive(Clone, Copy)]
struct Task {
    state: State,
    cpu: usize,
    /// Operations the task reported (for `TASK_DONE`).
    ops: u64,
    /// Counter ticks charged to the task as its CPU's current task (the
    /// fair scheduler's key).
    runtime: u64,
}

/// A CPU's run queue.
type RunQueue = apflab_guest_core::RunQueue<MAX_TASKS>;

#[derive(Clone, Copy)]
struct Cpu {
    current: Option<usize>,
    runqueue: RunQueue,
    /// Counter value at which the current task's slice ends.
    slice_end: u64,
    /// Extra deadline asked for by [`set_cpu_deadline`] (kv arrivals).
    extra_deadline: Option<u64>,
    /// Counter value up to which the current task has been charged.
    charged_to: u64,
    /// The least runtime of this CPU's runnable tasks, never decreasing:
    /// where a new or woken task is placed.
    min_runtime: u64,
}

struct Table {
    tasks: [Task; MAX_TASKS],
    cpus: [Cpu; MAX_CPUS],
    cpu_count: usize,
    next_spread: usize,
    spawned: usize,
}

static TABLE: SpinMutex<Table> = SpinMutex::new(Table {
    tasks: [Task {
        state: State::Free,
        cpu: 0,
        ops: 0,
        runtime: 0,
    }; MAX_TASKS],
    cpus: [Cpu {
        current: None,
        runqueue: RunQueue::EMPTY,
        slice_end: 0,
        extra_deadline: None,
        charged_to: 0,
        min_runtime: 0,
    }; MAX_CPUS],
    cpu_count: 1,
    next_spread: 0,
    spawned: 0,
});

/// Told the length of a CPU's run queue, on that CPU, whenever it changes
/// (the async PF client publishes it to the host).
static RUN_QUEUE_OBSERVER: spin::Once<fn(usize)> = spin::Once::new();

/// Makes `observer` be told the length of the calling CPU's run queue
/// whenever it changes (set once, at boot).
pub fn observe_run_queue(observer: fn(usize)) {
    RUN_QUEUE_OBSERVER.call_once(|| observer);
}

fn run_queue_changed(len: usize) {
    if let Some(observer) = RUN_QUEUE_OBSERVER.get() {
        observer(len);
    }
}

/// Tasks not yet exited.
static LIVE_TASKS: AtomicU32 = AtomicU32::new(0);
/// Tasks that exited.
static EXITED_TASKS: AtomicU32 = AtomicU32::new(0);
/// CPUs that entered the scheduler.
static CPUS_ONLINE: AtomicU32 = AtomicU32::new(0);

/// Whether the fair scheduler picks the tasks (set at boot).
static FAIR: AtomicBool = AtomicBool::new(false);

/// Sets the number of CPUs tasks may be spread over and the policy.
pub fn init(cpu_count: usize, fair: bool) {
    TABLE.lock().cpu_count = cpu_count;
    FAIR.store(fair, Ordering::Relaxed);
}

fn fair() -> bool {
    FAIR.load(Ordering::Relaxed)
}

impl Table {
    /// Charges the current task of `cpu` the counter time since it was last
    /// charged, up to `now`, and moves the CPU's least runtime up.
    fn charge(&mut self, cpu: usize, now: u64) {
        let c = &mut self.cpus[cpu];
        let ran = now.saturating_sub(c.charged_to);
        c.charged_to = now;
        if let Some(id) = c.current {
            self.tasks[id].runtime += ran;
        }
        self.update_min_runtime(cpu);
    }

    /// Moves `cpu`'s least runtime up to that of its current and runnable
    /// tasks, if all have been charged more.
    fn update_min_runtime(&mut self, cpu: usize) {
        let tasks = &self.tasks;
        let c = &mut self.cpus[cpu];
        let least = c
            .runqueue
            .min_key(|id| tasks[id].runtime)
            .into_iter()
            .chain(c.current.map(|id| tasks[id].runtime))
            .min();
        if let Some(least) = least {
            c.min_runtime = c.min_runtime.max(least);
        }
    }

    /// Puts `id` on its CPU's run queue after a sleep: under the fair
    /// scheduler it is charged at least the CPU's least runtime less half a
    /// slice, so a long sleep does not buy it the CPU for as long.
    fn enqueue_woken(&mut self, id: usize) {
        let cpu = self.tasks[id].cpu;
        if fair() {
            let floor = self.cpus[cpu]
                .min_runtime
                .saturating_sub(timer::slice_ticks() / 2);
            let task = &mut self.tasks[id];
            task.runtime = task.runtime.max(floor);
        }
        self.cpus[cpu].runqueue.push(id);
    }

    /// Takes the next task of `cpu`'s run queue: the front one, or under the
    /// fair scheduler the one charged the least.
    fn take_next(&mut self, cpu: usize) -> Option<usize> {
        let tasks = &self.tasks;
        let q = &mut self.cpus[cpu].runqueue;
        if fair() {
            q.take_min_by(|id| tasks[id].runtime)
        } else {
            q.pop()
        }
    }

    /// Whether the current task of `cpu` should give way at the end of its
    /// slice: round-robin, when any task waits; fair, when a waiting task
    /// has been charged less than it.
    fn should_preempt(&self, cpu: usize) -> bool {
        let c = &self.cpus[cpu];
        let Some(current) = c.current else {
            return false;
        };
        if fair() {
            c.runqueue
                .min_key(|id| self.tasks[id].runtime)
                .is_some_and(|least| least < self.tasks[current].runtime)
        } else {
            !c.runqueue.is_empty()
        }
    }
}

/// Parameters handed to a new task: copied to the top of its EL0 stack,
/// their address is the task's first argument.
pub type TaskParams = [u64; 8];

/// Entry point of an EL0 task.
pub type TaskEntry = extern "C" fn(params: *const TaskParams) -> !;

/// Creates an EL0 task that starts at `entry(&params)`; returns its id (also
/// its index in the report).
pub fn spawn(entry: TaskEntry, params: TaskParams, placement: Placement) -> usize {
    let mut t = TABLE.lock();
    let id = t.spawned;
    assert!(id < MAX_TASKS, "more than {MAX_TASKS} tasks");
    let cpu = match placement {
        Placement::Pinned(cpu) => cpu % t.cpu_count,
        Placement::Spread => {
            let cpu = t.next_spread % t.cpu_count;
            t.next_spread += 1;
            cpu
        }
    };
    t.spawned += 1;
    // SAFETY: task `id` is new, so nothing else uses its stacks; the
    // parameter block is written at the top of its EL0 stack, which the
    // kernel can write through the identity map.
    let (kstack_top, params_ptr) = unsafe {
        let ustack_top = (&raw mut USER_STACKS[id]).add(1) as *mut TaskParams;
        let params_ptr = ustack_top.sub(1);
        params_ptr.write(params);
        (
            (&raw mut KERNEL_STACKS[id]).add(1) as u64,
            params_ptr as u64,
        )
    };
    let mut ctx = Context {
        lr: apflab_enter_el0 as *const () as u64,
        sp: kstack_top,
        // The EL0 stack starts below the (16-byte multiple) parameter block.
        sp_el0: params_ptr,
        ..Context::ZERO
    };
    ctx.x19_x28[0] = entry as *const () as u64;
    ctx.x19_x28[2] = params_ptr;
    // SAFETY: the task is not runnable yet, so no CPU uses its context.
    unsafe { *CONTEXTS.tasks[id].get() = ctx };
    let runtime = t.cpus[cpu].min_runtime;
    t.tasks[id] = Task {
        state: State::Runnable,
        cpu,
        ops: 0,
        runtime,
    };
    t.cpus[cpu].runqueue.push(id);
    timeline::record(TraceKind::Runnable, id as u32, 0);
    LIVE_TASKS.fetch_add(1, Ordering::SeqCst);
    id
}

/// The running task on this CPU (for messages); `usize::MAX` in idle.
pub fn current_task_id() -> usize {
    TABLE.lock().cpus[cpu_index()].current.unwrap_or(usize::MAX)
}

/// Switches this CPU to the next runnable task, or to its idle loop when
/// none is. The caller has already set the current task's new state (and
/// queued it again if it stays runnable). Returns when the calling context
/// is resumed.
pub fn schedule() {
    let cpu = cpu_index();
    let now = arch::counter();
    let (prev, next) = {
        let mut t = TABLE.lock();
        t.charge(cpu, now);
        let prev = t.cpus[cpu].current;
        let next = t.take_next(cpu);
        let c = &mut t.cpus[cpu];
        run_queue_changed(c.runqueue.len());
        c.current = next;
        if let Some(n) = next {
            c.slice_end = now + timer::slice_ticks();
            t.tasks[n].state = State::Running;
        }
        arm_timer(&t, cpu);
        (prev, next)
    };
    if prev == next {
        return;
    }
    timeline::record(TraceKind::Switch, next.map_or(IDLE_TASK, |n| n as u32), 0);
    if next.is_some() {
        metrics::CONTEXT_SWITCHES.add(1);
    }
    let ctx = |task: Option<usize>| match task {
        Some(id) => CONTEXTS.tasks[id].get(),
        None => CONTEXTS.idle[cpu].get(),
    };
    // SAFETY: both contexts belong to this CPU (its tasks or its idle loop)
    // and IRQs are masked, so nothing else touches them during the switch;
    // `next` was saved by an earlier switch or built by `spawn`.
    unsafe { apflab_switch_context(ctx(prev), ctx(next)) };
}

/// Programs this CPU's timer for its nearest deadline: the end of the
/// current slice, the earliest timed sleeper, an extra deadline.
fn arm_timer(t: &Table, cpu: usize) {
    let c = &t.cpus[cpu];
    let mut deadline = c.current.map(|_| c.slice_end);
    let mut consider = |d: u64| deadline = Some(deadline.map_or(d, |x| x.min(d)));
    for task in t.tasks.iter().filter(|task| task.cpu == cpu) {
        if let State::Blocked(Wait::Until(d)) = task.state {
            consider(d);
        }
    }
    if let Some(d) = c.extra_deadline {
        consider(d);
    }
    match deadline {
        Some(d) => timer::arm(d),
        None => timer::disarm(),
    }
}

/// Blocks the current task until `wait` is satisfied.
pub fn block_current(wait: Wait) {
    let cpu = cpu_index();
    {
        let mut t = TABLE.lock();
        let current = t.cpus[cpu].current.expect("block_current from a task");
        if let Wait::Until(d) = wait
            && d <= arch::counter()
        {
            return;
        }
        t.tasks[current].state = State::Blocked(wait);
        let (kind, arg) = match wait {
            Wait::Until(d) => (TraceKind::BlockedUntil, d),
            Wait::Key(k) => (TraceKind::BlockedOnKey, k),
        };
        timeline::record(kind, current as u32, arg);
    }
    schedule();
}

/// Puts the current task at the back of its run queue and runs the next.
pub fn yield_current() {
    let cpu = cpu_index();
    {
        let mut t = TABLE.lock();
        let current = t.cpus[cpu].current.expect("yield from a task");
        t.tasks[current].state = State::Runnable;
        t.cpus[cpu].runqueue.push(current);
        timeline::record(TraceKind::Runnable, current as u32, 0);
        run_queue_changed(t.cpus[cpu].runqueue.len());
    }
    schedule();
}

/// Wakes every task of this CPU blocked on `key`; returns how many.
pub fn wake_key(key: u64) -> usize {
    let cpu = cpu_index();
    let mut t = TABLE.lock();
    wake_where(&mut t, cpu, |w| w == Wait::Key(key))
}

/// Wakes every task of this CPU blocked on a key `pred` accepts; returns
/// how many.
pub fn wake_matching(pred: impl Fn(u64) -> bool) -> usize {
    let cpu = cpu_index();
    let mut t = TABLE.lock();
    wake_where(&mut t, cpu, |w| matches!(w, Wait::Key(k) if pred(k)))
}

fn wake_where(t: &mut Table, cpu: usize, pred: impl Fn(Wait) -> bool) -> usize {
    let mut woken = 0;
    for id in 0..MAX_TASKS {
        let task = &mut t.tasks[id];
        if task.cpu == cpu
            && let State::Blocked(w) = task.state
            && pred(w)
        {
            task.state = State::Runnable;
            t.enqueue_woken(id);
            timeline::record(TraceKind::Runnable, id as u32, 0);
            woken += 1;
        }
    }
    if woken > 0 {
        run_queue_changed(t.cpus[cpu].runqueue.len());
    }
    woken
}

/// Sets (or clears) an extra timer deadline on this CPU, for handlers that
/// wake keys at a given time (the timer interrupt's dispatch calls
/// [`crate::kv::on_timer`]).
pub fn set_cpu_deadline(deadline: Option<u64>) {
    let cpu = cpu_index();
    let mut t = TABLE.lock();
    t.cpus[cpu].extra_deadline = deadline;
    arm_timer(&t, cpu);
}

/// Per-CPU flag: the current task's slice is over and another task waits.
static NEED_RESCHED: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

/// The virtual timer fired on this CPU, read at `now`: wake due sleepers,
/// decide on preemption, re-arm.
pub fn on_timer_interrupt(now: u64) {
    metrics::TIMER_IRQS.add(1);
    let cpu = cpu_index();
    {
        let mut t = TABLE.lock();
        if t.cpus[cpu].extra_deadline.is_some_and(|d| d <= now) {
            t.cpus[cpu].extra_deadline = None;
        }
        wake_where(&mut t, cpu, |w| matches!(w, Wait::Until(d) if d <= now));
    }
    let mut t = TABLE.lock();
    t.charge(cpu, now);
    let preempt = t.should_preempt(cpu);
    let c = &mut t.cpus[cpu];
    if c.current.is_some() && now >= c.slice_end {
        if preempt {
            NEED_RESCHED[cpu].store(1, Ordering::Relaxed);
        }
        // A fresh slice (for the next task, or the same one if alone); the
        // deadline must move into the future, as the timer's interrupt is
        // level-triggered.
        c.slice_end = now + timer::slice_ticks();
    }
    arm_timer(&t, cpu);
}

/// Asks for the current task to give way on the way back to EL0 (a woken
/// task should run soon, as Linux's wake-up preemption has it).
pub fn request_preempt() {
    NEED_RESCHED[cpu_index()].store(1, Ordering::Relaxed);
}

/// On the way back to EL0: if the timer asked for it, put the current task
/// at the back of the queue and run the next one.
pub fn preempt_if_needed() {
    if NEED_RESCHED[cpu_index()].swap(0, Ordering::Relaxed) != 0 {
        yield_current();
    }
}

/// Adds reported operations to the current task's count.
pub fn add_current_ops(ops: u64) {
    let cpu = cpu_index();
    let mut t = TABLE.lock();
    if let Some(id) = t.cpus[cpu].current {
        t.tasks[id].ops += ops;
    }
}

/// The end of the run, after the last task has exited: reports and powers
/// off. A type parameter of [`exit_current`] rather than a call, so that
/// the scheduler does not depend on what ending the run uses (the async PF
/// client, which depends on the scheduler), and a trait rather than a
/// closure, as a closure's `-> !` is not stable Rust. Resolved at compile
/// time, it runs the instructions of a direct call.
pub trait RunEnd {
    /// Ends the run, with the CPUs online and the tasks completed.
    fn finish(cpus_online: u32, tasks_completed: u32) -> !;
}

/// Ends the current task; after the last one, ends the run with `E`.
pub fn exit_current<E: RunEnd>() -> ! {
    let cpu = cpu_index();
    let (id, ops) = {
        let mut t = TABLE.lock();
        let id = t.cpus[cpu].current.expect("exit from a task");
        t.tasks[id].state = State::Exited;
        timeline::record(TraceKind::Exited, id as u32, 0);
        (id, t.tasks[id].ops)
    };
    metrics::task_done(id);
    // NOT_SUPPORTED on plain QEMU; nothing to do about other answers.
    let _ = hypercall::task_done(id as u32, ops);
    EXITED_TASKS.fetch_add(1, Ordering::SeqCst);
    if LIVE_TASKS.fetch_sub(1, Ordering::SeqCst) == 1 {
        E::finish(
            CPUS_ONLINE.load(Ordering::SeqCst),
            EXITED_TASKS.load(Ordering::SeqCst),
        );
    }
    schedule();
    unreachable!("an exited task was resumed");
}

/// Marks this CPU online.
pub fn cpu_online() {
    CPUS_ONLINE.fetch_add(1, Ordering::SeqCst);
}

/// CPUs online so far.
pub fn cpus_online() -> u32 {
    CPUS_ONLINE.load(Ordering::SeqCst)
}

/// This CPU's scheduler loop (its idle context): runs tasks while there are
/// any, and waits for interrupts in between with `idle_wait` (the async PF
/// client's wait, which the host may enter). A parameter rather than a
/// call, so the scheduler does not depend on the client that depends on
/// it; resolved at compile time, it runs the instructions of a direct call.
pub fn run_cpu(idle_wait: impl Fn()) -> ! {
    loop {
        schedule();
        timeline::hand_over_all();
        metrics::idle_begin();
        idle_wait();
        metrics::idle_end();
    }
}
