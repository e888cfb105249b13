//! Syndromes (ESR_EL1 values) of the synchronous exceptions a guest takes
//! at EL1, for a backend that must build the exception entry itself.
//!
//! Every exception here is reported with IL = 1 (A64 instructions are 32
//! bits). Data aborts to EL1 never carry instruction syndrome (ISV = 0):
//! the architecture only provides it for aborts taken to EL2, and QEMU
//! and KVM guests see it cleared too.

use apflab_abi::apf::esr;

use super::ec;

/// Fault status codes (DFSC/IFSC) of an abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultStatus {
    /// Translation fault at a lookup level (0..=3): no valid descriptor,
    /// or the address lies outside the ranges TCR_EL1 defines (level 0).
    Translation(u8),
    /// Access flag fault at a level: the leaf descriptor has AF = 0.
    AccessFlag(u8),
    /// Permission fault at a level.
    Permission(u8),
    /// Alignment fault.
    Alignment,
    /// Synchronous external abort not on a table walk (an access nothing
    /// answers: a decode error on the bus).
    External,
    /// Synchronous external abort on the translation table walk at a level
    /// (a table pointer outside memory).
    ExternalOnWalk(u8),
}

impl FaultStatus {
    /// The 6-bit DFSC/IFSC encoding.
    pub fn code(self) -> u64 {
        let level = |l: u8| u64::from(l.min(3));
        match self {
            FaultStatus::Translation(l) => 0b00_0100 | level(l),
            FaultStatus::AccessFlag(l) => 0b00_1000 | level(l),
            FaultStatus::Permission(l) => 0b00_1100 | level(l),
            FaultStatus::Alignment => 0b10_0001,
            FaultStatus::External => 0b01_0000,
            FaultStatus::ExternalOnWalk(l) => 0b01_0100 | level(l),
        }
    }
}

/// ISS.WnR of a data abort: the access was a write.
const WNR: u64 = 1 << 6;
/// ISS.CM of a data abort: a cache maintenance instruction faulted.
const CM: u64 = 1 << 8;

/// ESR of an instruction or SVE/FP encoding that is UNDEFINED (EC 0x00):
/// unallocated encodings, `udf`, system registers that do not exist or
/// belong to a higher exception level.
pub fn undefined() -> u64 {
    esr(ec::UNKNOWN, 0)
}

/// ESR of an FP/Advanced SIMD instruction trapped by CPACR_EL1.FPEN
/// (EC 0x07). From AArch64 the condition fields read CV = 1, COND = 0xE
/// ("always"), as QEMU reports them.
pub fn fp_access() -> u64 {
    esr(ec::FP_ACCESS, (1 << 24) | (0xe << 20))
}

/// ESR of `wfi` (`wfe` with `is_wfe`) at EL0 trapped by SCTLR_EL1.nTWI
/// (nTWE) clear (EC 0x01; CV = 1, COND = 0xE, TI).
pub fn wfx_trap(is_wfe: bool) -> u64 {
    esr(ec::WFX, (1 << 24) | (0xe << 20) | u64::from(is_wfe))
}

/// SCTLR_EL1 bits that let EL0 use what would otherwise trap to EL1.
mod sctlr {
    /// UMA: EL0 may access DAIF.
    pub const UMA: u64 = 1 << 9;
    /// DZE: EL0 may use DC ZVA.
    pub const DZE: u64 = 1 << 14;
    /// UCT: EL0 may read CTR_EL0.
    pub const UCT: u64 = 1 << 15;
    /// nTWI: EL0's WFI does not trap.
    pub const NTWI: u64 = 1 << 16;
    /// nTWE: EL0's WFE does not trap.
    pub const NTWE: u64 = 1 << 18;
    /// UCI: EL0 may clean/invalidate caches by VA.
    pub const UCI: u64 = 1 << 26;
}

