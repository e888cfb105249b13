//! The seam means the same on both backends: one script of exits, driven
//! through the kvm loop (`kvm::threads`) and the emu loop (`emu::run`) with
//! the same scripted hook, must reach the hook with the same calls in the
//! same order, leave the vCPU with the same exceptions, registers and
//! ready line, count the same exits, and end the same way. Only times
//! differ (host time against virtual time), and they are not compared.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use apflab_abi::addr::Gpa;
use apflab_abi::hypercall as hc;
use apflab_abi::memory_map::RAM_BASE;
use apflab_hypervisor::arch::Reg;
use apflab_hypervisor::{
    Action, Conduit, EngineCall, HookFailure, HypervisorError, SyncException, Vcpu, VmExit,
};

use crate::config::BackendKind;
use crate::emu::absent::AbsentPages;
use crate::emu::residency::EmuResidency;
use crate::emu::run::EmuRun;
use crate::emu::snapshot::VcpuSnapshot;
use crate::emu::virtual_time_vcpu::VirtualTimeVcpu;
use crate::kvm::threads::tests::drive_one;
use crate::loader::LoadedKernel;
use crate::machine::Machine;
use crate::outcome::{GuestCrash, GuestExit};
use crate::scripted_hook::{Asked, ScriptedHook, fault, memory};
use crate::scripted_vcpu::{ScriptedVcpu, VcpuLog};

/// Host time each scripted exit takes on the emu loop's clock.
const NS_PER_EXIT: u64 = 1_000;

/// A scripted vCPU with a virtual clock, for the emu loop: each exit
/// takes [`NS_PER_EXIT`], and it runs at EL0 with interrupts unmasked.
struct Clocked {
    vcpu: ScriptedVcpu,
    now_ns: u64,
    exits: u64,
}

impl Vcpu for Clocked {
    fn index(&self) -> u32 {
        self.vcpu.index()
    }
    fn run(&mut self) -> Result<VmExit, HypervisorError> {
        self.now_ns += NS_PER_EXIT;
        self.exits += 1;
        self.vcpu.run()
    }
    fn get_reg(&self, reg: Reg) -> Result<u64, HypervisorError> {
        self.vcpu.get_reg(reg)
    }
    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), HypervisorError> {
        self.vcpu.set_reg(reg, value)
    }
    fn inject_exception(&mut self, exc: SyncException) -> Result<(), HypervisorError> {
        self.vcpu.inject_exception(exc)
    }
    fn set_ready_line(&mut self, level: bool) -> Result<(), HypervisorError> {
        self.vcpu.set_ready_line(level)
    }
}

impl VirtualTimeVcpu for Clocked {
    fn now_ns(&self) -> u64 {
        self.now_ns
    }
    fn instructions(&self) -> u64 {
        self.exits
    }
    fn charge_ns(&mut self, ns: u64) {
        self.now_ns += ns;
    }
    fn instructions_until(&self, ns: u64) -> u64 {
        ns.saturating_sub(self.now_ns).max(1)
    }
    fn set_budget(&mut self, _instructions: u64) {}
    fn set_irq_waiting(&mut self, _waiting: bool) {}
    fn enter_irq(&mut self) -> Result<bool, HypervisorError> {
        Ok(false)
    }
    fn power_on(&mut self, _entry: u64, _context_id: u64) -> Result<(), HypervisorError> {
        Ok(())
    }
    fn flush_tlb(&mut self) -> Result<(), HypervisorError> {
        Ok(())
    }
    fn drop_caches(&mut self) -> Result<(), HypervisorError> {
        Ok(())
    }
    fn save_snapshot(&mut self) -> Result<VcpuSnapshot, HypervisorError> {
        Err(no_snapshot("save"))
    }
    fn restore_snapshot(&mut self, _saved: &VcpuSnapshot) -> Result<(), HypervisorError> {
        Err(no_snapshot("restore"))
    }
    fn shootdowns_made(&self) -> u64 {
        0
    }
    fn set_shootdowns_made(&self, _n: u64) {}
}

