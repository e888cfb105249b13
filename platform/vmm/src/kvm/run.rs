//! The kvm vCPU loop: one host thread per vCPU plus the control thread (the
//! caller's), which owns the not-resident handler (the pager) and decides
//! when the run ends.
//!
//! A vCPU thread handles its own MMIO and hypercall exits through the shared
//! [`Machine`] (the same device and hypercall code as the emu backend). A
//! not-resident fault is sent to the control thread, which asks the handler
//! and answers when the page may be retried; the faulting vCPU waits (the
//! synchronous baseline; the other vCPUs keep running). With a
//! [`PageServer`] instead, a vCPU touching a non-resident page blocks in the
//! host kernel and the server's threads answer; the control thread only
//! watches for the server's failure. Time on this backend is host time since
//! the start of the run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::backend::{KvmHypervisor, KvmVcpu, KvmVcpuKicker};
use crate::arch::{Reg, pstate};
use crate::config::VmConfig;
use crate::hypervisor::{Hypervisor, HypervisorError, NotResidentFault, Vcpu, VmExit, VmOps};
use crate::loader::LoadedKernel;
use crate::machine::{Effect, Machine};
use crate::outcome::{GuestExit, RunOutcome, VmMetrics};
use crate::pager_hook::{FaultDecision, NotResidentHandler, PageServer};
use crate::vm::VmError;

/// What a vCPU thread tells the control thread.
enum Event {
    /// A not-resident fault; the answer goes to `reply`.
    Fault {
        vcpu: u32,
        fault: NotResidentFault,
        reply: Sender<Result<(), String>>,
    },
    /// The run is over (power off, reset, panic, crash).
    Exit(GuestExit),
    /// A backend operation failed.
    Error(HypervisorError),
}

/// A fault waiting for its stall to end.
struct Stall {
    until_ns: u64,
    /// When the fault reached the control thread.
    since_ns: u64,
    vcpu: u32,
    fault: NotResidentFault,
    reply: Sender<Result<(), String>>,
}

/// How often the control thread checks a page server for a failure.
const PAGE_SERVER_POLL: Duration = Duration::from_millis(10);

/// Runs `hv` (RAM already holding `kernel` and its device tree) to the end.
pub(crate) fn run(
    config: &VmConfig,
    mut hv: KvmHypervisor,
    kernel: LoadedKernel,
    mut handler: Option<Box<dyn NotResidentHandler>>,
    server: Option<Arc<dyn PageServer>>,
) -> Result<RunOutcome, VmError> {
    let n = config.vcpus;
    let machine = Arc::new(Machine::new(n, hv.memory().clone(), config.echo_console));
    let ops: Arc<dyn VmOps> = machine.clone();
    let mut vcpus = (0..n)
        .map(|i| hv.create_vcpu(i, Arc::clone(&ops)))
        .collect::<Result<Vec<_>, _>>()?;
    let boot = &mut vcpus[0];
    boot.set_reg(Reg::Pstate, pstate::EL1H_MASKED)?;
    boot.set_reg(Reg::X(0), kernel.dtb_addr)?;
    boot.set_reg(Reg::Pc, kernel.entry)?;
    if let Some(h) = handler.as_mut() {
        h.init(&mut hv).map_err(VmError::Pager)?;
    }
    if let Some(s) = &server {
        let ram = hv
            .ram()
            .hand_over_residency()
            .map_err(|e| VmError::Hypervisor(e.into()))?;
        // SAFETY: both views belong to `hv`'s guest RAM, which lives until
        // this function returns; `stop` is called before that, below.
        unsafe { s.start(ram) }.map_err(VmError::Pager)?;
    }
    let kickers: Vec<KvmVcpuKicker> = vcpus.iter().map(KvmVcpu::kicker).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<Event>();
    let mut stalled_ns = vec![0u64; n as usize];
    info!(vcpus = n, conduit = ?hv.conduit(), "kvm: starting vCPU threads");

    // Ends the run for every vCPU thread started: a blocked vCPU is kicked
    // out of KVM_RUN, and one waiting on a page that will never come (the
    // server failed) is let through, so that its thread sees the stop.
    let stop_all = || {
        stop.store(true, Ordering::SeqCst);
        for k in &kickers {
            if let Err(e) = k.kick() {
                warn!("kicking a vCPU at the end of the run: {e}");
            }
        }
        if let Some(s) = &server {
            s.stop();
        }
    };
    let exit = std::thread::scope(|scope| {
        for vcpu in vcpus {
            let tx = tx.clone();
            let machine = Arc::clone(&machine);
            let stop = Arc::clone(&stop);
            let server = server.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.index()))
                .spawn_scoped(scope, move || {
                    if let Some(s) = &server {
                        s.register_vcpu_thread(vcpu.index());
                    }
                    vcpu_thread(vcpu, &machine, &stop, started, &tx)
                });
            if let Err(e) = spawned {
                stop_all();
                return Err(HypervisorError::Engine {
                    backend: "kvm",
                    op: "spawning a vCPU thread".into(),
                    detail: e.to_string(),
                }
                .into());
            }
        }
        drop(tx);
        let exit = control_loop(
            config,
            &mut hv,
            handler.as_deref_mut(),
            server.as_deref(),
            &rx,
            started,
            &mut stalled_ns,
        );
        stop_all();
        exit
    })?;

    let wall = started.elapsed();
    let mut exits: BTreeMap<String, u64> = machine.exits();
    exits.remove("slice_end");
    let metrics = VmMetrics {
        exits,
        instructions: 0,
        virtual_time_ns: wall.as_nanos() as u64,
        halted_ns: vec![0; n as usize],
        interrupts: machine.interrupts(),
        stalled_ns,
    };
    info!(
        ?exit,
        wall_ms = wall.as_millis() as u64,
        "kvm: run finished"
    );
    Ok(RunOutcome {
        exit,
        console: machine.console(),
        report: machine.report(),
        task_done_ns: machine.task_done_ns(),
        metrics,
        wall_time: wall,
    })
}

