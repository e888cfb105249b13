//! One vCPU on its own unicorn engine: creating it (guest RAM and device
//! windows mapped, hooks installed, the EL3/EL2 registers fixed so EL1 can
//! turn its MMU on), its virtual clock, and its registers.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use apflab_abi::memory_map::{APF_READY_PPI, PAGE_SIZE, RAM_BASE};
use unicorn_engine::{Arch, Arm64CpuModel, Mode, Prot, RegisterARM64, TlbType, Unicorn};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::absent::AbsentPages;
use super::block_watch::BlockWatch;
use super::debug::{self, DebugHooks, Step};
use super::debug_regs::DebugRegs;
use super::hooks;
use super::icount::Icount;
use super::insn_watch::InsnWatchHooks;
use super::regs::{
    EngineCode, HCR_EL2, HCR_EL2_VALUE, ID_AA64DFR0_EL1, MDCR_EL2, MDCR_EL2_NO_PMU, MPIDR_RES1,
    SCR_EL3, SCR_EL3_VALUE, SPSR_EL1, VMPIDR_EL2, XREGS, cp, engine_err, read_sysreg,
};
use super::shootdown::Shootdowns;
use super::state::{HookState, read_insn};
use crate::config::CostModel;
use apflab_hypervisor::arch::{EntryKind, Reg, insn, mpidr_of, pstate};
use apflab_hypervisor::{CrashReason, HypervisorError, SyncException, Vcpu, VmExit, VmOps};

/// One vCPU on its own unicorn engine.
pub struct EmuVcpu {
    pub(super) index: u32,
    pub(super) uc: Unicorn<'static, HookState>,
    /// The alignment watch's hooks (see `insn_watch.rs`).
    insn_watch: InsnWatchHooks,
    /// The hooks of armed breakpoints and watchpoints (see `debug.rs`).
    debug_hooks: DebugHooks,
}

