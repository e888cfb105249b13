//! The part of a run loop both backends share: how an exit that ends the
//! run reads, how a hook's [`Action`] is applied to a vCPU, how a hypercall
//! is answered (by the machine or by the fault engine), which machine
//! effects end the run, and how the outcome is put together.
//!
//! The two loops differ only in what they schedule: emu runs every vCPU on
//! one thread in virtual time (`emu::run`), kvm one host thread per vCPU
//! with the fault engine on the control thread (`kvm::run`). Everything
//! that decides what a vCPU does next lives here, written once, and is
//! unit-tested with synthetic exits and actions.

// Without a backend that runs here (no `emu` feature, not an aarch64 kvm
// host) nothing drives a loop.
#![cfg_attr(
    not(any(
        feature = "emu",
        all(target_arch = "aarch64", target_os = "linux", feature = "kvm")
    )),
    allow(dead_code)
)]

use std::time::Duration;

use apflab_abi::hypercall as hc;

use crate::machine::{Call, Effect, Machine};
use crate::outcome::{GuestCrash, GuestExit, Halt, RunOutcome, VmMetrics};
use apflab_hypervisor::arch::Reg;
use apflab_hypervisor::{Action, EngineCall, HypercallAnswer};
use apflab_hypervisor::{HypervisorError, Vcpu, VmExit};

/// What a run loop does with a vCPU next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Run it.
    Run,
    /// Keep it off the CPU until this time, then ask the hook again
    /// ([`crate::FaultHook::on_wait_end`]); stalled time.
    Stall(u64),
    /// The run is over.
    End(GuestExit),
}

/// How the run ends if `exit` ends it: a crash or a system event the
/// backend saw by itself.
pub(crate) fn terminal_exit(machine: &Machine, vcpu: u32, exit: &VmExit) -> Option<GuestExit> {
    if let VmExit::SystemEvent { .. } = exit {
        // KVM handles PSCI's SYSTEM_OFF and SYSTEM_RESET itself and exits
        // with this; apflab's machine answers them as hypercalls.
        machine.count_exit("system_event");
    }
    match exit {
        VmExit::Crash { pc, addr, reason } => Some(GuestExit::Crash(GuestCrash::Vcpu {
            vcpu,
            pc: *pc,
            addr: *addr,
            reason: reason.clone(),
        })),
        VmExit::SystemEvent { reset: true } => Some(GuestExit::Reset),
        VmExit::SystemEvent { reset: false } => Some(GuestExit::PowerOff),
        _ => None,
    }
}

/// How the run ends if the machine effect `effect` ends it (the effects
/// that start or stop one vCPU are the backend's to apply).
pub(crate) fn terminal_effect(effect: &Effect) -> Option<GuestExit> {
    match effect {
        Effect::SystemOff => Some(GuestExit::PowerOff),
        Effect::SystemReset => Some(GuestExit::Reset),
        Effect::Panic(msg) => Some(GuestExit::Panic(msg.clone())),
        Effect::CpuOn { .. } | Effect::CpuOff { .. } | Effect::CpuSuspend { .. } => None,
    }
}

/// Applies the hook's `action` to `vcpu` of `machine`.
pub(crate) fn apply<V: Vcpu + ?Sized>(
    vcpu: &mut V,
    machine: &Machine,
    action: Action,
) -> Result<Next, HypervisorError> {
    Ok(match action {
        Action::Retry => Next::Run,
        Action::StallUntil(t) => Next::Stall(t),
        Action::InjectException(exc) => {
            vcpu.inject_exception(exc)?;
            Next::Run
        }
        Action::SetReadyLine(level) => {
            vcpu.set_ready_line(level)?;
            Next::Run
        }
        Action::SignalSdei => {
            // Without a registered handler the signal is refused and the
            // vCPU retries the access (the hook sees the fault again).
            machine.signal_sdei(vcpu.index());
            machine.deliver_sdei(vcpu)?;
            Next::Run
        }
        Action::Fail(failure) => Next::End(GuestExit::Crash(GuestCrash::Hook {
            vcpu: vcpu.index(),
            failure,
        })),
    })
}

