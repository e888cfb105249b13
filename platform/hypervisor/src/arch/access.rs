//! Which memory a faulting A64 instruction touches.
//!
//! Decoding is done by `yaxpeax-arm`; this module turns its addressing-mode
//! operand into the virtual address the access starts at (before any
//! writeback, which the architecture only performs when the access
//! completes) and works out how many bytes it touches, so that an access
//! crossing a page boundary is attributed to the right page.

use yaxpeax_arch::{Decoder, U8Reader};
use yaxpeax_arm::armv8::a64::{
    InstDecoder, Instruction, Opcode, Operand, SIMDSizeCode, ShiftStyle, SizeCode,
};

/// A register the address computation reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrReg {
    /// General-purpose register X0..X30 (X31 as an index is XZR = 0 and is
    /// never asked for).
    X(u8),
    /// The current stack pointer (base register 31).
    Sp,
}

/// Reads the registers an address computation needs. Implemented by the
/// backend over KVM_GET_ONE_REG (only the registers actually named by the
/// instruction are read: each read is an ioctl).
pub trait RegisterSource {
    /// Error of a register read.
    type Error;
    /// Current value of `reg`.
    fn read(&mut self, reg: AddrReg) -> Result<u64, Self::Error>;
}

/// One data access of a load/store instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataAccess {
    /// First virtual address touched.
    pub va: u64,
    /// Bytes touched from `va` (an upper bound for the rare forms where the
    /// exact count depends on run-time state, e.g. DC ZVA's block size).
    pub size: u64,
    /// Whether the access writes (stores, atomics, DC ZVA).
    pub write: bool,
    /// The disassembly, for logs and errors.
    pub text: String,
}

/// Why an instruction's access could not be worked out.
#[derive(Debug, thiserror::Error)]
pub enum AccessError<E> {
    /// The word does not decode as an A64 instruction.
    #[error("instruction {word:#010x} does not decode: {reason}")]
    Undecodable {
        /// The instruction word.
        word: u32,
        /// The decoder's error.
        #[source]
        reason: yaxpeax_arm::armv8::a64::DecodeError,
    },
    /// The instruction does not access data memory.
    #[error("instruction {word:#010x} ({text}) does not access memory")]
    NotMemoryAccess {
        /// The instruction word.
        word: u32,
        /// Its disassembly.
        text: String,
    },
    /// A register could not be read.
    #[error("reading a register for the address computation: {0}")]
    Register(E),
}

/// Decodes `word` (at `pc`) and computes the data access it makes.
pub fn data_access<R: RegisterSource>(
    word: u32,
    pc: u64,
    regs: &mut R,
) -> Result<DataAccess, AccessError<R::Error>> {
    let bytes = word.to_le_bytes();
    let mut reader = U8Reader::new(&bytes[..]);
    let inst: Instruction = InstDecoder::default()
        .decode(&mut reader)
        .map_err(|reason| AccessError::Undecodable { word, reason })?;
    let text = inst.to_string();
    if let Some(va) = dc_address(word, regs)? {
        // DC ZVA zeroes an aligned block of at most 2 KiB (DCZID_EL0.BS <= 9);
        // other DC operations act on one cache line. Neither crosses a page.
        // Only DC ZVA writes; cache maintenance counts as a read.
        let write = word & 0xFFFF_FFE0 == 0xD50B_7420;
        return Ok(DataAccess {
            va,
            size: 1,
            write,
            text,
        });
    }
    let not_memory = || AccessError::NotMemoryAccess {
        word,
        text: text.clone(),
    };
    if matches!(inst.opcode, Opcode::PRFM | Opcode::PRFUM) {
        // Prefetches never fault.
        return Err(not_memory());
    }
    let mut addr = None;
    for op in inst.operands.iter() {
        let va = match *op {
            Operand::RegPreIndex(base, offset, _) => {
                Some(base_reg(base, regs)?.wrapping_add(offset as i64 as u64))
            }
            // Post-index: the access uses the base unmodified.
            Operand::RegPostIndex(base, _) | Operand::RegPostIndexReg(base, _) => {
                Some(base_reg(base, regs)?)
            }
            Operand::RegRegOffset(base, index, index_size, style, amount) => {
                let raw = if index == 31 {
                    0
                } else {
                    regs.read(AddrReg::X(index as u8))
                        .map_err(AccessError::Register)?
                };
                let offset = extend(raw, index_size, style) << amount;
                Some(base_reg(base, regs)?.wrapping_add(offset))
            }
            // LDR (literal): only loads carry a PC-relative operand.
            Operand::PCOffset(off) if is_load_literal(word) => Some(pc.wrapping_add(off as u64)),
            _ => None,
        };
        if va.is_some() {
            addr = va;
            break;
        }
    }
    let va = addr.ok_or_else(not_memory)?;
    let size = access_size(&inst);
    let write = is_write(inst.opcode);
    Ok(DataAccess {
        va,
        size,
        write,
        text,
    })
}

