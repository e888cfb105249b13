//! What unicorn calls back while a vCPU runs: MMIO windows, the emulated
//! system registers, and CPU exceptions, which never reach the guest's
//! vectors on this engine: they are recorded for `exception.rs` to enter
//! the guest's vectors with their syndrome, or become [`VmExit`]s (SVC,
//! HVC, SMC).

use apflab_abi::memory_map::PAGE_SIZE;

use super::block_watch;
use super::debug;
use super::fault::{Access, GuestFault};
use super::id_regs;
use super::regs::{SCTLR_EL1, XREGS, read_sysreg};
use super::shootdown;
use super::state::{HookState, end_slice, read_insn, request_stop};
use super::tlb::fill_tlb;
use apflab_hypervisor::arch::{SysRegId, insn, pstate, sysreg};
use apflab_hypervisor::{Conduit, CrashReason, MmioWriteKind, VmExit};
use unicorn_engine::{Arm64Insn, HookType, MemType, RegisterARM64, RegisterARM64CP, Unicorn};

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

/// A guest access to a physical address where nothing is mapped: on the
/// bus that is a decode error, which the guest takes as a synchronous
/// external abort (pages the pager withholds never get here; they fail
/// their TLB fill).
fn unmapped_access(
    uc: &mut Unicorn<'_, HookState>,
    kind: MemType,
    _addr: u64,
    _size: usize,
    _value: i64,
) -> bool {
    if !uc.get_data().probing.get() {
        uc.get_data_mut().fault = Some(GuestFault::External {
            access: Access::of(kind),
        });
    }
    false
}

/// An instruction fetch from a device window (the engine maps devices
/// without execute permission). QEMU reads the device register there and
/// executes its value; the registers of this board read as words in A64's
/// unallocated encoding space (the top-level op0 classes 0b0000, 0b0001
/// and 0b0011: UDF among them), which the guest takes as an UNDEFINED
/// instruction (ESR EC 0x00, IL, ELR = the device address), exactly as on
/// QEMU. A register whose value would decode as an instruction ends the
/// run naming it: the software CPU cannot execute from a device.
fn device_fetch(
    uc: &mut Unicorn<'_, HookState>,
    _kind: MemType,
    addr: u64,
    _size: usize,
    _value: i64,
) -> bool {
    if uc.get_data().probing.get() {
        return false;
    }
    let st = uc.get_data_mut();
    let (va_page, pa_page) = st.last_fetch;
    let offset = addr & (PAGE_SIZE - 1);
    let pa = if addr - offset == va_page {
        pa_page | offset
    } else {
        addr
    };
    // The read is the device access QEMU makes, side effects included.
    st.extra_ns = st.extra_ns.saturating_add(st.cost.exit_ns);
    let word = st.ops.mmio_read_value(st.index, pa, 4, st.now_ns()) as u32;
    if matches!((word >> 25) & 0xf, 0b0000 | 0b0001 | 0b0011) {
        st.fault = Some(GuestFault::Undefined);
    } else {
        st.pending = Some(VmExit::Crash {
            pc: addr,
            addr: Some(pa),
            reason: CrashReason::FetchFromDevice { pa, word },
        });
    }
    false
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

/// Maps the device window `[base, base + size)`; with `ends_slice`, every
/// write to it ends the slice at the next block (an interrupt controller
/// write can make an interrupt deliverable at once). With `in_kernel`, an
/// access is charged as KVM's in-kernel emulation (the vGIC), otherwise as
/// an exit to the VMM.
pub(super) fn map_device(
    uc: &mut Unicorn<'static, HookState>,
    base: u64,
    size: u64,
    ends_slice: bool,
    in_kernel: bool,
) -> Result<(), unicorn_engine::uc_error> {
    let exit_ns = move |cost: &crate::config::CostModel| {
        if in_kernel {
            cost.kernel_exit_ns
        } else {
            cost.exit_ns
        }
    };
    uc.mmio_map(
        base,
        size,
        Some(
            move |uc: &mut Unicorn<'_, HookState>, offset: u64, len: usize| {
                let st = uc.get_data_mut();
                st.extra_ns = st.extra_ns.saturating_add(exit_ns(&st.cost));
                st.ops
                    .mmio_read_value(st.index, base + offset, len, st.now_ns())
            },
        ),
        Some(
            move |uc: &mut Unicorn<'_, HookState>, offset: u64, len: usize, value: u64| {
                let st = uc.get_data_mut();
                st.extra_ns = st.extra_ns.saturating_add(exit_ns(&st.cost));
                let len = len.min(8);
                let bytes = value.to_le_bytes();
                let kind = st
                    .ops
                    .mmio_write(st.index, base + offset, &bytes[..len], st.now_ns());
                if ends_slice {
                    end_slice(uc);
                }
                let st = uc.get_data_mut();
                if kind == MmioWriteKind::Hypercall {
                    st.extra_ns = st.extra_ns.saturating_add(st.cost.hypercall_ns);
                    // The call may have queued effects (power off,
                    // CPU_ON...) for the vCPU loop.
                    request_stop(uc);
                }
            },
        ),
    )
}

