//! Exception handlers behind aarch64-rt's vector table.
//!
//! aarch64-rt's vectors save x0-x18, x29, x30, ELR and SPSR on the current
//! stack and call these `extern "C"` functions, which preserve x19-x28 per
//! the calling convention. That is all a context switch needs: every task
//! has its own kernel stack (SP_EL1 when it traps from EL0), so a handler
//! may call [`sched::schedule`] and return, much later, into the saved frame
//! of the same task. SP_EL0 is switched by `sched` with the rest of the
//! callee-saved context.
//!
//! The kernel itself runs with IRQs masked; IRQs are taken from EL0 tasks
//! (`irq_lower`), and at EL1 (`irq_current`) in the idle loop's wait
//! window, the async PF halt loop and the checksum system call. A handler
//! never switches tasks from `irq_current`: the idle loop picks the next
//! task itself, and a system call reschedules on its way back to EL0.

use crate::apf::Notification;
use crate::{apf, arch, gic, kv, sched, sdei, syscall, timeline};
use aarch64_cpu::registers::{ESR_EL1, FAR_EL1, Readable};
use aarch64_rt::{ExceptionHandlers, RegisterStateRef, exception_handlers};
use apflab_abi::apf::{
    EC_APF_NOT_PRESENT, EC_APF_READY, EC_DATA_ABORT_CURRENT, EC_DATA_ABORT_LOWER,
    EC_INSN_ABORT_LOWER, esr_ec,
};
use apflab_abi::trace::Handler;

/// ESR_EL1.EC of an SVC from AArch64.
const EC_SVC64: u32 = 0x15;

exception_handlers!(Handlers);

/// The kernel's exception handlers.
struct Handlers;

impl ExceptionHandlers for Handlers {
    extern "C" fn sync_current(mut regs: RegisterStateRef) {
        match apf_notification(esr_ec(ESR_EL1.get())) {
            // Entered by the host only in a wait marked for it
            // (`apf::wait_marked`), which waits in WFI.
            Some(Notification::PageReady { token }) => {
                let _h = timeline::handler(Handler::PageReady);
                apf::page_ready_in_wait(token);
                // SAFETY: the return address moves only past a WFI, which
                // may complete at any time (the architecture allows
                // spurious wake-ups), so the wait goes on as if it had
                // woken by itself. Hosts differ on whether an exception
                // entered in WFI returns to it or past it; returning to it
                // would sleep again with the woken task runnable.
                let frame = unsafe { regs.get_mut() };
                if arch::is_wfi(frame.elr as u64) {
                    frame.elr += 4;
                }
            }
            // Taken by the kernel itself (async-halt, with IRQs unmasked in
            // a system call that reads a task's page).
            Some(Notification::NotPresent { token, action }) => {
                let _h = timeline::handler(Handler::NotPresent);
                apf::not_present_in_kernel(token, action);
            }
            None => panic!(
                "kernel exception: ESR {:#x} FAR {:#x} ELR {:#x}",
                ESR_EL1.get(),
                FAR_EL1.get(),
                regs.elr
            ),
        }
    }

    extern "C" fn irq_current(_regs: RegisterStateRef) {
        // Wake what is due; the idle loop, or the return to EL0, then
        // schedules.
        let _h = timeline::handler(Handler::Irq);
        handle_irqs();
    }

    extern "C" fn sync_lower(mut regs: RegisterStateRef) {
        let esr = ESR_EL1.get();
        let ec = esr_ec(esr);
        if ec == EC_SVC64 {
            let _h = timeline::handler(Handler::Syscall);
            // SAFETY: only x0 (the syscall result) is changed, which the
            // EL0 syscall wrappers declare as clobbered.
            let frame = unsafe { regs.get_mut() };
            let r = &frame.registers;
            let result = syscall::dispatch(r[8], [r[0], r[1], r[2], r[3], r[4], r[5]]);
            frame.registers[0] = result as u64;
        } else {
            match apf_notification(ec) {
                Some(Notification::PageReady { token }) => {
                    let _h = timeline::handler(Handler::PageReady);
                    apf::page_ready(token);
                }
                Some(Notification::NotPresent { token, action }) => {
                    let _h = timeline::handler(Handler::NotPresent);
                    apf::not_present(token, action);
                }
                None if matches!(ec, EC_DATA_ABORT_LOWER | EC_INSN_ABORT_LOWER) => panic!(
                    "task {} took {} abort at {:#x} (FAR {:#x}, ESR {esr:#x})",
                    sched::current_task_id(),
                    if ec == EC_DATA_ABORT_LOWER {
                        "a data"
                    } else {
                        "an instruction"
                    },
                    regs.elr,
                    FAR_EL1.get()
                ),
                None => panic!(
                    "task {} took an unexpected exception at {:#x} (ESR {esr:#x})",
                    sched::current_task_id(),
                    regs.elr
                ),
            }
        }
        sched::preempt_if_needed();
        timeline::hand_over_if_half_full();
    }

    extern "C" fn irq_lower(_regs: RegisterStateRef) {
        {
            let _h = timeline::handler(Handler::Irq);
            handle_irqs();
        }
        // "Not present" through SDEI resumes here, as an IRQ from the task.
        if let Some((token, action)) = sdei::take_deferred_not_present() {
            let _h = timeline::handler(Handler::NotPresent);
            apf::not_present(token, action);
        }
        sched::preempt_if_needed();
        timeline::hand_over_if_half_full();
    }
}

/// The async PF notification an exception of class `ec` carries, if it is
/// one: the classes of its own, or a data abort whose control block says so
/// (the host decides which per fault). The one place where exception
/// classes meet the protocol.
fn apf_notification(ec: u32) -> Option<Notification> {
    match ec {
        EC_APF_NOT_PRESENT | EC_APF_READY | EC_DATA_ABORT_LOWER | EC_DATA_ABORT_CURRENT => {
            apf::take_notification()
        }
        _ => None,
    }
}

/// Acknowledges and handles every pending interrupt.
fn handle_irqs() {
    while let Some(intid) = gic::acknowledge() {
        if intid == gic::VTIMER {
            // One reading of the counter for both, as the workload's
            // events and the scheduler's deadlines are on the same clock.
            let now = arch::counter();
            kv::on_timer(now);
            sched::on_timer_interrupt(now);
        } else if intid == gic::APF_READY {
            let _h = timeline::handler(Handler::PageReady);
            apf::on_ready_interrupt();
        }
        gic::end(intid);
    }
}
