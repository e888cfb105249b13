//! The backend interface, in the shape of Cloud Hypervisor's `hypervisor`
//! crate: a VM-level object that owns guest memory and creates vCPUs, and a
//! [`Vcpu`] that runs guest code to its next [`VmExit`].
//!
//! Device and system register accesses never come back out of
//! [`Vcpu::run`]: every backend completes them inside `run` through the
//! [`VmOps`] it was created with (implemented by
//! the VMM's machine), whether the access happens in the middle
//! of an instruction (emu) or after a return to userspace (kvm). So
//! [`VmExit`] holds only what a run loop must decide on: hypercalls, WFI,
//! SVC, not-resident pages, crashes, system events and slice ends.

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use apflab_abi::addr::Gpa;

use crate::arch::{Reg, SysRegId, pstate};
use crate::crash::CrashReason;

/// Errors of a backend operation.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// The engine refused an operation (names the operation and the
    /// engine's error).
    #[error("{backend} backend: {op} failed: {source}")]
    Engine {
        /// `emu` or `kvm`.
        backend: &'static str,
        /// What was attempted.
        op: String,
        /// The engine's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A register the backend has no way to reach.
    #[error("{backend} backend: {op} failed: no such register")]
    NoSuchRegister {
        /// `emu` or `kvm`.
        backend: &'static str,
        /// What was attempted.
        op: String,
    },
    /// A vCPU index beyond what the VM has.
    #[error("no vCPU {0}")]
    NoSuchVcpu(u32),
    /// A guest physical address outside guest RAM.
    #[error("guest address {0:#x} is outside guest RAM")]
    OutsideRam(u64),
}

/// How a hypercall reached the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conduit {
    /// `hvc #0`.
    Hvc,
    /// `smc #0`.
    Smc,
    /// The MMIO doorbell page.
    Doorbell,
}

/// A guest access to a page that is not resident (the pager withheld it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotResidentFault {
    /// The first address of the page (the access, or the stage-1 table
    /// read its translation needed, is somewhere in it).
    pub gpa: Gpa,
    /// Whether it was a write.
    pub write: bool,
    /// Whether it was an instruction fetch.
    pub fetch: bool,
    /// PC of the faulting instruction (it has not executed).
    pub pc: u64,
    /// Virtual address of the access (FAR_EL1 of the abort the hardware
    /// would have taken).
    pub va: u64,
    /// Exception level the access was made at (0: a user task, 1: the
    /// kernel).
    pub el: u8,
    /// Whether IRQs were masked (PSTATE.I) at the access: a kernel that
    /// faults with IRQs unmasked could take an interrupt there, so it can
    /// also take an asynchronous "not present" and wait for "ready".
    pub irqs_masked: bool,
}

/// What a guest access to a page did, as far as the fault engine cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageAccess {
    /// A data read, or a read of a stage-1 table its translation needed.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Fetch,
}

impl NotResidentFault {
    /// The fault of `access` to the page at `gpa` by the instruction at
    /// `pc`, to virtual address `va`, from a vCPU whose PSTATE is `pstate`
    /// (which gives the exception level and the IRQ mask).
    pub fn new(gpa: Gpa, access: PageAccess, pc: u64, va: u64, pstate: u64) -> Self {
        NotResidentFault {
            gpa,
            write: access == PageAccess::Write,
            fetch: access == PageAccess::Fetch,
            pc,
            va,
            el: u8::from(pstate & pstate::MODE_MASK != pstate::EL0T),
            irqs_masked: pstate & pstate::I != 0,
        }
    }
}

/// Why [`Vcpu::run`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// HVC/SMC (PC already past the instruction).
    Hypercall {
        /// x0 / function id.
        function: u32,
        /// x1..x5.
        args: [u64; 5],
        /// How it arrived.
        conduit: Conduit,
    },
    /// The vCPU executed WFI (PC past it) and waits for an interrupt.
    Wfi,
    /// Access to a not-resident page; the instruction did not execute.
    NotResident(NotResidentFault),
    /// `svc #imm` (PC past it). The VMM injects the exception entry.
    Svc {
        /// The immediate.
        imm: u16,
    },
    /// Nothing to decide but what the loop checks after every exit: the emu
    /// slice budget is used up, a doorbell call was made (its effects and
    /// any engine call are queued in the machine), or the vCPU was kicked.
    SliceEnd,
    /// The guest did something the machine cannot continue from: an
    /// exception with no vector table to take it (the CPU would take it
    /// again forever), a translation setup the VMM does not implement, an
    /// engine failure. (Exceptions the guest can take go to its vectors.)
    Crash {
        /// PC of the instruction.
        pc: u64,
        /// Faulting address, when known.
        addr: Option<u64>,
        /// What happened.
        reason: CrashReason,
    },
    /// The backend saw the machine power off or reset by itself (kvm
    /// in-kernel PSCI `SYSTEM_EVENT`).
    SystemEvent {
        /// true = reset, false = power off.
        reset: bool,
    },
}

