//! The SDEI firmware the machine offers over HVC (Arm DEN0054, version
//! 1.0): one private event, [`abi::EVENT_APF`], on every PE, with the
//! specification's state machine and dispatch rules, written once for every
//! backend.
//!
//! [`Firmware`] is plain logic over the per-PE state: it answers the calls
//! and says what has to happen to a vCPU's registers next ([`Step`]).
//! [`deliver`] carries the steps out on any [`Vcpu`] through its register
//! accessors, so emu and kvm enter and leave handlers with the same code
//! (on kvm every access is a `KVM_SET_ONE_REG`, as exception injection
//! does). A run loop calls it after each SDEI call it answered and after
//! signalling the event; the event is only ever signalled on the PE that
//! runs, so a waiting vCPU never needs waking for it.
//!
//! Dispatch happens only when the event is registered, enabled and
//! signalled, the PE unmasked and no handler running; until then the event
//! stays pending. Entry saves x0..x17, PC and PSTATE of the interrupted
//! context and enters the handler at EL1h with D, A, I and F masked, x0 =
//! event, x1 = the registered argument, x2 = interrupted PC, x3 =
//! interrupted PSTATE. Every value from the guest is checked; a wrong one
//! gets the specification's status code.

use apflab_abi::sdei as abi;

use apflab_hypervisor::arch::{Reg, pstate};
use apflab_hypervisor::{HypervisorError, Vcpu};
use serde::{Deserialize, Serialize};

/// The registers a dispatch saves and a completion restores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// x0..x17.
    pub x: [u64; abi::CONTEXT_REGS],
    /// The interrupted instruction (it has not executed).
    pub pc: u64,
    /// PSTATE at the interruption.
    pub pstate: u64,
}

/// What the dispatcher does to a vCPU's registers next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// `EVENT_COMPLETE`: the interrupted context runs on.
    Resume(Context),
    /// `EVENT_COMPLETE_AND_RESUME`: the interrupted context is restored,
    /// then taken to EL1h at `address` as an IRQ would be (ELR_EL1 = its
    /// PC, SPSR_EL1 = its PSTATE).
    ResumeAsIrq {
        /// The interrupted context.
        context: Context,
        /// Where the client resumes.
        address: u64,
    },
    /// Dispatch: save the vCPU's context ([`Firmware::entered`]) and enter
    /// the handler.
    Enter {
        /// Event number (x0).
        event: u32,
        /// Handler entry point.
        entry: u64,
        /// Registered argument (x1).
        arg: u64,
    },
}

/// A registered handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Handler {
    entry: u64,
    arg: u64,
}

/// The event's and the dispatcher's state on one PE.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Pe {
    handler: Option<Handler>,
    enabled: bool,
    /// Signalled and not yet dispatched.
    signalled: bool,
    /// The handler runs; the context it interrupted.
    running: Option<Context>,
    /// `EVENT_UNREGISTER` (or a reset) came while the handler ran: the
    /// event is unregistered when it completes.
    unregister_pending: bool,
    /// SDEI_PE_MASK: nothing is dispatched. A PE starts masked.
    masked: bool,
    /// A completion the vCPU's registers do not show yet.
    completion: Option<Step>,
}

impl Pe {
    fn new() -> Self {
        Pe {
            handler: None,
            enabled: false,
            signalled: false,
            running: None,
            unregister_pending: false,
            masked: true,
            completion: None,
        }
    }

    fn unregister(&mut self) {
        self.handler = None;
        self.enabled = false;
        self.signalled = false;
        self.unregister_pending = false;
    }

    /// Unregisters the event, or marks it for unregistering when its
    /// handler completes: [`abi::SUCCESS`] or [`abi::PENDING`].
    fn unregister_or_defer(&mut self) -> i64 {
        if self.running.is_some() {
            self.unregister_pending = true;
            self.enabled = false;
            abi::PENDING
        } else {
            self.unregister();
            abi::SUCCESS
        }
    }

    fn dispatchable(&self) -> bool {
        self.handler.is_some()
            && self.enabled
            && self.signalled
            && !self.masked
            && self.running.is_none()
            && self.completion.is_none()
            && !self.unregister_pending
    }

