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
//! Virtual time of a vCPU = instructions (counted by a block hook) x
//! `ns_per_instruction` + host costs charged by the cost model + time spent
//! halted or stalled.

mod residency;

pub use residency::EmuResidency;

use std::rc::Rc;
use std::sync::Arc;

use apflab_abi::memory_map::{
    DOORBELL_BASE, DOORBELL_SIZE, GICD_BASE, GICD_SIZE, GICR_BASE, GICR_STRIDE, PAGE_SIZE,
    RAM_BASE, UART_BASE, UART_SIZE,
};
use unicorn_engine::{
    Arch, Arm64CpuModel, Arm64Insn, HookType, MemType, Mode, Prot, RegisterARM64, RegisterARM64CP,
    TlbEntry, TlbType, Unicorn,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use self::residency::AbsentPages;
use crate::kvm::stage1::{GuestPhysMem, Permissions, TranslationRegs, Walk};

use crate::arch::{self, EntryKind, Reg, SysRegId, insn, pstate, sysreg};
use crate::config::CostModel;
use crate::hypervisor::{
    Conduit, Hypervisor, HypervisorError, MmioWriteKind, NotResidentFault, SyncException, Vcpu,
    VmExit, VmOps,
};

/// QEMU exception numbers seen by the interrupt hook.
mod excp {
    pub const UDEF: u32 = 1;
    pub const SWI: u32 = 2;
    pub const PREFETCH_ABORT: u32 = 3;
    pub const DATA_ABORT: u32 = 4;
    pub const BKPT: u32 = 7;
    pub const HVC: u32 = 11;
    pub const SMC: u32 = 13;
}

/// SCR_EL3 = NS | HCE | RW: EL1 is AArch64 non-secure and HVC is enabled
/// (at reset SCR_EL3 is 0 and EL1 translation breaks).
const SCR_EL3_VALUE: u64 = (1 << 0) | (1 << 8) | (1 << 10);
/// HCR_EL2 = RW: EL1 is AArch64.
const HCR_EL2_VALUE: u64 = 1 << 31;

fn cp(reg: SysRegId) -> RegisterARM64CP {
    RegisterARM64CP::new()
        .op0(u32::from(reg.op0))
        .op1(u32::from(reg.op1))
        .crn(u32::from(reg.crn))
        .crm(u32::from(reg.crm))
        .op2(u32::from(reg.op2))
}

const SCR_EL3: SysRegId = SysRegId::new(3, 6, 1, 1, 0);
/// DAIF, written by `msr daif, xN`.
const DAIF: SysRegId = SysRegId::new(3, 3, 4, 2, 1);
const SCTLR_EL1: SysRegId = SysRegId::new(3, 0, 1, 0, 0);
const TCR_EL1: SysRegId = SysRegId::new(3, 0, 2, 0, 2);
const HCR_EL2: SysRegId = SysRegId::new(3, 4, 1, 1, 0);
const SPSR_EL1: SysRegId = SysRegId::new(3, 0, 4, 0, 0);

/// General purpose registers in unicorn's numbering.
const XREGS: [RegisterARM64; 31] = {
    use RegisterARM64 as R;
    [
        R::X0,
        R::X1,
        R::X2,
        R::X3,
        R::X4,
        R::X5,
        R::X6,
        R::X7,
        R::X8,
        R::X9,
        R::X10,
        R::X11,
        R::X12,
        R::X13,
        R::X14,
        R::X15,
        R::X16,
        R::X17,
        R::X18,
        R::X19,
        R::X20,
        R::X21,
        R::X22,
        R::X23,
        R::X24,
        R::X25,
        R::X26,
        R::X27,
        R::X28,
        R::X29,
        R::X30,
    ]
};

fn engine_err(op: impl Into<String>, e: unicorn_engine::uc_error) -> HypervisorError {
    HypervisorError::Engine {
        backend: "emu",
        op: op.into(),
        detail: format!("{e:?}"),
    }
}

/// Per-engine state the hooks work on.
struct HookState {
    index: u32,
    ops: Arc<dyn VmOps>,
    cost: CostModel,
    /// Instructions executed in total (counted per block at block entry).
    insns: u64,
    /// Instructions in the current slice.
    slice_insns: u64,
    /// Slice budget.
    budget: u64,
    /// Virtual ns not due to instructions (host costs, halts, stalls).
    extra_ns: u64,
    /// The exit a hook decided on.
    pending: Option<VmExit>,
    /// A hook asked the engine to stop.
    stop_requested: bool,
    /// A hook asked for the slice to end at the next block boundary.
    end_slice: bool,
    /// End address of the last block entered (to recognise WFI).
    last_block_end: u64,
    /// Guest RAM, for the stage-1 walks of TLB fills.
    memory: GuestMemoryMmap,
    /// Pages the pager withholds.
    absent: Rc<AbsentPages>,
}

/// Guest RAM as the stage-1 walk of a TLB fill reads it.
struct WalkMemory<'a> {
    memory: &'a GuestMemoryMmap,
    absent: &'a AbsentPages,
}