/// The syndrome of the EL0 instruction `word` if SCTLR_EL1 = `sctlr` makes
/// it trap to EL1 rather than be UNDEFINED: WFI/WFE (EC 0x01), and the
/// system register and instruction accesses EL0 is granted by a SCTLR_EL1
/// bit (EC 0x18, ISS naming the access): CTR_EL0 (UCT), DAIF (UMA),
/// DC ZVA (DZE), cache maintenance by VA (UCI).
pub fn el0_trap(word: u32, sctlr: u64) -> Option<u64> {
    if word == 0xd503_207f {
        return (sctlr & sctlr::NTWI == 0).then(|| wfx_trap(false));
    }
    if word == 0xd503_205f {
        return (sctlr & sctlr::NTWE == 0).then(|| wfx_trap(true));
    }
    // MRS/MSR/SYS: 1101 0101 00 L op0(2) op1(3) CRn CRm op2 Rt.
    if word & 0xffc0_0000 != 0xd500_0000 {
        return None;
    }
    let read = (word >> 21) & 1;
    let op0 = (word >> 19) & 3;
    let op1 = (word >> 16) & 7;
    let crn = (word >> 12) & 0xf;
    let crm = (word >> 8) & 0xf;
    let op2 = (word >> 5) & 7;
    let rt = word & 0x1f;
    let enabled_by = match (op0, op1, crn, crm, op2) {
        (3, 3, 0, 0, 1) if read == 1 => sctlr::UCT,
        (3, 3, 4, 2, 1) => sctlr::UMA,
        (1, 3, 7, 4, 1) => sctlr::DZE,
        (1, 3, 7, 5 | 10 | 11 | 12 | 13 | 14, 1) => sctlr::UCI,
        _ => return None,
    };
    (sctlr & enabled_by == 0).then(|| {
        let iss =
            (op0 << 20) | (op2 << 17) | (op1 << 14) | (crn << 10) | (rt << 5) | (crm << 1) | read;
        esr(ec::SYSREG_TRAP, u64::from(iss))
    })
}

/// ESR of `brk #imm` (EC 0x3C, ISS = the immediate).
pub fn breakpoint(imm: u16) -> u64 {
    esr(ec::BRK64, u64::from(imm))
}

/// ISS\[5:0\] of the debug exceptions (IFSC/DFSC "debug exception").
const DEBUG_FSC: u64 = 0b10_0010;

/// ESR of a hardware breakpoint (DBGBCR/DBGBVR address match) taken to
/// EL1 from EL0 (`from_el0`) or EL1 (EC 0x30 / 0x31).
pub fn hw_breakpoint(from_el0: bool) -> u64 {
    let class = if from_el0 {
        ec::BKPT_LOWER
    } else {
        ec::BKPT_CURRENT
    };
    esr(class, DEBUG_FSC)
}

/// ESR of a watchpoint taken to EL1 from EL0 (`from_el0`) or EL1 (EC
/// 0x34 / 0x35): WnR for a store, CM for a cache maintenance instruction.
pub fn watchpoint(from_el0: bool, write: bool, cache_maintenance: bool) -> u64 {
    let class = if from_el0 {
        ec::WATCHPT_LOWER
    } else {
        ec::WATCHPT_CURRENT
    };
    let wnr = if write || cache_maintenance { WNR } else { 0 };
    let cm = if cache_maintenance { CM } else { 0 };
    esr(class, wnr | cm | DEBUG_FSC)
}

/// ESR of a software step exception taken to EL1 from EL0 (`from_el0`) or
/// EL1 (EC 0x32 / 0x33). `isv`: an instruction was stepped (it is 0 when
/// the exception is taken before any, in the active-pending state); `ex`:
/// that instruction was a load-exclusive.
pub fn software_step(from_el0: bool, isv: bool, ex: bool) -> u64 {
    let class = if from_el0 {
        ec::SOFTSTEP_LOWER
    } else {
        ec::SOFTSTEP_CURRENT
    };
    let ex = if isv && ex { 1 << 6 } else { 0 };
    esr(class, (u64::from(isv) << 24) | ex | DEBUG_FSC)
}

