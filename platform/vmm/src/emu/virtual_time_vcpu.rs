//! The vCPU as the emu run loop drives it: a [`Vcpu`] with its own virtual
//! clock, run for a budget of instructions at a time, interrupts entered
//! between runs, and the engine caches a snapshot and a residency change
//! must drop.
//!
//! [`EmuVcpu`] is the real one. The run loop is generic over this trait so
//! that its handling of exits can be driven by a scripted vCPU in unit
//! tests, the same script the kvm loop's tests drive (see
//! `seam_conformance.rs`).

use apflab_hypervisor::{HypervisorError, Vcpu};

use super::snapshot::VcpuSnapshot;
use super::vcpu::EmuVcpu;

/// A vCPU in virtual time (see the module's comment).
pub(crate) trait VirtualTimeVcpu: Vcpu {
    /// Virtual time of this vCPU, ns.
    fn now_ns(&self) -> u64;
    /// Instructions this vCPU has executed.
    fn instructions(&self) -> u64;
    /// Adds host cost or waiting time to this vCPU's clock.
    fn charge_ns(&mut self, ns: u64);
    /// Moves this vCPU's clock forward to `t` (no-op if already there);
    /// returns how far it moved.
    fn advance_to(&mut self, t: u64) -> u64 {
        let d = t.saturating_sub(self.now_ns());
        self.charge_ns(d);
        d
    }
    /// The instructions left until `ns` of this vCPU's virtual time.
    fn instructions_until(&self, ns: u64) -> u64;
    /// Instructions the next [`Vcpu::run`] may execute.
    fn set_budget(&mut self, instructions: u64);
    /// Whether an interrupt waits for this vCPU to unmask IRQs.
    fn set_irq_waiting(&mut self, waiting: bool);
    /// Takes an IRQ now if the guest has IRQs unmasked; whether it did.
    fn enter_irq(&mut self) -> Result<bool, HypervisorError>;
    /// Starts this vCPU as PSCI CPU_ON does.
    fn power_on(&mut self, entry: u64, context_id: u64) -> Result<(), HypervisorError>;
    /// Drops every cached translation (a page became absent).
    fn flush_tlb(&mut self) -> Result<(), HypervisorError>;
    /// Drops what the engine caches, as at the boot point.
    fn drop_caches(&mut self) -> Result<(), HypervisorError>;
    /// What a snapshot keeps of this vCPU.
    fn save_snapshot(&mut self) -> Result<VcpuSnapshot, HypervisorError>;
    /// Puts this vCPU in the state `saved`.
    fn restore_snapshot(&mut self, saved: &VcpuSnapshot) -> Result<(), HypervisorError>;
    /// Broadcast TLB invalidations made in the VM so far.
    fn shootdowns_made(&self) -> u64;
    /// Sets the VM's count of broadcast TLB invalidations to a snapshot's.
    fn set_shootdowns_made(&self, n: u64);
}

impl VirtualTimeVcpu for EmuVcpu {
    fn now_ns(&self) -> u64 {
        EmuVcpu::now_ns(self)
    }
    fn instructions(&self) -> u64 {
        EmuVcpu::instructions(self)
    }
    fn charge_ns(&mut self, ns: u64) {
        EmuVcpu::charge_ns(self, ns);
    }
    fn instructions_until(&self, ns: u64) -> u64 {
        EmuVcpu::instructions_until(self, ns)
    }
    fn set_budget(&mut self, instructions: u64) {
        EmuVcpu::set_budget(self, instructions);
    }
    fn set_irq_waiting(&mut self, waiting: bool) {
        EmuVcpu::set_irq_waiting(self, waiting);
    }
    fn enter_irq(&mut self) -> Result<bool, HypervisorError> {
        EmuVcpu::enter_irq(self)
    }
    fn power_on(&mut self, entry: u64, context_id: u64) -> Result<(), HypervisorError> {
        EmuVcpu::power_on(self, entry, context_id)
    }
    fn flush_tlb(&mut self) -> Result<(), HypervisorError> {
        EmuVcpu::flush_tlb(self)
    }
    fn drop_caches(&mut self) -> Result<(), HypervisorError> {
        EmuVcpu::drop_caches(self)
    }
    fn save_snapshot(&mut self) -> Result<VcpuSnapshot, HypervisorError> {
        EmuVcpu::save_snapshot(self)
    }
    fn restore_snapshot(&mut self, saved: &VcpuSnapshot) -> Result<(), HypervisorError> {
        EmuVcpu::restore_snapshot(self, saved)
    }
    fn shootdowns_made(&self) -> u64 {
        EmuVcpu::shootdowns_made(self)
    }
    fn set_shootdowns_made(&self, n: u64) {
        EmuVcpu::set_shootdowns_made(self, n);
    }
}