/// The unit an access of `size` bytes by instruction `word` must be
/// aligned to when alignment checking is on (SCTLR_ELx.A): its element
/// size. A register pair's elements are its two halves; the multiple
/// structure loads and stores of Advanced SIMD use their element size; any
/// other access is one element (the single-structure forms are checked as
/// byte accesses, which never fault).
pub fn alignment_unit(word: u32, size: u64) -> u64 {
    // Load/store register pair: bits 29:27 = 0b101, bit 25 = 0.
    let pair = (word >> 27) & 0b111 == 0b101 && word & (1 << 25) == 0;
    // Advanced SIMD load/store multiple structures: bits 29:24 = 0b001100.
    let simd_multiple = word >> 31 == 0 && (word >> 24) & 0x3f == 0b00_1100;
    // Advanced SIMD load/store single structure: bits 29:24 = 0b001101.
    let simd_single = word >> 31 == 0 && (word >> 24) & 0x3f == 0b00_1101;
    if pair {
        (size / 2).max(1)
    } else if simd_multiple {
        1 << ((word >> 10) & 3)
    } else if simd_single {
        1
    } else {
        size.max(1)
    }
}

/// LDR (literal) group: bits 29:27 = 0b011, bits 25:24 = 0b00.
fn is_load_literal(word: u32) -> bool {
    word & 0x3B00_0000 == 0x1800_0000
}

/// `DC <op>, Xt`: SYS with op0 = 1, CRn = 7 (cache maintenance by VA).
/// Returns Xt for the DC operations that take a VA.
fn dc_address<R: RegisterSource>(
    word: u32,
    regs: &mut R,
) -> Result<Option<u64>, AccessError<R::Error>> {
    // SYS: 1101 0101 0000 1 op1 CRn CRm op2 Rt
    if word & 0xFFF8_0000 != 0xD508_0000 {
        return Ok(None);
    }
    let crn = (word >> 12) & 0xf;
    let crm = (word >> 8) & 0xf;
    let op1 = (word >> 16) & 7;
    let rt = (word & 0x1f) as u8;
    // CRn 7 with CRm 4 (ZVA), 5/11/14/10/12/13 (clean/invalidate by VA), 6
    // (IVAC). Set/way operations (CRm 6 op1 0 op2 2, CRm 10/14 op2 2) take
    // no address.
    let op2 = (word >> 5) & 7;
    let by_va = crn == 7
        && match (op1, crm, op2) {
            (3, 4, 1) => true,       // ZVA
            (0, 6, 1) => true,       // IVAC
            (3, 10..=14, 1) => true, // CVAC, CVAU, CVAP, CVADP, CIVAC
            (3, 5, 1) => true,       // IC IVAU
            _ => false,
        };
    if !by_va || rt == 31 {
        return Ok(None);
    }
    regs.read(AddrReg::X(rt))
        .map(Some)
        .map_err(AccessError::Register)
}

/// Base register of an address: 31 is SP.
fn base_reg<R: RegisterSource>(reg: u16, regs: &mut R) -> Result<u64, AccessError<R::Error>> {
    let r = if reg == 31 {
        AddrReg::Sp
    } else {
        AddrReg::X(reg as u8)
    };
    regs.read(r).map_err(AccessError::Register)
}

