//! The kvm run loop's threads: one host thread per vCPU plus the control
//! thread (the caller's), which owns the fault hook and decides when the
//! run ends.
//!
//! A vCPU thread runs its vCPU; device accesses complete inside
//! [`Vcpu::run`] through the shared [`Machine`] (the same device and
//! hypercall code as the emu backend). What the fault hook must answer (a
//! not-resident fault, an engine call) goes to the control thread as an
//! [`Event`], and the vCPU thread blocks on its [`Mailbox`] until the
//! answer comes back as [`Mail`]. The control thread times the waits the
//! hook orders, and posts what the hook decides for a running vCPU into its
//! mailbox and kicks it out of `KVM_RUN`; the vCPU's own thread applies it.
//! With a [`PageServer`], a vCPU touching a non-resident page blocks in the
//! host kernel instead and the server's threads answer; the control thread
//! only watches for the server's failure. Time on this backend is host time
//! since the start of the run.
//!
//! The loop is generic over the vCPU and what kicks it: `super::run` drives
//! it with KVM's vCPUs on aarch64 Linux, and the tests below with scripted
//! vCPUs and synthetic exits on any host.

// Only the kvm backend (aarch64 Linux) and the tests drive it.
#![cfg_attr(
    not(all(target_arch = "aarch64", target_os = "linux", feature = "kvm")),
    allow(dead_code)
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::KvmError;
use super::mailbox::{Mail, Mailbox};
use crate::config::VmConfig;
use crate::error::VmError;
use crate::machine::{Call, Effect, Machine};
use crate::outcome::{GuestCrash, GuestExit};
use crate::run_loop::{self, Next};
use crate::watchdog::{HangDiagnosis, VcpuDiagnosis, Watchdog};
use apflab_hypervisor::arch::{Reg, pstate};
use apflab_hypervisor::{Action, EngineCall, FaultHook, PageServer, ResumeState};
use apflab_hypervisor::{HypervisorError, NotResidentFault, Residency, Vcpu, VmExit};

/// What brings a vCPU's thread out of guest code, so that it reads its
/// mail (a signal to the thread and KVM's `immediate_exit`, on KVM).
pub(crate) trait Kick: Sync {
    /// Makes the vCPU leave guest code (or not enter it) soon.
    fn kick(&self) -> Result<(), KvmError>;
}

/// What a vCPU thread tells the control thread.
enum Event {
    /// A not-resident fault; the vCPU waits for its mail.
    Fault { vcpu: u32, fault: NotResidentFault },
    /// An engine call (through HVC, or through the doorbell, whose results
    /// go into the machine's doorbell bank); the vCPU waits for its mail.
    Call {
        vcpu: u32,
        call: EngineCall,
        doorbell: bool,
    },
    /// The vCPU is about to run guest code and the hook has something
    /// pending for it ([`FaultHook::on_resume`]); it waits for its mail.
    Resume { vcpu: u32, state: ResumeState },
    /// The run is over (power off, reset, panic, crash).
    Exit(GuestExit),
    /// A backend operation failed.
    Error(HypervisorError),
}

/// How often the control thread checks a page server for a failure.
const PAGE_SERVER_POLL: Duration = Duration::from_millis(10);
/// While the hook holds something for a vCPU until it resumes somewhere it
/// can take it, how long the guest runs between two looks (a vCPU running
/// guest code makes no exit of its own, so it is kicked out of `KVM_RUN`).
/// In the nested test (2 vCPUs under nested virtualization in software,
/// one run each on a busy host), with every "page ready" an exception,
/// 200 µs took 36 s and 3.4 looks per token that found the guest unable to
/// take it; 50 µs took 29 s with ten times the looks; also kicking as
/// soon as a poll of the control block every 20 µs saw the guest in its
/// marked wait took 57 s, the polling thread taking the vCPUs' time.
const RESUME_POLL: Duration = Duration::from_micros(200);