/// Whether `word` is a load-exclusive (LDXR, LDAXR, LDXRB/H, LDAXRB/H,
/// LDXP, LDAXP), which a software step syndrome reports as ISS.EX.
pub fn is_load_exclusive(word: u32) -> bool {
    // size 001000 o2=0 L=1 o1 ...: o1 = 1 is a pair only for 64-bit-wide
    // sizes (bit 31 set); below it, the encoding is CASP.
    word & 0x3fc0_0000 == 0x0840_0000 && !(word >> 31 == 0 && word & (1 << 21) != 0)
}

/// ESR of a data abort taken to EL1 from EL0 (`from_el0`) or EL1.
pub fn data_abort(from_el0: bool, write: bool, cache_maintenance: bool, fsc: FaultStatus) -> u64 {
    let class = if from_el0 {
        ec::DABT_LOWER
    } else {
        ec::DABT_CURRENT
    };
    // Cache maintenance reports WnR = 1 whatever the operation.
    let wnr = if write || cache_maintenance { WNR } else { 0 };
    let cm = if cache_maintenance { CM } else { 0 };
    esr(class, wnr | cm | fsc.code())
}

/// ESR of an instruction abort taken to EL1 from EL0 (`from_el0`) or EL1.
pub fn instruction_abort(from_el0: bool, fsc: FaultStatus) -> u64 {
    let class = if from_el0 {
        ec::IABT_LOWER
    } else {
        ec::IABT_CURRENT
    };
    esr(class, fsc.code())
}

/// Whether the A64 instruction `word` is an FP/Advanced SIMD one (which
/// CPACR_EL1.FPEN traps): the SIMD&FP data-processing group, the SIMD&FP
/// loads and stores (V = 1), and MRS/MSR of FPCR/FPSR.
pub fn is_fp_simd(word: u32) -> bool {
    // op0 = x111: data processing, SIMD and FP.
    let dp_simd = (word >> 25) & 0b111 == 0b111;
    // op0 = x1x0 with V (bit 26) set: SIMD&FP loads and stores.
    let ldst_simd = (word >> 25) & 0b101 == 0b100 && word & (1 << 26) != 0;
    // MRS/MSR S3_3_C4_C4_{0,1}: FPCR, FPSR.
    let fp_sysreg = word & 0xffdf_ffc0 == 0xd51b_4400;
    dp_simd || ldst_simd || fp_sysreg
}