fn now_ns(started: Instant) -> u64 {
    started.elapsed().as_nanos() as u64
}

/// The control thread: serves faults through the handler, enforces the
/// time limit, and returns how the run ended.
fn control_loop(
    config: &VmConfig,
    hv: &mut KvmHypervisor,
    mut handler: Option<&mut (dyn NotResidentHandler + '_)>,
    server: Option<&dyn PageServer>,
    rx: &Receiver<Event>,
    started: Instant,
    stalled_ns: &mut [u64],
) -> Result<GuestExit, VmError> {
    let mut stalls: Vec<Stall> = Vec::new();
    loop {
        let now = now_ns(started);
        // Serve the stalls that are due.
        stalls.sort_by_key(|s| s.until_ns);
        while stalls.first().is_some_and(|s| s.until_ns <= now) {
            let s = stalls.remove(0);
            if let Some(t) = stalled_ns.get_mut(s.vcpu as usize) {
                *t += now.saturating_sub(s.since_ns);
            }
            let r = match handler.as_deref_mut() {
                Some(h) => h.on_stall_end(s.vcpu, &s.fault, now, hv),
                None => Err("no pager".into()),
            };
            // A vCPU thread that has gone away needs no answer.
            let _ = s.reply.send(r);
        }
        if now >= config.max_virtual_ns {
            return Ok(GuestExit::Timeout);
        }
        let mut wake = stalls
            .first()
            .map_or(config.max_virtual_ns, |s| s.until_ns)
            .min(config.max_virtual_ns);
        if let Some(s) = server {
            if let Some(msg) = s.failure() {
                return Ok(GuestExit::Crash(format!("page server: {msg}")));
            }
            wake = wake.min(now + PAGE_SERVER_POLL.as_nanos() as u64);
        }
        let event = match rx.recv_timeout(Duration::from_nanos(wake.saturating_sub(now))) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => {
                return Ok(GuestExit::Crash("every vCPU thread stopped".into()));
            }
        };
        match event {
            Event::Exit(exit) => return Ok(exit),
            Event::Error(e) => return Err(e.into()),
            Event::Fault { vcpu, fault, reply } => {
                let now = now_ns(started);
                let Some(h) = handler.as_deref_mut() else {
                    return Ok(GuestExit::Crash(format!(
                        "vCPU {vcpu}: access to not-resident page {:#x} at pc {:#x} with no pager",
                        fault.ipa, fault.pc
                    )));
                };
                match h.on_fault(vcpu, &fault, now, hv) {
                    FaultDecision::Retry => {
                        let _ = reply.send(Ok(()));
                    }
                    FaultDecision::StallUntil(until_ns) => stalls.push(Stall {
                        until_ns,
                        since_ns: now,
                        vcpu,
                        fault,
                        reply,
                    }),
                    FaultDecision::Fail(msg) => {
                        return Ok(GuestExit::Crash(format!(
                            "vCPU {vcpu}: page {:#x} unavailable: {msg}",
                            fault.ipa
                        )));
                    }
                }
            }
        }
    }
}

