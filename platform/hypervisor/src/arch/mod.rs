//! arm64 architecture facts the VMM needs: typed registers, system register
//! encodings, PSTATE bits, exception vector offsets and instruction decoding
//! for the few instructions the VMM must recognise, plus what both backends
//! use to find the page behind a fault: the guest's stage-1 walk
//! ([`stage1`]), the data access of a load/store ([`access`]) and the two
//! combined ([`fault_site`]).

pub mod access;
pub mod fault_site;
pub mod stage1;
pub mod syndrome;

/// A vCPU register, typed (Firecracker style) so that backends translate one
/// enum instead of passing raw ids around.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reg {
    /// General purpose register x0..=x30.
    X(u8),
    /// Stack pointer of the current exception level.
    Sp,
    /// Program counter.
    Pc,
    /// PSTATE (NZCV, DAIF, current EL and SP selection).
    Pstate,
    /// SP_EL0.
    SpEl0,
    /// SP_EL1.
    SpEl1,
    /// ELR_EL1.
    ElrEl1,
    /// SPSR_EL1.
    SpsrEl1,
    /// ESR_EL1.
    EsrEl1,
    /// FAR_EL1.
    FarEl1,
    /// VBAR_EL1.
    VbarEl1,
}

/// The encoding of a system register as it appears in MRS/MSR
/// (`S<op0>_<op1>_C<crn>_C<crm>_<op2>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SysRegId {
    /// op0 (2 or 3 for MRS/MSR).
    pub op0: u8,
    /// op1.
    pub op1: u8,
    /// CRn.
    pub crn: u8,
    /// CRm.
    pub crm: u8,
    /// op2.
    pub op2: u8,
}

impl SysRegId {
    /// Builds an id from its five fields.
    pub const fn new(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> Self {
        SysRegId {
            op0,
            op1,
            crn,
            crm,
            op2,
        }
    }
}

impl std::fmt::Display for SysRegId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "S{}_{}_C{}_C{}_{}",
            self.op0, self.op1, self.crn, self.crm, self.op2
        )
    }
}

/// System registers the VMM emulates (GICv3 CPU interface, generic timer).
pub mod sysreg {
    use super::SysRegId;

    /// ICC_IAR1_EL1: acknowledge a group 1 interrupt.
    pub const ICC_IAR1_EL1: SysRegId = SysRegId::new(3, 0, 12, 12, 0);
    /// ICC_EOIR1_EL1: end of a group 1 interrupt.
    pub const ICC_EOIR1_EL1: SysRegId = SysRegId::new(3, 0, 12, 12, 1);
    /// ICC_HPPIR1_EL1: highest priority pending group 1 interrupt.
    pub const ICC_HPPIR1_EL1: SysRegId = SysRegId::new(3, 0, 12, 12, 2);
    /// ICC_BPR1_EL1: binary point.
    pub const ICC_BPR1_EL1: SysRegId = SysRegId::new(3, 0, 12, 12, 3);
    /// ICC_CTLR_EL1: CPU interface control.
    pub const ICC_CTLR_EL1: SysRegId = SysRegId::new(3, 0, 12, 12, 4);
    /// ICC_SRE_EL1: system register enable.
    pub const ICC_SRE_EL1: SysRegId = SysRegId::new(3, 0, 12, 12, 5);
    /// ICC_IGRPEN0_EL1: group 0 enable.
    pub const ICC_IGRPEN0_EL1: SysRegId = SysRegId::new(3, 0, 12, 12, 6);
    /// ICC_IGRPEN1_EL1: group 1 enable.
    pub const ICC_IGRPEN1_EL1: SysRegId = SysRegId::new(3, 0, 12, 12, 7);
    /// ICC_PMR_EL1: priority mask.
    pub const ICC_PMR_EL1: SysRegId = SysRegId::new(3, 0, 4, 6, 0);
    /// ICC_RPR_EL1: running priority.
    pub const ICC_RPR_EL1: SysRegId = SysRegId::new(3, 0, 12, 11, 3);
    /// ICC_DIR_EL1: deactivate interrupt.
    pub const ICC_DIR_EL1: SysRegId = SysRegId::new(3, 0, 12, 11, 1);
    /// ICC_SGI1R_EL1: generate a group 1 SGI.
    pub const ICC_SGI1R_EL1: SysRegId = SysRegId::new(3, 0, 12, 11, 5);
    /// ICC_IAR0_EL1 (group 0 is not used by apflab: always spurious).
    pub const ICC_IAR0_EL1: SysRegId = SysRegId::new(3, 0, 12, 8, 0);
    /// ICC_EOIR0_EL1.
    pub const ICC_EOIR0_EL1: SysRegId = SysRegId::new(3, 0, 12, 8, 1);
    /// ICC_BPR0_EL1.
    pub const ICC_BPR0_EL1: SysRegId = SysRegId::new(3, 0, 12, 8, 3);