/// The answer to a hypercall the machine routed as `call`: the machine's
/// own, or the fault engine's through `engine` (`None`: the engine is gone,
/// which only happens while the run ends).
pub(crate) fn answer(
    machine: &Machine,
    call: Call,
    engine: impl FnOnce(EngineCall) -> Option<HypercallAnswer>,
) -> Option<HypercallAnswer> {
    match call {
        Call::Answered(regs) => Some(HypercallAnswer {
            regs,
            action: Action::Retry,
        }),
        Call::Engine(c) => engine(c).map(|a| engine_answered(machine, a)),
    }
}

/// Returns from an HVC/SMC: writes x0..x3 and applies the answer's action.
pub(crate) fn return_from_hypercall<V: Vcpu + ?Sized>(
    vcpu: &mut V,
    machine: &Machine,
    answer: Option<HypercallAnswer>,
) -> Result<Next, HypervisorError> {
    let Some(answer) = answer else {
        return Ok(Next::End(GuestExit::Crash(GuestCrash::EngineGone)));
    };
    for (n, value) in answer.regs.iter().enumerate() {
        vcpu.set_reg(Reg::X(n as u8), *value)?;
    }
    apply(vcpu, machine, answer.action)
}

/// Returns from a doorbell call: the results go where the guest reads them,
/// then the answer's action is applied. (The kvm loop stores the results
/// on its control thread and posts the action to the vCPU instead.)
#[cfg_attr(not(feature = "emu"), allow(dead_code))]
pub(crate) fn return_from_doorbell<V: Vcpu + ?Sized>(
    vcpu: &mut V,
    machine: &Machine,
    answer: Option<HypercallAnswer>,
) -> Result<Next, HypervisorError> {
    let Some(answer) = answer else {
        return Ok(Next::End(GuestExit::Crash(GuestCrash::EngineGone)));
    };
    machine.set_doorbell_results(vcpu.index(), answer.regs);
    apply(vcpu, machine, answer.action)
}

/// Counts an engine call the engine refused, as the machine counts its own.
fn engine_answered(machine: &Machine, answer: HypercallAnswer) -> HypercallAnswer {
    if answer.regs[0] == hc::SMCCC_NOT_SUPPORTED as u64 {
        machine.count_exit("hypercall_unsupported");
    }
    answer
}

/// Per-run counters a loop hands to [`outcome`].
pub(crate) struct Totals {
    /// Guest instructions (emu; 0 on kvm, which cannot count them).
    pub instructions: u64,
    /// Time at the end of the run, ns.
    pub time_ns: u64,
    /// Per vCPU: ns halted in WFI.
    pub halted_ns: Vec<u64>,
    /// The halts kept, and how many were not.
    pub halts: (Vec<Halt>, u64),
    /// Interrupt entries the loop made itself (emu), counted as `irq`
    /// exits.
    pub irq_entries: u64,
}