impl GuestPhysMem for WalkMemory<'_> {
    fn is_resident(&self, ipa: u64) -> bool {
        !self.absent.is_absent(ipa)
    }
    fn read_u64(&self, ipa: u64) -> Option<u64> {
        self.memory.read_obj::<u64>(GuestAddress(ipa)).ok()
    }
    fn read_u32(&self, ipa: u64) -> Option<u32> {
        self.memory.read_obj::<u32>(GuestAddress(ipa)).ok()
    }
}

impl HookState {
    fn now_ns(&self) -> u64 {
        self.extra_ns + (self.insns as f64 * self.cost.ns_per_instruction) as u64
    }
}

/// The engine's TLB fill for the page at `va`: the guest's stage-1 walk,
/// its permissions for the current exception level, and the pager's word on
/// the target page. `None` fails the access before it has any effect; the
/// reason is left in `pending` for [`Vcpu::run`] to return.
fn fill_tlb(uc: &mut Unicorn<'_, HookState>, va: u64, kind: MemType) -> Option<TlbEntry> {
    let pc = uc.pc_read().unwrap_or(0);
    let el0 = uc.reg_read(RegisterARM64::PSTATE).unwrap_or(0) & pstate::MODE_MASK == 0;
    let regs = translation_regs(uc);
    let st = uc.get_data_mut();
    let mem = WalkMemory {
        memory: &st.memory,
        absent: &st.absent,
    };
    let crash = |reason: String| VmExit::Crash {
        pc,
        addr: Some(va),
        reason,
    };
    let (exit, entry) = match regs.map(|r| r.walk(va, &mem)) {
        Ok(Ok(Walk::Leaf { ipa, desc })) => {
            let page = ipa & !(PAGE_SIZE - 1);
            let perms = Permissions::of(desc, el0);
            let allowed = match kind {
                MemType::WRITE => perms.write,
                MemType::FETCH => perms.exec,
                _ => perms.read,
            };
            if !allowed {
                let what = match kind {
                    MemType::WRITE => "write to",
                    MemType::FETCH => "instruction fetch from",
                    _ => "read of",
                };
                let el = if el0 { 0 } else { 1 };
                (
                    Some(crash(format!(
                        "permission fault: EL{el} {what} virtual address {va:#x} (descriptor {:#x})",
                        desc.unwrap_or(0)
                    ))),
                    None,
                )
            } else if st.absent.is_absent(page) {
                (
                    Some(VmExit::NotResident(NotResidentFault {
                        ipa: page,
                        write: kind == MemType::WRITE,
                        fetch: kind == MemType::FETCH,
                        pc,
                    })),
                    None,
                )
            } else {
                let mut prot = Prot::NONE;
                for (ok, p) in [
                    (perms.read, Prot::READ),
                    (perms.write, Prot::WRITE),
                    (perms.exec, Prot::EXEC),
                ] {
                    if ok {
                        prot |= p;
                    }
                }
                (
                    None,
                    // The engine's TLB pages are 1 KiB (the smallest arm
                    // granule QEMU supports): map exactly the one asked for.
                    Some(TlbEntry {
                        paddr: ipa,
                        perms: prot,
                    }),
                )
            }
        }
        Ok(Ok(Walk::NeedsPage(ipa))) => (
            Some(VmExit::NotResident(NotResidentFault {
                ipa,
                write: false,
                fetch: false,
                pc,
            })),
            None,
        ),
        Ok(Err(e)) => (Some(crash(format!("translation fault: {e}"))), None),
        Err(e) => (
            Some(crash(format!("cannot read the MMU registers: {e}"))),
            None,
        ),
    };
    if exit.is_some() {
        st.pending = exit;
    }
    entry
}