    /// CNTFRQ_EL0: counter frequency.
    pub const CNTFRQ_EL0: SysRegId = SysRegId::new(3, 3, 14, 0, 0);
    /// CNTPCT_EL0: physical count.
    pub const CNTPCT_EL0: SysRegId = SysRegId::new(3, 3, 14, 0, 1);
    /// CNTVCT_EL0: virtual count.
    pub const CNTVCT_EL0: SysRegId = SysRegId::new(3, 3, 14, 0, 2);
    /// CNTPCTSS_EL0 (self-synchronised physical count).
    pub const CNTPCTSS_EL0: SysRegId = SysRegId::new(3, 3, 14, 0, 5);
    /// CNTVCTSS_EL0 (self-synchronised virtual count).
    pub const CNTVCTSS_EL0: SysRegId = SysRegId::new(3, 3, 14, 0, 6);
    /// CNTP_TVAL_EL0: physical timer value (down-counter view).
    pub const CNTP_TVAL_EL0: SysRegId = SysRegId::new(3, 3, 14, 2, 0);
    /// CNTP_CTL_EL0: physical timer control.
    pub const CNTP_CTL_EL0: SysRegId = SysRegId::new(3, 3, 14, 2, 1);
    /// CNTP_CVAL_EL0: physical timer compare value.
    pub const CNTP_CVAL_EL0: SysRegId = SysRegId::new(3, 3, 14, 2, 2);
    /// CNTV_TVAL_EL0: virtual timer value (down-counter view).
    pub const CNTV_TVAL_EL0: SysRegId = SysRegId::new(3, 3, 14, 3, 0);
    /// CNTV_CTL_EL0: virtual timer control.
    pub const CNTV_CTL_EL0: SysRegId = SysRegId::new(3, 3, 14, 3, 1);
    /// CNTV_CVAL_EL0: virtual timer compare value.
    pub const CNTV_CVAL_EL0: SysRegId = SysRegId::new(3, 3, 14, 3, 2);

    /// Whether `reg` belongs to the GICv3 CPU interface, which the software
    /// CPU does not implement at all (it knows the timer registers).
    pub fn is_gic_cpu_interface(reg: SysRegId) -> bool {
        (reg.op0 == 3 && reg.op1 == 0 && reg.crn == 12 && (8..=12).contains(&reg.crm))
            || reg == ICC_PMR_EL1
    }

    /// Whether the VMM emulates `reg` (so the software CPU must not).
    pub fn is_emulated(reg: SysRegId) -> bool {
        // Whole GICv3 CPU interface (op0=3, op1=0, CRn=12, CRm 8..=12 and
        // PMR), and the counter and EL1 timer block (op1=3, CRn=14, CRm 0,
        // 2 and 3).
        is_gic_cpu_interface(reg)
            || (reg.op0 == 3 && reg.op1 == 3 && reg.crn == 14 && matches!(reg.crm, 0 | 2 | 3))
    }
}

/// PSTATE bits.
pub mod pstate {
    /// IRQ mask.
    pub const I: u64 = 1 << 7;
    /// Debug exception mask.
    pub const D: u64 = 1 << 9;
    /// Software step (SS): the next instruction is to be stepped.
    pub const SS: u64 = 1 << 21;
    /// Mode field M\[3:0\].
    pub const MODE_MASK: u64 = 0xf;
    /// EL0t.
    pub const EL0T: u64 = 0b0000;
    /// EL1t (EL1 using SP_EL0).
    pub const EL1T: u64 = 0b0100;
    /// EL1h (EL1 using SP_EL1).
    pub const EL1H: u64 = 0b0101;
    /// State on exception entry to EL1: EL1h with D, A, I, F masked.
    pub const EL1H_MASKED: u64 = 0x3c5;
}

/// Offsets into the EL1 vector table (VBAR_EL1).
pub mod vector {
    /// Synchronous exception, current EL with SP_EL0.
    pub const CURRENT_SP0_SYNC: u64 = 0x000;
    /// IRQ, current EL with SP_EL0.
    pub const CURRENT_SP0_IRQ: u64 = 0x080;
    /// Synchronous exception, current EL with SP_ELx.
    pub const CURRENT_SPX_SYNC: u64 = 0x200;
    /// IRQ, current EL with SP_ELx.
    pub const CURRENT_SPX_IRQ: u64 = 0x280;
    /// Synchronous exception from a lower EL in AArch64.
    pub const LOWER_A64_SYNC: u64 = 0x400;
    /// IRQ from a lower EL in AArch64.
    pub const LOWER_A64_IRQ: u64 = 0x480;
}

/// The kind of exception entry, which selects the vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// Synchronous exception.
    Sync,
    /// IRQ.
    Irq,
}

/// Vector offset for an exception of `kind` taken to EL1 from a vCPU whose
/// PSTATE is `pstate`.
pub fn vector_offset(pstate: u64, kind: EntryKind) -> u64 {
    let (sync, irq) = match pstate & pstate::MODE_MASK {
        pstate::EL1H => (vector::CURRENT_SPX_SYNC, vector::CURRENT_SPX_IRQ),
        pstate::EL1T => (vector::CURRENT_SP0_SYNC, vector::CURRENT_SP0_IRQ),
        _ => (vector::LOWER_A64_SYNC, vector::LOWER_A64_IRQ),
    };
    match kind {
        EntryKind::Sync => sync,
        EntryKind::Irq => irq,
    }
}