    /// The handler is done: the interrupted context comes back through
    /// `step(context)`.
    fn complete(&mut self, step: impl FnOnce(Context) -> Step) -> i64 {
        let Some(context) = self.running.take() else {
            return abi::DENIED;
        };
        self.completion = Some(step(context));
        if self.unregister_pending {
            self.unregister();
        }
        abi::SUCCESS
    }
}

/// The SDEI firmware of one machine: the state of every PE.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Firmware {
    pes: Vec<Pe>,
}

/// Whether `event` (x1 as the guest passed it) names the one event offered.
fn valid_event(event: u64) -> bool {
    event == u64::from(abi::EVENT_APF)
}

impl Firmware {
    /// The firmware of a machine with `pes` vCPUs: nothing registered,
    /// every PE masked.
    pub fn new(pes: u32) -> Self {
        Firmware {
            pes: vec![Pe::new(); pes as usize],
        }
    }

    /// How many PEs (vCPUs) it serves.
    pub fn pes(&self) -> usize {
        self.pes.len()
    }

    /// Answers SDEI call `function` (or [`abi::FN_APFLAB_SIGNAL`]) from PE
    /// `pe` with x1..x5 = `args`; returns x0. What it does to the PE's
    /// registers waits for [`Firmware::take_step`].
    pub fn call(&mut self, pe: u32, function: u32, args: [u64; 5]) -> u64 {
        let Some(p) = self.pes.get_mut(pe as usize) else {
            return abi::NOT_SUPPORTED as u64;
        };
        let [a1, a2, a3, a4, _] = args;
        let status = match function {
            abi::FN_VERSION => return abi::VERSION_1_0,
            abi::FN_PE_MASK => {
                let was_unmasked = !p.masked;
                p.masked = true;
                return u64::from(was_unmasked);
            }
            abi::FN_PE_UNMASK => {
                p.masked = false;
                abi::SUCCESS
            }
            abi::FN_EVENT_CONTEXT => match &p.running {
                None => abi::DENIED,
                Some(c) => match c.x.get(a1 as usize) {
                    Some(v) if a1 < abi::CONTEXT_REGS as u64 => return *v,
                    _ => abi::INVALID_PARAMETERS,
                },
            },
            abi::FN_EVENT_COMPLETE => p.complete(Step::Resume),
            abi::FN_EVENT_COMPLETE_AND_RESUME => {
                if p.running.is_none() {
                    abi::DENIED
                } else if !a1.is_multiple_of(4) {
                    abi::INVALID_PARAMETERS
                } else {
                    p.complete(|context| Step::ResumeAsIrq {
                        context,
                        address: a1,
                    })
                }
            }
            abi::FN_PRIVATE_RESET => {
                if p.handler.is_some() && p.unregister_or_defer() == abi::PENDING {
                    abi::DENIED
                } else {
                    abi::SUCCESS
                }
            }
            // No shared event is offered.
            abi::FN_SHARED_RESET => abi::SUCCESS,
            abi::FN_APFLAB_SIGNAL => Self::signal_pe(p),
            abi::FN_EVENT_REGISTER
            | abi::FN_EVENT_ENABLE
            | abi::FN_EVENT_DISABLE
            | abi::FN_EVENT_UNREGISTER
            | abi::FN_EVENT_STATUS
            | abi::FN_EVENT_GET_INFO
                if !valid_event(a1) =>
            {
                abi::INVALID_PARAMETERS
            }
            abi::FN_EVENT_REGISTER => {
                let (entry, arg, flags) = (a2, a3, a4);
                if !entry.is_multiple_of(4) || flags & !abi::REGISTER_FLAG_ROUTING_PE != 0 {
                    abi::INVALID_PARAMETERS
                } else if p.handler.is_some() {
                    abi::DENIED
                } else {
                    p.handler = Some(Handler { entry, arg });
                    p.enabled = false;
                    p.signalled = false;
                    abi::SUCCESS
                }
            }
            abi::FN_EVENT_ENABLE | abi::FN_EVENT_DISABLE => {
                if p.handler.is_none() || p.unregister_pending {
                    abi::DENIED
                } else {
                    p.enabled = function == abi::FN_EVENT_ENABLE;
                    abi::SUCCESS
                }
            }
            abi::FN_EVENT_UNREGISTER => {
                if p.handler.is_none() {
                    abi::DENIED
                } else if p.unregister_pending {
                    abi::PENDING
                } else {
                    p.unregister_or_defer()
                }
            }
            abi::FN_EVENT_STATUS => {
                let mut s = 0;
                if p.handler.is_some() {
                    s |= abi::STATUS_REGISTERED;
                }
                if p.enabled {
                    s |= abi::STATUS_ENABLED;
                }
                if p.running.is_some() {
                    s |= abi::STATUS_RUNNING;
                }
                return s;
            }
            abi::FN_EVENT_GET_INFO => match a2 {
                abi::INFO_TYPE => return abi::TYPE_PRIVATE,
                // Only the VMM signals it.
                abi::INFO_SIGNALED => return 0,
                abi::INFO_PRIORITY => return abi::PRIORITY_NORMAL,
                // Routing is a shared event's property.
                _ => abi::INVALID_PARAMETERS,
            },
            // ROUTING_SET (shared events only), INTERRUPT_BIND/RELEASE (no
            // bindable interrupt) and the ids 1.0 leaves unallocated.
            _ => abi::NOT_SUPPORTED,
        };
        status as u64
    }

