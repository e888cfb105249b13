//! What unicorn calls back while a vCPU runs: the counting block hook
//! (instruction totals and the slice budget), MMIO windows, the emulated
//! system registers, and CPU exceptions, which never reach the guest's
//! vectors on this engine and become [`VmExit`]s instead.

use super::regs::{DAIF, XREGS};
use super::state::HookState;
use super::tlb::fill_tlb;
use crate::arch::{SysRegId, insn, pstate, sysreg};
use crate::hypervisor::{Conduit, MmioWriteKind, VmExit};
use unicorn_engine::{Arm64Insn, HookType, MemType, Prot, RegisterARM64, RegisterARM64CP, Unicorn};

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

pub(super) fn request_stop(uc: &mut Unicorn<'_, HookState>) {
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
pub(super) fn read_insn(uc: &Unicorn<'_, HookState>, va: u64) -> Option<u32> {
    let mut b = [0u8; 4];
    uc.vmem_read(va, Prot::EXEC, &mut b).ok()?;
    Some(u32::from_le_bytes(b))
}

pub(super) fn map_device(
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
                st.extra_ns = st.extra_ns.saturating_add(st.cost.exit_ns);
                st.ops
                    .mmio_read_value(st.index, base + offset, len, st.now_ns())
            },
        ),
        Some(
            move |uc: &mut Unicorn<'_, HookState>, offset: u64, len: usize, value: u64| {
                let st = uc.get_data_mut();
                st.extra_ns = st.extra_ns.saturating_add(st.cost.exit_ns);
                let len = len.min(8);
                let bytes = value.to_le_bytes();
                let kind = st
                    .ops
                    .mmio_write(st.index, base + offset, &bytes[..len], st.now_ns());
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
            st.extra_ns = st.extra_ns.saturating_add(st.cost.exit_ns);
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

fn sysreg_of(c: &RegisterARM64CP) -> SysRegId {
    SysRegId::new(
        c.op0 as u8,
        c.op1 as u8,
        c.crn as u8,
        c.crm as u8,
        c.op2 as u8,
    )
}
