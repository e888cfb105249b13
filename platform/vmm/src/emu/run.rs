//! The emu run loop: all vCPUs on this thread, each with its own virtual
//! clock.
//!
//! The scheduler always runs the vCPU whose clock is lowest (ties: lowest
//! index) for one slice, which keeps the clocks within a slice of each
//! other, makes interactions between vCPUs causal in virtual time, and makes
//! the whole run deterministic. A halted (WFI) vCPU is ready at its timer
//! deadline or when another vCPU sends it an interrupt; a vCPU the fault
//! hook made wait is ready when that wait ends. When every vCPU waits,
//! virtual time jumps to the earliest of those.

use std::sync::Arc;
use std::time::Instant;

use apflab_abi::apf::esr;
use apflab_abi::boot_point::FN_BOOT_DONE;
use apflab_abi::memory_map::DTB_MAX_SIZE;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::residency::EmuResidency;
use super::snapshot::{InitRecorder, VcpuSnapshot};
use super::vcpu::EmuVcpu;
use super::virtual_time_vcpu::VirtualTimeVcpu;
use crate::config::VmConfig;
use crate::error::VmError;
use crate::loader::LoadedKernel;
use crate::machine::{Call, Effect, Machine, MachineState};
use crate::outcome::{GuestCrash, GuestExit, Halt, MAX_RECORDED_HALTS, RunOutcome};
use crate::run_loop::{self, Next, Totals};
use crate::snapshot::{self, Identity, Refusal, SnapshotError, SnapshotPlan, SnapshotRequest};
use crate::watchdog::{GuestPosition, HangDiagnosis, VcpuDiagnosis, Watchdog};
use apflab_hypervisor::arch::{Reg, ec, pstate};
use apflab_hypervisor::{Action, EngineCall, FaultHook, HypercallAnswer, ResumeState};
use apflab_hypervisor::{HypervisorError, SyncException, VmExit};

/// Scheduling state of one vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum RunState {
    /// Powered off (PSCI).
    Off,
    Running,
    /// In WFI.
    Halted,
    /// Kept off the CPU by the fault hook until `until`.
    Waiting {
        until: u64,
    },
}

/// What one emu run drives: [`EmuVcpu`]s, or in unit tests scripted ones.
pub(crate) struct EmuRun<'h, V: VirtualTimeVcpu = EmuVcpu> {
    config: VmConfig,
    kernel: LoadedKernel,
    hook: &'h mut dyn FaultHook,
    machine: Arc<Machine>,
    vcpus: Vec<V>,
    residency: EmuResidency,
    states: Vec<RunState>,
    halted_ns: Vec<u64>,
    halts: Vec<Halt>,
    halts_dropped: u64,
    irq_entries: u64,
    watchdog: Watchdog,
    /// The snapshot to save or resume from, with this boot's identity.
    snapshot: Option<(SnapshotRequest, Identity)>,
    /// Guest RAM and the device tree this run's config made (a resumed
    /// run writes its own tree over the snapshot's).
    memory: GuestMemoryMmap,
    dtb: Vec<u8>,
    /// The guest has announced the end of its boot (or the run resumed
    /// from a snapshot taken there).
    booted: bool,
    /// What the fault engine did during the boot besides answering engine
    /// calls, if anything (the first): a snapshot cannot hold its state.
    hook_busy: Option<&'static str>,
    /// The engine calls of the boot, with their answers.
    boot_calls: Vec<BootCall>,
}

/// A call to the fault engine during the boot, as a snapshot replays it to
/// the engine of the run that resumes.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct BootCall {
    vcpu: u32,
    function: u32,
    args: [u64; 5],
    now_ns: u64,
    /// The answer, as its `Debug` text: this build's (the snapshot's
    /// identity holds the build), and all a replay compares.
    answer: String,
}

/// Everything a snapshot holds besides guest RAM.
#[derive(Serialize, Deserialize)]
struct EmuSnapshot {
    machine: MachineState,
    vcpus: Vec<VcpuSnapshot>,
    states: Vec<RunState>,
    halted_ns: Vec<u64>,
    halts: Vec<Halt>,
    halts_dropped: u64,
    irq_entries: u64,
    watchdog: Watchdog,
    /// The pages the pager withholds (a bit per page).
    absent: Vec<u64>,
    /// Broadcast TLB invalidations made.
    shootdowns: u64,
    boot_calls: Vec<BootCall>,
}