/// A guest access to a physical address where nothing is mapped: the run
/// fails naming it (pages the pager withholds never get here; they fail
/// their TLB fill).
fn unmapped_access(
    uc: &mut Unicorn<'_, HookState>,
    kind: MemType,
    addr: u64,
    _size: usize,
    _value: i64,
) -> bool {
    let pc = uc.pc_read().unwrap_or(0);
    let what = match kind {
        MemType::WRITE_UNMAPPED => "write",
        MemType::FETCH_UNMAPPED => "instruction fetch",
        _ => "read",
    };
    uc.get_data_mut().pending = Some(VmExit::Crash {
        pc,
        addr: Some(addr),
        reason: format!("{what} of unmapped guest physical address {addr:#x}"),
    });
    false
}

/// The vCPU's EL1&0 translation registers.
fn translation_regs(uc: &Unicorn<'_, HookState>) -> Result<TranslationRegs, String> {
    let coproc = |reg: SysRegId| {
        let mut c = cp(reg);
        uc.reg_read_arm64_coproc(&mut c)
            .map(|()| c.val)
            .map_err(|e| format!("{e:?}"))
    };
    let reg = |r: RegisterARM64| uc.reg_read(r).map_err(|e| format!("{e:?}"));
    Ok(TranslationRegs {
        sctlr: coproc(SCTLR_EL1)?,
        tcr: coproc(TCR_EL1)?,
        ttbr0: reg(RegisterARM64::TTBR0_EL1)?,
        ttbr1: reg(RegisterARM64::TTBR1_EL1)?,
    })
}

/// Completes an emulated access to a system register the engine does not
/// know (the GIC CPU interface). The engine translates such an access as an
/// undefined instruction that ends the block, with PC synced to the access
/// itself; skipping it from the hook would leave PC there and run it again
/// forever. Moving PC past it from the hook makes the engine go on after it.
fn step_over_unknown_sysreg(uc: &mut Unicorn<'_, HookState>, reg: SysRegId) {
    if sysreg::is_gic_cpu_interface(reg)
        && let Ok(pc) = uc.pc_read()
    {
        let _ = uc.set_pc(pc + 4);
    }
}

fn request_stop(uc: &mut Unicorn<'_, HookState>) {
    let st = uc.get_data_mut();
    if !st.stop_requested {
        st.stop_requested = true;
        // Cannot fail on a running engine; if it did, the slice budget
        // still ends the run.
        let _ = uc.emu_stop();
    }
}

/// Reads the instruction word at virtual address `va` as the CPU would
/// fetch it.
fn read_insn(uc: &Unicorn<'_, HookState>, va: u64) -> Option<u32> {
    let mut b = [0u8; 4];
    uc.vmem_read(va, Prot::EXEC, &mut b).ok()?;
    Some(u32::from_le_bytes(b))
}

/// The emu VM: guest RAM and the engines' common settings.
pub struct EmuVm {
    memory: GuestMemoryMmap,
    cost: CostModel,
    vcpus: u32,
    absent: Rc<AbsentPages>,
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
            self.vcpus,
            ops,
            self.cost,
        )
    }
}

/// One vCPU on its own unicorn engine.
pub struct EmuVcpu {
    index: u32,
    uc: Unicorn<'static, HookState>,
}

