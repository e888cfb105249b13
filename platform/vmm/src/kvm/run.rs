//! The kvm run: sets up the VM's vCPUs and hands them to the run loop's
//! threads ([`super::threads`]): one host thread per vCPU plus the control
//! thread, which owns the fault hook.

use std::sync::Arc;
use std::time::Instant;

use tracing::info;

use super::KvmError;
use super::backend::{KvmHypervisor, KvmVcpu, KvmVcpuKicker};
use super::threads::{self, Kick};
use crate::config::VmConfig;
use crate::error::VmError;
use crate::loader::LoadedKernel;
use crate::machine::Machine;
use crate::outcome::RunOutcome;
use crate::run_loop::{self, Totals};
use apflab_hypervisor::PageServer;
use apflab_hypervisor::arch::{Reg, pstate};
use apflab_hypervisor::{FaultHook, Hypervisor, Vcpu, VmOps};

impl Kick for KvmVcpuKicker {
    fn kick(&self) -> Result<(), KvmError> {
        KvmVcpuKicker::kick(self)
    }
}

/// Runs `hv` (RAM already holding `kernel` and its device tree) to the end.
pub(crate) fn run(
    config: &VmConfig,
    mut hv: KvmHypervisor,
    kernel: LoadedKernel,
    hook: &mut dyn FaultHook,
    server: Option<Arc<dyn PageServer>>,
) -> Result<RunOutcome, VmError> {
    let n = config.vcpus;
    let machine = Arc::new(Machine::new(n, hv.memory().clone(), config.echo_console));
    machine.set_workload_args(&kernel.handed_over);
    let ops: Arc<dyn VmOps> = machine.clone();
    let mut vcpus = (0..n)
        .map(|i| hv.create_vcpu(i, Arc::clone(&ops)))
        .collect::<Result<Vec<_>, _>>()?;
    let boot = &mut vcpus[0];
    boot.set_reg(Reg::Pstate, pstate::EL1H_MASKED)?;
    boot.set_reg(Reg::X(0), kernel.dtb_addr)?;
    boot.set_reg(Reg::Pc, kernel.entry)?;
    hook.kernel_loaded(&kernel.read_only);
    hook.init(&mut hv).map_err(VmError::HookInit)?;
    if let Some(s) = &server {
        let ram = hv
            .ram()
            .hand_over_residency()
            .map_err(|e| VmError::Hypervisor(e.into()))?;
        // SAFETY: both views belong to `hv`'s guest RAM, which lives until
        // this function returns; `threads::drive`, below, stops the server
        // before it returns, whatever happens.
        unsafe { s.start(ram) }.map_err(VmError::PageServer)?;
    }
    let kickers: Vec<KvmVcpuKicker> = vcpus.iter().map(KvmVcpu::kicker).collect();
    let started = Instant::now();
    for v in &mut vcpus {
        v.set_clock_origin(started);
    }
    info!(vcpus = n, conduit = ?hv.conduit(), "kvm: starting vCPU threads");
    let exit = threads::drive(
        config, &mut hv, hook, &machine, vcpus, &kickers, server, started,
    )?;

    let wall = started.elapsed();
    info!(
        ?exit,
        wall_ms = wall.as_millis() as u64,
        "kvm: run finished"
    );
    let totals = Totals {
        instructions: 0,
        time_ns: wall.as_nanos() as u64,
        halted_ns: vec![0; n as usize],
        halts: (Vec::new(), 0),
        irq_entries: 0,
    };
    Ok(run_loop::outcome(&machine, exit, totals, wall))
}
