//! [`Vm`]: builds the machine from a [`VmConfig`] and runs it to the end.
//!
//! The emu vCPU loop lives here: all vCPUs on this thread, each with its own
//! virtual clock. The scheduler always runs the vCPU whose clock is lowest
//! (ties: lowest index) for one slice, which keeps the clocks within a
//! slice of each other, makes interactions between vCPUs causal in virtual
//! time, and makes the whole run deterministic. A halted (WFI) vCPU is
//! ready at its timer deadline or when another vCPU sends it an interrupt;
//! a stalled vCPU (not-resident page) is ready when its fetch completes.
//! When every vCPU waits, virtual time jumps to the earliest of those.

// Without the emu backend most of this file (the emu vCPU loop) is compiled
// out, and with it the uses of its imports.
#![cfg_attr(not(feature = "emu"), allow(unused_imports))]

use std::sync::Arc;
use std::time::Instant;

use apflab_abi::apf::esr;
use apflab_abi::memory_map::{DTB_MAX_SIZE, MAX_VCPUS, RAM_BASE};
use tracing::{debug, info};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::{Reg, ec, pstate};
use crate::config::{BackendKind, VmConfig};
#[cfg(feature = "emu")]
use crate::emu::{EmuResidency, EmuVcpu, EmuVm};
use crate::fdt::{self, FdtError};
use crate::hypervisor::{
    Hypervisor, HypervisorError, NotResidentFault, SyncException, Vcpu, VmExit,
};
use crate::loader::{self, LoadError, LoadedKernel};
use crate::machine::{Effect, Machine};
use crate::outcome::{GuestExit, RunOutcome, VmMetrics};
use crate::pager_hook::{FaultDecision, NotResidentHandler, PageServer};

/// Smallest guest RAM accepted (room for the device tree and a kernel).
const MIN_MEMORY_MIB: u64 = 8;
/// While an interrupt waits for the guest to unmask IRQs, slices are cut to
/// this many instructions so it is taken soon after the unmask.
#[cfg(feature = "emu")]
const IRQ_POLL_INSTRUCTIONS: u64 = 1_000;

/// Why a VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// vCPU count out of range.
    #[error("vcpus = {0}: must be between 1 and {MAX_VCPUS}")]
    Vcpus(u32),
    /// Memory too small.
    #[error("memory = {0} MiB: must be at least {MIN_MEMORY_MIB} MiB")]
    MemoryTooSmall(u64),
    /// Memory larger than the host has.
    #[error("memory = {requested} MiB is more than this host's {host} MiB of RAM")]
    MemoryTooLarge {
        /// Requested MiB.
        requested: u64,
        /// Host MiB.
        host: u64,
    },
    /// A cost model or slice value that makes no sense.
    #[error("{key} = {value}: {expected}")]
    BadValue {
        /// Config key.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is expected.
        expected: &'static str,
    },
    /// Guest RAM could not be allocated.
    #[error("cannot allocate {mib} MiB of guest RAM: {detail}")]
    Allocate {
        /// Size.
        mib: u64,
        /// Why.
        detail: String,
    },
    /// The backend is not available on this host/build.
    #[error("the {backend} backend is not available: {why}")]
    BackendUnavailable {
        /// Which one.
        backend: &'static str,
        /// Why, and what to use instead.
        why: &'static str,
    },
    /// `--backend kvm` on a host or build that cannot run it; the text is
    /// one sentence naming the alternative (the CLI exits with code 2).
    #[error("{0}")]
    KvmUnavailable(String),
    /// The kernel could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The device tree could not be built.
    #[error(transparent)]
    Fdt(#[from] FdtError),
    /// A backend operation failed.
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    /// The not-resident handler failed at start-up.
    #[error("pager set-up failed: {0}")]
    Pager(String),
}