impl EmuVcpu {
    pub(super) fn new(
        index: u32,
        memory: &GuestMemoryMmap,
        absent: Rc<AbsentPages>,
        shootdowns: Rc<Shootdowns>,
        vcpus: u32,
        ops: Arc<dyn VmOps>,
        cost: CostModel,
    ) -> Result<Self, HypervisorError> {
        let state = HookState {
            index,
            ops,
            cost,
            insns: 0,
            slice_insns: 0,
            budget: u64::MAX,
            icount: Icount::default(),
            run_budget: 0,
            extra_ns: 0,
            pending: None,
            fault: None,
            probing: Cell::new(false),
            stop_requested: false,
            end_slice: false,
            irq_waiting: false,
            debug: DebugRegs::new(0, 0, 0),
            watch: BlockWatch::default(),
            memory: memory.clone(),
            absent,
            shootdowns,
            shootdowns_seen: 0,
            last_fetch: (u64::MAX, 0),
        };
        let mut uc = Unicorn::new_with_data(Arch::ARM64, Mode::ARM, state)
            .map_err(|e| engine_err("create engine", e))?;
        // `-cpu max`, like the QEMU runs the guest is compared with; must be
        // set before any mapping.
        uc.ctl_set_cpu_model(Arm64CpuModel::MAX as i32)
            .map_err(|e| engine_err("select CPU model max", e))?;
        // The engine's TLB pages as large as the guest's smallest ones
        // (4 KiB; unicorn's default is 1 KiB): a TLBI by VA then drops the
        // whole page it names, not only its first KiB. Must precede any
        // mapping.
        uc.ctl_set_page_size(PAGE_SIZE as u32)
            .map_err(|e| engine_err("set the engine's page size", e))?;
        // Translations come from `fill_tlb` (see residency.rs).
        uc.ctl_set_tlb_type(TlbType::VIRTUAL)
            .map_err(|e| engine_err("select the virtual TLB", e))?;
        // No stop address: with the exits list enabled and empty, the
        // `until` of `emu_start` is ignored and no PC ends a run; only a
        // hook or the slice budget does. Any `until` is an address the
        // guest can reach: at 0, a guest that branches to address 0 would
        // run nothing, forever, instead of faulting there; elsewhere, the
        // engine would also translate that address after every run, to
        // drop the exit it compiled there.
        uc.ctl_exits_enable()
            .map_err(|e| engine_err("disable the stop address", e))?;
        let region = memory
            .iter()
            .next()
            .ok_or(HypervisorError::OutsideRam(RAM_BASE))?;
        let base = region.start_addr().0;
        let size = region.len();
        let host = memory
            .get_host_address(GuestAddress(base))
            .map_err(|_| HypervisorError::OutsideRam(base))?;
        // SAFETY: `host` points to the `size` bytes of the guest memory
        // region, which stays mapped as long as `memory` (a clone of which
        // the VM keeps for the lifetime of every engine) lives; all engines
        // share it, which is coherent when all run on one thread.
        unsafe { uc.mem_map_ptr(base, size, Prot::ALL, host.cast()) }
            .map_err(|e| engine_err("map guest RAM", e))?;
        // Everything else is unmapped: an access there is the external
        // abort the bus gives.
        for w in crate::machine::device_windows(vcpus) {
            // The interrupt controller is KVM's in-kernel vGIC.
            let gic = w.device.is_interrupt_controller();
            hooks::map_device(&mut uc, w.base, w.size, gic, gic)
                .map_err(|e| engine_err(format!("map {}", w.device.name()), e))?;
        }
        hooks::install_hooks(&mut uc, (base, base + size))
            .map_err(|e| engine_err("install hooks", e))?;
        // SAFETY: the handle is `uc`'s, which owns the counter (in its
        // hook state) and is only used on this thread.
        let icount = unsafe { Icount::enable(uc.get_handle()) }
            .map_err(|e| engine_err("enable exact instruction counting", e))?;
        let st = uc.get_data_mut();
        st.run_budget = icount.read().budget;
        st.icount = icount;
        uc.reg_write_arm64_coproc(&cp(SCR_EL3).val(SCR_EL3_VALUE))
            .map_err(|e| engine_err("write SCR_EL3", e))?;
        uc.reg_write_arm64_coproc(&cp(HCR_EL2).val(HCR_EL2_VALUE))
            .map_err(|e| engine_err("write HCR_EL2", e))?;
        // No PMU: the engine's counts cycles in host time (it would make
        // runs differ); its registers trap and the ID register says so
        // (see hooks.rs).
        uc.reg_write_arm64_coproc(&cp(MDCR_EL2).val(MDCR_EL2_NO_PMU))
            .map_err(|e| engine_err("write MDCR_EL2", e))?;
        // With EL2 enabled, EL1 reads MPIDR_EL1 from VMPIDR_EL2: each vCPU
        // gets the affinity the device tree gives it.
        uc.reg_write_arm64_coproc(&cp(VMPIDR_EL2).val(MPIDR_RES1 | mpidr_of(index)))
            .map_err(|e| engine_err("write VMPIDR_EL2", e))?;
        uc.reg_write(RegisterARM64::PSTATE, pstate::EL1H_MASKED)
            .map_err(|e| engine_err("write PSTATE", e))?;
        // As many breakpoints and watchpoints as the ID register the guest
        // reads says (BRPs + 1, WRPs + 1; the highest CTX_CMPs + 1
        // breakpoints match contexts).
        let dfr0 =
            read_sysreg(&uc, ID_AA64DFR0_EL1).map_err(|e| engine_err("read ID_AA64DFR0_EL1", e))?;
        uc.get_data_mut().debug = DebugRegs::new(
            ((dfr0 >> 12) & 0xf) as usize + 1,
            ((dfr0 >> 20) & 0xf) as usize + 1,
            ((dfr0 >> 28) & 0xf) as usize + 1,
        );
        Ok(EmuVcpu {
            index,
            uc,
            insn_watch: InsnWatchHooks::default(),
            debug_hooks: DebugHooks::default(),
        })
    }

