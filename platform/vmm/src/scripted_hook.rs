//! A fault hook for unit tests of the run loops: it answers with the
//! actions of its script, in order, and records what the loop asked it;
//! with the helpers the loops' tests share (guest memory, a config, a
//! fault).

use std::collections::VecDeque;

use apflab_abi::addr::Gpa;
use apflab_abi::memory_map::RAM_BASE;
use apflab_hypervisor::{
    Action, EngineCall, FaultHook, HookInitError, HypercallAnswer, NotResidentFault, Residency,
    ResumeState,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::config::{BackendKind, CostModel, VmConfig};

/// What a loop asked the hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Asked {
    NotResident { vcpu: u32, gpa: Gpa },
    WaitEnd { vcpu: u32 },
    Hypercall { vcpu: u32, call: EngineCall },
    Resume { vcpu: u32, state: ResumeState },
}

/// Answers with its actions in order (then [`Action::Retry`]), and an
/// engine call with `regs`. With `resume_pending` set, it says it has
/// something for vCPU 0 at its next resume until [`FaultHook::on_resume`]
/// takes the next action.
#[derive(Default)]
pub(crate) struct ScriptedHook {
    pub asked: Vec<Asked>,
    pub actions: VecDeque<Action>,
    pub regs: [u64; 4],
    pub resume_pending: bool,
}

impl ScriptedHook {
    fn next(&mut self) -> Action {
        self.actions.pop_front().unwrap_or(Action::Retry)
    }
}

impl FaultHook for ScriptedHook {
    fn init(&mut self, _pages: &mut dyn Residency) -> Result<(), HookInitError> {
        Ok(())
    }
    fn on_not_resident(
        &mut self,
        vcpu: u32,
        fault: &NotResidentFault,
        _now_ns: u64,
        _pages: &mut dyn Residency,
    ) -> Action {
        self.asked.push(Asked::NotResident {
            vcpu,
            gpa: fault.gpa,
        });
        self.next()
    }
    fn on_wait_end(&mut self, vcpu: u32, _now_ns: u64, _pages: &mut dyn Residency) -> Action {
        self.asked.push(Asked::WaitEnd { vcpu });
        self.next()
    }
    fn on_hypercall(
        &mut self,
        vcpu: u32,
        call: EngineCall,
        _now_ns: u64,
        _pages: &mut dyn Residency,
    ) -> HypercallAnswer {
        self.asked.push(Asked::Hypercall { vcpu, call });
        HypercallAnswer {
            regs: self.regs,
            action: self.next(),
        }
    }
    fn resume_pending_since(&self, vcpu: u32) -> Option<u64> {
        (self.resume_pending && vcpu == 0).then_some(0)
    }
    fn on_resume(
        &mut self,
        vcpu: u32,
        state: ResumeState,
        _now_ns: u64,
        _pages: &mut dyn Residency,
    ) -> Action {
        self.asked.push(Asked::Resume { vcpu, state });
        self.resume_pending = false;
        self.next()
    }
}

/// 1 MiB of guest RAM at [`RAM_BASE`].
pub(crate) fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), 1 << 20)]).unwrap()
}

/// A one-vCPU config on `backend`, whose limits a test never reaches.
pub(crate) fn config(backend: BackendKind) -> VmConfig {
    VmConfig {
        backend,
        vcpus: 1,
        memory_mib: 1,
        kernel: Default::default(),
        initrd: None,
        bootargs: String::new(),
        cost: CostModel::default(),
        faults_in_kernel: false,
        slice_instructions: 20_000,
        max_virtual_ns: 60_000_000_000,
        watchdog_ns: 60_000_000_000,
        // A loop that never ends fails the test instead of hanging it.
        wall_timeout: Some(std::time::Duration::from_secs(60)),
        echo_console: false,
    }
}

/// A user task's write to `gpa`, which is not resident.
pub(crate) fn fault(gpa: u64) -> NotResidentFault {
    NotResidentFault {
        gpa: Gpa(gpa),
        write: true,
        fetch: false,
        pc: 0x4008_0000,
        va: 0xffff_0000_0000_1000,
        el: 0,
        irqs_masked: false,
    }
}