/// Runs `vcpus`, each on a host thread of its own and kicked by the
/// kicker of the same index, until the run ends, with the fault engine
/// `hook` (its residency through `pages`) on this thread, and times in ns
/// since `started`. Stops `server` before it returns.
#[allow(clippy::too_many_arguments)]
pub(crate) fn drive<V: Vcpu + Send, K: Kick>(
    config: &VmConfig,
    pages: &mut dyn Residency,
    hook: &mut dyn FaultHook,
    machine: &Machine,
    vcpus: Vec<V>,
    kickers: &[K],
    server: Option<Arc<dyn PageServer>>,
    started: Instant,
) -> Result<GuestExit, VmError> {
    let n = vcpus.len() as u32;
    let mailboxes: Vec<Arc<Mailbox>> = (0..n).map(|_| Arc::default()).collect();
    let resume_pending: Arc<Vec<AtomicBool>> =
        Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
    let (tx, rx) = mpsc::channel::<Event>();

    // Ends the run for every vCPU thread started: a running vCPU is kicked
    // out of KVM_RUN and finds the stop in its mailbox, and one waiting on a
    // page that will never come (the server failed) is let through, so
    // that its thread sees the stop.
    let stop_all = || {
        for (m, k) in mailboxes.iter().zip(kickers) {
            m.post(Mail::Stop);
            if let Err(e) = k.kick() {
                warn!("kicking a vCPU at the end of the run: {e}");
            }
        }
        if let Some(s) = &server {
            s.stop();
        }
    };
    std::thread::scope(|scope| {
        for vcpu in vcpus {
            let tx = tx.clone();
            let mailbox = Arc::clone(&mailboxes[vcpu.index() as usize]);
            let resume_pending = Arc::clone(&resume_pending);
            let server = server.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.index()))
                .spawn_scoped(scope, move || {
                    if let Some(s) = &server {
                        s.register_vcpu_thread(vcpu.index());
                    }
                    let pending = &resume_pending[vcpu.index() as usize];
                    vcpu_thread(vcpu, machine, &mailbox, pending, started, &tx)
                });
            if let Err(e) = spawned {
                stop_all();
                return Err(HypervisorError::Engine {
                    backend: "kvm",
                    op: "spawning a vCPU thread".into(),
                    source: Box::new(e),
                }
                .into());
            }
        }
        drop(tx);
        let mut control = Control {
            config,
            pages,
            hook,
            machine,
            mailboxes: &mailboxes,
            kickers,
            waits: Vec::new(),
            blocked: vec![false; n as usize],
            resume_pending: &resume_pending,
            resume_kicked_at: vec![0; n as usize],
            watchdog: Watchdog::new(config.watchdog_ns),
            started,
        };
        let exit = control.run(server.as_deref(), &rx);
        stop_all();
        exit
    })
}

fn now_ns(started: Instant) -> u64 {
    started.elapsed().as_nanos() as u64
}

/// A wait the hook ordered for a vCPU.
struct Wait {
    until_ns: u64,
    vcpu: u32,
}

/// The control thread: the fault hook, the waits it ordered, the time
/// limit.
struct Control<'a, K: Kick> {
    config: &'a VmConfig,
    pages: &'a mut dyn Residency,
    hook: &'a mut dyn FaultHook,
    machine: &'a Machine,
    mailboxes: &'a [Arc<Mailbox>],
    kickers: &'a [K],
    waits: Vec<Wait>,
    /// Per vCPU: its thread waits for mail before it runs the guest again.
    blocked: Vec<bool>,
    /// Per vCPU: the hook has something for it at its next resume.
    resume_pending: &'a [AtomicBool],
    /// Per vCPU: when it was last kicked to resume, or last looked at
    /// (its guest must get to run between two looks, or it never reaches a
    /// point where it can take what is held for it).
    resume_kicked_at: Vec<u64>,
    /// Host time without a sign of life from the guest ([`crate::watchdog`];
    /// the timer and the GIC are in the kernel, so only exits to the VMM
    /// count here).
    watchdog: Watchdog,
    started: Instant,
}