/// Installs the hooks; `ram` is guest RAM's `[start, end)`.
pub(super) fn install_hooks(
    uc: &mut Unicorn<'static, HookState>,
    ram: (u64, u64),
) -> Result<(), unicorn_engine::uc_error> {
    uc.add_tlb_hook(0, u64::MAX, fill_tlb)?;
    // Instructions are counted, and slices ended, by the engine itself
    // (icount.rs): no hook runs per block.
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
            excp::UDEF => return guest_fault(uc, GuestFault::Undefined),
            excp::BKPT => return guest_fault(uc, GuestFault::Breakpoint),
            // With this backend's TLB fills the engine raises data aborts
            // only from its own alignment check.
            excp::DATA_ABORT => return guest_fault(uc, GuestFault::Alignment),
            excp::PREFETCH_ABORT => VmExit::Crash {
                pc,
                addr: Some(pc),
                reason: CrashReason::EngineInstructionAbort,
            },
            n => VmExit::Crash {
                pc,
                addr: None,
                reason: CrashReason::UnexpectedException(n),
            },
        };
        uc.get_data_mut().pending = Some(exit);
        request_stop(uc);
    })?;
    uc.add_insn_sys_hook_arm64(Arm64Insn::UC_ARM64_INS_MRS, 1, 0, |uc, rt, cpreg| {
        let reg = sysreg_of(cpreg);
        if id_regs::is_hidden_from(reg) && at_el1(uc) {
            // Features this machine does not give faithfully read as absent.
            let raw = read_sysreg(uc, reg).unwrap_or(0);
            let value = id_regs::sanitize(reg, raw).unwrap_or(raw);
            if rt != RegisterARM64::XZR {
                let _ = uc.reg_write(rt, value);
            }
            return true;
        }
        if let Some(value) = debug::on_mrs(uc, reg) {
            if rt != RegisterARM64::XZR {
                let _ = uc.reg_write(rt, value);
            }
            return true;
        }
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
        if reg == SCTLR_EL1 {
            // The write ends its block; the slice ends with it when the
            // alignment watch must come or go (insn_watch.rs).
            let mode = block_watch::WatchMode::of(cpreg.val);
            if mode != uc.get_data().watch.mode {
                end_slice(uc);
            }
            uc.get_data_mut().watch.forget_blocks();
            return false;
        }
        if block_watch::changes_code_view(reg) {
            uc.get_data_mut().watch.forget_blocks();
            return false;
        }
        if debug::on_msr(uc, reg, cpreg.val) {
            return true;
        }
        if !sysreg::is_emulated(reg) {
            return false;
        }
        let st = uc.get_data_mut();
        st.ops.sysreg_write(st.index, reg, cpreg.val, st.now_ns());
        if reg == sysreg::ICC_SGI1R_EL1 {
            // Generating an SGI traps to the hypervisor on real hardware,
            // whose vGIC handles it in the kernel.
            st.extra_ns = st.extra_ns.saturating_add(st.cost.kernel_exit_ns);
        }
        // Timer, priority mask, EOI and SGI writes change what the vCPU
        // loop must deliver or when the slice must end: at the next block.
        end_slice(uc);
        step_over_unknown_sysreg(uc, reg);
        true
    })?;
    // TLB and instruction cache invalidations (the instruction still
    // executes).
    uc.add_insn_sys_hook_arm64(Arm64Insn::UC_ARM64_INS_SYS, 1, 0, |uc, _rt, c| {
        let st = uc.get_data_mut();
        if block_watch::invalidates_code(c.crn, c.crm) {
            st.watch.forget_blocks();
        }
        if shootdown::is_broadcast_tlbi(c.crn, c.crm) {
            // This engine carries it out itself; the others catch up
            // before they next run.
            st.shootdowns_seen = st.shootdowns.broadcast();
        }
        false
    })?;
    // Only outside RAM: the engine keeps every store to a page covered
    // by a memory hook on its slow path (dirty tracking is never
    // cleared), which halves guest speed.
    let (ram_base, ram_end) = ram;
    for (begin, end) in [(0, ram_base - 1), (ram_end, u64::MAX)] {
        uc.add_mem_hook(HookType::MEM_UNMAPPED, begin, end, unmapped_access)?;
        uc.add_mem_hook(HookType::MEM_FETCH_PROT, begin, end, device_fetch)?;
    }
    Ok(())
}

/// Records the synchronous exception `fault` for the vCPU to take once the
/// engine stops (see `exception.rs`).
fn guest_fault(uc: &mut Unicorn<'_, HookState>, fault: GuestFault) {
    uc.get_data_mut().fault = Some(fault);
    request_stop(uc);
}

/// Whether the vCPU runs at EL1.
fn at_el1(uc: &Unicorn<'_, HookState>) -> bool {
    uc.reg_read(RegisterARM64::PSTATE)
        .is_ok_and(|p| p & pstate::MODE_MASK != 0)
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
