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

/// ESR of `brk #imm` (EC 0x3C, ISS = the immediate).
pub fn breakpoint(imm: u16) -> u64 {
    esr(ec::BRK64, u64::from(imm))
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
    fn fpen_traps_per_level() {
        assert!(fp_trapped(0, false));
        assert!(fp_trapped(0, true));
        assert!(fp_trapped(1 << 20, true));
        assert!(!fp_trapped(1 << 20, false));
        assert!(!fp_trapped(3 << 20, true));
    }
}