impl<K: Kick> Control<'_, K> {
    fn run(
        &mut self,
        server: Option<&dyn PageServer>,
        rx: &Receiver<Event>,
    ) -> Result<GuestExit, VmError> {
        loop {
            let now = now_ns(self.started);
            // The waits that are due.
            self.waits.sort_by_key(|w| w.until_ns);
            while self.waits.first().is_some_and(|w| w.until_ns <= now) {
                let w = self.waits.remove(0);
                let action = self.hook.on_wait_end(w.vcpu, now, self.pages);
                if let Some(exit) = self.act(w.vcpu, action) {
                    return Ok(exit);
                }
            }
            if self.hook.next_deadline().is_some_and(|d| d <= now) {
                for (vcpu, action) in self.hook.on_time(now, self.pages) {
                    if let Some(exit) = self.act(vcpu, action) {
                        return Ok(exit);
                    }
                }
            }
            let limit = self.config.max_virtual_ns;
            if now >= limit {
                return Ok(GuestExit::Timeout);
            }
            // Host time is the clock here: the wall-clock limit is one
            // more deadline the loop wakes for.
            let wall_limit = self.config.wall_timeout.map_or(u64::MAX, |t| {
                u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)
            });
            if now >= wall_limit {
                return Ok(GuestExit::WallTimeout);
            }
            self.watchdog.observe(self.machine.activity(), now);
            if now >= self.watchdog.deadline_ns() {
                return Ok(GuestExit::Hang(self.diagnose(now)));
            }
            let mut wake = self
                .waits
                .iter()
                .map(|w| w.until_ns)
                .chain(self.hook.next_deadline())
                .chain([self.watchdog.deadline_ns(), wall_limit])
                .fold(limit, u64::min);
            if self.update_resume_pending(now) {
                wake = wake.min(now + RESUME_POLL.as_nanos() as u64);
            }
            if let Some(s) = server {
                if let Some(e) = s.failure() {
                    return Ok(GuestExit::Crash(GuestCrash::PageServer(e)));
                }
                wake = wake.min(now + PAGE_SERVER_POLL.as_nanos() as u64);
            }
            let event = match rx.recv_timeout(Duration::from_nanos(wake.saturating_sub(now))) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    return Ok(GuestExit::Crash(GuestCrash::VcpuThreadsGone));
                }
            };
            let now = now_ns(self.started);
            let end = match event {
                Event::Exit(exit) => return Ok(exit),
                Event::Error(e) => return Err(e.into()),
                Event::Resume { vcpu, state } => {
                    self.set_blocked(vcpu);
                    // The next look no sooner than a poll after this one
                    // lets the guest run on: where a round trip takes longer
                    // than the poll (nested virtualization), counting from
                    // the kick would kick the guest again as soon as it
                    // resumed and starve it.
                    if let Some(at) = self.resume_kicked_at.get_mut(vcpu as usize) {
                        *at = now;
                    }
                    let action = self.hook.on_resume(vcpu, state, now, self.pages);
                    self.act(vcpu, action)
                }
                Event::Fault { vcpu, fault } => {
                    self.set_blocked(vcpu);
                    let action = self.hook.on_not_resident(vcpu, &fault, now, self.pages);
                    self.act(vcpu, action)
                }
                Event::Call {
                    vcpu,
                    call,
                    doorbell,
                } => {
                    self.set_blocked(vcpu);
                    let (hook, pages) = (&mut *self.hook, &mut *self.pages);
                    let answer = run_loop::answer(self.machine, Call::Engine(call), |c| {
                        Some(hook.on_hypercall(vcpu, c, now, pages))
                    })
                    .expect("the engine is on this thread");
                    if doorbell {
                        self.machine.set_doorbell_results(vcpu, answer.regs);
                    } else {
                        self.post(vcpu, Mail::Return(answer.regs));
                    }
                    self.act(vcpu, answer.action)
                }
            };
            if let Some(exit) = end {
                return Ok(exit);
            }
        }
    }

    /// What every vCPU thread is doing and what the hook owes the guest, as
    /// the watchdog stops the run at `now`. (A vCPU in `KVM_RUN` cannot be
    /// asked where it is from here.)
    fn diagnose(&self, now: u64) -> HangDiagnosis {
        let vcpus = (0..self.blocked.len())
            .map(|v| {
                let wait = self.waits.iter().find(|w| w.vcpu as usize == v);
                let state = match (self.blocked[v], wait) {
                    (true, Some(w)) => {
                        format!(
                            "waiting in the VMM for the fault engine until {} ns",
                            w.until_ns
                        )
                    }
                    (true, None) => "waiting in the VMM for the fault engine".to_owned(),
                    (false, _) => "in the guest (KVM_RUN), making no exits".to_owned(),
                };
                VcpuDiagnosis {
                    vcpu: v as u32,
                    state,
                    at: None,
                    pending_irq: None,
                }
            })
            .collect();
        HangDiagnosis {
            quiet_ns: self.watchdog.quiet_ns(now),
            at_ns: now,
            vcpus,
            pending: self.hook.pending(),
        }
    }

    /// Tells each vCPU thread whether the hook has something for it at its
    /// next resume, and kicks those that run so they come to look, at most
    /// once per [`RESUME_POLL`] of guest time; whether any has.
    fn update_resume_pending(&mut self, now: u64) -> bool {
        let poll = RESUME_POLL.as_nanos() as u64;
        let mut any = false;
        for (v, flag) in self.resume_pending.iter().enumerate() {
            let pending = self.hook.resume_pending_since(v as u32).is_some();
            flag.store(pending, Ordering::SeqCst);
            if pending {
                any = true;
                if !self.blocked[v] && now >= self.resume_kicked_at[v].saturating_add(poll) {
                    self.resume_kicked_at[v] = now;
                    self.kick(v as u32);
                }
            }
        }
        any
    }

    fn set_blocked(&mut self, vcpu: u32) {
        if let Some(b) = self.blocked.get_mut(vcpu as usize) {
            *b = true;
        }
    }

    fn post(&self, vcpu: u32, mail: Mail) {
        if let Some(m) = self.mailboxes.get(vcpu as usize) {
            m.post(mail);
        }
    }

    /// Makes vCPU `vcpu` do what `action` says; the run's end if it ends it.
    fn act(&mut self, vcpu: u32, action: Action) -> Option<GuestExit> {
        let Some(&blocked) = self.blocked.get(vcpu as usize) else {
            return Some(GuestExit::Crash(GuestCrash::NoSuchVcpu(vcpu)));
        };
        match action {
            Action::Fail(failure) => {
                return Some(GuestExit::Crash(GuestCrash::Hook { vcpu, failure }));
            }
            Action::StallUntil(until_ns) => {
                self.waits.retain(|w| w.vcpu != vcpu);
                self.waits.push(Wait { until_ns, vcpu });
                if !blocked {
                    self.post(vcpu, Mail::Wait);
                    self.kick(vcpu);
                    self.set_blocked(vcpu);
                }
                return None;
            }
            Action::Retry => {}
            a @ (Action::InjectException(_) | Action::SetReadyLine(_) | Action::SignalSdei) => {
                self.post(vcpu, Mail::Apply(a));
                if !blocked {
                    self.kick(vcpu);
                }
            }
        }
        if blocked {
            self.waits.retain(|w| w.vcpu != vcpu);
            self.post(vcpu, Mail::Resume);
            self.blocked[vcpu as usize] = false;
        }
        None
    }

    fn kick(&self, vcpu: u32) {
        if let Some(k) = self.kickers.get(vcpu as usize)
            && let Err(e) = k.kick()
        {
            warn!("kicking vCPU {vcpu}: {e}");
        }
    }
}