/// Applies an index register's extend (the shift amount is applied by the
/// caller).
fn extend(raw: u64, size: SizeCode, style: ShiftStyle) -> u64 {
    let raw = match size {
        SizeCode::W => raw & 0xffff_ffff,
        SizeCode::X => raw,
    };
    match style {
        ShiftStyle::UXTW => raw & 0xffff_ffff,
        ShiftStyle::SXTW => raw as u32 as i32 as i64 as u64,
        ShiftStyle::UXTB => raw & 0xff,
        ShiftStyle::SXTB => raw as u8 as i8 as i64 as u64,
        ShiftStyle::UXTH => raw & 0xffff,
        ShiftStyle::SXTH => raw as u16 as i16 as i64 as u64,
        _ => raw,
    }
}

/// Whether the instruction writes memory: stores (their mnemonics start
/// with `ST`) and read-modify-write atomics.
fn is_write(op: Opcode) -> bool {
    use Opcode::*;
    if matches!(
        op,
        SWP(_)
            | SWPB(_)
            | SWPH(_)
            | CAS(_)
            | CASB(_)
            | CASH(_)
            | CASP(_)
            | LDADD(_)
            | LDADDB(_)
            | LDADDH(_)
            | LDCLR(_)
            | LDCLRB(_)
            | LDCLRH(_)
            | LDEOR(_)
            | LDEORB(_)
            | LDEORH(_)
            | LDSET(_)
            | LDSETB(_)
            | LDSETH(_)
            | LDSMAX(_)
            | LDSMAXB(_)
            | LDSMAXH(_)
            | LDSMIN(_)
            | LDSMINB(_)
            | LDSMINH(_)
            | LDUMAX(_)
            | LDUMAXB(_)
            | LDUMAXH(_)
            | LDUMIN(_)
            | LDUMINB(_)
            | LDUMINH(_)
    ) {
        return true;
    }
    // The opcode's Debug form is its mnemonic (ST1, STP, STXR, STLR...).
    format!("{op:?}").starts_with("ST")
}

/// Bytes a SIMD&FP register of this size holds.
fn simd_bytes(s: SIMDSizeCode) -> u64 {
    match s {
        SIMDSizeCode::B => 1,
        SIMDSizeCode::H => 2,
        SIMDSizeCode::S => 4,
        SIMDSizeCode::D => 8,
        SIMDSizeCode::Q => 16,
    }
}