impl VmConfig {
    /// Checks what only the VMM knows: vCPU and memory limits (including the
    /// host's RAM), the cost model and slice size. The kernel file is
    /// checked when it is loaded.
    pub fn validate(&self) -> Result<(), VmError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(VmError::Vcpus(self.vcpus));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(VmError::MemoryTooSmall(self.memory_mib));
        }
        if let Some(host) = host_memory_mib()
            && self.memory_mib > host
        {
            return Err(VmError::MemoryTooLarge {
                requested: self.memory_mib,
                host,
            });
        }
        let nspi = self.cost.ns_per_instruction;
        if !(nspi.is_finite() && nspi > 0.0 && nspi < 1e6) {
            return Err(VmError::BadValue {
                key: "cost.ns_per_instruction",
                value: nspi.to_string(),
                expected: "a positive number of nanoseconds below 1e6",
            });
        }
        if self.slice_instructions == 0 {
            return Err(VmError::BadValue {
                key: "slice_instructions",
                value: "0".into(),
                expected: "at least 1",
            });
        }
        Ok(())
    }
}

/// Host RAM in MiB, from /proc/meminfo (None if it cannot be read: the
/// allocation itself then reports the failure).
pub fn host_memory_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// A VM ready to run.
pub struct Vm {
    config: VmConfig,
    memory: GuestMemoryMmap,
    kernel: LoadedKernel,
    handler: Option<Box<dyn NotResidentHandler>>,
    page_server: Option<Arc<dyn PageServer>>,
    /// The kvm VM (its RAM is `memory`), when the backend is kvm.
    #[cfg(all(target_arch = "aarch64", target_os = "linux", feature = "kvm"))]
    kvm: Option<crate::kvm::KvmHypervisor>,
}

/// Scheduling state of one emu vCPU.
#[cfg(feature = "emu")]
#[derive(Clone, Copy, Debug)]
enum RunState {
    Off,
    Running,
    Halted,
    Stalled { until: u64, fault: NotResidentFault },
}

impl Vm {
    /// Checks `config`, allocates guest RAM, loads the kernel and writes the
    /// device tree.
    pub fn new(config: VmConfig) -> Result<Vm, VmError> {
        config.validate()?;
        if config.backend == BackendKind::Kvm
            && let Some(why) = crate::kvm::unavailable_reason()
        {
            return Err(VmError::KvmUnavailable(why));
        }
        let ram_size = config.memory_mib << 20;
        #[cfg(all(target_arch = "aarch64", target_os = "linux", feature = "kvm"))]
        let kvm = match config.backend {
            BackendKind::Kvm => Some(
                crate::kvm::KvmHypervisor::new(config.vcpus, RAM_BASE, ram_size)
                    .map_err(|e| VmError::Hypervisor(e.into()))?,
            ),
            BackendKind::Emu => None,
        };
        #[cfg(all(target_arch = "aarch64", target_os = "linux", feature = "kvm"))]
        let memory = match &kvm {
            Some(hv) => hv.memory().clone(),
            None => new_ram(&config, ram_size)?,
        };
        #[cfg(not(all(target_arch = "aarch64", target_os = "linux", feature = "kvm")))]
        let memory = new_ram(&config, ram_size)?;
        let kernel = loader::load_kernel(&config.kernel, &memory, ram_size)?;
        let dtb = fdt::build(config.vcpus, ram_size, &config.bootargs)?;
        if kernel.dtb_addr + DTB_MAX_SIZE > RAM_BASE + ram_size {
            return Err(VmError::MemoryTooSmall(config.memory_mib));
        }
        memory
            .write_slice(&dtb, GuestAddress(kernel.dtb_addr))
            .map_err(|_| HypervisorError::OutsideRam(kernel.dtb_addr))?;
        info!(
            entry = format_args!("{:#x}", kernel.entry),
            dtb = format_args!("{:#x}", kernel.dtb_addr),
            "kernel loaded"
        );
        Ok(Vm {
            config,
            memory,
            kernel,
            handler: None,
            page_server: None,
            #[cfg(all(target_arch = "aarch64", target_os = "linux", feature = "kvm"))]
            kvm,
        })
    }