impl EmuVcpu {
    fn new(
        index: u32,
        memory: &GuestMemoryMmap,
        absent: Rc<AbsentPages>,
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
            extra_ns: 0,
            pending: None,
            stop_requested: false,
            end_slice: false,
            last_block_end: 0,
            memory: memory.clone(),
            absent,
        };
        let mut uc = Unicorn::new_with_data(Arch::ARM64, Mode::ARM, state)
            .map_err(|e| engine_err("create engine", e))?;
        // `-cpu max`, like the QEMU runs the guest is compared with; must be
        // set before any mapping.
        uc.ctl_set_cpu_model(Arm64CpuModel::MAX as i32)
            .map_err(|e| engine_err("select CPU model max", e))?;
        // Translations come from `fill_tlb` (see residency.rs).
        uc.ctl_set_tlb_type(TlbType::VIRTUAL)
            .map_err(|e| engine_err("select the virtual TLB", e))?;
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
        for (name, base, size) in [
            ("pl011", UART_BASE, UART_SIZE),
            ("gic distributor", GICD_BASE, GICD_SIZE),
            (
                "gic redistributors",
                GICR_BASE,
                GICR_STRIDE * u64::from(vcpus),
            ),
            ("doorbell", DOORBELL_BASE, DOORBELL_SIZE),
        ] {
            Self::map_device(&mut uc, base, size)
                .map_err(|e| engine_err(format!("map {name}"), e))?;
        }
        Self::install_hooks(&mut uc, (base, base + size))
            .map_err(|e| engine_err("install hooks", e))?;
        uc.reg_write_arm64_coproc(&cp(SCR_EL3).val(SCR_EL3_VALUE))
            .map_err(|e| engine_err("write SCR_EL3", e))?;
        uc.reg_write_arm64_coproc(&cp(HCR_EL2).val(HCR_EL2_VALUE))
            .map_err(|e| engine_err("write HCR_EL2", e))?;
        uc.reg_write(RegisterARM64::PSTATE, pstate::EL1H_MASKED)
            .map_err(|e| engine_err("write PSTATE", e))?;
        Ok(EmuVcpu { index, uc })
    }

    fn map_device(
        uc: &mut Unicorn<'static, HookState>,
        base: u64,
        size: u64,
    ) -> Result<(), unicorn_engine::uc_error> {
        uc.mmio_map(
            base,
            size,
            Some(
                move |uc: &mut Unicorn<'_, HookState>, offset: u64, len: usize| {
                    let st = uc.get_data_mut();
                    st.extra_ns += st.cost.exit_ns;
                    st.ops
                        .mmio_read_value(st.index, base + offset, len, st.now_ns())
                },
            ),
            Some(
                move |uc: &mut Unicorn<'_, HookState>, offset: u64, len: usize, value: u64| {
                    let st = uc.get_data_mut();
                    st.extra_ns += st.cost.exit_ns;
                    let len = len.min(8);
                    let bytes = value.to_le_bytes();
                    let kind =
                        st.ops
                            .mmio_write(st.index, base + offset, &bytes[..len], st.now_ns());
                    if kind == MmioWriteKind::Hypercall {
                        st.extra_ns += st.cost.hypercall_ns;
                        // The call may have queued effects (power off,
                        // CPU_ON...) for the vCPU loop.
                        request_stop(uc);
                    }
                },
            ),
        )
    }

    /// Installs the hooks; `ram` is guest RAM's `[start, end)`.
    fn install_hooks(
        uc: &mut Unicorn<'static, HookState>,
        ram: (u64, u64),
    ) -> Result<(), unicorn_engine::uc_error> {
        uc.add_tlb_hook(0, u64::MAX, fill_tlb)?;
        // Counting block hook: exact instruction totals, slice budget.
        uc.add_block_hook(1, 0, |uc, addr, size| {
            let st = uc.get_data_mut();
            let n = u64::from(size / 4);
            st.insns += n;
            st.slice_insns += n;
            st.last_block_end = addr + u64::from(size);
            if st.slice_insns >= st.budget || st.end_slice {
                request_stop(uc);
            }
        })?;
        uc.add_intr_hook(|uc, intno| {
            let pc = uc.pc_read().unwrap_or(0);
            let exit = match intno {
                excp::SWI => {
                    match read_insn(uc, pc.wrapping_sub(4)).and_then(insn::exception_generating) {
                        Some((1, imm)) => VmExit::Svc { imm },
                        _ => VmExit::Svc { imm: 0 },
                    }
                }
                excp::HVC | excp::SMC => {
                    let mut a = [0u64; 6];
                    for (i, v) in a.iter_mut().enumerate() {
                        *v = uc.reg_read(XREGS[i]).unwrap_or(0);
                    }
                    VmExit::Hypercall {
                        function: a[0] as u32,
                        args: [a[1], a[2], a[3], a[4], a[5]],
                        conduit: if intno == excp::HVC {
                            Conduit::Hvc
                        } else {
                            Conduit::Smc
                        },
                    }
                }
                excp::UDEF => {
                    let word = read_insn(uc, pc);
                    VmExit::Crash {
                        pc,
                        addr: None,
                        reason: match word {
                            Some(w) => format!("undefined instruction {w:#010x}"),
                            None => "undefined instruction (unreadable)".to_owned(),
                        },
                    }
                }
                excp::DATA_ABORT => VmExit::Crash {
                    pc,
                    addr: None,
                    reason: "data abort (stage 1 translation or permission fault)".to_owned(),
                },
                excp::PREFETCH_ABORT => VmExit::Crash {
                    pc,
                    addr: Some(pc),
                    reason: "instruction abort".to_owned(),
                },
                excp::BKPT => VmExit::Crash {
                    pc,
                    addr: None,
                    reason: "breakpoint (brk)".to_owned(),
                },
                n => VmExit::Crash {
                    pc,
                    addr: None,
                    reason: format!("unexpected CPU exception {n}"),
                },
            };
            uc.get_data_mut().pending = Some(exit);
            request_stop(uc);
        })?;
        uc.add_insn_sys_hook_arm64(Arm64Insn::UC_ARM64_INS_MRS, 1, 0, |uc, rt, cpreg| {
            let reg = sysreg_of(cpreg);
            if !sysreg::is_emulated(reg) {
                return false;
            }
            let st = uc.get_data();
            let value = st.ops.sysreg_read(st.index, reg, st.now_ns()).unwrap_or(0);
            if rt != RegisterARM64::XZR {
                let _ = uc.reg_write(rt, value);
            }
            step_over_unknown_sysreg(uc, reg);
            true
        })?;
        uc.add_insn_sys_hook_arm64(Arm64Insn::UC_ARM64_INS_MSR, 1, 0, |uc, _rt, cpreg| {
            let reg = sysreg_of(cpreg);
            if reg == DAIF && cpreg.val & pstate::I == 0 {
                // IRQs are unmasked: end the slice so that a pending IRQ is
                // injected now. Kernels open short windows (unmask, ISB,
                // mask) that a slice boundary would almost never hit.
                uc.get_data_mut().end_slice = true;
                return false;
            }
            if !sysreg::is_emulated(reg) {
                return false;
            }
            let st = uc.get_data_mut();
            st.ops.sysreg_write(st.index, reg, cpreg.val, st.now_ns());
            if reg == sysreg::ICC_SGI1R_EL1 {
                // Generating an SGI traps to the hypervisor on real hardware.
                st.extra_ns += st.cost.exit_ns;
            }
            // Timer, priority mask, EOI and SGI writes change what the vCPU
            // loop must deliver or when the slice must end. The slice ends
            // at the next block: a stop requested here, in the middle of a
            // block, would resume at the block's start and execute its
            // first instructions again.
            st.end_slice = true;
            step_over_unknown_sysreg(uc, reg);
            true
        })?;
        // Only outside RAM: the engine keeps every store to a page covered
        // by a memory hook on its slow path (dirty tracking is never
        // cleared), which halves guest speed.
        let (ram_base, ram_end) = ram;
        for (begin, end) in [(0, ram_base - 1), (ram_end, u64::MAX)] {
            uc.add_mem_hook(HookType::MEM_UNMAPPED, begin, end, unmapped_access)?;
        }
        Ok(())
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
        self.uc.get_data_mut().extra_ns += ns;
    }

    /// Moves this vCPU's clock forward to `t` (no-op if already there);
    /// returns how far it moved.
    pub fn advance_to(&mut self, t: u64) -> u64 {
        let now = self.now_ns();
        let d = t.saturating_sub(now);
        self.charge_ns(d);
        d
    }

    /// Instructions the next [`Vcpu::run`] may execute before returning
    /// [`VmExit::SliceEnd`] (rounded up to a whole block).
    pub fn set_budget(&mut self, instructions: u64) {
        self.uc.get_data_mut().budget = instructions.max(1);
    }

    /// The instructions left until `ns` of this vCPU's virtual time.
    pub fn instructions_until(&self, ns: u64) -> u64 {
        let st = self.uc.get_data();
        let d = ns.saturating_sub(st.now_ns());
        ((d as f64 / st.cost.ns_per_instruction).ceil() as u64).max(1)
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

    /// Exception entry to EL1 at `VBAR_EL1 + vector`, as the CPU does it
    /// (the software CPU never takes exceptions itself).
    fn enter_el1(
        &mut self,
        kind: EntryKind,
        return_pc: u64,
        esr: Option<u64>,
        far: Option<u64>,
    ) -> Result<(), HypervisorError> {
        let old_pstate = self.get_reg(Reg::Pstate)?;
        let vector = arch::vector_offset(old_pstate, kind);
        let from_el0 = old_pstate & pstate::MODE_MASK == pstate::EL0T;
        if from_el0 {
            let sp = self.get_reg(Reg::Sp)?;
            self.set_reg(Reg::SpEl0, sp)?;
        }
        self.set_reg(Reg::ElrEl1, return_pc)?;
        if let Some(esr) = esr {
            self.set_reg(Reg::EsrEl1, esr)?;
        }
        if let Some(far) = far {
            self.set_reg(Reg::FarEl1, far)?;
        }
        self.set_reg(Reg::Pstate, pstate::EL1H_MASKED)?;
        // The SPSR write goes through the coprocessor interface, which also
        // makes the new PSTATE's exception level take effect.
        self.set_reg(Reg::SpsrEl1, old_pstate)?;
        if from_el0 || old_pstate & pstate::MODE_MASK == pstate::EL1T {
            let sp1 = self.get_reg(Reg::SpEl1)?;
            self.set_reg(Reg::Sp, sp1)?;
        }
        let vbar = self.get_reg(Reg::VbarEl1)?;
        self.set_reg(Reg::Pc, vbar + vector)
    }
}