/// The outcome of a run that ended with `exit`.
pub(crate) fn outcome(
    machine: &Machine,
    exit: GuestExit,
    totals: Totals,
    wall_time: Duration,
) -> RunOutcome {
    let mut exits = machine.exits();
    if totals.irq_entries > 0 {
        *exits.entry("irq".into()).or_default() += totals.irq_entries;
    }
    // The slice ends are scheduling artefacts, not exits.
    exits.remove("slice_end");
    RunOutcome {
        exit,
        console: machine.console(),
        report: machine.report(),
        task_done_ns: machine.task_done_ns(),
        timeline: machine.take_timeline(),
        metrics: VmMetrics {
            exits,
            instructions: totals.instructions,
            virtual_time_ns: totals.time_ns,
            halted_ns: totals.halted_ns,
            halts: totals.halts.0,
            halts_dropped: totals.halts.1,
            interrupts: machine.interrupts(),
        },
        wall_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripted_vcpu::ScriptedVcpu;
    use apflab_abi::addr::Gpa;
    use apflab_hypervisor::{CrashReason, HookFailure, SyncException};

    fn machine() -> Machine {
        let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(
            vm_memory::GuestAddress(apflab_abi::memory_map::RAM_BASE),
            1 << 20,
        )])
        .unwrap();
        Machine::new(2, mem, false)
    }

    #[test]
    fn actions_become_what_the_loop_does_next() {
        let m = machine();
        let apply = |v: &mut ScriptedVcpu, a| apply(v, &m, a);
        let mut v = ScriptedVcpu::new(1, []);
        assert_eq!(apply(&mut v, Action::Retry).unwrap(), Next::Run);
        assert_eq!(
            apply(&mut v, Action::StallUntil(7)).unwrap(),
            Next::Stall(7)
        );
        let exc = SyncException {
            esr: 0x7800_0001,
            far: 0x1000,
            return_pc: 0x4000_0000,
        };
        assert_eq!(
            apply(&mut v, Action::InjectException(exc)).unwrap(),
            Next::Run
        );
        assert_eq!(v.logged().injected, [exc]);
        assert_eq!(
            apply(&mut v, Action::SetReadyLine(true)).unwrap(),
            Next::Run
        );
        assert_eq!(v.logged().ready_line, Some(true));
        assert_eq!(
            apply(
                &mut v,
                Action::Fail(HookFailure::unavailable(
                    Gpa(0x5000),
                    std::io::Error::other("gone")
                ))
            )
            .unwrap(),
            Next::End(GuestExit::Crash(GuestCrash::Hook {
                vcpu: 1,
                failure: HookFailure::unavailable(Gpa(0x5000), std::io::Error::other("gone"))
            }))
        );
    }

    fn call<V: Vcpu>(
        v: &mut V,
        m: &Machine,
        function: u32,
        args: [u64; 5],
        engine: impl FnOnce(EngineCall) -> Option<HypercallAnswer>,
    ) -> Next {
        let routed = m.dispatch(v.index(), function, args, 5);
        return_from_hypercall(v, m, answer(m, routed, engine)).unwrap()
    }

    #[test]
    fn engine_calls_go_to_the_engine_and_the_rest_to_the_machine() {
        let m = machine();
        let mut v = ScriptedVcpu::new(1, []);
        let mut seen = None;
        let next = call(
            &mut v,
            &m,
            hc::FN_APF_ENABLE,
            [0x4000_1000, 0, 0, 0, 0],
            |c| {
                seen = Some(c);
                Some(HypercallAnswer {
                    regs: [0, 42, 0, 0],
                    action: Action::StallUntil(100),
                })
            },
        );
        assert_eq!(seen.unwrap().function, hc::FN_APF_ENABLE);
        assert_eq!(seen.unwrap().args[0], 0x4000_1000);
        assert_eq!((v.logged().regs[&0], v.logged().regs[&1]), (0, 42));
        assert_eq!(next, Next::Stall(100));

        let next = call(&mut v, &m, hc::PSCI_VERSION, [0; 5], |_| {
            panic!("PSCI is the machine's")
        });
        assert_eq!(next, Next::Run);
        assert_eq!(v.logged().regs[&0], hc::PSCI_VERSION_1_0);
        assert_eq!(m.exits()["hypercall"], 1);
        assert_eq!(m.exits()["psci"], 1);
    }

    #[test]
    fn an_sdei_signal_enters_the_registered_handler_or_is_refused() {
        use apflab_abi::sdei;
        let m = machine();
        let mut v = ScriptedVcpu::new(1, []);
        // No handler: refused, the vCPU retries the access untouched.
        assert_eq!(apply(&mut v, &m, Action::SignalSdei).unwrap(), Next::Run);
        assert!(v.logged().regs.is_empty());
        let ev = u64::from(sdei::EVENT_APF);
        for (f, args) in [
            (sdei::FN_EVENT_REGISTER, [ev, 0x4000_2000, 0x77, 0, 0]),
            (sdei::FN_EVENT_ENABLE, [ev, 0, 0, 0, 0]),
            (sdei::FN_PE_UNMASK, [0; 5]),
        ] {
            assert_eq!(
                call(&mut v, &m, f, args, |_| panic!("the machine's")),
                Next::Run
            );
            assert_eq!(v.logged().regs[&0], 0, "{f:#x}");
        }
        assert_eq!(apply(&mut v, &m, Action::SignalSdei).unwrap(), Next::Run);
        assert_eq!((v.logged().regs[&0], v.logged().regs[&1]), (ev, 0x77));
        assert_eq!(m.exits()["sdei_dispatch"], 1);
        assert_eq!(m.exits()["sdei"], 3);
    }

    #[test]
    fn a_refused_engine_call_is_counted_as_unsupported() {
        let m = machine();
        let mut v = ScriptedVcpu::new(1, []);
        call(&mut v, &m, hc::FN_APF_ACK, [0; 5], |_| {
            Some(HypercallAnswer::not_supported())
        });
        assert_eq!(v.logged().regs[&0], hc::SMCCC_NOT_SUPPORTED as u64);
        assert_eq!(m.exits()["hypercall_unsupported"], 1);
    }

    #[test]
    fn an_engine_call_through_the_doorbell_is_answered_in_the_bank() {
        use apflab_abi::hypercall::doorbell as layout;
        use apflab_abi::memory_map::DOORBELL_BASE;
        use apflab_hypervisor::VmOps;
        let m = machine();
        let mut v = ScriptedVcpu::new(1, []);
        m.mmio_write(1, DOORBELL_BASE + layout::ARGS[0], &7u64.to_le_bytes(), 0);
        let kind = m.mmio_write(
            1,
            DOORBELL_BASE + layout::FUNCTION,
            &u64::from(hc::FN_FEATURES).to_le_bytes(),
            0,
        );
        assert_eq!(kind, apflab_hypervisor::MmioWriteKind::Hypercall);
        let c = m
            .take_doorbell_engine_call(1)
            .expect("the call waits for the engine");
        assert_eq!((c.function, c.args[0]), (hc::FN_FEATURES, 7));
        assert_eq!(m.take_doorbell_engine_call(1), None);
        let a = answer(&m, Call::Engine(c), |_| {
            Some(HypercallAnswer::returning(0x15))
        });
        assert_eq!(return_from_doorbell(&mut v, &m, a).unwrap(), Next::Run);
        assert_eq!(
            m.mmio_read_value(1, DOORBELL_BASE + layout::RESULT0, 8, 0),
            0x15
        );
        // Another vCPU's bank is untouched.
        assert_eq!(
            m.mmio_read_value(0, DOORBELL_BASE + layout::RESULT0, 8, 0),
            0
        );
    }

    #[test]
    fn exits_and_effects_that_end_the_run() {
        let crash = VmExit::Crash {
            pc: 0x4000_0010,
            addr: Some(0x10),
            reason: CrashReason::FetchFromDevice {
                pa: 0x10,
                word: 0x1234_5678,
            },
        };
        let m = machine();
        let Some(GuestExit::Crash(ended)) = terminal_exit(&m, 3, &crash) else {
            panic!("a crash ends the run as one");
        };
        assert!(matches!(
            ended,
            GuestCrash::Vcpu {
                vcpu: 3,
                pc: 0x4000_0010,
                addr: Some(0x10),
                reason: CrashReason::FetchFromDevice { .. },
            }
        ));
        assert_eq!(
            ended.to_string(),
            "vCPU 3: instruction fetch from the device registers at 0x10, which read \
             0x12345678: QEMU would execute that value as an instruction, which the \
             software CPU cannot do from a device at pc 0x40000010, address 0x10"
        );
        assert_eq!(
            terminal_exit(&m, 0, &VmExit::SystemEvent { reset: true }),
            Some(GuestExit::Reset)
        );
        assert_eq!(terminal_exit(&m, 0, &VmExit::Wfi), None);
        assert_eq!(m.exits()["system_event"], 1);
        assert_eq!(
            terminal_effect(&Effect::Panic("oops".into())),
            Some(GuestExit::Panic("oops".into()))
        );
        assert_eq!(terminal_effect(&Effect::CpuOff { vcpu: 1 }), None);
    }
}