    /// Virtual time of this vCPU, ns.
    pub fn now_ns(&self) -> u64 {
        self.uc.get_data().now_ns()
    }

    /// Instructions this vCPU has executed.
    pub fn instructions(&self) -> u64 {
        self.uc.get_data().insns
    }

    /// Adds host cost or waiting time to this vCPU's clock.
    pub fn charge_ns(&mut self, ns: u64) {
        let st = self.uc.get_data_mut();
        // Saturating: a clock pinned at the end is past every time limit;
        // a wrapped one would restart the run's time.
        st.extra_ns = st.extra_ns.saturating_add(ns);
    }

    /// Instructions the next [`Vcpu::run`] may execute before returning
    /// [`VmExit::SliceEnd`] (rounded up to a whole block).
    pub fn set_budget(&mut self, instructions: u64) {
        self.uc.get_data_mut().budget = instructions.max(1);
    }

    /// Says whether an interrupt waits for this vCPU to unmask IRQs: the
    /// next [`Vcpu::run`] then ends right after the unmask.
    pub fn set_irq_waiting(&mut self, waiting: bool) {
        let st = self.uc.get_data_mut();
        st.irq_waiting = waiting;
        st.icount.stop_on_irq_unmask(waiting);
    }

    /// The instructions left until `ns` of this vCPU's virtual time.
    pub fn instructions_until(&self, ns: u64) -> u64 {
        let st = self.uc.get_data();
        let d = ns.saturating_sub(st.now_ns());
        ((d as f64 / st.cost.ns_per_instruction).ceil() as u64).max(1)
    }

    /// Drops this engine's TLB if another vCPU broadcast a TLB invalidation
    /// since it last ran (see `shootdown.rs`).
    fn catch_up_shootdowns(&mut self) -> Result<(), HypervisorError> {
        let st = self.uc.get_data_mut();
        let made = st.shootdowns.made();
        if st.shootdowns_seen == made {
            return Ok(());
        }
        st.shootdowns_seen = made;
        st.watch.forget_blocks();
        self.flush_tlb()
    }

    /// Applies a residency change to this engine's view of guest RAM.
    /// Drops every cached translation of this engine.
    pub(crate) fn flush_tlb(&mut self) -> Result<(), HypervisorError> {
        self.uc
            .ctl_flush_tlb()
            .map_err(|e| engine_err("flush the TLB", e))
    }

    fn reg_id(reg: Reg) -> Option<RegisterARM64> {
        Some(match reg {
            Reg::X(n) => *XREGS.get(usize::from(n))?,
            Reg::Sp => RegisterARM64::SP,
            Reg::Pc => RegisterARM64::PC,
            Reg::Pstate => RegisterARM64::PSTATE,
            Reg::SpEl0 => RegisterARM64::SP_EL0,
            Reg::SpEl1 => RegisterARM64::SP_EL1,
            Reg::ElrEl1 => RegisterARM64::ELR_EL1,
            Reg::EsrEl1 => RegisterARM64::ESR_EL1,
            Reg::FarEl1 => RegisterARM64::FAR_EL1,
            Reg::VbarEl1 => RegisterARM64::VBAR_EL1,
            Reg::SpsrEl1 => return None,
        })
    }
}

impl Vcpu for EmuVcpu {
    fn index(&self) -> u32 {
        self.index
    }