    /// Plugs in the handler for not-resident faults (the pager).
    pub fn set_not_resident_handler(&mut self, handler: Box<dyn NotResidentHandler>) {
        self.handler = Some(handler);
    }

    /// Plugs in a server of non-resident pages that works inside the host
    /// kernel's fault path (kvm only; the run fails on emu).
    pub fn set_page_server(&mut self, server: Arc<dyn PageServer>) {
        self.page_server = Some(server);
    }

    /// Guest RAM (e.g. for a pager to prepare page contents).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Where the kernel was loaded.
    pub fn kernel(&self) -> LoadedKernel {
        self.kernel
    }

    /// Runs the guest until it powers off, resets, panics, crashes or runs
    /// out of virtual time.
    pub fn run(self) -> Result<RunOutcome, VmError> {
        #[cfg(all(target_arch = "aarch64", target_os = "linux", feature = "kvm"))]
        let mut self_ = self;
        #[cfg(all(target_arch = "aarch64", target_os = "linux", feature = "kvm"))]
        if let Some(hv) = self_.kvm.take() {
            return crate::kvm::run::run(
                &self_.config,
                hv,
                self_.kernel,
                self_.handler,
                self_.page_server,
            );
        }
        #[cfg(not(all(target_arch = "aarch64", target_os = "linux", feature = "kvm")))]
        let self_ = self;
        if self_.page_server.is_some() {
            return Err(VmError::BackendUnavailable {
                backend: "emu",
                why: "pages served in the host kernel's fault path need the kvm backend; \
                      use fault_path = \"vmm\" on emu",
            });
        }
        self_.run_emu()
    }

    #[cfg(feature = "emu")]
    fn run_emu(self) -> Result<RunOutcome, VmError> {
        EmuRun::new(self)?.run()
    }

    #[cfg(not(feature = "emu"))]
    fn run_emu(self) -> Result<RunOutcome, VmError> {
        Err(VmError::BackendUnavailable {
            backend: "emu",
            why: "this apflab was built without the `emu` feature; use --backend kvm",
        })
    }
}

/// Anonymous guest RAM for the emu backend.
fn new_ram(config: &VmConfig, ram_size: u64) -> Result<GuestMemoryMmap, VmError> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), ram_size as usize)]).map_err(|e| {
        VmError::Allocate {
            mib: config.memory_mib,
            detail: e.to_string(),
        }
    })
}

/// One run of the emu backend.
#[cfg(feature = "emu")]
struct EmuRun {
    config: VmConfig,
    kernel: LoadedKernel,
    handler: Option<Box<dyn NotResidentHandler>>,
    machine: Arc<Machine>,
    vcpus: Vec<EmuVcpu>,
    states: Vec<RunState>,
    residency: EmuResidency,
    halted_ns: Vec<u64>,
    stalled_ns: Vec<u64>,
    injected: u64,
}