/// Whether a vCPU thread goes on after reading its mail.
enum Flow {
    Run,
    /// The run is over for this thread (with how, if it decided that).
    Stop(Option<GuestExit>),
}

/// Applies the vCPU's mail; with `blocked`, keeps reading (and waiting for
/// more) until the control thread lets it run again.
fn read_mail<V: Vcpu>(
    vcpu: &mut V,
    machine: &Machine,
    mailbox: &Mailbox,
    mut blocked: bool,
) -> Result<Flow, HypervisorError> {
    loop {
        let mail = if blocked {
            mailbox.take()
        } else {
            match mailbox.try_take() {
                Some(m) => m,
                None => return Ok(Flow::Run),
            }
        };
        match mail {
            Mail::Return(regs) => {
                for (n, value) in regs.iter().enumerate() {
                    vcpu.set_reg(Reg::X(n as u8), *value)?;
                }
            }
            Mail::Apply(action) => {
                if let Next::End(exit) = run_loop::apply(vcpu, machine, action)? {
                    return Ok(Flow::Stop(Some(exit)));
                }
            }
            Mail::Wait => blocked = true,
            Mail::Resume => blocked = false,
            Mail::Stop => return Ok(Flow::Stop(None)),
        }
    }
}

/// One vCPU's loop. Ends when the run stops or this vCPU ends it.
fn vcpu_thread<V: Vcpu>(
    mut vcpu: V,
    machine: &Machine,
    mailbox: &Mailbox,
    resume_pending: &AtomicBool,
    started: Instant,
    tx: &Sender<Event>,
) {
    let idx = vcpu.index();
    // Hands `event` to the control thread and waits for its answer.
    let ask = |vcpu: &mut V, event: Event| -> Result<Flow, HypervisorError> {
        if tx.send(event).is_err() {
            return Ok(Flow::Stop(None));
        }
        read_mail(vcpu, machine, mailbox, true)
    };
    let result = (|| -> Result<Option<GuestExit>, HypervisorError> {
        loop {
            // Mail posted while the guest ran (the kick ended `run`).
            if let Flow::Stop(end) = read_mail(&mut vcpu, machine, mailbox, false)? {
                return Ok(end);
            }
            if resume_pending.load(Ordering::SeqCst) {
                machine.count_exit("resume_check");
                let ps = vcpu.get_reg(Reg::Pstate)?;
                let state = ResumeState {
                    el: u8::from(ps & pstate::MODE_MASK != pstate::EL0T),
                    pc: vcpu.get_reg(Reg::Pc)?,
                };
                if let Flow::Stop(end) = ask(&mut vcpu, Event::Resume { vcpu: idx, state })? {
                    return Ok(end);
                }
            }
            let exit = vcpu.run()?;
            let now = now_ns(started);
            if let Some(end) = run_loop::terminal_exit(machine, idx, &exit) {
                return Ok(Some(end));
            }
            let flow = match exit {
                VmExit::Hypercall { function, args, .. } => {
                    let flow = match machine.dispatch(idx, function, args, now) {
                        Call::Engine(call) => ask(
                            &mut vcpu,
                            Event::Call {
                                vcpu: idx,
                                call,
                                doorbell: false,
                            },
                        )?,
                        answered @ Call::Answered(_) => {
                            let answer = run_loop::answer(machine, answered, |_| None);
                            match run_loop::return_from_hypercall(&mut vcpu, machine, answer)? {
                                Next::End(exit) => Flow::Stop(Some(exit)),
                                _ => Flow::Run,
                            }
                        }
                    };
                    // Whoever answered the call, an SDEI event it left
                    // pending is entered on its return, as on emu.
                    if let Flow::Run = flow {
                        machine.deliver_sdei(&mut vcpu)?;
                    }
                    flow
                }
                VmExit::NotResident(fault) => {
                    machine.count_exit("not_resident");
                    ask(&mut vcpu, Event::Fault { vcpu: idx, fault })?
                }
                VmExit::SliceEnd => Flow::Run,
                // KVM handles WFI and SVC in the kernel.
                e @ (VmExit::Wfi | VmExit::Svc { .. }) => {
                    machine.count_exit(e.metric_name());
                    Flow::Run
                }
                VmExit::Crash { .. } | VmExit::SystemEvent { .. } => Flow::Run,
            };
            if let Flow::Stop(end) = flow {
                return Ok(end);
            }
            if let Some(call) = machine.take_doorbell_engine_call(idx) {
                let event = Event::Call {
                    vcpu: idx,
                    call,
                    doorbell: true,
                };
                if let Flow::Stop(end) = ask(&mut vcpu, event)? {
                    return Ok(end);
                }
            }
            // Every effect that reaches this loop ends the run, so the first
            // one decides how.
            if let Some(effect) = machine.take_effects().into_iter().next() {
                debug!(vcpu = idx, ?effect, "hypercall effect");
                return Ok(Some(run_loop::terminal_effect(&effect).unwrap_or_else(
                    || {
                        // PSCI is in the kernel on this backend; a CPU_ON or
                        // CPU_OFF through the doorbell is a guest error.
                        debug_assert!(matches!(
                            effect,
                            Effect::CpuOn { .. }
                                | Effect::CpuOff { .. }
                                | Effect::CpuSuspend { .. }
                        ));
                        GuestExit::Crash(GuestCrash::PsciThroughDoorbell {
                            vcpu: idx,
                            call: effect,
                        })
                    },
                )));
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

#[cfg(test)]
pub(crate) mod tests {
    use apflab_abi::addr::Gpa;
    use apflab_abi::hypercall as hc;
    use apflab_abi::memory_map::RAM_BASE;
    use apflab_hypervisor::{Conduit, HookFailure, SyncException};
    use vm_memory::GuestMemoryMmap;

    use super::*;
    use crate::config::BackendKind;
    use crate::scripted_hook::{Asked, ScriptedHook, config, fault, memory};
    use crate::scripted_vcpu::ScriptedVcpu;

    /// A kick has nothing to do: a scripted vCPU never blocks in guest code.
    struct NoKick;

    impl Kick for NoKick {
        fn kick(&self) -> Result<(), KvmError> {
            Ok(())
        }
    }

    /// Every page resident.
    struct AllResident(GuestMemoryMmap);

    impl Residency for AllResident {
        fn set_resident(&mut self, _gpa: Gpa, _resident: bool) -> Result<(), HypervisorError> {
            Ok(())
        }
        fn is_resident(&self, _gpa: Gpa) -> bool {
            true
        }
        fn guest_memory(&self) -> &GuestMemoryMmap {
            &self.0
        }
    }

    /// Drives one scripted vCPU with `hook` to the end of the run.
    pub(crate) fn drive_one(
        vcpu: ScriptedVcpu,
        hook: &mut ScriptedHook,
        machine: &Machine,
    ) -> GuestExit {
        let mut pages = AllResident(memory());
        drive(
            &config(BackendKind::Kvm),
            &mut pages,
            hook,
            machine,
            vec![vcpu],
            &[NoKick],
            None,
            Instant::now(),
        )
        .unwrap()
    }

    #[test]
    fn a_fault_a_wait_and_an_engine_call_reach_the_hook_and_its_answers_the_vcpu() {
        let page = RAM_BASE + 0x8000;
        let call = EngineCall {
            function: hc::FN_APF_ENABLE,
            args: [RAM_BASE + 0x1000, 0, 0, 0, 0],
        };
        let vcpu = ScriptedVcpu::new(
            0,
            [
                VmExit::NotResident(fault(page)),
                VmExit::Hypercall {
                    function: call.function,
                    args: call.args,
                    conduit: Conduit::Hvc,
                },
            ],
        );
        let log = vcpu.log();
        let ready = SyncException {
            esr: 0x7c00_0001,
            far: 0,
            return_pc: 0x4008_0000,
        };
        let mut hook = ScriptedHook {
            // The fault waits (until a time already past), then the
            // vCPU enters an exception; the call returns.
            actions: [
                Action::StallUntil(0),
                Action::InjectException(ready),
                Action::Retry,
            ]
            .into(),
            regs: [0, 42, 0, 0],
            ..Default::default()
        };
        let machine = Machine::new(1, memory(), false);
        // The script done, the vCPU powers the machine off.
        assert_eq!(drive_one(vcpu, &mut hook, &machine), GuestExit::PowerOff);
        assert_eq!(
            hook.asked,
            [
                Asked::NotResident {
                    vcpu: 0,
                    gpa: Gpa(page)
                },
                Asked::WaitEnd { vcpu: 0 },
                Asked::Hypercall { vcpu: 0, call },
            ]
        );
        let log = log.lock().unwrap();
        assert_eq!(log.injected, [ready]);
        assert_eq!((log.regs[&0], log.regs[&1]), (0, 42));
        let exits = machine.exits();
        assert_eq!((exits["not_resident"], exits["hypercall"]), (1, 1));
    }

    #[test]
    fn a_call_the_machine_answers_does_not_reach_the_hook() {
        let vcpu = ScriptedVcpu::new(
            0,
            [
                VmExit::Hypercall {
                    function: hc::PSCI_VERSION,
                    args: [0; 5],
                    conduit: Conduit::Hvc,
                },
                VmExit::SystemEvent { reset: true },
            ],
        );
        let log = vcpu.log();
        let mut hook = ScriptedHook::default();
        let machine = Machine::new(1, memory(), false);
        assert_eq!(drive_one(vcpu, &mut hook, &machine), GuestExit::Reset);
        assert_eq!(hook.asked, []);
        assert_eq!(log.lock().unwrap().regs[&0], hc::PSCI_VERSION_1_0);
    }

    #[test]
    fn a_hook_failure_ends_the_run_naming_the_vcpu() {
        let page = RAM_BASE + 0x3000;
        let vcpu = ScriptedVcpu::new(0, [VmExit::NotResident(fault(page))]);
        let failure = || HookFailure::unavailable(Gpa(page), std::io::Error::other("gone"));
        let mut hook = ScriptedHook {
            actions: [Action::Fail(failure())].into(),
            ..Default::default()
        };
        let machine = Machine::new(1, memory(), false);
        assert_eq!(
            drive_one(vcpu, &mut hook, &machine),
            GuestExit::Crash(GuestCrash::Hook {
                vcpu: 0,
                failure: failure()
            })
        );
    }
}
