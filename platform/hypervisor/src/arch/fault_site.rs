//! Finding the guest physical page behind a `KVM_RUN` → `EFAULT`.
//!
//! On Debian's 6.1 and 6.12 arm64 kernels a guest access to a page the VMM
//! withholds (userfaultfd SIGBUS mode, or PROT_NONE) makes `KVM_RUN` fail
//! with `EFAULT`, PC still on the faulting instruction and no address
//! anywhere (`KVM_CAP_MEMORY_FAULT_INFO` is 0). The VMM reconstructs it:
//!
//! 1. translate PC; if the instruction's own page is withheld, the fault is
//!    the instruction fetch;
//! 2. otherwise decode the instruction, compute the address of its data
//!    access from the registers, translate the first and last byte;
//! 3. the first withheld page among them is the faulting one.
//!
//! A stage-1 walk that needs a descriptor from a withheld page reports that
//! page (the hardware's walk faulted there). The pieces are in
//! [`super::stage1`] and [`super::access`]; this module only combines them
//! and is unit-tested on recorded cases on any host.

use apflab_abi::memory_map::PAGE_SIZE;

use super::access::{AccessError, RegisterSource, data_access};
use super::stage1::{GuestPhysMem, Translation, TranslationRegs, WalkError};

/// What kind of access faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Fetching the instruction at PC.
    InstructionFetch,
    /// The data access of the load/store at PC.
    Data,
    /// The stage-1 table walk for one of the above read a descriptor there.
    TableWalk,
}

/// The located fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultSite {
    /// Page-aligned IPA of the withheld page.
    pub ipa_page: u64,
    /// Virtual address of the access (PC for a fetch; the data VA
    /// otherwise, also for a table walk on behalf of that access).
    pub va: u64,
    /// Which access it was.
    pub kind: FaultKind,
    /// Whether the access writes (false for fetches).
    pub write: bool,
    /// Disassembly of the instruction at PC (empty for a fetch fault).
    pub instruction: String,
}

/// Why the fault could not be located. Each variant says which step failed.
#[derive(Debug, thiserror::Error)]
pub enum LocateError<E: std::fmt::Display + std::fmt::Debug> {
    /// Translating PC failed.
    #[error("translating PC {pc:#x}: {source}")]
    Pc {
        /// PC.
        pc: u64,
        /// Cause.
        source: WalkError,
    },
    /// The instruction at PC could not be read (outside RAM).
    #[error("PC {pc:#x} (IPA {ipa:#x}) is not in guest RAM")]
    PcOutsideRam {
        /// PC.
        pc: u64,
        /// Its IPA.
        ipa: u64,
    },
    /// The instruction could not be decoded into a data access.
    #[error("instruction at PC {pc:#x}: {source}")]
    Access {
        /// PC.
        pc: u64,
        /// Cause.
        source: AccessError<E>,
    },
    /// Translating the data address failed.
    #[error("translating data address {va:#x} of `{instruction}` at PC {pc:#x}: {source}")]
    Data {
        /// PC.
        pc: u64,
        /// The data VA.
        va: u64,
        /// Disassembly.
        instruction: String,
        /// Cause.
        source: WalkError,
    },
    /// Every page the instruction touches is resident: the EFAULT was not
    /// caused by a withheld page (or it was filled in the meantime).
    #[error("`{instruction}` at PC {pc:#x} touches {va:#x}+{size} whose pages are all resident")]
    AllResident {
        /// PC.
        pc: u64,
        /// Data VA.
        va: u64,
        /// Access size.
        size: u64,
        /// Disassembly.
        instruction: String,
    },
}

/// Locates the withheld page that made the vCPU's last `KVM_RUN` fail.
pub fn locate<R>(
    pc: u64,
    tregs: &TranslationRegs,
    regs: &mut R,
    mem: &dyn GuestPhysMem,
) -> Result<FaultSite, LocateError<R::Error>>
where
    R: RegisterSource,
    R::Error: std::fmt::Display + std::fmt::Debug,
{
    let page = |a: u64| a & !(PAGE_SIZE - 1);
    let pc_ipa = match tregs
        .translate(pc, mem)
        .map_err(|source| LocateError::Pc { pc, source })?
    {
        Translation::WalkNeedsPage(p) => {
            return Ok(FaultSite {
                ipa_page: p,
                va: pc,
                kind: FaultKind::TableWalk,
                write: false,
                instruction: String::new(),
            });
        }
        Translation::Mapped(ipa) => ipa,
    };
    if !mem.is_resident(pc_ipa) {
        return Ok(FaultSite {
            ipa_page: page(pc_ipa),
            va: pc,
            kind: FaultKind::InstructionFetch,
            write: false,
            instruction: String::new(),
        });
    }
    let word = mem
        .read_u32(pc_ipa)
        .ok_or(LocateError::PcOutsideRam { pc, ipa: pc_ipa })?;
    let access =
        data_access(word, pc, regs).map_err(|source| LocateError::Access { pc, source })?;
    let last = access.va.wrapping_add(access.size - 1);
    let mut candidates = vec![access.va];
    if page(last) != page(access.va) {
        candidates.push(page(last));
    }
    for va in candidates {
        let t = tregs
            .translate(va, mem)
            .map_err(|source| LocateError::Data {
                pc,
                va,
                instruction: access.text.clone(),
                source,
            })?;
        let (ipa_page, kind) = match t {
            Translation::WalkNeedsPage(p) => (p, FaultKind::TableWalk),
            Translation::Mapped(ipa) if !mem.is_resident(ipa) => (page(ipa), FaultKind::Data),
            Translation::Mapped(_) => continue,
        };
        return Ok(FaultSite {
            ipa_page,
            va: access.va,
            kind,
            write: access.write,
            instruction: access.text,
        });
    }
    Err(LocateError::AllResident {
        pc,
        va: access.va,
        size: access.size,
        instruction: access.text,
    })
}