#[cfg(feature = "emu")]
impl EmuRun {
    fn new(vm: Vm) -> Result<Self, VmError> {
        let n = vm.config.vcpus;
        let machine = Arc::new(Machine::new(n, vm.memory.clone(), vm.config.echo_console));
        let mut hv = EmuVm::new(vm.memory.clone(), n, vm.config.cost);
        let vcpus = (0..n)
            .map(|i| hv.create_vcpu(i, machine.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut states = vec![RunState::Off; n as usize];
        states[0] = RunState::Running;
        Ok(EmuRun {
            residency: hv.residency(),
            kernel: vm.kernel,
            handler: vm.handler,
            machine,
            vcpus,
            states,
            halted_ns: vec![0; n as usize],
            stalled_ns: vec![0; n as usize],
            injected: 0,
            config: vm.config,
        })
    }

    /// When vCPU `i` can next run, if ever.
    fn ready_time(&self, i: usize) -> Option<u64> {
        let v = &self.vcpus[i];
        let now = v.now_ns();
        match self.states[i] {
            RunState::Off => None,
            RunState::Running => Some(now),
            RunState::Stalled { until, .. } => Some(until.max(now)),
            RunState::Halted => {
                if self.machine.signalled_irq(i as u32).is_some() {
                    Some(self.machine.wake_hint(i as u32).map_or(now, |h| h.max(now)))
                } else {
                    self.machine.next_deadline(i as u32, now)
                }
            }
        }
    }

    fn run(mut self) -> Result<RunOutcome, VmError> {
        let started = Instant::now();
        if let Some(h) = self.handler.as_mut() {
            let mut res = self.residency.with(&mut self.vcpus);
            h.init(&mut res).map_err(VmError::Pager)?;
        }
        let boot = &mut self.vcpus[0];
        boot.set_reg(Reg::X(0), self.kernel.dtb_addr)?;
        boot.set_reg(Reg::Pc, self.kernel.entry)?;
        let exit = self.schedule()?;
        let mut metrics = VmMetrics {
            exits: self.machine.exits(),
            instructions: self.vcpus.iter().map(EmuVcpu::instructions).sum(),
            virtual_time_ns: self.vcpus.iter().map(EmuVcpu::now_ns).max().unwrap_or(0),
            halted_ns: self.halted_ns.clone(),
            interrupts: self.machine.interrupts(),
            ..VmMetrics::default()
        };
        metrics.stalled_ns = self.stalled_ns.clone();
        if self.injected > 0 {
            *metrics.exits.entry("irq".into()).or_default() += self.injected;
        }
        // The slice ends are scheduling artefacts, not exits.
        metrics.exits.remove("slice_end");
        info!(?exit, virtual_ns = metrics.virtual_time_ns, "run finished");
        Ok(RunOutcome {
            exit,
            console: self.machine.console(),
            report: self.machine.report(),
            task_done_ns: self.machine.task_done_ns(),
            metrics,
            wall_time: started.elapsed(),
        })
    }

    fn schedule(&mut self) -> Result<GuestExit, VmError> {
        let cost = self.config.cost;
        loop {
            let next = (0..self.vcpus.len())
                .filter_map(|i| self.ready_time(i).map(|t| (t, i)))
                .min();
            let Some((t, i)) = next else {
                return Ok(GuestExit::Crash(
                    "every vCPU is off or halted with no timer armed and no interrupt pending"
                        .into(),
                ));
            };
            if t > self.config.max_virtual_ns {
                return Ok(GuestExit::Timeout);
            }
            let idx = i as u32;
            match self.states[i] {
                RunState::Halted => {
                    self.halted_ns[i] += self.vcpus[i].advance_to(t);
                    // Waking from WFI is an exit on real hardware too.
                    self.vcpus[i].charge_ns(cost.exit_ns);
                    self.states[i] = RunState::Running;
                }
                RunState::Stalled { fault, .. } => {
                    self.stalled_ns[i] += self.vcpus[i].advance_to(t);
                    self.states[i] = RunState::Running;
                    let now = self.vcpus[i].now_ns();
                    if let Some(h) = self.handler.as_mut() {
                        let mut res = self.residency.with(&mut self.vcpus);
                        if let Err(msg) = h.on_stall_end(idx, &fault, now, &mut res) {
                            return Ok(GuestExit::Crash(format!(
                                "vCPU {i}: page {:#x} could not be made resident: {msg}",
                                fault.ipa
                            )));
                        }
                    }
                }
                _ => {}
            }
            let v = &mut self.vcpus[i];
            let now = v.now_ns();
            self.machine.take_wake_hint(idx);
            self.machine.update_lines(idx, now);
            let mut budget = self.config.slice_instructions;
            if self.machine.signalled_irq(idx).is_some() {
                if v.inject_irq()? {
                    v.charge_ns(cost.inject_ns);
                    self.injected += 1;
                } else {
                    budget = budget.min(IRQ_POLL_INSTRUCTIONS);
                }
            }
            if let Some(d) = self.machine.next_deadline(idx, now) {
                budget = budget.min(v.instructions_until(d));
            }
            v.set_budget(budget);
            let exit = v.run()?;
            let now = v.now_ns();
            match exit {
                VmExit::SliceEnd => {}
                VmExit::Wfi => {
                    self.machine.count_exit("wfi");
                    self.machine.update_lines(idx, now);
                    if self.machine.signalled_irq(idx).is_none() {
                        self.states[i] = RunState::Halted;
                    }
                }
                VmExit::Svc { imm } => {
                    self.machine.count_exit("svc");
                    let pc = v.get_reg(Reg::Pc)?;
                    v.inject_exception(SyncException {
                        esr: esr(ec::SVC64, u64::from(imm)),
                        far: 0,
                        return_pc: pc,
                    })?;
                }
                VmExit::Hypercall { function, args, .. } => {
                    v.charge_ns(cost.exit_ns + cost.hypercall_ns);
                    let r = self.machine.hypercall(idx, function, args, now);
                    for (n, value) in r.iter().enumerate() {
                        v.set_reg(Reg::X(n as u8), *value)?;
                    }
                }
                VmExit::NotResident(fault) => {
                    self.machine.count_exit("not_resident");
                    // The exit to the VMM comes first; the fetch starts after it.
                    v.charge_ns(cost.exit_ns);
                    let now = v.now_ns();
                    let Some(h) = self.handler.as_mut() else {
                        return Ok(GuestExit::Crash(format!(
                            "vCPU {i}: access to not-resident page {:#x} at pc {:#x} with no pager",
                            fault.ipa, fault.pc
                        )));
                    };
                    let mut res = self.residency.with(&mut self.vcpus);
                    match h.on_fault(idx, &fault, now, &mut res) {
                        FaultDecision::Retry => {}
                        FaultDecision::StallUntil(until) => {
                            self.states[i] = RunState::Stalled { until, fault };
                        }
                        FaultDecision::Fail(msg) => {
                            return Ok(GuestExit::Crash(format!(
                                "vCPU {i}: page {:#x} unavailable: {msg}",
                                fault.ipa
                            )));
                        }
                    }
                }
                VmExit::Crash { pc, addr, reason } => {
                    let at = addr
                        .map(|a| format!(", address {a:#x}"))
                        .unwrap_or_default();
                    return Ok(GuestExit::Crash(format!(
                        "vCPU {i}: {reason} at pc {pc:#x}{at}"
                    )));
                }
                VmExit::SystemEvent { reset } => {
                    return Ok(if reset {
                        GuestExit::Reset
                    } else {
                        GuestExit::PowerOff
                    });
                }
                // Not produced by this backend (MMIO and system registers
                // complete inline); counted if they ever are.
                e @ (VmExit::Mmio { .. } | VmExit::SysReg { .. }) => {
                    self.machine.count_exit(e.metric_name());
                }
            }
            for effect in self.machine.take_effects() {
                debug!(vcpu = i, ?effect, "hypercall effect");
                match effect {
                    Effect::CpuOn {
                        target,
                        entry,
                        context_id,
                    } => {
                        let t = target as usize;
                        let caller_now = self.vcpus[i].now_ns();
                        let tv = &mut self.vcpus[t];
                        tv.advance_to(caller_now);
                        tv.set_reg(Reg::Pstate, pstate::EL1H_MASKED)?;
                        tv.set_reg(Reg::X(0), context_id)?;
                        tv.set_reg(Reg::Pc, entry)?;
                        self.states[t] = RunState::Running;
                    }
                    Effect::CpuOff { vcpu } => self.states[vcpu as usize] = RunState::Off,
                    Effect::SystemOff => return Ok(GuestExit::PowerOff),
                    Effect::SystemReset => return Ok(GuestExit::Reset),
                    Effect::Panic(msg) => return Ok(GuestExit::Panic(msg)),
                }
            }
        }
    }
}