/// The exits each backend counts for bringing a vCPU to where the hook
/// can deliver what it holds, which differ by design: the kvm loop counts
/// each round trip of a vCPU thread to the control thread
/// (`resume_check`), the emu loop looks between slices for free and
/// charges a kick when something becomes pending for a running vCPU
/// (`ready_kick`).
const HOW_HELD_IS_DELIVERED: [&str; 2] = ["resume_check", "ready_kick"];

/// A scripted vCPU has no engine state to save or restore.
fn no_snapshot(op: &str) -> HypervisorError {
    HypervisorError::Engine {
        backend: "emu",
        op: format!("{op} a scripted vCPU"),
        source: "a scripted vCPU has no snapshot".into(),
    }
}

/// What a loop did with a script.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    end: GuestExit,
    asked: Vec<Asked>,
    injected: Vec<SyncException>,
    /// x0..x3 as the loop left them.
    regs: [u64; 4],
    ready_line: Option<bool>,
    exits: BTreeMap<String, u64>,
}

impl Observed {
    fn of(end: GuestExit, hook: ScriptedHook, log: &VcpuLog, machine: &Machine) -> Self {
        Observed {
            end,
            asked: hook.asked,
            injected: log.injected.clone(),
            regs: std::array::from_fn(|n| log.regs.get(&(n as u8)).copied().unwrap_or(0)),
            ready_line: log.ready_line,
            exits: machine
                .exits()
                .into_iter()
                .filter(|(k, _)| !HOW_HELD_IS_DELIVERED.contains(&k.as_str()))
                .collect(),
        }
    }
}

/// A hook that answers with `actions` and engine calls with `regs`.
fn hook(actions: &[Action], regs: [u64; 4], resume_pending: bool) -> ScriptedHook {
    ScriptedHook {
        actions: actions.iter().cloned().collect(),
        regs,
        resume_pending,
        ..Default::default()
    }
}

/// `script` through the kvm loop and through the emu loop, each with a
/// fresh `hook()`.
fn through_both(script: &[VmExit], hook: impl Fn() -> ScriptedHook) -> (Observed, Observed) {
    let kvm = {
        let vcpu = ScriptedVcpu::new(0, script.iter().cloned());
        let log = vcpu.log();
        let mut h = hook();
        let machine = Machine::new(1, memory(), false);
        let end = drive_one(vcpu, &mut h, &machine);
        let log = log.lock().unwrap().clone();
        Observed::of(end, h, &log, &machine)
    };
    let emu = {
        let vcpu = ScriptedVcpu::new(0, script.iter().cloned());
        let log = vcpu.log();
        // A scripted vCPU reads 0 from PSTATE: a user task (EL0t) with
        // interrupts unmasked, on both loops.
        let vcpu = Clocked {
            vcpu,
            now_ns: 0,
            exits: 0,
        };
        let mem = memory();
        let machine = Arc::new(Machine::new(1, mem.clone(), false));
        let residency = EmuResidency::new(mem.clone(), Rc::new(AbsentPages::new(1 << 20)));
        // Where the boot starts: x0 = 0, as on kvm, where the scripted
        // vCPU is set up by no one.
        let kernel = LoadedKernel {
            entry: RAM_BASE,
            start: RAM_BASE,
            end: RAM_BASE + 0x1000,
            dtb_addr: 0,
            read_only: Vec::new(),
            free_from: RAM_BASE + 0x1000,
            handed_over: String::new(),
        };
        let mut h = hook();
        let run = EmuRun::new(
            crate::scripted_hook::config(BackendKind::Emu),
            kernel,
            Arc::clone(&machine),
            vec![vcpu],
            residency,
            &mut h,
            mem,
            Vec::new(),
        );
        let end = run.run().unwrap().exit;
        let log = log.lock().unwrap().clone();
        Observed::of(end, h, &log, &machine)
    };
    (kvm, emu)
}

