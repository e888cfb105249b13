//! The emu backend: guest code runs on unicorn-engine's software arm64 CPU
//! (QEMU TCG), one engine per vCPU, all on the calling thread (`Unicorn` is
//! `!Send`, and one thread makes exclusives exact and runs deterministic).
//!
//! Measured facts about unicorn this relies on: exceptions never
//! reach the guest's vectors (the interrupt hook sees them and this backend
//! builds the exception entry), there is no GIC and no timer output (the
//! [`crate::machine::Machine`] emulates them through system register hooks),
//! the counters must be hooked to be deterministic, and SCR_EL3/HCR_EL2 need
//! fixing before EL1 code can turn its MMU on.
//!
//! Virtual time of a vCPU = instructions (counted by the engine itself, in
//! its translated code: `icount`) x `ns_per_instruction` + host costs
//! charged by the cost model + time spent halted or stalled. The engine is
//! unicorn 2.1.5 built with the patches in `third_party/unicorn`.
//!
//! One file per concept: [`vcpu`] (the engine of one vCPU and its
//! registers), `icount` (the engine's instruction counter and slice
//! budget), `hooks` (what unicorn calls back: MMIO, system registers, CPU
//! exceptions), `tlb` (the virtual TLB fill: the guest's
//! stage-1 walk plus the pager's word on the page), `entry` (exception and
//! IRQ entry, which the software CPU never does itself), `fault` (what a
//! hook saw the guest fault on) and `exception` (its syndrome, and the
//! entry to the guest's vector), `debug_regs` (the debug registers as the
//! guest programs them) and `debug` (the hooks and single-instruction runs
//! that enforce its breakpoints, watchpoints and software step),
//! `block_watch` and `insn_watch` (the alignment checks the software CPU
//! lacks), `residency` (absent pages) and `run` (the scheduler of all
//! vCPUs in virtual time). `id_regs` hides the features the guest cannot
//! have faithfully, `shootdown` makes broadcast TLB invalidations reach
//! every engine, `snapshot` saves and restores one engine for
//! [`crate::snapshot`]. `state` is what the hooks of one engine share,
//! `absent` the bitmap of withheld pages, `regs` the register ids the
//! files share.
//!
//! The files form layers, with no import cycle: the data of one concept
//! (`fault`, `debug_regs`, `block_watch`, `icount`, ...) below `state`,
//! which holds them; the hooks of one concept above it; `hooks`, which
//! installs them, above those; `vcpu` on top.
pub(crate) mod absent;
mod block_watch;
mod debug;
mod debug_regs;
mod entry;
mod exception;
mod fault;
mod hooks;
mod icount;
mod id_regs;
mod insn_watch;
mod regs;
pub(crate) mod residency;
pub(crate) mod run;
mod shootdown;
pub(crate) mod snapshot;
mod state;
mod tlb;
pub mod vcpu;
pub(crate) mod virtual_time_vcpu;

pub use residency::EmuResidency;
pub use vcpu::EmuVcpu;

use std::rc::Rc;
use std::sync::Arc;

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use self::absent::AbsentPages;
use self::shootdown::Shootdowns;
use crate::config::CostModel;
use apflab_hypervisor::{Hypervisor, HypervisorError, VmOps};

/// The emu VM: guest RAM and the engines' common settings.
pub struct EmuVm {
    memory: GuestMemoryMmap,
    cost: CostModel,
    vcpus: u32,
    absent: Rc<AbsentPages>,
    shootdowns: Rc<Shootdowns>,
}

impl EmuVm {
    /// A VM over `memory` (one region at RAM_BASE) for `vcpus` vCPUs.
    pub fn new(memory: GuestMemoryMmap, vcpus: u32, cost: CostModel) -> Self {
        let ram_size = memory.iter().map(|r| r.len()).sum();
        EmuVm {
            memory,
            cost,
            vcpus,
            absent: Rc::new(AbsentPages::new(ram_size)),
            shootdowns: Rc::default(),
        }
    }

    /// Page residency of this VM's RAM (all resident at first).
    pub fn residency(&self) -> EmuResidency {
        EmuResidency::new(self.memory.clone(), self.absent.clone())
    }
}

impl Hypervisor for EmuVm {
    type Vcpu = EmuVcpu;

    fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    fn create_vcpu(&mut self, index: u32, ops: Arc<dyn VmOps>) -> Result<EmuVcpu, HypervisorError> {
        if index >= self.vcpus {
            return Err(HypervisorError::NoSuchVcpu(index));
        }
        EmuVcpu::new(
            index,
            &self.memory,
            self.absent.clone(),
            self.shootdowns.clone(),
            self.vcpus,
            ops,
            self.cost,
        )
    }
}