    fn signal_pe(p: &mut Pe) -> i64 {
        if p.handler.is_none() || p.unregister_pending {
            return abi::DENIED;
        }
        p.signalled = true;
        abi::SUCCESS
    }

    /// Signals the event on `pe` (it is dispatched when the rules allow):
    /// [`abi::SUCCESS`], or [`abi::DENIED`] when no handler is registered.
    pub fn signal(&mut self, pe: u32) -> i64 {
        self.pes
            .get_mut(pe as usize)
            .map_or(abi::DENIED, Self::signal_pe)
    }

    /// Whether a signal on `pe` would be dispatched right away: a handler
    /// is registered and enabled, the PE is unmasked and no handler runs.
    pub fn can_dispatch_now(&self, pe: u32) -> bool {
        self.pes.get(pe as usize).is_some_and(|p| {
            p.handler.is_some()
                && p.enabled
                && !p.masked
                && p.running.is_none()
                && p.completion.is_none()
                && !p.unregister_pending
        })
    }

    /// What must happen to `pe`'s registers next, if anything: a pending
    /// completion first, then a dispatch the rules allow. After
    /// [`Step::Enter`] the caller reports the context it saved with
    /// [`Firmware::entered`].
    pub fn take_step(&mut self, pe: u32) -> Option<Step> {
        let p = self.pes.get_mut(pe as usize)?;
        if let Some(step) = p.completion.take() {
            return Some(step);
        }
        if !p.dispatchable() {
            return None;
        }
        p.signalled = false;
        let h = p.handler?;
        // Until `entered`, nothing else is dispatched.
        p.running = Some(Context::default());
        Some(Step::Enter {
            event: abi::EVENT_APF,
            entry: h.entry,
            arg: h.arg,
        })
    }

    /// The handler of `pe` was entered from `context`.
    pub fn entered(&mut self, pe: u32, context: Context) {
        if let Some(p) = self.pes.get_mut(pe as usize) {
            p.running = Some(context);
        }
    }
}

/// The stack pointer register PSTATE `ps` selects: SP_EL1 at EL1h, SP_EL0
/// at EL0 and EL1t.
fn sp_of(ps: u64) -> Reg {
    if ps & pstate::MODE_MASK == pstate::EL1H {
        Reg::SpEl1
    } else {
        Reg::SpEl0
    }
}

/// Moves `vcpu` from PSTATE `from` to `to`, switching the stack pointer in
/// use as the CPU would (the live SP goes back to its banked register).
fn switch_pstate<V: Vcpu + ?Sized>(
    vcpu: &mut V,
    from: u64,
    to: u64,
) -> Result<(), HypervisorError> {
    let (old_sp, new_sp) = (sp_of(from), sp_of(to));
    if old_sp != new_sp {
        let sp = vcpu.get_reg(Reg::Sp)?;
        vcpu.set_reg(old_sp, sp)?;
    }
    vcpu.set_reg(Reg::Pstate, to)?;
    // The software CPU applies a new exception level at the next system
    // register write (a no-op on kvm).
    let spsr = vcpu.get_reg(Reg::SpsrEl1)?;
    vcpu.set_reg(Reg::SpsrEl1, spsr)?;
    if old_sp != new_sp {
        let sp = vcpu.get_reg(new_sp)?;
        vcpu.set_reg(Reg::Sp, sp)?;
    }
    Ok(())
}

