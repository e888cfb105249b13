//! A vCPU for unit tests of the run loops: it returns the exits of its
//! script, in order, and records what the loop does to it (registers
//! written, exceptions entered, the ready line), where the test can read
//! them after the vCPU has been moved into a loop's thread.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use apflab_hypervisor::arch::Reg;
use apflab_hypervisor::{HypervisorError, SyncException, Vcpu, VmExit};

/// What a run loop did to a [`ScriptedVcpu`].
#[derive(Clone, Debug, Default)]
pub(crate) struct VcpuLog {
    /// x0..x30 as last written.
    pub regs: BTreeMap<u8, u64>,
    /// The exceptions entered, in order.
    pub injected: Vec<SyncException>,
    /// The ready line's last level.
    pub ready_line: Option<bool>,
}

/// Returns its script's exits; once the script is done, it powers the
/// machine off.
pub(crate) struct ScriptedVcpu {
    index: u32,
    exits: VecDeque<VmExit>,
    log: Arc<Mutex<VcpuLog>>,
}

impl ScriptedVcpu {
    /// vCPU `index`, which makes `exits`.
    pub fn new(index: u32, exits: impl IntoIterator<Item = VmExit>) -> Self {
        ScriptedVcpu {
            index,
            exits: exits.into_iter().collect(),
            log: Arc::default(),
        }
    }

    /// What the loops did to it so far (also once it has been moved).
    pub fn log(&self) -> Arc<Mutex<VcpuLog>> {
        Arc::clone(&self.log)
    }

    /// A copy of what the loops did to it so far.
    pub fn logged(&self) -> VcpuLog {
        self.record().clone()
    }

    fn record(&self) -> MutexGuard<'_, VcpuLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Vcpu for ScriptedVcpu {
    fn index(&self) -> u32 {
        self.index
    }
    fn run(&mut self) -> Result<VmExit, HypervisorError> {
        Ok(self
            .exits
            .pop_front()
            .unwrap_or(VmExit::SystemEvent { reset: false }))
    }
    fn get_reg(&self, reg: Reg) -> Result<u64, HypervisorError> {
        Ok(match reg {
            Reg::X(n) => self.record().regs.get(&n).copied().unwrap_or(0),
            _ => 0,
        })
    }
    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), HypervisorError> {
        if let Reg::X(n) = reg {
            self.record().regs.insert(n, value);
        }
        Ok(())
    }
    fn inject_exception(&mut self, exc: SyncException) -> Result<(), HypervisorError> {
        self.record().injected.push(exc);
        Ok(())
    }
    fn set_ready_line(&mut self, level: bool) -> Result<(), HypervisorError> {
        self.record().ready_line = Some(level);
        Ok(())
    }
}