/// Whether CPACR_EL1 value `cpacr` traps FP/SIMD at EL0 (`el0`) or EL1.
pub fn fp_trapped(cpacr: u64, el0: bool) -> bool {
    match (cpacr >> 20) & 0b11 {
        0b11 => false,
        0b01 => el0,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_status_codes_follow_the_architecture() {
        assert_eq!(FaultStatus::Translation(0).code(), 0x04);
        assert_eq!(FaultStatus::Translation(3).code(), 0x07);
        assert_eq!(FaultStatus::AccessFlag(3).code(), 0x0b);
        assert_eq!(FaultStatus::Permission(2).code(), 0x0e);
        assert_eq!(FaultStatus::Alignment.code(), 0x21);
        assert_eq!(FaultStatus::External.code(), 0x10);
        assert_eq!(FaultStatus::ExternalOnWalk(1).code(), 0x15);
    }

    #[test]
    fn syndromes_carry_class_length_and_iss() {
        assert_eq!(undefined(), 0x0200_0000);
        assert_eq!(breakpoint(0x1234), 0xf200_1234);
        // EL1 write, level-3 translation fault.
        assert_eq!(
            data_abort(false, true, false, FaultStatus::Translation(3)),
            0x9600_0047
        );
        // EL0 read, level-3 permission fault.
        assert_eq!(
            data_abort(true, false, false, FaultStatus::Permission(3)),
            0x9200_000f
        );
        assert_eq!(
            instruction_abort(true, FaultStatus::Translation(2)),
            0x8200_0006
        );
        assert_eq!(
            instruction_abort(false, FaultStatus::Permission(3)),
            0x8600_000f
        );
        assert_eq!(fp_access(), 0x1fe0_0000);
        assert_eq!(hw_breakpoint(false), 0xc600_0022);
        assert_eq!(hw_breakpoint(true), 0xc200_0022);
        assert_eq!(software_step(false, true, false), 0xcf00_0022);
        assert_eq!(watchpoint(false, true, false), 0xd600_0062);
        assert_eq!(watchpoint(true, false, false), 0xd200_0022);
        assert_eq!(software_step(true, true, true), 0xcb00_0062);
        // EX is only meaningful with ISV.
        assert_eq!(software_step(false, false, true), 0xce00_0022);
    }

    #[test]
    fn load_exclusives_are_recognised() {
        assert!(is_load_exclusive(0xc85f_7c20)); // ldxr x0, [x1]
        assert!(is_load_exclusive(0x885f_fc20)); // ldaxr w0, [x1]
        assert!(is_load_exclusive(0xc87f_0440)); // ldxp x0, x1, [x2]
        assert!(!is_load_exclusive(0xc802_7c20)); // stxr w2, x0, [x1]
        assert!(!is_load_exclusive(0xc8df_fc20)); // ldar x0, [x1]
        assert!(!is_load_exclusive(0x4860_7c82)); // caspa x0, x1, x2, x3, [x4]
    }

    #[test]
    fn fp_instructions_are_recognised() {
        assert!(is_fp_simd(0x9e67_0000)); // fmov d0, x0
        assert!(is_fp_simd(0x4e20_8400)); // add v0.16b, v0.16b, v0.16b
        assert!(is_fp_simd(0xfd40_0000)); // ldr d0, [x0]
        assert!(is_fp_simd(0xad00_0400)); // stp q0, q1, [x0]
        assert!(is_fp_simd(0xd53b_4400)); // mrs x0, fpcr
        assert!(is_fp_simd(0xd51b_4420)); // msr fpsr, x0
        assert!(!is_fp_simd(0xf940_0000)); // ldr x0, [x0]
        assert!(!is_fp_simd(0x8b01_0000)); // add x0, x0, x1
        assert!(!is_fp_simd(0xd538_1040)); // mrs x0, cpacr_el1
        assert!(!is_fp_simd(0x0000_0000)); // udf #0
    }

    #[test]
    fn el0_traps_follow_sctlr() {
        let all = sctlr::UMA | sctlr::DZE | sctlr::UCT | sctlr::NTWI | sctlr::NTWE | sctlr::UCI;
        for word in [
            0xd503_207f,
            0xd53b_0020,
            0xd53b_4220,
            0xd50b_7420,
            0xd50b_7b20,
        ] {
            assert_eq!(el0_trap(word, all), None, "{word:#x}");
        }
        assert_eq!(el0_trap(0xd503_207f, 0), Some(0x07e0_0000)); // wfi
        assert_eq!(el0_trap(0xd503_205f, 0), Some(0x07e0_0001)); // wfe
        // mrs x0, ctr_el0: Op0 3, Op2 1, Op1 3, CRn 0, Rt 0, CRm 0, read.
        assert_eq!(el0_trap(0xd53b_0020, 0), Some(0x6200_0000 | 0x32_c001));
        // dc zva, x0: Op0 1, Op2 1, Op1 3, CRn 7, CRm 4, write.
        assert_eq!(el0_trap(0xd50b_7420, 0), Some(0x6200_0000 | 0x12_dc08));
        // mrs x0, sctlr_el1 is UNDEFINED at EL0 whatever SCTLR says.
        assert_eq!(el0_trap(0xd538_1000, 0), None);
    }

    #[test]
    fn fpen_traps_per_level() {
        assert!(fp_trapped(0, false));
        assert!(fp_trapped(0, true));
        assert!(fp_trapped(1 << 20, true));
        assert!(!fp_trapped(1 << 20, false));
        assert!(!fp_trapped(3 << 20, true));
    }
}