fn engine_call(function: u32, arg: u64) -> (EngineCall, VmExit) {
    let call = EngineCall {
        function,
        args: [arg, 0, 0, 0, 0],
    };
    let exit = VmExit::Hypercall {
        function,
        args: call.args,
        conduit: Conduit::Hvc,
    };
    (call, exit)
}

fn ready(token: u64) -> SyncException {
    SyncException {
        esr: 0x7c00_0001,
        far: token,
        return_pc: 0x4008_0000,
    }
}

#[test]
fn a_fault_its_wait_an_exception_and_engine_calls_mean_the_same_on_both_loops() {
    let page = RAM_BASE + 0x8000;
    let (enable, enable_exit) = engine_call(hc::FN_APF_ENABLE, RAM_BASE + 0x1000);
    let (ack, ack_exit) = engine_call(hc::FN_APF_ACK, 7);
    let script = [
        enable_exit,
        VmExit::NotResident(fault(page)),
        VmExit::NotResident(fault(page + 0x1000)),
        ack_exit,
    ];
    let actions = [
        // The enable returns; the first fault waits (until a time already
        // past) and then enters "not present"; the second raises the
        // ready line; the acknowledgement returns and lowers it.
        Action::Retry,
        Action::StallUntil(0),
        Action::InjectException(ready(1)),
        Action::SetReadyLine(true),
        Action::SetReadyLine(false),
    ];
    let (kvm, emu) = through_both(&script, || hook(&actions, [0, 42, 7, 0], false));
    assert_eq!(kvm, emu);
    // And what that is.
    assert_eq!(emu.end, GuestExit::PowerOff);
    assert_eq!(
        emu.asked,
        [
            Asked::Hypercall {
                vcpu: 0,
                call: enable
            },
            Asked::NotResident {
                vcpu: 0,
                gpa: Gpa(page)
            },
            Asked::WaitEnd { vcpu: 0 },
            Asked::NotResident {
                vcpu: 0,
                gpa: Gpa(page + 0x1000)
            },
            Asked::Hypercall { vcpu: 0, call: ack },
        ]
    );
    assert_eq!(emu.injected, [ready(1)]);
    assert_eq!((emu.regs, emu.ready_line), ([0, 42, 7, 0], Some(false)));
}

#[test]
fn an_exception_held_for_the_resume_is_offered_where_the_guest_is_on_both_loops() {
    let (features, exit) = engine_call(hc::FN_FEATURES, 0);
    let actions = [Action::Retry, Action::InjectException(ready(2))];
    let (kvm, emu) = through_both(&[exit], || hook(&actions, [1, 0, 0, 0], true));
    assert_eq!(kvm, emu);
    let Asked::Resume { vcpu: 0, state } = emu.asked[0] else {
        panic!("{:?}", emu.asked);
    };
    assert_eq!(
        emu.asked[1],
        Asked::Hypercall {
            vcpu: 0,
            call: features
        }
    );
    assert_eq!(state.el, 0, "{state:?}");
    assert_eq!(emu.injected, [ready(2)]);
}

#[test]
fn calls_the_machine_answers_and_a_hook_failure_mean_the_same_on_both_loops() {
    let page = RAM_BASE + 0x3000;
    let script = [
        VmExit::Hypercall {
            function: hc::PSCI_VERSION,
            args: [0; 5],
            conduit: Conduit::Hvc,
        },
        VmExit::NotResident(fault(page)),
    ];
    let failure = || HookFailure::unavailable(Gpa(page), std::io::Error::other("gone"));
    let (kvm, emu) = through_both(&script, || hook(&[Action::Fail(failure())], [0; 4], false));
    assert_eq!(kvm, emu);
    assert_eq!(
        emu.end,
        GuestExit::Crash(GuestCrash::Hook {
            vcpu: 0,
            failure: failure()
        })
    );
    assert_eq!(emu.regs[0], hc::PSCI_VERSION_1_0);
    assert_eq!(emu.asked.len(), 1, "{:?}", emu.asked);
}
