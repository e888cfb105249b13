//! The interrupt controller and what drives its per-CPU lines: the GICv3
//! and each vCPU's generic timers, whose outputs are its PPIs. They share
//! one lock because a timer access changes a GIC line and an acknowledge
//! must see the timer lines as of now. Also kept here: when another vCPU
//! (or the fault engine) last sent a vCPU an interrupt, which a halted vCPU
//! must not sleep past.

use serde::{Deserialize, Serialize};

use crate::devices::gic::Gic;
use crate::devices::timer::CpuTimers;
use apflab_hypervisor::arch::{SysRegId, sysreg};

/// The GIC, the timers wired to it and the wake-up hints of every vCPU.
#[derive(Clone, Serialize, Deserialize)]
pub struct Interrupts {
    pub(crate) gic: Gic,
    pub(crate) timers: Vec<CpuTimers>,
    /// Earliest virtual time at which an interrupt was sent to a vCPU by
    /// another one since it last ran (a halted vCPU wakes no earlier).
    pub(crate) wake_hints: Vec<Option<u64>>,
}

impl Interrupts {
    /// Reset state for `vcpus` CPUs.
    pub fn new(vcpus: u32) -> Self {
        let n = vcpus as usize;
        Interrupts {
            gic: Gic::new(vcpus),
            timers: vec![CpuTimers::default(); n],
            wake_hints: vec![None; n],
        }
    }

    /// Brings `vcpu`'s timer lines on the GIC up to date at `now_ns`.
    pub fn update_timer_lines(&mut self, vcpu: u32, now_ns: u64) {
        if let Some(levels) = self.timers.get(vcpu as usize).map(|t| t.irq_levels(now_ns)) {
            for (intid, level) in levels {
                self.gic.set_level(vcpu, intid, level);
            }
        }
    }

    /// Next virtual time at which one of `vcpu`'s timers fires, if armed.
    pub fn timer_deadline(&self, vcpu: u32, now_ns: u64) -> Option<u64> {
        self.timers
            .get(vcpu as usize)
            .and_then(|t| t.deadline_ns(now_ns))
    }

    /// Records that an interrupt was sent to `vcpu` at `at_ns`.
    pub fn hint_wake(&mut self, vcpu: u32, at_ns: u64) {
        if let Some(h) = self.wake_hints.get_mut(vcpu as usize) {
            *h = Some(h.map_or(at_ns, |old| old.min(at_ns)));
        }
    }

    /// An MRS of a timer or GIC CPU-interface register by `vcpu`: its
    /// value, if it is one of theirs.
    pub fn sysreg_read(&mut self, vcpu: u32, reg: SysRegId, now_ns: u64) -> Option<u64> {
        if let Some(v) = self
            .timers
            .get(vcpu as usize)
            .and_then(|t| t.read(reg, now_ns))
        {
            return Some(v);
        }
        // Acknowledge sees the timer lines as of now.
        if reg == sysreg::ICC_IAR1_EL1 {
            self.update_timer_lines(vcpu, now_ns);
        }
        self.gic.sysreg_read(vcpu, reg)
    }

    /// An MSR of a timer or GIC CPU-interface register by `vcpu`: whether
    /// it was one of theirs, and whether it sent SGIs (whose targets get a
    /// wake-up hint).
    pub fn sysreg_write(
        &mut self,
        vcpu: u32,
        reg: SysRegId,
        value: u64,
        now_ns: u64,
    ) -> SysregWrite {
        if let Some(t) = self.timers.get_mut(vcpu as usize)
            && t.write(reg, value, now_ns)
        {
            self.update_timer_lines(vcpu, now_ns);
            return SysregWrite::Handled;
        }
        match self.gic.sysreg_write(vcpu, reg, value) {
            Some(targets) => {
                for t in targets {
                    self.hint_wake(t, now_ns);
                }
                if reg == sysreg::ICC_SGI1R_EL1 {
                    SysregWrite::SentSgi
                } else {
                    SysregWrite::Handled
                }
            }
            None => SysregWrite::NotOurs,
        }
    }
}

/// What [`Interrupts::sysreg_write`] made of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysregWrite {
    /// Not a timer or GIC register.
    NotOurs,
    /// Written.
    Handled,
    /// An SGI generation register (counted as an exit: it is one on
    /// hardware without direct injection).
    SentSgi,
}
