//! KVM_{GET,SET}_ONE_REG ids for the registers apflab reads and writes.
//!
//! Core registers (X0..X30, SP_EL0, PC, PSTATE, SP_EL1, ELR_EL1, SPSR_EL1)
//! are addressed by their offset in `struct kvm_regs`, in 32-bit words;
//! ELR_EL1 and SPSR_EL1 must go this way (their sysreg ids give ENOENT,
//! as measured on Debian 6.1 and 6.12 arm64 kernels). Other EL1 system registers use the sysreg encoding.

use std::mem::offset_of;

use kvm_bindings::{
    KVM_REG_ARM_CORE, KVM_REG_ARM64, KVM_REG_ARM64_SYSREG, KVM_REG_SIZE_U64, kvm_regs, user_pt_regs,
};

use apflab_hypervisor::arch::{Reg, SysRegId};

/// Id of the 64-bit core register at byte offset `off` of `kvm_regs`.
const fn core(off: usize) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE as u64 | (off / 4) as u64
}

/// Id of a 64-bit system register.
pub const fn sysreg(r: SysRegId) -> u64 {
    KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG as u64
        | ((r.op0 as u64) << 14)
        | ((r.op1 as u64) << 11)
        | ((r.crn as u64) << 7)
        | ((r.crm as u64) << 3)
        | r.op2 as u64
}

/// X`n`.
pub const fn x(n: u8) -> u64 {
    core(offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, regs) + 8 * n as usize)
}
/// SP_EL0 (`user_pt_regs.sp`).
pub const SP_EL0: u64 = core(offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, sp));
/// PC.
pub const PC: u64 = core(offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, pc));
/// PSTATE.
pub const PSTATE: u64 = core(offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, pstate));
/// SP_EL1.
pub const SP_EL1: u64 = core(offset_of!(kvm_regs, sp_el1));
/// ELR_EL1.
pub const ELR_EL1: u64 = core(offset_of!(kvm_regs, elr_el1));
/// SPSR_EL1 (`spsr[KVM_SPSR_EL1]`, index 0).
pub const SPSR_EL1: u64 = core(offset_of!(kvm_regs, spsr));

/// ESR_EL1 (3, 0, 5, 2, 0).
pub const ESR_EL1: u64 = sysreg(SysRegId::new(3, 0, 5, 2, 0));
/// FAR_EL1 (3, 0, 6, 0, 0).
pub const FAR_EL1: u64 = sysreg(SysRegId::new(3, 0, 6, 0, 0));
/// VBAR_EL1 (3, 0, 12, 0, 0).
pub const VBAR_EL1: u64 = sysreg(SysRegId::new(3, 0, 12, 0, 0));
/// SCTLR_EL1 (3, 0, 1, 0, 0).
pub const SCTLR_EL1: u64 = sysreg(SysRegId::new(3, 0, 1, 0, 0));
/// TTBR0_EL1 (3, 0, 2, 0, 0).
pub const TTBR0_EL1: u64 = sysreg(SysRegId::new(3, 0, 2, 0, 0));
/// TTBR1_EL1 (3, 0, 2, 0, 1).
pub const TTBR1_EL1: u64 = sysreg(SysRegId::new(3, 0, 2, 0, 1));
/// TCR_EL1 (3, 0, 2, 0, 2).
pub const TCR_EL1: u64 = sysreg(SysRegId::new(3, 0, 2, 0, 2));

/// PSTATE.M\[0\]: SP_ELx selected (else SP_EL0).
const PSTATE_SP_ELX: u64 = 1;
/// PSTATE.M\[3:2\]: exception level.
const PSTATE_EL_SHIFT: u64 = 2;

/// The KVM id of a typed register, and its name for error messages.
/// `Reg::Sp` depends on PSTATE, so it is resolved by the caller with
/// [`current_sp`].
pub fn id_of(reg: Reg) -> Option<(u64, &'static str)> {
    const X_NAMES: [&str; 31] = [
        "X0", "X1", "X2", "X3", "X4", "X5", "X6", "X7", "X8", "X9", "X10", "X11", "X12", "X13",
        "X14", "X15", "X16", "X17", "X18", "X19", "X20", "X21", "X22", "X23", "X24", "X25", "X26",
        "X27", "X28", "X29", "X30",
    ];
    Some(match reg {
        Reg::X(n) if n < 31 => (x(n), X_NAMES[n as usize]),
        Reg::X(_) | Reg::Sp => return None,
        Reg::Pc => (PC, "PC"),
        Reg::Pstate => (PSTATE, "PSTATE"),
        Reg::SpEl0 => (SP_EL0, "SP_EL0"),
        Reg::SpEl1 => (SP_EL1, "SP_EL1"),
        Reg::ElrEl1 => (ELR_EL1, "ELR_EL1"),
        Reg::SpsrEl1 => (SPSR_EL1, "SPSR_EL1"),
        Reg::EsrEl1 => (ESR_EL1, "ESR_EL1"),
        Reg::FarEl1 => (FAR_EL1, "FAR_EL1"),
        Reg::VbarEl1 => (VBAR_EL1, "VBAR_EL1"),
    })
}

/// The stack pointer register in use for PSTATE `pstate`: SP_EL0 at EL0
/// or with SPSel = 0, SP_EL1 otherwise.
pub fn current_sp(pstate: u64) -> (u64, &'static str) {
    let el = (pstate >> PSTATE_EL_SHIFT) & 3;
    if el == 0 || pstate & PSTATE_SP_ELX == 0 {
        (SP_EL0, "SP_EL0")
    } else {
        (SP_EL1, "SP_EL1")
    }
}