fn sysreg_of(c: &RegisterARM64CP) -> SysRegId {
    SysRegId::new(
        c.op0 as u8,
        c.op1 as u8,
        c.crn as u8,
        c.crm as u8,
        c.op2 as u8,
    )
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
            st.last_block_end = 0;
        }
        let pc = self.get_reg(Reg::Pc)?;
        let result = self.uc.emu_start(pc, 0, 0, 0);
        if let Some(exit) = self.uc.get_data_mut().pending.take() {
            return Ok(exit);
        }
        let pc = self.get_reg(Reg::Pc)?;
        match result {
            Ok(()) => {
                // WFI ends the engine's run with PC past it and no hook: the
                // last block entered ends right there with a WFI.
                let st = self.uc.get_data();
                if st.last_block_end == pc
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
                reason: format!("CPU stopped with {e:?}"),
            }),
        }
    }

    fn get_reg(&self, reg: Reg) -> Result<u64, HypervisorError> {
        match Self::reg_id(reg) {
            Some(id) => self
                .uc
                .reg_read(id)
                .map_err(|e| engine_err(format!("read {reg:?}"), e)),
            None => {
                let mut c = cp(SPSR_EL1);
                self.uc
                    .reg_read_arm64_coproc(&mut c)
                    .map_err(|e| engine_err("read SPSR_EL1", e))?;
                Ok(c.val)
            }
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

    fn complete_mmio_read(&mut self, _value: u64) -> Result<(), HypervisorError> {
        // MMIO completes inline in this backend: nothing is ever pending.
        Ok(())
    }

    fn inject_exception(&mut self, exc: SyncException) -> Result<(), HypervisorError> {
        self.enter_el1(EntryKind::Sync, exc.return_pc, Some(exc.esr), Some(exc.far))
    }

    fn inject_irq(&mut self) -> Result<bool, HypervisorError> {
        if self.get_reg(Reg::Pstate)? & pstate::I != 0 {
            return Ok(false);
        }
        let pc = self.get_reg(Reg::Pc)?;
        self.enter_el1(EntryKind::Irq, pc, None, None)?;
        Ok(true)
    }
}