/// Exception classes the VMM builds syndromes for.
pub mod ec {
    /// Unknown reason: UNDEFINED instructions and system registers.
    pub const UNKNOWN: u32 = 0x00;
    /// WFI or WFE trapped.
    pub const WFX: u32 = 0x01;
    /// FP/Advanced SIMD access trapped by CPACR_EL1.FPEN.
    pub const FP_ACCESS: u32 = 0x07;
    /// MSR, MRS or system instruction trapped.
    pub const SYSREG_TRAP: u32 = 0x18;
    // The aborts are also the async PF protocol's data-abort delivery: the
    // values are the ABI's.
    /// Instruction abort from a lower exception level.
    pub const IABT_LOWER: u32 = apflab_abi::apf::EC_INSN_ABORT_LOWER;
    /// Instruction abort without a change in exception level.
    pub const IABT_CURRENT: u32 = apflab_abi::apf::EC_INSN_ABORT_CURRENT;
    /// Data abort from a lower exception level.
    pub const DABT_LOWER: u32 = apflab_abi::apf::EC_DATA_ABORT_LOWER;
    /// Data abort without a change in exception level.
    pub const DABT_CURRENT: u32 = apflab_abi::apf::EC_DATA_ABORT_CURRENT;
    /// Breakpoint (hardware, DBGBCR/DBGBVR) from a lower exception level.
    pub const BKPT_LOWER: u32 = 0x30;
    /// Breakpoint without a change in exception level.
    pub const BKPT_CURRENT: u32 = 0x31;
    /// Software step from a lower exception level.
    pub const SOFTSTEP_LOWER: u32 = 0x32;
    /// Software step without a change in exception level.
    pub const SOFTSTEP_CURRENT: u32 = 0x33;
    /// Watchpoint from a lower exception level.
    pub const WATCHPT_LOWER: u32 = 0x34;
    /// Watchpoint without a change in exception level.
    pub const WATCHPT_CURRENT: u32 = 0x35;
    /// BRK from AArch64.
    pub const BRK64: u32 = 0x3c;
    /// SVC from AArch64.
    pub const SVC64: u32 = 0x15;
    /// HVC from AArch64.
    pub const HVC64: u32 = 0x16;
    /// SMC from AArch64.
    pub const SMC64: u32 = 0x17;
}

/// Instruction words the VMM recognises.
pub mod insn {
    /// `wfi`.
    pub const WFI: u32 = 0xd503_207f;

    /// The 16-bit immediate of `svc #imm` / `hvc #imm` / `smc #imm`, and
    /// which of the three it is (`ll` = 1, 2, 3), if `word` is one.
    pub fn exception_generating(word: u32) -> Option<(u8, u16)> {
        // SVC/HVC/SMC: 1101_0100_000 imm16 000 LL
        if word & 0xffe0_001c == 0xd400_0000 {
            let ll = (word & 3) as u8;
            if ll != 0 {
                return Some((ll, ((word >> 5) & 0xffff) as u16));
            }
        }
        None
    }
}

/// MPIDR-style affinity of vCPU `index` (Aff0 = index), as written in the
/// device tree and used by PSCI CPU_ON and ICC_SGI1R_EL1.
pub const fn mpidr_of(index: u32) -> u64 {
    index as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_exception_generating_instructions() {
        assert_eq!(insn::exception_generating(0xd400_0001), Some((1, 0))); // svc #0
        assert_eq!(insn::exception_generating(0xd400_0a61), Some((1, 0x53))); // svc #0x53
        assert_eq!(insn::exception_generating(0xd400_0002), Some((2, 0))); // hvc #0
        assert_eq!(insn::exception_generating(0xd400_0003), Some((3, 0))); // smc #0
        assert_eq!(insn::exception_generating(insn::WFI), None);
        assert_eq!(insn::exception_generating(0xd420_0000), None); // brk #0
    }

    #[test]
    fn vectors_follow_the_current_mode() {
        assert_eq!(vector_offset(0x3c5, EntryKind::Irq), 0x280);
        assert_eq!(vector_offset(0x0, EntryKind::Irq), 0x480);
        assert_eq!(vector_offset(0x0, EntryKind::Sync), 0x400);
        assert_eq!(vector_offset(0x3c4, EntryKind::Sync), 0x000);
    }

    #[test]
    fn emulated_sysregs_cover_gic_and_timer_only() {
        assert!(sysreg::is_emulated(sysreg::ICC_SGI1R_EL1));
        assert!(sysreg::is_emulated(sysreg::ICC_PMR_EL1));
        assert!(sysreg::is_emulated(sysreg::CNTV_CVAL_EL0));
        assert!(sysreg::is_emulated(sysreg::CNTVCT_EL0));
        // SCTLR_EL1 and VBAR_EL1 stay with the software CPU.
        assert!(!sysreg::is_emulated(SysRegId::new(3, 0, 1, 0, 0)));
        assert!(!sysreg::is_emulated(SysRegId::new(3, 0, 12, 0, 0)));
    }
}