fn save<V: Vcpu + ?Sized>(vcpu: &V) -> Result<Context, HypervisorError> {
    let mut c = Context {
        pc: vcpu.get_reg(Reg::Pc)?,
        pstate: vcpu.get_reg(Reg::Pstate)?,
        ..Context::default()
    };
    for (n, x) in c.x.iter_mut().enumerate() {
        *x = vcpu.get_reg(Reg::X(n as u8))?;
    }
    Ok(c)
}

fn restore_x<V: Vcpu + ?Sized>(vcpu: &mut V, c: &Context) -> Result<(), HypervisorError> {
    for (n, x) in c.x.iter().enumerate() {
        vcpu.set_reg(Reg::X(n as u8), *x)?;
    }
    Ok(())
}

/// Carries out what the firmware has for `vcpu` (a completion, then a
/// dispatch the rules allow); returns how many handlers it entered.
pub fn deliver<V: Vcpu + ?Sized>(fw: &mut Firmware, vcpu: &mut V) -> Result<u32, HypervisorError> {
    let pe = vcpu.index();
    let mut entered = 0;
    while let Some(step) = fw.take_step(pe) {
        match step {
            Step::Resume(c) => {
                let now = vcpu.get_reg(Reg::Pstate)?;
                switch_pstate(vcpu, now, c.pstate)?;
                restore_x(vcpu, &c)?;
                vcpu.set_reg(Reg::Pc, c.pc)?;
            }
            Step::ResumeAsIrq {
                context: c,
                address,
            } => {
                let now = vcpu.get_reg(Reg::Pstate)?;
                switch_pstate(vcpu, now, pstate::EL1H_MASKED)?;
                restore_x(vcpu, &c)?;
                vcpu.set_reg(Reg::ElrEl1, c.pc)?;
                vcpu.set_reg(Reg::SpsrEl1, c.pstate)?;
                vcpu.set_reg(Reg::Pc, address)?;
            }
            Step::Enter { event, entry, arg } => {
                let c = save(vcpu)?;
                fw.entered(pe, c);
                switch_pstate(vcpu, c.pstate, pstate::EL1H_MASKED)?;
                for (n, v) in [u64::from(event), arg, c.pc, c.pstate]
                    .into_iter()
                    .enumerate()
                {
                    vcpu.set_reg(Reg::X(n as u8), v)?;
                }
                vcpu.set_reg(Reg::Pc, entry)?;
                entered += 1;
            }
        }
    }
    Ok(entered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apflab_hypervisor::{SyncException, VmExit};

    const EV: u64 = abi::EVENT_APF as u64;
    const ENTRY: u64 = 0x4008_0000;

    /// Registers as an arm64 CPU banks them: the live SP is the one PSTATE
    /// selects.
    #[derive(Clone, Debug, Default, PartialEq)]
    struct Cpu {
        x: [u64; 31],
        pc: u64,
        pstate: u64,
        sp_el0: u64,
        sp_el1: u64,
        elr: u64,
        spsr: u64,
    }

    impl Vcpu for Cpu {
        fn index(&self) -> u32 {
            0
        }
        fn run(&mut self) -> Result<VmExit, HypervisorError> {
            Ok(VmExit::SliceEnd)
        }
        fn get_reg(&self, reg: Reg) -> Result<u64, HypervisorError> {
            Ok(match reg {
                Reg::X(n) => self.x[n as usize],
                Reg::Sp if sp_of(self.pstate) == Reg::SpEl1 => self.sp_el1,
                Reg::Sp | Reg::SpEl0 => self.sp_el0,
                Reg::SpEl1 => self.sp_el1,
                Reg::Pc => self.pc,
                Reg::Pstate => self.pstate,
                Reg::ElrEl1 => self.elr,
                Reg::SpsrEl1 => self.spsr,
                Reg::EsrEl1 | Reg::FarEl1 | Reg::VbarEl1 => 0,
            })
        }
        fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), HypervisorError> {
            match reg {
                Reg::X(n) => self.x[n as usize] = value,
                Reg::Sp if sp_of(self.pstate) == Reg::SpEl1 => self.sp_el1 = value,
                Reg::Sp | Reg::SpEl0 => self.sp_el0 = value,
                Reg::SpEl1 => self.sp_el1 = value,
                Reg::Pc => self.pc = value,
                Reg::Pstate => self.pstate = value,
                Reg::ElrEl1 => self.elr = value,
                Reg::SpsrEl1 => self.spsr = value,
                Reg::EsrEl1 | Reg::FarEl1 | Reg::VbarEl1 => {}
            }
            Ok(())
        }
        fn inject_exception(&mut self, _: SyncException) -> Result<(), HypervisorError> {
            Ok(())
        }
        fn set_ready_line(&mut self, _: bool) -> Result<(), HypervisorError> {
            Ok(())
        }
    }

    /// A CPU in EL1h kernel code with IRQs unmasked, each xN = 0x100 + N.
    fn kernel_cpu() -> Cpu {
        let mut c = Cpu {
            pc: 0x4001_0000,
            pstate: pstate::EL1H,
            sp_el0: 0x10_0000_8000,
            sp_el1: 0x4100_0000,
            elr: 0xe1e1,
            spsr: 0x5a5a,
            ..Cpu::default()
        };
        for (n, x) in c.x.iter_mut().enumerate() {
            *x = 0x100 + n as u64;
        }
        c
    }

    /// The guest makes `function` from `cpu`: x0 is the answer, then the
    /// dispatcher does what it has to.
    fn hvc(fw: &mut Firmware, cpu: &mut Cpu, function: u32, args: [u64; 5]) -> (i64, u32) {
        let r = fw.call(0, function, args);
        cpu.x[0] = r;
        cpu.pc += 4;
        let entered = deliver(fw, cpu).unwrap();
        (r as i64, entered)
    }

    fn a(a1: u64, a2: u64, a3: u64) -> [u64; 5] {
        [a1, a2, a3, 0, 0]
    }

    /// Registered (entry, arg 0xa7) and enabled, PE still masked.
    fn registered(cpu: &mut Cpu) -> Firmware {
        let mut fw = Firmware::new(1);
        assert_eq!(
            hvc(&mut fw, cpu, abi::FN_EVENT_REGISTER, a(EV, ENTRY, 0xa7)),
            (0, 0)
        );
        assert_eq!(hvc(&mut fw, cpu, abi::FN_EVENT_ENABLE, a(EV, 0, 0)), (0, 0));
        fw
    }

    #[test]
    fn dispatch_waits_for_unmask_then_enters_the_handler_and_complete_resumes() {
        let mut cpu = kernel_cpu();
        let mut fw = registered(&mut cpu);
        assert_eq!(
            hvc(&mut fw, &mut cpu, abi::FN_VERSION, [0; 5]).0 as u64,
            1 << 48
        );
        // Masked PE: held.
        assert_eq!(
            hvc(&mut fw, &mut cpu, abi::FN_APFLAB_SIGNAL, [0; 5]),
            (0, 0)
        );
        assert_eq!(
            fw.call(0, abi::FN_EVENT_STATUS, a(EV, 0, 0)),
            abi::STATUS_REGISTERED | abi::STATUS_ENABLED
        );
        let before = {
            let mut c = cpu.clone();
            c.x[0] = 0;
            c.pc += 4;
            c
        };
        assert_eq!(hvc(&mut fw, &mut cpu, abi::FN_PE_UNMASK, [0; 5]), (0, 1));
        assert_eq!(cpu.pc, ENTRY);
        assert_eq!(&cpu.x[..4], &[EV, 0xa7, before.pc, pstate::EL1H]);
        assert_eq!(cpu.pstate, pstate::EL1H_MASKED);
        assert_eq!((cpu.elr, cpu.spsr), (before.elr, before.spsr));
        assert_eq!(
            fw.call(0, abi::FN_EVENT_STATUS, a(EV, 0, 0)),
            abi::STATUS_REGISTERED | abi::STATUS_ENABLED | abi::STATUS_RUNNING
        );
        // EVENT_CONTEXT reads the interrupted x0..x17.
        for n in [0, 5, 17] {
            assert_eq!(
                fw.call(0, abi::FN_EVENT_CONTEXT, a(n, 0, 0)),
                before.x[n as usize]
            );
        }
        assert_eq!(
            fw.call(0, abi::FN_EVENT_CONTEXT, a(18, 0, 0)) as i64,
            abi::INVALID_PARAMETERS
        );
        // The handler clobbers registers; COMPLETE brings x0..x17, PC and
        // PSTATE back.
        cpu.x[..18].fill(0xdead);
        hvc(
            &mut fw,
            &mut cpu,
            abi::FN_EVENT_COMPLETE,
            a(abi::EV_HANDLED, 0, 0),
        );
        assert_eq!(&cpu.x[..18], &before.x[..18]);
        assert_eq!((cpu.pc, cpu.pstate), (before.pc, before.pstate));
        assert_eq!(cpu.sp_el1, before.sp_el1);
        assert_eq!(
            fw.call(0, abi::FN_EVENT_STATUS, a(EV, 0, 0)),
            abi::STATUS_REGISTERED | abi::STATUS_ENABLED
        );
    }

    #[test]
    fn a_signal_during_the_handler_or_while_disabled_is_held_until_it_may_run() {
        let mut cpu = kernel_cpu();
        let mut fw = registered(&mut cpu);
        hvc(&mut fw, &mut cpu, abi::FN_PE_UNMASK, [0; 5]);
        hvc(&mut fw, &mut cpu, abi::FN_EVENT_DISABLE, a(EV, 0, 0));
        assert_eq!(
            hvc(&mut fw, &mut cpu, abi::FN_APFLAB_SIGNAL, [0; 5]),
            (0, 0)
        );
        assert!(!fw.can_dispatch_now(0));
        assert_eq!(
            hvc(&mut fw, &mut cpu, abi::FN_EVENT_ENABLE, a(EV, 0, 0)),
            (0, 1)
        );
        // In the handler: a new signal waits for the completion, then runs
        // at once, interrupting the same context.
        let interrupted = cpu.x[2];
        assert_eq!(
            hvc(&mut fw, &mut cpu, abi::FN_APFLAB_SIGNAL, [0; 5]),
            (0, 0)
        );
        assert_eq!(
            hvc(&mut fw, &mut cpu, abi::FN_EVENT_COMPLETE, [0; 5]),
            (0, 1)
        );
        assert_eq!((cpu.pc, cpu.x[2]), (ENTRY, interrupted));
        hvc(&mut fw, &mut cpu, abi::FN_EVENT_COMPLETE, [0; 5]);
        assert_eq!(cpu.pc, interrupted);
        // PE_MASK says whether it changed anything.
        assert_eq!(fw.call(0, abi::FN_PE_MASK, [0; 5]), 1);
        assert_eq!(fw.call(0, abi::FN_PE_MASK, [0; 5]), 0);
    }

    #[test]
    fn complete_and_resume_enters_the_resume_address_as_an_irq_from_the_interrupted_context() {
        let mut cpu = kernel_cpu();
        let mut fw = registered(&mut cpu);
        hvc(&mut fw, &mut cpu, abi::FN_APFLAB_SIGNAL, [0; 5]);
        hvc(&mut fw, &mut cpu, abi::FN_PE_UNMASK, [0; 5]);
        let (pc, ps) = (cpu.x[2], cpu.x[3]);
        let saved: Vec<u64> = (0..18)
            .map(|n| fw.call(0, abi::FN_EVENT_CONTEXT, a(n, 0, 0)))
            .collect();
        assert_eq!(
            hvc(
                &mut fw,
                &mut cpu,
                abi::FN_EVENT_COMPLETE_AND_RESUME,
                a(0x4000_0282, 0, 0)
            )
            .0,
            abi::INVALID_PARAMETERS,
            "unaligned resume address"
        );
        assert_eq!(cpu.pc, ENTRY + 4, "still in the handler");
        hvc(
            &mut fw,
            &mut cpu,
            abi::FN_EVENT_COMPLETE_AND_RESUME,
            a(0x4000_0280, 0, 0),
        );
        assert_eq!(cpu.pc, 0x4000_0280);
        assert_eq!((cpu.elr, cpu.spsr), (pc, ps));
        assert_eq!(cpu.pstate, pstate::EL1H_MASKED);
        assert_eq!(&cpu.x[..18], &saved[..]);
        assert_eq!(
            fw.call(0, abi::FN_EVENT_STATUS, a(EV, 0, 0)) & abi::STATUS_RUNNING,
            0
        );
    }

    #[test]
    fn an_interrupted_el0_task_keeps_its_stack_and_gets_it_back() {
        let mut cpu = kernel_cpu();
        let mut fw = registered(&mut cpu);
        hvc(&mut fw, &mut cpu, abi::FN_PE_UNMASK, [0; 5]);
        // A task runs at EL0 on its own stack; the VMM signals (as at a
        // not-present fault) and delivers.
        cpu.pstate = pstate::EL0T;
        cpu.pc = 0x10_0000_1000;
        cpu.sp_el0 = 0x10_0000_7f00;
        let kernel_sp = cpu.sp_el1;
        assert_eq!(fw.signal(0), abi::SUCCESS);
        assert_eq!(deliver(&mut fw, &mut cpu).unwrap(), 1);
        assert_eq!(
            cpu.get_reg(Reg::Sp).unwrap(),
            kernel_sp,
            "handler on SP_EL1"
        );
        assert_eq!(cpu.sp_el0, 0x10_0000_7f00);
        assert_eq!((cpu.x[2], cpu.x[3]), (0x10_0000_1000, pstate::EL0T));
        hvc(&mut fw, &mut cpu, abi::FN_EVENT_COMPLETE, [0; 5]);
        assert_eq!((cpu.pc, cpu.pstate), (0x10_0000_1000, pstate::EL0T));
        assert_eq!(cpu.get_reg(Reg::Sp).unwrap(), 0x10_0000_7f00);
        assert_eq!(cpu.sp_el1, kernel_sp);
    }

    #[test]
    fn unregister_while_the_handler_runs_is_pending_until_complete() {
        let mut cpu = kernel_cpu();
        let mut fw = registered(&mut cpu);
        hvc(&mut fw, &mut cpu, abi::FN_APFLAB_SIGNAL, [0; 5]);
        hvc(&mut fw, &mut cpu, abi::FN_PE_UNMASK, [0; 5]);
        let un = |fw: &mut Firmware| fw.call(0, abi::FN_EVENT_UNREGISTER, a(EV, 0, 0)) as i64;
        assert_eq!(un(&mut fw), abi::PENDING);
        assert_eq!(un(&mut fw), abi::PENDING);
        assert_eq!(fw.signal(0), abi::DENIED);
        assert_eq!(
            fw.call(0, abi::FN_EVENT_ENABLE, a(EV, 0, 0)) as i64,
            abi::DENIED
        );
        hvc(&mut fw, &mut cpu, abi::FN_EVENT_COMPLETE, [0; 5]);
        assert_eq!(fw.call(0, abi::FN_EVENT_STATUS, a(EV, 0, 0)), 0);
        assert_eq!(un(&mut fw), abi::DENIED);
        assert_eq!(fw.call(0, abi::FN_EVENT_REGISTER, a(EV, ENTRY, 0)), 0);
        // PRIVATE_RESET in the handler: DENIED, the event goes at COMPLETE.
        hvc(&mut fw, &mut cpu, abi::FN_EVENT_ENABLE, a(EV, 0, 0));
        assert_eq!(
            hvc(&mut fw, &mut cpu, abi::FN_APFLAB_SIGNAL, [0; 5]),
            (0, 1)
        );
        assert_eq!(
            fw.call(0, abi::FN_PRIVATE_RESET, [0; 5]) as i64,
            abi::DENIED
        );
        hvc(&mut fw, &mut cpu, abi::FN_EVENT_COMPLETE, [0; 5]);
        assert_eq!(fw.call(0, abi::FN_EVENT_STATUS, a(EV, 0, 0)), 0);
        assert_eq!(fw.call(0, abi::FN_PRIVATE_RESET, [0; 5]), 0);
        assert_eq!(fw.call(0, abi::FN_SHARED_RESET, [0; 5]), 0);
    }

    #[test]
    fn bad_arguments_and_wrong_states_get_the_specified_errors() {
        let mut fw = Firmware::new(1);
        let c = |fw: &mut Firmware, f, args| fw.call(0, f, args) as i64;
        for f in [
            abi::FN_EVENT_REGISTER,
            abi::FN_EVENT_ENABLE,
            abi::FN_EVENT_DISABLE,
            abi::FN_EVENT_UNREGISTER,
            abi::FN_EVENT_STATUS,
            abi::FN_EVENT_GET_INFO,
        ] {
            for bad in [0, 1, EV + 1, EV | 1 << 32, u64::MAX] {
                assert_eq!(c(&mut fw, f, a(bad, ENTRY, 0)), abi::INVALID_PARAMETERS);
            }
        }
        assert_eq!(
            c(&mut fw, abi::FN_EVENT_REGISTER, a(EV, ENTRY + 2, 0)),
            abi::INVALID_PARAMETERS
        );
        assert_eq!(
            c(&mut fw, abi::FN_EVENT_REGISTER, [EV, ENTRY, 0, 2, 0]),
            abi::INVALID_PARAMETERS,
            "unknown flag"
        );
        for f in [
            abi::FN_EVENT_ENABLE,
            abi::FN_EVENT_DISABLE,
            abi::FN_EVENT_UNREGISTER,
        ] {
            assert_eq!(c(&mut fw, f, a(EV, 0, 0)), abi::DENIED, "not registered");
        }
        for f in [
            abi::FN_EVENT_CONTEXT,
            abi::FN_EVENT_COMPLETE,
            abi::FN_EVENT_COMPLETE_AND_RESUME,
        ] {
            assert_eq!(c(&mut fw, f, a(0, 0, 0)), abi::DENIED, "no handler running");
        }
        assert_eq!(fw.signal(0), abi::DENIED);
        assert_eq!(c(&mut fw, abi::FN_EVENT_REGISTER, a(EV, ENTRY, 0)), 0);
        assert_eq!(
            c(&mut fw, abi::FN_EVENT_REGISTER, a(EV, ENTRY, 0)),
            abi::DENIED
        );
        assert_eq!(
            c(&mut fw, abi::FN_EVENT_GET_INFO, a(EV, abi::INFO_TYPE, 0)),
            0
        );
        for info in [
            abi::INFO_ROUTING_MODE,
            abi::INFO_ROUTING_AFFINITY,
            5,
            u64::MAX,
        ] {
            assert_eq!(
                c(&mut fw, abi::FN_EVENT_GET_INFO, a(EV, info, 0)),
                abi::INVALID_PARAMETERS
            );
        }
        for f in [
            abi::FN_EVENT_ROUTING_SET,
            abi::FN_INTERRUPT_BIND,
            abi::FN_INTERRUPT_RELEASE,
            abi::FN_BASE + 0x1f,
        ] {
            assert_eq!(c(&mut fw, f, a(EV, 0, 0)), abi::NOT_SUPPORTED);
        }
        // A PE the machine does not have.
        assert_eq!(
            fw.call(7, abi::FN_VERSION, [0; 5]) as i64,
            abi::NOT_SUPPORTED
        );
        assert_eq!(fw.signal(7), abi::DENIED);
        assert_eq!(fw.take_step(7), None);
    }

    #[test]
    fn any_sequence_of_calls_keeps_the_state_consistent_and_never_panics() {
        let mut fw = Firmware::new(1);
        let mut cpu = kernel_cpu();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut entries = 0;
        for _ in 0..20_000 {
            // Half the calls from those that move an event through its
            // life, half from the whole range.
            const LIFE: [u32; 6] = [
                abi::FN_EVENT_REGISTER,
                abi::FN_EVENT_ENABLE,
                abi::FN_PE_UNMASK,
                abi::FN_APFLAB_SIGNAL,
                abi::FN_EVENT_COMPLETE,
                abi::FN_EVENT_COMPLETE_AND_RESUME,
            ];
            let r = next();
            let f = if r % 2 == 0 {
                LIFE[(r >> 8) as usize % LIFE.len()]
            } else {
                abi::FN_BASE + ((r >> 8) % 0x20) as u32
            };
            let pick = |r: u64| match r % 4 {
                0 | 1 => EV,
                2 => ENTRY + (r >> 8) % 2 * 4,
                _ => r,
            };
            let args = [pick(next()), pick(next()), next(), next() % 3, next()];
            entries += hvc(&mut fw, &mut cpu, f, args).1;
            let running = fw.call(0, abi::FN_EVENT_STATUS, a(EV, 0, 0)) & abi::STATUS_RUNNING != 0;
            assert_eq!(running, fw.pes[0].running.is_some());
            assert!(fw.pes[0].completion.is_none(), "every completion delivered");
        }
        assert!(entries > 100, "{entries}");
    }
}