/// Bytes the access touches.
fn access_size(inst: &Instruction) -> u64 {
    use Opcode::*;
    // Byte and halfword forms name a W register, so the opcode decides.
    let fixed = match inst.opcode {
        LDRB | LDRSB | LDURB | LDURSB | LDTRB | LDTRSB | STRB | STURB | STTRB | LDARB | LDLARB
        | LDAXRB | LDXRB | STLRB | STLLRB | STLXRB | STXRB | LDAPRB | LDAPURB | LDAPURSB
        | STLURB | SWPB(_) | LDADDB(_) | LDCLRB(_) | LDEORB(_) | LDSETB(_) | LDSMAXB(_)
        | LDSMINB(_) | LDUMAXB(_) | LDUMINB(_) | CASB(_) => Some(1),
        LDRH | LDRSH | LDURH | LDURSH | LDTRH | LDTRSH | STRH | STURH | STTRH | LDARH | LDLARH
        | LDAXRH | LDXRH | STLRH | STLLRH | STLXRH | STXRH | LDAPRH | LDAPURH | LDAPURSH
        | STLURH | SWPH(_) | LDADDH(_) | LDCLRH(_) | LDEORH(_) | LDSETH(_) | LDSMAXH(_)
        | LDSMINH(_) | LDUMAXH(_) | LDUMINH(_) | CASH(_) => Some(2),
        LDRSW | LDURSW | LDTRSW | LDAPURSW => Some(4),
        LDPSW => Some(8),
        _ => None,
    };
    if let Some(n) = fixed {
        return n;
    }
    // Otherwise: the data registers named before the address operand.
    let mut total = 0;
    for op in inst.operands.iter() {
        total += match *op {
            Operand::Register(SizeCode::W, _) => 4,
            Operand::Register(SizeCode::X, _) => 8,
            Operand::RegisterPair(SizeCode::W, _) => 8,
            Operand::RegisterPair(SizeCode::X, _) => 16,
            Operand::SIMDRegister(s, _) => simd_bytes(s),
            Operand::SIMDRegisterElements(s, _, _) => simd_bytes(s),
            Operand::SIMDRegisterGroup(s, _, _, n) => simd_bytes(s) * n as u64,
            Operand::SIMDRegisterElementsLane(_, _, e, _) => simd_bytes(e),
            Operand::SIMDRegisterGroupLane(_, e, _, n) => simd_bytes(e) * n as u64,
            Operand::SIMDRegisterElementsMultipleLane(_, _, e, _, n) => simd_bytes(e) * n as u64,
            _ => break,
        };
    }
    // Exclusive stores name the status register Ws first: it is not data.
    if matches!(
        inst.opcode,
        STXR | STLXR | STXP | STLXP | STXRB | STXRH | STLXRB | STLXRH
    ) {
        total -= 4;
    }
    // Atomics (LDADD Xs, Xt, [Xn]) and CAS name two data registers of which
    // only one width is accessed.
    if matches!(
        inst.opcode,
        SWP(_)
            | LDADD(_)
            | LDCLR(_)
            | LDEOR(_)
            | LDSET(_)
            | LDSMAX(_)
            | LDSMIN(_)
            | LDUMAX(_)
            | LDUMIN(_)
            | CAS(_)
            | CASP(_)
    ) {
        total /= 2;
    }
    total.max(1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Registers from an array; X(n) = regs[n], SP = sp. Counts reads.
    pub(crate) struct Regs {
        pub x: [u64; 31],
        pub sp: u64,
        pub reads: usize,
    }

    impl Regs {
        pub(crate) fn new() -> Self {
            Regs {
                x: [0; 31],
                sp: 0,
                reads: 0,
            }
        }
    }

    impl RegisterSource for Regs {
        type Error = std::convert::Infallible;
        fn read(&mut self, reg: AddrReg) -> Result<u64, Self::Error> {
            self.reads += 1;
            Ok(match reg {
                AddrReg::X(n) => self.x[n as usize],
                AddrReg::Sp => self.sp,
            })
        }
    }

    fn acc(word: u32, pc: u64, r: &mut Regs) -> (u64, u64) {
        let a = data_access(word, pc, r).unwrap();
        (a.va, a.size)
    }

    // Instruction words below were assembled with GNU as for aarch64
    // (`aarch64-linux-gnu-as` + objdump); the mnemonic is beside each.

    #[test]
    fn unsigned_offset_pre_and_post_index() {
        let mut r = Regs::new();
        r.x[1] = 0x10_0000_1000;
        assert_eq!(acc(0xf9400420, 0, &mut r), (0x10_0000_1008, 8)); // ldr x0, [x1, #8]
        assert_eq!(acc(0xb9000c22, 0, &mut r), (0x10_0000_100c, 4)); // str w2, [x1, #12]
        assert_eq!(acc(0x39400020, 0, &mut r), (0x10_0000_1000, 1)); // ldrb w0, [x1]
        assert_eq!(acc(0x79800420, 0, &mut r), (0x10_0000_1002, 2)); // ldrsh x0, [x1, #2]
        assert_eq!(acc(0xf85f8c20, 0, &mut r), (0x10_0000_0ff8, 8)); // ldr x0, [x1, #-8]!
        assert_eq!(acc(0xf8408420, 0, &mut r), (0x10_0000_1000, 8)); // ldr x0, [x1], #8
        assert_eq!(acc(0xf85f0020, 0, &mut r), (0x10_0000_0ff0, 8)); // ldur x0, [x1, #-16]
    }

    #[test]
    fn register_offsets_with_extend_and_shift() {
        let mut r = Regs::new();
        r.x[1] = 0x4000_0000;
        r.x[2] = 3;
        r.x[3] = 0xffff_ffff; // w3 = -1
        assert_eq!(acc(0xf8627820, 0, &mut r), (0x4000_0018, 8)); // ldr x0, [x1, x2, lsl #3]
        assert_eq!(acc(0xf8626820, 0, &mut r), (0x4000_0003, 8)); // ldr x0, [x1, x2]
        assert_eq!(acc(0xb863d820, 0, &mut r), (0x3fff_fffc, 4)); // ldr w0, [x1, w3, sxtw #2]
        assert_eq!(acc(0x38634820, 0, &mut r), (0x4000_0000 + 0xffff_ffff, 1)); // ldrb w0, [x1, w3, uxtw]
    }

    #[test]
    fn pairs_sp_base_and_simd() {
        let mut r = Regs::new();
        r.sp = 0x4100_0000;
        r.x[1] = 0x4200_0000;
        assert_eq!(acc(0xa9bf7bfd, 0, &mut r), (0x40ff_fff0, 16)); // stp x29, x30, [sp, #-16]!
        assert_eq!(acc(0x29410420, 0, &mut r), (0x4200_0008, 8)); // ldp w0, w1, [x1, #8]
        assert_eq!(acc(0x3dc00420, 0, &mut r), (0x4200_0010, 16)); // ldr q0, [x1, #16]
        assert_eq!(acc(0xad400420, 0, &mut r), (0x4200_0000, 32)); // ldp q0, q1, [x1]
        assert_eq!(acc(0x4c402020, 0, &mut r), (0x4200_0000, 64)); // ld1 {v0.16b-v3.16b}, [x1]
    }

    #[test]
    fn exclusives_atomics_literal_and_dc_zva() {
        let mut r = Regs::new();
        r.x[1] = 0x4300_0040;
        assert_eq!(acc(0xc85f7c20, 0, &mut r), (0x4300_0040, 8)); // ldxr x0, [x1]
        assert_eq!(acc(0xc8027c20, 0, &mut r), (0x4300_0040, 8)); // stxr w2, x0, [x1]
        assert_eq!(acc(0x88027c20, 0, &mut r), (0x4300_0040, 4)); // stxr w2, w0, [x1]
        assert_eq!(acc(0xf8200022, 0, &mut r), (0x4300_0040, 8)); // ldadd x0, x2, [x1]
        assert_eq!(acc(0x58000080, 0x4008_0000, &mut r), (0x4008_0010, 8)); // ldr x0, #+0x10
        assert_eq!(acc(0xd50b7421, 0, &mut r), (0x4300_0040, 1)); // dc zva, x1
    }

    #[test]
    fn non_memory_instructions_are_errors() {
        let mut r = Regs::new();
        for word in [
            0x8b020020u32, // add x0, x1, x2
            0xd503207f,    // wfi
            0x14000010,    // b .+0x40
            0xf9800020,    // prfm pldl1keep, [x1]
            0xd5087e41,    // dc cisw, x1 (set/way: no address)
        ] {
            assert!(
                matches!(
                    data_access(word, 0, &mut r),
                    Err(AccessError::NotMemoryAccess { .. })
                ),
                "{word:#x}"
            );
        }
        // A branch to a PC-relative label is not a literal load.
        assert!(data_access(0x94000010, 0, &mut r).is_err()); // bl
        assert!(matches!(
            data_access(0x0000_0000, 0, &mut r),
            Err(AccessError::Undecodable { .. }) | Err(AccessError::NotMemoryAccess { .. })
        ));
    }

    #[test]
    fn alignment_units_are_element_sizes() {
        assert_eq!(alignment_unit(0xf940_0000, 8), 8); // ldr x0, [x0]
        assert_eq!(alignment_unit(0x3940_0000, 1), 1); // ldrb w0, [x0]
        assert_eq!(alignment_unit(0xa940_0400, 16), 8); // ldp x0, x1, [x0]
        assert_eq!(alignment_unit(0xad40_0400, 32), 16); // ldp q0, q1, [x0]
        assert_eq!(alignment_unit(0x4c40_7800, 16), 4); // ld1 {v0.4s}, [x0]
        assert_eq!(alignment_unit(0x4d40_8000, 4), 1); // ld1 {v0.s}[2], [x0]
    }
}