impl<'h, V: VirtualTimeVcpu> EmuRun<'h, V> {
    /// A run of `vcpus` (vCPU 0 boots `kernel`, with the device tree
    /// `dtb`, in `memory`) on `machine`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: VmConfig,
        kernel: LoadedKernel,
        machine: Arc<Machine>,
        vcpus: Vec<V>,
        residency: EmuResidency,
        hook: &'h mut dyn FaultHook,
        memory: GuestMemoryMmap,
        dtb: Vec<u8>,
    ) -> Self {
        let n = vcpus.len();
        let mut states = vec![RunState::Off; n];
        states[0] = RunState::Running;
        EmuRun {
            watchdog: Watchdog::new(config.watchdog_ns),
            snapshot: None,
            memory,
            dtb,
            booted: false,
            hook_busy: None,
            boot_calls: Vec::new(),
            config,
            kernel,
            hook,
            machine,
            vcpus,
            residency,
            states,
            halted_ns: vec![0; n],
            halts: Vec::new(),
            halts_dropped: 0,
            irq_entries: 0,
        }
    }

    /// Keeps a halt for timelines, while there is room.
    fn record_halt(&mut self, vcpu: u32, start_ns: u64, end_ns: u64) {
        if self.halts.len() < MAX_RECORDED_HALTS {
            self.halts.push(Halt {
                vcpu,
                start_ns,
                end_ns,
            });
        } else {
            self.halts_dropped += 1;
        }
    }

    /// Saves a snapshot at the boot point, or starts from one, as
    /// `request` says.
    pub(crate) fn set_snapshot(&mut self, request: SnapshotRequest) -> Result<(), VmError> {
        let identity = snapshot::identity(&self.config, &request.boot_identity)?;
        self.snapshot = Some((request, identity));
        Ok(())
    }

    /// Runs the guest to its end.
    pub(crate) fn run(mut self) -> Result<RunOutcome, VmError> {
        let started = Instant::now();
        self.hook.kernel_loaded(&self.kernel.read_only);
        if let Some((
            SnapshotRequest {
                plan: SnapshotPlan::Resume(path),
                ..
            },
            identity,
        )) = self.snapshot.clone()
        {
            self.resume(&path, &identity)?;
        } else {
            self.hook
                .init(&mut self.residency.with(&mut self.vcpus))
                .map_err(VmError::HookInit)?;
            let boot = &mut self.vcpus[0];
            boot.set_reg(Reg::X(0), self.kernel.dtb_addr)?;
            boot.set_reg(Reg::Pc, self.kernel.entry)?;
        }
        let exit = self.schedule()?;
        if let Some((
            SnapshotRequest {
                plan: SnapshotPlan::Save(path),
                ..
            },
            _,
        )) = &self.snapshot
            && !self.booted
        {
            return Err(SnapshotError::NoBootPoint {
                path: path.display().to_string(),
            }
            .into());
        }
        let totals = Totals {
            instructions: self.vcpus.iter().map(V::instructions).sum(),
            time_ns: self.latest_ns(),
            halted_ns: self.halted_ns.clone(),
            halts: (std::mem::take(&mut self.halts), self.halts_dropped),
            irq_entries: self.irq_entries,
        };
        info!(?exit, virtual_ns = totals.time_ns, "run finished");
        Ok(run_loop::outcome(
            &self.machine,
            exit,
            totals,
            started.elapsed(),
        ))
    }

    /// When vCPU `i` can next run, if ever.
    fn ready_time(&self, i: usize) -> Option<u64> {
        let now = self.vcpus[i].now_ns();
        let irq_wake = || {
            self.machine
                .signalled_irq(i as u32)
                .map(|_| self.machine.wake_hint(i as u32).map_or(now, |h| h.max(now)))
        };
        match self.states[i] {
            RunState::Off => None,
            RunState::Running => Some(now),
            RunState::Waiting { until } => Some(until.max(now)),
            RunState::Halted => [
                irq_wake(),
                self.machine.next_deadline(i as u32, now),
                self.hook.resume_pending_since(i as u32).map(|t| t.max(now)),
            ]
            .into_iter()
            .flatten()
            .min(),
        }
    }

    /// Puts vCPU `i` in the state `next` asks for; the run's end if it is
    /// one.
    fn enter(&mut self, i: usize, next: Next) -> Option<GuestExit> {
        self.states[i] = match next {
            Next::Run => RunState::Running,
            Next::Stall(until) => RunState::Waiting { until },
            Next::End(exit) => return Some(exit),
        };
        None
    }

    /// Notes that the fault engine did `what`, which a snapshot at the
    /// boot point could not hold, if the boot is not over.
    fn note_hook(&mut self, what: &'static str) {
        if !self.booted && self.hook_busy.is_none() {
            self.hook_busy = Some(what);
        }
    }

    /// Applies what the hook says at its own deadline (time `t`).
    fn hook_deadline(&mut self, t: u64) -> Result<Option<GuestExit>, VmError> {
        self.note_hook("a deadline of its own came");
        let pending_before: Vec<bool> = (0..self.vcpus.len() as u32)
            .map(|v| self.hook.resume_pending_since(v).is_some())
            .collect();
        let actions = self
            .hook
            .on_time(t, &mut self.residency.with(&mut self.vcpus));
        // "Page ready" that the hook delivers where it sees the guest (an
        // exception, at the vCPU's next entry) reaches a running vCPU at
        // once only because the host kicks it out of the guest.
        for (i, was_pending) in pending_before.into_iter().enumerate() {
            if !was_pending
                && self.states[i] == RunState::Running
                && self.hook.resume_pending_since(i as u32).is_some()
            {
                self.vcpus[i].charge_ns(self.config.cost.kick_ns);
                self.machine.count_exit("ready_kick");
            }
        }
        for (v, action) in actions {
            let i = v as usize;
            let Some(vcpu) = self.vcpus.get_mut(i) else {
                return Ok(Some(GuestExit::Crash(GuestCrash::NoSuchVcpu(v))));
            };
            // "Page ready" for a vCPU that is running guest code: the host
            // must kick it out of the guest (an IPI) first. A halted or
            // stalled vCPU is not in the guest and needs no kick.
            let raises = match action {
                Action::SetReadyLine(level) => level,
                Action::InjectException(_) | Action::SignalSdei => true,
                _ => false,
            };
            if raises && self.states[i] == RunState::Running {
                vcpu.charge_ns(self.config.cost.kick_ns);
                self.machine.count_exit("ready_kick");
            }
            if let Action::SetReadyLine(level) = action {
                // An interrupt from outside the vCPU, sent at `t`: a halted
                // vCPU wakes through it (no earlier), a running one takes it
                // at its next slice; neither is moved in time here.
                vcpu.set_ready_line(level)?;
                if level {
                    self.machine.interrupt_sent(v, t);
                }
                continue;
            }
            vcpu.advance_to(t);
            let next = apply(vcpu, &self.machine, action, self.config.cost.inject_ns)?;
            if let Some(exit) = self.enter(i, next) {
                return Ok(Some(exit));
            }
        }
        Ok(None)
    }

    /// What every vCPU is doing and what the hook owes the guest, as the
    /// watchdog stops the run at `at_ns`.
    fn diagnose(&self, watchdog: &Watchdog, at_ns: u64) -> Result<HangDiagnosis, VmError> {
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for (i, v) in self.vcpus.iter().enumerate() {
            let state = match self.states[i] {
                RunState::Off => "off".to_owned(),
                RunState::Running => "running".to_owned(),
                RunState::Halted => "halted in WFI".to_owned(),
                RunState::Waiting { until } => {
                    format!("stalled by the fault engine until {until} ns")
                }
            };
            let at = if self.states[i] == RunState::Off {
                None
            } else {
                let ps = v.get_reg(Reg::Pstate)?;
                Some(GuestPosition {
                    pc: v.get_reg(Reg::Pc)?,
                    el: u8::from(ps & pstate::MODE_MASK != pstate::EL0T),
                    irqs_masked: ps & pstate::I != 0,
                })
            };
            vcpus.push(VcpuDiagnosis {
                vcpu: i as u32,
                state,
                at,
                pending_irq: self.machine.signalled_irq(i as u32),
            });
        }
        Ok(HangDiagnosis {
            quiet_ns: watchdog.quiet_ns(at_ns),
            at_ns,
            vcpus,
            pending: self.hook.pending(),
        })
    }

    /// The latest vCPU clock: the run's virtual time so far.
    fn latest_ns(&self) -> u64 {
        self.vcpus.iter().map(V::now_ns).max().unwrap_or(0)
    }

    /// The guest's signs of life so far (see [`crate::watchdog`]).
    fn activity(&self) -> u64 {
        self.machine.activity() + self.irq_entries
    }

    fn schedule(&mut self) -> Result<GuestExit, VmError> {
        let cost = self.config.cost;
        // Host time, looked at once a slice: a slice is at most
        // `MAX_SLICE_INSTRUCTIONS`, so the limit is overshot by one at most.
        let wall_deadline = self
            .config
            .wall_timeout
            .and_then(|t| Instant::now().checked_add(t));
        loop {
            if wall_deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(GuestExit::WallTimeout);
            }
            let next = (0..self.vcpus.len())
                .filter_map(|i| self.ready_time(i).map(|t| (t, i)))
                .min();
            let deadline = self.hook.next_deadline();
            if deadline.is_some() {
                self.note_hook("it had a page in flight");
            }
            // Signs of life since the last look happened by the latest
            // clock (the vCPU that just ran); nothing at all to happen next
            // is a hang as soon as it is seen.
            let now = self.latest_ns();
            let activity = self.activity();
            self.watchdog.observe(activity, now);
            let soonest = next.map(|(t, _)| t).into_iter().chain(deadline).min();
            let bite = self.watchdog.deadline_ns();
            if soonest.is_none_or(|t| t > bite && bite <= self.config.max_virtual_ns) {
                let at = bite.min(self.config.max_virtual_ns);
                return Ok(GuestExit::Hang(self.diagnose(&self.watchdog, at)?));
            }
            if let Some(d) = deadline
                && next.is_none_or(|(t, _)| d <= t)
            {
                if d > self.config.max_virtual_ns {
                    return Ok(GuestExit::Timeout);
                }
                if let Some(exit) = self.hook_deadline(d)? {
                    return Ok(exit);
                }
                continue;
            }
            let Some((t, i)) = next else {
                // Not reached: with nothing to run and no deadline the
                // watchdog has stopped the run above.
                return Ok(GuestExit::Hang(self.diagnose(&self.watchdog, bite)?));
            };
            if t > self.config.max_virtual_ns {
                return Ok(GuestExit::Timeout);
            }
            let idx = i as u32;
            match self.states[i] {
                RunState::Halted => {
                    let ns = self.vcpus[i].advance_to(t);
                    self.halted_ns[i] += ns;
                    if ns > 0 {
                        self.record_halt(idx, t - ns, t);
                    }
                    // Waking from WFI is an exit on real hardware too, which
                    // KVM handles in the kernel.
                    self.vcpus[i].charge_ns(cost.kernel_exit_ns);
                    self.states[i] = RunState::Running;
                }
                RunState::Waiting { .. } => {
                    self.note_hook("it made a vCPU wait");
                    self.vcpus[i].advance_to(t);
                    let now = self.vcpus[i].now_ns();
                    let action =
                        self.hook
                            .on_wait_end(idx, now, &mut self.residency.with(&mut self.vcpus));
                    let next = apply(&mut self.vcpus[i], &self.machine, action, cost.inject_ns)?;
                    if let Some(exit) = self.enter(i, next) {
                        return Ok(exit);
                    }
                    if self.states[i] != RunState::Running {
                        continue;
                    }
                }
                RunState::Running | RunState::Off => {}
            }
            if self.hook.resume_pending_since(idx).is_some() {
                self.note_hook("it had an exception to deliver");
                let v = &mut self.vcpus[i];
                let state = ResumeState {
                    el: u8::from(v.get_reg(Reg::Pstate)? & pstate::MODE_MASK != pstate::EL0T),
                    pc: v.get_reg(Reg::Pc)?,
                };
                let now = v.now_ns();
                let action =
                    self.hook
                        .on_resume(idx, state, now, &mut self.residency.with(&mut self.vcpus));
                let next = apply(&mut self.vcpus[i], &self.machine, action, cost.inject_ns)?;
                if let Some(exit) = self.enter(i, next) {
                    return Ok(exit);
                }
                if self.states[i] != RunState::Running {
                    continue;
                }
            }
            let v = &mut self.vcpus[i];
            let now = v.now_ns();
            let start = self.machine.slice_start(idx, now);
            let mut budget = self.config.slice_instructions;
            let mut irq_waiting = false;
            if start.signalled_irq.is_some() {
                if v.enter_irq()? {
                    v.charge_ns(cost.inject_ns);
                    self.irq_entries += 1;
                } else {
                    irq_waiting = true;
                }
            }
            v.set_irq_waiting(irq_waiting);
            for d in [start.timer_deadline, deadline].into_iter().flatten() {
                budget = budget.min(v.instructions_until(d));
            }
            v.set_budget(budget);
            let exit = v.run()?;
            let now = v.now_ns();
            if let Some(end) = run_loop::terminal_exit(&self.machine, idx, &exit) {
                return Ok(end);
            }
            let next = match exit {
                VmExit::SliceEnd => Next::Run,
                VmExit::Wfi => {
                    self.machine.count_exit("wfi");
                    self.machine.update_lines(idx, now);
                    if self.machine.signalled_irq(idx).is_none() {
                        self.states[i] = RunState::Halted;
                    }
                    Next::Run
                }
                VmExit::Svc { imm } => {
                    self.machine.count_exit("svc");
                    let pc = v.get_reg(Reg::Pc)?;
                    v.inject_exception(SyncException {
                        esr: esr(ec::SVC64, u64::from(imm)),
                        far: 0,
                        return_pc: pc,
                    })?;
                    Next::Run
                }
                VmExit::Hypercall { function, args, .. } => {
                    // The boot point is the VMM's mark, not the guest's
                    // work: it costs no virtual time (see `boot_point`).
                    if function != FN_BOOT_DONE {
                        v.charge_ns(cost.exit_ns + cost.hypercall_ns);
                    }
                    let call = self.machine.dispatch(idx, function, args, now);
                    let answer = self.answer(idx, call, now);
                    let next =
                        run_loop::return_from_hypercall(&mut self.vcpus[i], &self.machine, answer)?;
                    let v = &mut self.vcpus[i];
                    let entered = self.machine.deliver_sdei(v)?;
                    v.charge_ns(cost.inject_ns * u64::from(entered));
                    next
                }
                VmExit::NotResident(fault) => {
                    if !self.booted && self.hook_busy.is_none() {
                        self.hook_busy = Some("the guest touched a page the pager withholds");
                    }
                    self.machine.count_exit("not_resident");
                    // The exit comes first (to the VMM, or into the host
                    // kernel's fault path); the fetch starts after it.
                    v.charge_ns(if self.config.faults_in_kernel {
                        cost.kernel_exit_ns
                    } else {
                        cost.exit_ns
                    });
                    let now = v.now_ns();
                    let action = self.hook.on_not_resident(
                        idx,
                        &fault,
                        now,
                        &mut self.residency.with(&mut self.vcpus),
                    );
                    apply(&mut self.vcpus[i], &self.machine, action, cost.inject_ns)?
                }
                // Handled above.
                VmExit::Crash { .. } | VmExit::SystemEvent { .. } => Next::Run,
            };
            if let Some(exit) = self.enter_unless_halted(i, next) {
                return Ok(exit);
            }
            if let Some(call) = self.machine.take_doorbell_engine_call(idx) {
                let now = self.vcpus[i].now_ns();
                let answer = self.answer(idx, Call::Engine(call), now);
                let next =
                    run_loop::return_from_doorbell(&mut self.vcpus[i], &self.machine, answer)?;
                if let Some(exit) = self.enter_unless_halted(i, next) {
                    return Ok(exit);
                }
            }
            for effect in self.machine.take_effects() {
                debug!(vcpu = i, ?effect, "hypercall effect");
                if let Some(exit) = run_loop::terminal_effect(&effect) {
                    return Ok(exit);
                }
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
                        tv.power_on(entry, context_id)?;
                        self.states[t] = RunState::Running;
                    }
                    Effect::CpuOff { vcpu } => self.states[vcpu as usize] = RunState::Off,
                    // Idles as in WFI: the call returns once an interrupt
                    // is pending (or at once if one is).
                    Effect::CpuSuspend { vcpu } => {
                        let v = vcpu as usize;
                        let now = self.vcpus[v].now_ns();
                        self.machine.update_lines(vcpu, now);
                        if self.machine.signalled_irq(vcpu).is_none() {
                            self.states[v] = RunState::Halted;
                        }
                    }
                    Effect::SystemOff | Effect::SystemReset | Effect::Panic(_) => {}
                }
            }
            if self.machine.take_boot_done() && !self.booted {
                self.boot_point()?;
            }
        }
    }

    /// The answer to hypercall `call` of vCPU `vcpu` at `now`: the
    /// machine's, or the hook's.
    fn answer(&mut self, vcpu: u32, call: Call, now: u64) -> Option<HypercallAnswer> {
        let (hook, residency, vcpus) = (&mut *self.hook, &mut self.residency, &mut self.vcpus);
        let boot_calls = (!self.booted).then_some(&mut self.boot_calls);
        run_loop::answer(&self.machine, call, |c| {
            let answer = hook.on_hypercall(vcpu, c, now, &mut residency.with(vcpus));
            if let Some(calls) = boot_calls {
                calls.push(BootCall {
                    vcpu,
                    function: c.function,
                    args: c.args,
                    now_ns: now,
                    answer: format!("{answer:?}"),
                });
            }
            Some(answer)
        })
    }

    /// The guest announced the end of its boot: saves the snapshot asked
    /// for, if one was, then tells the fault engine.
    fn boot_point(&mut self) -> Result<(), VmError> {
        self.booted = true;
        // Every run goes on from empty engine caches, as a resumed one does.
        for v in &mut self.vcpus {
            v.drop_caches()?;
        }
        self.save_boot()?;
        self.hook_boot_point()
    }

    /// The fault engine's [`FaultHook::boot_point`], at the latest vCPU's
    /// time (the boot point's in a run that booted and in one resumed).
    fn hook_boot_point(&mut self) -> Result<(), VmError> {
        let now = self.latest_ns();
        self.hook
            .boot_point(now, &mut self.residency.with(&mut self.vcpus))
            .map_err(VmError::HookInit)
    }

    /// Saves the snapshot asked for at the boot point, if one was.
    fn save_boot(&mut self) -> Result<(), VmError> {
        let Some((
            SnapshotRequest {
                plan: SnapshotPlan::Save(path),
                ..
            },
            identity,
        )) = &self.snapshot
        else {
            return Ok(());
        };
        let refused = |why: Refusal| SnapshotError::Refused {
            path: path.display().to_string(),
            why,
        };
        if self.machine.take_boot_overrun() {
            return Err(refused(Refusal::BootOverrun).into());
        }
        if let Some(what) = self.hook_busy {
            return Err(refused(Refusal::EngineBusy(what)).into());
        }
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for v in &mut self.vcpus {
            vcpus.push(v.save_snapshot()?);
        }
        let state = EmuSnapshot {
            machine: self.machine.save_state(),
            vcpus,
            states: self.states.clone(),
            halted_ns: self.halted_ns.clone(),
            halts: self.halts.clone(),
            halts_dropped: self.halts_dropped,
            irq_entries: self.irq_entries,
            watchdog: self.watchdog,
            absent: self.residency.absent_words(),
            shootdowns: self.vcpus[0].shootdowns_made(),
            boot_calls: self.boot_calls.clone(),
        };
        let started = Instant::now();
        snapshot::write(path, identity, &state, &self.memory)?;
        info!(
            path = %path.display(),
            virtual_ns = self.latest_ns(),
            wall_ms = started.elapsed().as_millis() as u64,
            "snapshot saved at the boot point"
        );
        Ok(())
    }

    /// Writes this run's device tree (apflab's guest reads its workload's
    /// bootargs there after the boot point) over the snapshot's, which
    /// takes exactly the bytes of the larger of the two: the memory after
    /// a tree is the guest's (Linux reserves only the tree's own pages).
    /// A Linux guest's tree is the same for every run of one boot (its
    /// workload's words are handed over instead), so it stays untouched.
    fn replace_dtb(&mut self) -> Result<(), VmError> {
        let at = self.kernel.dtb_addr;
        let outside = || HypervisorError::OutsideRam(at);
        let mut header = [0u8; 8];
        self.memory
            .read_slice(&mut header, GuestAddress(at))
            .map_err(|_| outside())?;
        let old_len = u64::from(u32::from_be_bytes([
            header[4], header[5], header[6], header[7],
        ]))
        .min(DTB_MAX_SIZE) as usize;
        let mut old = vec![0u8; old_len];
        self.memory
            .read_slice(&mut old, GuestAddress(at))
            .map_err(|_| outside())?;
        if old == self.dtb {
            return Ok(());
        }
        self.memory
            .write_slice(&vec![0u8; old_len.max(self.dtb.len())], GuestAddress(at))
            .and_then(|()| self.memory.write_slice(&self.dtb, GuestAddress(at)))
            .map_err(|_| outside())?;
        Ok(())
    }

    /// Puts the whole run in the state of the snapshot at `path`, taken of
    /// a boot with `identity`, and sets the fault engine up as the boot
    /// left it.
    fn resume(&mut self, path: &std::path::Path, identity: &Identity) -> Result<(), VmError> {
        let shown = path.display().to_string();
        let refused = |why: Refusal| SnapshotError::Refused {
            path: shown.clone(),
            why,
        };
        let started = Instant::now();
        let saved: EmuSnapshot = snapshot::read(path, identity, &self.memory)?;
        self.replace_dtb()?;
        let n = self.vcpus.len();
        if [saved.vcpus.len(), saved.states.len(), saved.halted_ns.len()]
            .iter()
            .any(|&len| len != n)
        {
            return Err(refused(Refusal::VcpuCount(n)).into());
        }
        self.machine
            .restore_state(saved.machine)
            .map_err(|e| refused(e.into()))?;
        for (v, s) in self.vcpus.iter_mut().zip(&saved.vcpus) {
            v.restore_snapshot(s)?;
        }
        self.vcpus[0].set_shootdowns_made(saved.shootdowns);
        self.states = saved.states;
        self.halted_ns = saved.halted_ns;
        self.halts = saved.halts;
        self.halts_dropped = saved.halts_dropped;
        self.irq_entries = saved.irq_entries;
        self.watchdog = saved.watchdog.with_span(self.config.watchdog_ns);
        // The fault engine: set up as for a boot (its page writes are
        // already in the snapshot's RAM), then told of the boot's calls.
        let mut recorder = InitRecorder::new(self.config.memory_mib << 20).map_err(refused)?;
        self.hook.init(&mut recorder).map_err(VmError::HookInit)?;
        let absent = recorder.absent_words();
        if absent != saved.absent {
            let count = |w: &[u64]| w.iter().map(|w| w.count_ones()).sum::<u32>();
            return Err(refused(Refusal::WithheldPages {
                ours: count(&absent),
                theirs: count(&saved.absent),
            })
            .into());
        }
        if !self.residency.load_absent(&saved.absent) {
            return Err(refused(Refusal::BitmapSize).into());
        }
        for c in &saved.boot_calls {
            let call = EngineCall {
                function: c.function,
                args: c.args,
            };
            let answer = self.hook.on_hypercall(
                c.vcpu,
                call,
                c.now_ns,
                &mut self.residency.with(&mut self.vcpus),
            );
            let answer = format!("{answer:?}");
            if answer != c.answer {
                return Err(refused(Refusal::BootCallAnswer {
                    function: c.function,
                    vcpu: c.vcpu,
                    ours: answer,
                    theirs: c.answer.clone(),
                })
                .into());
            }
        }
        self.boot_calls = saved.boot_calls;
        self.booted = true;
        self.hook_boot_point()?;
        info!(
            path = %path.display(),
            virtual_ns = self.latest_ns(),
            wall_ms = started.elapsed().as_millis() as u64,
            "resumed from the snapshot at the boot point"
        );
        Ok(())
    }

    /// Like [`EmuRun::enter`], except that [`Next::Run`] leaves a vCPU that
    /// just went into WFI halted.
    fn enter_unless_halted(&mut self, i: usize, next: Next) -> Option<GuestExit> {
        if next == Next::Run && self.states[i] == RunState::Halted {
            return None;
        }
        self.enter(i, next)
    }
}

/// [`run_loop::apply`], charging an exception injection (or an SDEI
/// dispatch) its cost.
fn apply<V: VirtualTimeVcpu>(
    vcpu: &mut V,
    machine: &Machine,
    action: Action,
    inject_ns: u64,
) -> Result<Next, VmError> {
    if let Action::InjectException(_) | Action::SignalSdei = action {
        vcpu.charge_ns(inject_ns);
    }
    Ok(run_loop::apply(vcpu, machine, action)?)
}