impl VmExit {
    /// Name used for this exit in the VMM's exit counts.
    pub fn metric_name(&self) -> &'static str {
        match self {
            VmExit::Hypercall { .. } => "hypercall",
            VmExit::Wfi => "wfi",
            VmExit::NotResident(_) => "not_resident",
            VmExit::Svc { .. } => "svc",
            VmExit::SliceEnd => "slice_end",
            VmExit::Crash { .. } => "crash",
            VmExit::SystemEvent { .. } => "system_event",
        }
    }
}

/// A synchronous exception to deliver to the guest at EL1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncException {
    /// ESR_EL1 value.
    pub esr: u64,
    /// FAR_EL1 value (0 when not meaningful).
    pub far: u64,
    /// Return address written to ELR_EL1: for a fault, the faulting
    /// instruction (re-executed after the handler); for SVC, the next one.
    pub return_pc: u64,
}

/// What an MMIO write did, for the backend's bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioWriteKind {
    /// A device register write.
    Plain,
    /// A doorbell hypercall was made (charge a hypercall; effects may be
    /// queued for the vCPU loop).
    Hypercall,
}

/// Device and system register handling a backend calls while an access is
/// in flight, inside [`Vcpu::run`]. Implemented by
/// the VMM's machine.
pub trait VmOps: Send + Sync {
    /// Whether a device answers at `addr` (outside RAM). An access where
    /// none does is a decode error on the bus: the backend raises the
    /// synchronous external abort instead of calling the device methods.
    fn decodes(&self, addr: u64) -> bool;
    /// An MMIO read of `data.len()` bytes at `addr` by vCPU `vcpu` at
    /// virtual time `now_ns`.
    fn mmio_read(&self, vcpu: u32, addr: u64, data: &mut [u8], now_ns: u64);
    /// [`VmOps::mmio_read`] of `len` bytes (at most 8) as the little-endian
    /// value a load puts in its register.
    fn mmio_read_value(&self, vcpu: u32, addr: u64, len: usize, now_ns: u64) -> u64 {
        let mut buf = [0u8; 8];
        self.mmio_read(vcpu, addr, &mut buf[..len.min(8)], now_ns);
        u64::from_le_bytes(buf)
    }
    /// An MMIO write; says whether it was a doorbell hypercall.
    fn mmio_write(&self, vcpu: u32, addr: u64, data: &[u8], now_ns: u64) -> MmioWriteKind;
    /// A read of an emulated system register; `None` if the register is not
    /// one the VMM emulates.
    fn sysreg_read(&self, vcpu: u32, reg: SysRegId, now_ns: u64) -> Option<u64>;
    /// A write of an emulated system register; false if not emulated.
    fn sysreg_write(&self, vcpu: u32, reg: SysRegId, value: u64, now_ns: u64) -> bool;
    /// Drives the level of host-owned interrupt line `intid` (a PPI) of
    /// `vcpu` on the emulated interrupt controller.
    fn set_irq_line(&self, vcpu: u32, intid: u32, level: bool);
}

/// One virtual CPU.
pub trait Vcpu {
    /// Index of this vCPU (0 = boot CPU).
    fn index(&self) -> u32;
    /// Runs guest code until the next exit.
    fn run(&mut self) -> Result<VmExit, HypervisorError>;
    /// Reads a register.
    fn get_reg(&self, reg: Reg) -> Result<u64, HypervisorError>;
    /// Writes a register.
    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), HypervisorError>;
    /// Enters the guest's EL1 synchronous exception vector, as the CPU would
    /// for `exc`.
    fn inject_exception(&mut self, exc: SyncException) -> Result<(), HypervisorError>;
    /// Sets the level of this vCPU's "page ready" PPI
    /// ([`apflab_abi::memory_map::APF_READY_PPI`]). Level semantics: the
    /// interrupt controller delivers it once the guest can take it, and
    /// nothing is lost while the guest has IRQs masked.
    fn set_ready_line(&mut self, level: bool) -> Result<(), HypervisorError>;
}

/// A VM: guest memory plus the vCPUs running in it.
pub trait Hypervisor {
    /// The vCPU type.
    type Vcpu: Vcpu;
    /// Guest RAM.
    fn memory(&self) -> &GuestMemoryMmap;
    /// Creates vCPU `index`; its device accesses go to `ops`.
    fn create_vcpu(
        &mut self,
        index: u32,
        ops: Arc<dyn VmOps>,
    ) -> Result<Self::Vcpu, HypervisorError>;
}

/// Per-page residency control: the primitive the pager plugs into.
///
/// A page marked absent makes the next guest access to it return
/// [`VmExit::NotResident`] with the instruction not executed. The VMM (or
/// the VMM's pager) reads and writes the page's content through guest memory
/// directly; residency only governs guest accesses.
pub trait Residency {
    /// Marks the 4 KiB page holding `gpa` present or absent for the guest.
    fn set_resident(&mut self, gpa: Gpa, resident: bool) -> Result<(), HypervisorError>;
    /// Whether the page holding `gpa` is present.
    fn is_resident(&self, gpa: Gpa) -> bool;
    /// Guest RAM (to fill or save a page's content).
    fn guest_memory(&self) -> &GuestMemoryMmap;
}