#[cfg(test)]
mod tests {
    use super::super::access::tests::Regs;
    use super::super::stage1::tests::{FakeRam, TCR_39, map_page};
    use super::*;

    const TABLES: u64 = 0x4010_0000;
    const CODE_VA: u64 = 0xFFFF_FF80_0008_0000;
    const CODE_PA: u64 = 0x4008_0000;
    const DATA_VA: u64 = 0x10_0000_0000;
    const DATA_PA: u64 = 0x4200_0000;

    /// The recorded setup: kernel code mapped high through TTBR1, the
    /// workload region low through TTBR0 (as the apflab guest does), with
    /// the instruction `word` at CODE_VA.
    fn machine(word: u32) -> (FakeRam, TranslationRegs) {
        let mut ram = FakeRam::default();
        map_page(&mut ram, TABLES, DATA_VA, DATA_PA);
        map_page(&mut ram, TABLES, DATA_VA + 0x1000, DATA_PA + 0x1000);
        map_page(&mut ram, TABLES + 0x3000, CODE_VA, CODE_PA);
        ram.write_u32(CODE_PA + 0x10, word);
        let tregs = TranslationRegs {
            sctlr: 1,
            tcr: TCR_39,
            ttbr0: TABLES,
            ttbr1: TABLES + 0x3000,
        };
        (ram, tregs)
    }

    #[test]
    fn data_load_in_a_withheld_page() {
        // ldr x0, [x1, #8] with x1 in the second workload page.
        let (mut ram, t) = machine(0xf9400420);
        ram.withhold(DATA_PA + 0x1000);
        let mut r = Regs::new();
        r.x[1] = DATA_VA + 0x1ff0;
        let site = locate(CODE_VA + 0x10, &t, &mut r, &ram).unwrap();
        assert_eq!(site.ipa_page, DATA_PA + 0x1000);
        assert_eq!(site.kind, FaultKind::Data);
        assert_eq!(site.va, DATA_VA + 0x1ff8);
        assert!(!site.write);
        assert!(
            site.instruction.starts_with("ldr x0"),
            "{}",
            site.instruction
        );
        // Only x1 was needed.
        assert_eq!(r.reads, 1);
    }

    #[test]
    fn pair_store_crossing_into_a_withheld_page() {
        // stp x29, x30, [sp, #-16]! with the pair straddling two pages.
        let (mut ram, t) = machine(0xa9bf7bfd);
        ram.withhold(DATA_PA + 0x1000);
        let mut r = Regs::new();
        r.sp = DATA_VA + 0x1008;
        let site = locate(CODE_VA + 0x10, &t, &mut r, &ram).unwrap();
        assert_eq!(site.ipa_page, DATA_PA + 0x1000);
        assert_eq!(site.va, DATA_VA + 0xff8);
        assert!(site.write, "stp is a store");
    }

    #[test]
    fn instruction_fetch_from_a_withheld_page() {
        let (mut ram, t) = machine(0xf9400420);
        ram.withhold(CODE_PA);
        let mut r = Regs::new();
        let site = locate(CODE_VA + 0x10, &t, &mut r, &ram).unwrap();
        assert_eq!(site.kind, FaultKind::InstructionFetch);
        assert_eq!(site.ipa_page, CODE_PA);
        assert_eq!(r.reads, 0, "no register read for a fetch fault");
    }

    #[test]
    fn table_walk_through_a_withheld_page() {
        let (mut ram, t) = machine(0xf9400420);
        // The level-3 table of the data mapping.
        ram.withhold(TABLES + 0x2000);
        let mut r = Regs::new();
        r.x[1] = DATA_VA;
        let site = locate(CODE_VA + 0x10, &t, &mut r, &ram).unwrap();
        assert_eq!(site.kind, FaultKind::TableWalk);
        assert_eq!(site.ipa_page, TABLES + 0x2000);
    }

    #[test]
    fn mmu_off_boot_code() {
        // Before the guest enables its MMU: VA == IPA.
        let mut ram = FakeRam::default();
        ram.write_u32(0x4008_0000, 0xb9000c22); // str w2, [x1, #12]
        ram.withhold(0x4300_0000);
        let mut r = Regs::new();
        r.x[1] = 0x4300_0ff0;
        let site = locate(0x4008_0000, &TranslationRegs::default(), &mut r, &ram).unwrap();
        assert_eq!(site.ipa_page, 0x4300_0000);
        assert_eq!(site.va, 0x4300_0ffc);
    }

    #[test]
    fn unexplained_efault_is_an_error_naming_the_instruction() {
        let (ram, t) = machine(0xf9400420);
        let mut r = Regs::new();
        r.x[1] = DATA_VA;
        let e = locate(CODE_VA + 0x10, &t, &mut r, &ram).unwrap_err();
        assert!(matches!(e, LocateError::AllResident { .. }));
        assert!(e.to_string().contains("ldr x0"), "{e}");
        // A non-memory instruction at PC.
        let (ram, t) = machine(0xd503207f); // wfi
        let e = locate(CODE_VA + 0x10, &t, &mut r, &ram).unwrap_err();
        assert!(e.to_string().contains("does not access memory"), "{e}");
        // PC not mapped by the guest.
        let e = locate(0xFFFF_FF80_1234_0000, &t, &mut r, &ram).unwrap_err();
        assert!(matches!(e, LocateError::Pc { .. }), "{e}");
    }
}