/// One vCPU's loop. Ends when the run stops or this vCPU ends it.
fn vcpu_thread(
    mut vcpu: KvmVcpu,
    machine: &Machine,
    stop: &AtomicBool,
    started: Instant,
    tx: &Sender<Event>,
) {
    let idx = vcpu.index();
    let result = (|| -> Result<Option<GuestExit>, HypervisorError> {
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let exit = vcpu.run()?;
            let now = now_ns(started);
            match exit {
                VmExit::Mmio {
                    addr,
                    len,
                    write: None,
                } => {
                    let value = machine.mmio_read_value(idx, addr, usize::from(len), now);
                    vcpu.complete_mmio_read(value)?;
                }
                VmExit::Mmio {
                    addr,
                    len,
                    write: Some(value),
                } => {
                    let len = usize::from(len).min(8);
                    machine.mmio_write(idx, addr, &value.to_le_bytes()[..len], now);
                }
                VmExit::Hypercall { function, args, .. } => {
                    let r = machine.hypercall(idx, function, args, now);
                    for (n, value) in r.iter().enumerate() {
                        vcpu.set_reg(Reg::X(n as u8), *value)?;
                    }
                }
                VmExit::NotResident(fault) => {
                    machine.count_exit("not_resident");
                    let (reply, answer) = mpsc::channel();
                    if tx
                        .send(Event::Fault {
                            vcpu: idx,
                            fault,
                            reply,
                        })
                        .is_err()
                    {
                        return Ok(None);
                    }
                    match answer.recv() {
                        Ok(Ok(())) => {}
                        Ok(Err(msg)) => {
                            return Ok(Some(GuestExit::Crash(format!(
                                "vCPU {idx}: page {:#x} could not be made resident: {msg}",
                                fault.ipa
                            ))));
                        }
                        // The control thread ended the run meanwhile.
                        Err(_) => return Ok(None),
                    }
                }
                VmExit::SystemEvent { reset } => {
                    machine.count_exit("system_event");
                    return Ok(Some(if reset {
                        GuestExit::Reset
                    } else {
                        GuestExit::PowerOff
                    }));
                }
                VmExit::Crash { pc, addr, reason } => {
                    let at = addr
                        .map(|a| format!(", address {a:#x}"))
                        .unwrap_or_default();
                    return Ok(Some(GuestExit::Crash(format!(
                        "vCPU {idx}: {reason} at pc {pc:#x}{at}"
                    ))));
                }
                VmExit::SliceEnd => {}
                // KVM handles WFI, SVC and system registers in the kernel.
                e @ (VmExit::Wfi | VmExit::Svc { .. } | VmExit::SysReg { .. }) => {
                    machine.count_exit(e.metric_name());
                }
            }
            // Every effect that reaches this loop ends the run, so the first
            // one decides how.
            if let Some(effect) = machine.take_effects().into_iter().next() {
                debug!(vcpu = idx, ?effect, "hypercall effect");
                match effect {
                    Effect::Panic(msg) => return Ok(Some(GuestExit::Panic(msg))),
                    Effect::SystemOff => return Ok(Some(GuestExit::PowerOff)),
                    Effect::SystemReset => return Ok(Some(GuestExit::Reset)),
                    // PSCI is in the kernel on this backend; a CPU_ON or
                    // CPU_OFF through the doorbell is a guest error.
                    e @ (Effect::CpuOn { .. } | Effect::CpuOff { .. }) => {
                        return Ok(Some(GuestExit::Crash(format!(
                            "vCPU {idx}: PSCI call {e:?} through the apflab conduit; on kvm PSCI \
                             is HVC to the in-kernel firmware"
                        ))));
                    }
                }
            }
        }
    })();
    let event = match result {
        Ok(Some(exit)) => Event::Exit(exit),
        Ok(None) => return,
        Err(e) => Event::Error(e),
    };
    // The control thread may already have ended the run.
    let _ = tx.send(event);
}