    fn run(&mut self) -> Result<VmExit, HypervisorError> {
        {
            let st = self.uc.get_data_mut();
            st.slice_insns = 0;
            st.pending = None;
            st.stop_requested = false;
            st.end_slice = false;
        }
        self.catch_up_shootdowns()?;
        let mut last_block = None;
        let result = loop {
            self.insn_watch.sync(&mut self.uc)?;
            let stepping = self.debug_hooks.sync(&mut self.uc)?;
            let pc = self.get_reg(Reg::Pc)?;
            let result = if stepping {
                match debug::step(&mut self.uc, pc)? {
                    Step::Stop(result) => result,
                    Step::Next => {
                        let st = self.uc.get_data();
                        let unmasked =
                            st.irq_waiting && self.get_reg(Reg::Pstate)? & pstate::I == 0;
                        if st.slice_insns >= st.budget || st.end_slice || unmasked {
                            return Ok(VmExit::SliceEnd);
                        }
                        continue;
                    }
                }
            } else {
                self.uc.get_data_mut().start_run();
                // `until` is ignored (no exits; see `new`).
                let result = self.uc.emu_start(pc, 0, 0, 0);
                let stopped_at = self.get_reg(Reg::Pc)?;
                last_block = self.uc.get_data_mut().finish_run(stopped_at);
                result
            };
            if self.insn_watch.hook_wanted_block(&mut self.uc)? {
                // The alignment watch's block hook stopped before a block
                // it must see; the block now has its code hook.
                let st = self.uc.get_data_mut();
                if st.pending.is_none() && st.fault.is_none() && result.is_ok() {
                    st.stop_requested = false;
                    continue;
                }
            }
            let st = self.uc.get_data_mut();
            // An exit a hook decided on (an SVC, say) comes first: a fault
            // recorded after it is the engine fetching on before it
            // stopped, which the guest would not see (it re-faults when
            // the guest gets back there).
            let fault = st.fault.take().filter(|_| st.pending.is_none());
            let Some(fault) = fault else {
                break result;
            };
            // The guest takes it to its own vectors and the slice goes on:
            // on hardware no exception here leaves the guest.
            if let Some(crash) = self.take_fault(fault)? {
                return Ok(crash);
            }
            let st = self.uc.get_data_mut();
            st.pending = None;
            if st.slice_insns >= st.budget || st.end_slice {
                return Ok(VmExit::SliceEnd);
            }
            st.stop_requested = false;
        };
        if let Some(exit) = self.uc.get_data_mut().pending.take() {
            return Ok(exit);
        }
        let pc = self.get_reg(Reg::Pc)?;
        match result {
            Ok(()) => {
                // WFI ends the engine's run with PC past it and no hook: the
                // last block entered ends right there with a WFI.
                if last_block.is_some_and(|(_, end)| end == pc)
                    && read_insn(&self.uc, pc.wrapping_sub(4)) == Some(insn::WFI)
                {
                    Ok(VmExit::Wfi)
                } else {
                    Ok(VmExit::SliceEnd)
                }
            }
            Err(e) => Ok(VmExit::Crash {
                pc,
                addr: None,
                reason: CrashReason::EngineStopped(Arc::new(EngineCode(e))),
            }),
        }
    }

    fn get_reg(&self, reg: Reg) -> Result<u64, HypervisorError> {
        match Self::reg_id(reg) {
            Some(id) => self
                .uc
                .reg_read(id)
                .map_err(|e| engine_err(format!("read {reg:?}"), e)),
            None => read_sysreg(&self.uc, SPSR_EL1).map_err(|e| engine_err("read SPSR_EL1", e)),
        }
    }

    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), HypervisorError> {
        match Self::reg_id(reg) {
            Some(id) => self
                .uc
                .reg_write(id, value)
                .map_err(|e| engine_err(format!("write {reg:?}"), e)),
            None => self
                .uc
                .reg_write_arm64_coproc(&cp(SPSR_EL1).val(value))
                .map_err(|e| engine_err("write SPSR_EL1", e)),
        }
    }

    fn inject_exception(&mut self, exc: SyncException) -> Result<(), HypervisorError> {
        self.enter_el1(EntryKind::Sync, exc.return_pc, Some(exc.esr), Some(exc.far))
    }

    fn set_ready_line(&mut self, level: bool) -> Result<(), HypervisorError> {
        let st = self.uc.get_data();
        st.ops.set_irq_line(self.index, APF_READY_PPI, level);
        Ok(())
    }
}
