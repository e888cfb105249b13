//! The guest's stage-1 translation (VA → IPA), walked by the VMM in guest
//! memory.
//!
//! KVM on the kernels apflab runs on reports a guest access to a withheld
//! page only as `KVM_RUN` failing with `EFAULT`, without the address (see
//! measured on Debian 6.1 and 6.12 arm64 kernels). To find the page, the VMM redoes what the guest's MMU
//! did: this module reads the EL1&0 translation registers and walks the
//! guest's page tables (4 KiB granule, as the apflab guest and every arm64
//! Linux guest on these hosts use). The tables themselves may sit on a
//! withheld page; then that page is what the hardware walk faulted on, and
//! the walk reports it instead of reading it.

use apflab_abi::memory_map::{PAGE_SHIFT, PAGE_SIZE};

/// SCTLR_EL1.M: the stage-1 MMU is on.
const SCTLR_M: u64 = 1 << 0;
/// SCTLR_EL1.EE: page tables and data are big-endian at EL1.
const SCTLR_EE: u64 = 1 << 25;

/// AF, the access flag of a leaf descriptor.
const DESC_AF: u64 = 1 << 10;

/// Bits 47:12 of a descriptor or TTBR: the next-level table / output address
/// with a 4 KiB granule and 48-bit output addresses.
const OA_MASK_4K: u64 = 0x0000_FFFF_FFFF_F000;

/// Where one stage-1 walk step reads guest memory.
pub trait GuestPhysMem {
    /// Whether the host has the page holding `ipa` (reading a withheld page
    /// would fault the VMM itself).
    fn is_resident(&self, ipa: u64) -> bool;
    /// Reads the little-endian 64-bit word at `ipa` (8-byte aligned).
    /// `None` if `ipa` is not guest RAM.
    fn read_u64(&self, ipa: u64) -> Option<u64>;
    /// Reads the little-endian 32-bit word at `ipa` (4-byte aligned).
    /// `None` if `ipa` is not guest RAM.
    fn read_u32(&self, ipa: u64) -> Option<u32>;
}

/// The EL1&0 translation registers of one vCPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TranslationRegs {
    /// SCTLR_EL1.
    pub sctlr: u64,
    /// TCR_EL1.
    pub tcr: u64,
    /// TTBR0_EL1.
    pub ttbr0: u64,
    /// TTBR1_EL1.
    pub ttbr1: u64,
}

/// Why a VA could not be translated by the VMM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// The guest uses a translation setup the walker does not implement.
    #[error("unsupported stage-1 setup: {0}")]
    Unsupported(UnsupportedSetup),
    /// The VA is outside both halves of the address space TCR_EL1 defines.
    #[error("virtual address {va:#x} is outside the ranges TCR_EL1 {tcr:#x} maps")]
    OutOfRange {
        /// The VA.
        va: u64,
        /// TCR_EL1 at the time.
        tcr: u64,
    },
    /// Translation for this half of the address space is disabled (EPDn).
    #[error("virtual address {va:#x} is in a half of the address space with walks disabled")]
    WalksDisabled {
        /// The VA.
        va: u64,
    },
    /// A descriptor on the way was invalid: the guest itself would have
    /// taken a translation fault (which KVM delivers to it, never to us).
    #[error("virtual address {va:#x} has no valid level-{level} descriptor ({desc:#x})")]
    NotMapped {
        /// The VA.
        va: u64,
        /// Level of the invalid descriptor.
        level: u8,
        /// The descriptor.
        desc: u64,
    },
    /// A table address points outside guest RAM.
    #[error("level-{level} table at {ipa:#x} is outside guest RAM")]
    TableOutsideRam {
        /// IPA of the descriptor.
        ipa: u64,
        /// Level.
        level: u8,
    },
}

/// A stage-1 setup the walker does not implement ([`WalkError::Unsupported`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnsupportedSetup {
    /// A half of the address space uses a 16 or 64 KiB granule.
    #[error("translation granule other than 4 KiB (TCR_EL1.TG{half} = {tg:#b})")]
    Granule {
        /// Which half: 0 (TTBR0_EL1) or 1 (TTBR1_EL1).
        half: u8,
        /// The TGn field.
        tg: u64,
    },
    /// A half's size is outside what a 4 KiB granule without LPA2 gives.
    #[error("TnSZ outside 16..=39 (TCR_EL1.T{half}SZ = {tsz})")]
    RegionSize {
        /// Which half: 0 (TTBR0_EL1) or 1 (TTBR1_EL1).
        half: u8,
        /// The TnSZ field.
        tsz: u64,
    },
    /// SCTLR_EL1.EE: descriptors are read big-endian.
    #[error("big-endian page tables")]
    BigEndian,
}

/// Result of translating one VA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Translation {
    /// The VA maps to this IPA.
    Mapped(u64),
    /// The walk itself needs a descriptor from a page the host withheld:
    /// the hardware walk faulted on this IPA (page aligned).
    WalkNeedsPage(u64),
}

/// Result of a walk, with the leaf descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// The VA maps to `ipa` through leaf descriptor `desc` (`None` with the
    /// MMU off: everything is accessible).
    Leaf {
        /// The IPA.
        ipa: u64,
        /// The page or block descriptor.
        desc: Option<u64>,
        /// Lookup level of the leaf (3 for a page, 1 or 2 for a block; 0
        /// with the MMU off).
        level: u8,
    },
    /// The walk needs a descriptor from this withheld page (page aligned).
    NeedsPage(u64),
}

/// Whose permissions an access needs: the engine's MMU index of the access,
/// as the architecture's translation regime and PSTATE give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLevel {
    /// EL0's: a task's access, or the kernel's unprivileged `LDTR`/`STTR`.
    User,
    /// EL1's, with PSTATE.PAN clear.
    Kernel,
    /// EL1's with PSTATE.PAN set: no data access to a page EL0 can reach.
    KernelPan,
}

/// Who may access a page, from a leaf descriptor's attributes. Table
/// descriptors' hierarchical attributes (APTable, XNTable) are not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permissions {
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
}

impl Permissions {
    /// Whether leaf descriptor `desc` has its access flag clear, so that
    /// every access through it takes an access flag fault (the hardware
    /// does not set the flag itself).
    pub fn access_flag_clear(desc: Option<u64>) -> bool {
        desc.is_some_and(|d| d & DESC_AF == 0)
    }

    /// What an access needing `level`'s permissions may do through `desc`.
    pub fn of(desc: Option<u64>, level: AccessLevel) -> Permissions {
        let Some(d) = desc else {
            return Permissions {
                read: true,
                write: true,
                exec: true,
            };
        };
        // Access flag clear: the first access faults (no hardware update).
        if d & DESC_AF == 0 {
            return Permissions {
                read: false,
                write: false,
                exec: false,
            };
        }
        let el0_access = d & (1 << 6) != 0;
        let read_only = d & (1 << 7) != 0;
        let pxn = d & (1 << 53) != 0;
        let uxn = d & (1 << 54) != 0;
        match level {
            AccessLevel::User => Permissions {
                read: el0_access,
                write: el0_access && !read_only,
                exec: !uxn,
            },
            AccessLevel::Kernel | AccessLevel::KernelPan => {
                // PAN denies data accesses only.
                let data = !(level == AccessLevel::KernelPan && el0_access);
                Permissions {
                    read: data,
                    write: data && !read_only,
                    // EL1 never executes memory that EL0 can write.
                    exec: !pxn && !(el0_access && !read_only),
                }
            }
        }
    }
}

/// TCR_EL1 fields the walk needs, for one half of the address space.
#[derive(Clone, Copy, Debug)]
struct Half {
    /// Size of this half in bits (64 - TnSZ).
    va_bits: u32,
    /// Top byte ignored (TBIn).
    tbi: bool,
    /// Walks disabled (EPDn).
    disabled: bool,
    /// Table base (TTBRn BADDR).
    base: u64,
}

impl TranslationRegs {
    /// Whether the stage-1 MMU is on (off: VA == IPA).
    pub fn mmu_on(&self) -> bool {
        self.sctlr & SCTLR_M != 0
    }

    fn half(&self, upper: bool) -> Result<Half, WalkError> {
        let tcr = self.tcr;
        let (half, tsz, epd, tbi, tg, tg_4k, ttbr) = if upper {
            // TG1 encodes 4 KiB as 0b10.
            (
                1,
                (tcr >> 16) & 0x3f,
                tcr >> 23 & 1 != 0,
                tcr >> 38 & 1 != 0,
                (tcr >> 30) & 3,
                0b10,
                self.ttbr1,
            )
        } else {
            // TG0 encodes 4 KiB as 0b00.
            (
                0,
                tcr & 0x3f,
                tcr >> 7 & 1 != 0,
                tcr >> 37 & 1 != 0,
                (tcr >> 14) & 3,
                0b00,
                self.ttbr0,
            )
        };
        if tg != tg_4k {
            return Err(WalkError::Unsupported(UnsupportedSetup::Granule {
                half,
                tg,
            }));
        }
        // TnSZ 16..=39 gives 48..=25-bit halves with a 4 KiB granule (no LPA2).
        if !(16..=39).contains(&tsz) {
            return Err(WalkError::Unsupported(UnsupportedSetup::RegionSize {
                half,
                tsz,
            }));
        }
        Ok(Half {
            va_bits: 64 - tsz as u32,
            tbi,
            disabled: epd,
            base: ttbr & OA_MASK_4K,
        })
    }

    /// Translates `va` as an EL1&0 stage-1 access would, reading descriptors
    /// from `mem`.
    pub fn translate(&self, va: u64, mem: &dyn GuestPhysMem) -> Result<Translation, WalkError> {
        Ok(match self.walk(va, mem)? {
            Walk::Leaf { ipa, .. } => Translation::Mapped(ipa),
            Walk::NeedsPage(ipa) => Translation::WalkNeedsPage(ipa),
        })
    }

    /// Like [`TranslationRegs::translate`], and also returns the leaf
    /// descriptor, whose attributes say who may read, write and execute.
    pub fn walk(&self, va: u64, mem: &dyn GuestPhysMem) -> Result<Walk, WalkError> {
        if !self.mmu_on() {
            return Ok(Walk::Leaf {
                ipa: va,
                desc: None,
                level: 0,
            });
        }
        if self.sctlr & SCTLR_EE != 0 {
            return Err(WalkError::Unsupported(UnsupportedSetup::BigEndian));
        }
        // Bit 55 selects the half whether or not the top byte is ignored.
        let upper = va >> 55 & 1 != 0;
        let half = self.half(upper)?;
        let checked_top = if half.tbi { 56 } else { 64 };
        // Bits [checked_top-1 : va_bits] must all equal bit 55.
        let width = checked_top - half.va_bits;
        let top = (va >> half.va_bits) & ((1u64 << width) - 1);
        let expected = if upper { (1u64 << width) - 1 } else { 0 };
        if top != expected {
            return Err(WalkError::OutOfRange { va, tcr: self.tcr });
        }
        if half.disabled {
            return Err(WalkError::WalksDisabled { va });
        }
        // Each level resolves 9 bits; level 3 resolves bits 20:12.
        let start_level = 3 - (half.va_bits - PAGE_SHIFT - 1) / 9;
        let mut table = half.base;
        let mut level = start_level;
        loop {
            let shift = PAGE_SHIFT + 9 * (3 - level);
            let index_bits = (half.va_bits - shift).min(9);
            let index = (va >> shift) & ((1 << index_bits) - 1);
            let desc_ipa = table + index * 8;
            if !mem.is_resident(desc_ipa) {
                return Ok(Walk::NeedsPage(desc_ipa & !(PAGE_SIZE - 1)));
            }
            let desc = mem.read_u64(desc_ipa).ok_or(WalkError::TableOutsideRam {
                ipa: desc_ipa,
                level: level as u8,
            })?;
            let not_mapped = WalkError::NotMapped {
                va,
                level: level as u8,
                desc,
            };
            match (desc & 0b11, level) {
                (0b00 | 0b10, _) => return Err(not_mapped),
                // Level-3 page.
                (0b11, 3) => {
                    return Ok(Walk::Leaf {
                        ipa: (desc & OA_MASK_4K) | (va & (PAGE_SIZE - 1)),
                        desc: Some(desc),
                        level: 3,
                    });
                }
                // Next-level table.
                (0b11, _) => {
                    table = desc & OA_MASK_4K;
                    level += 1;
                }
                // Block at level 1 (1 GiB) or 2 (2 MiB); reserved at 0 and 3.
                (0b01, 1 | 2) => {
                    let block_mask = (1u64 << shift) - 1;
                    return Ok(Walk::Leaf {
                        ipa: (desc & OA_MASK_4K & !block_mask) | (va & block_mask),
                        desc: Some(desc),
                        level: level as u8,
                    });
                }
                (0b01, _) => return Err(not_mapped),
                _ => unreachable!("two-bit field"),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// Guest RAM in a sparse map, with a set of withheld pages.
    #[derive(Default)]
    pub(crate) struct FakeRam {
        pub words: BTreeMap<u64, u64>,
        pub withheld: BTreeSet<u64>,
    }

    impl FakeRam {
        pub(crate) fn write_u64(&mut self, ipa: u64, v: u64) {
            self.words.insert(ipa, v);
        }
        pub(crate) fn write_u32(&mut self, ipa: u64, v: u32) {
            let w = self.words.entry(ipa & !7).or_insert(0);
            let sh = (ipa & 4) * 8;
            *w = (*w & !(0xffff_ffffu64 << sh)) | ((v as u64) << sh);
        }
        pub(crate) fn withhold(&mut self, ipa: u64) {
            self.withheld.insert(ipa & !(PAGE_SIZE - 1));
        }
    }

    impl GuestPhysMem for FakeRam {
        fn is_resident(&self, ipa: u64) -> bool {
            !self.withheld.contains(&(ipa & !(PAGE_SIZE - 1)))
        }
        fn read_u64(&self, ipa: u64) -> Option<u64> {
            (0x4000_0000..0x8000_0000)
                .contains(&ipa)
                .then(|| *self.words.get(&ipa).unwrap_or(&0))
        }
        fn read_u32(&self, ipa: u64) -> Option<u32> {
            self.read_u64(ipa & !7)
                .map(|w| (w >> ((ipa & 4) * 8)) as u32)
        }
    }

    /// A 39-bit TTBR0 / 39-bit TTBR1 setup like the apflab guest's: T0SZ =
    /// T1SZ = 25, 4 KiB granules, TBI0 on.
    pub(crate) const TCR_39: u64 = 25 | (25 << 16) | (0b10 << 30) | (1 << 37);

    /// Builds tables mapping `va` → `pa` with a level-3 page, starting at
    /// level 1 (39-bit), tables at `tables`.. (3 pages).
    pub(crate) fn map_page(ram: &mut FakeRam, tables: u64, va: u64, pa: u64) {
        let l1 = tables;
        let l2 = tables + 0x1000;
        let l3 = tables + 0x2000;
        ram.write_u64(l1 + ((va >> 30) & 0x1ff) * 8, l2 | 0b11);
        ram.write_u64(l2 + ((va >> 21) & 0x1ff) * 8, l3 | 0b11);
        // AF | inner shareable | attr index 0 | page.
        ram.write_u64(
            l3 + ((va >> 12) & 0x1ff) * 8,
            pa | (1 << 10) | (3 << 8) | 0b11,
        );
    }

    fn regs(tables: u64) -> TranslationRegs {
        TranslationRegs {
            sctlr: SCTLR_M,
            tcr: TCR_39,
            ttbr0: tables | (5 << 48),
            ttbr1: 0,
        }
    }

    #[test]
    fn pan_denies_the_kernel_data_access_to_user_pages_and_ldtr_gets_el0s_permissions() {
        const VALID_PAGE: u64 = 0b11 | DESC_AF;
        let (user_rw, kernel_rw) = (VALID_PAGE | 1 << 6, VALID_PAGE);
        let p = |desc: u64, level| {
            let p = Permissions::of(Some(desc), level);
            (p.read, p.write, p.exec)
        };
        // A user page: the kernel reads and writes it unless PAN is set,
        // and never executes it (it is writable at EL0).
        assert_eq!(p(user_rw, AccessLevel::Kernel), (true, true, false));
        assert_eq!(p(user_rw, AccessLevel::KernelPan), (false, false, false));
        assert_eq!(p(user_rw, AccessLevel::User), (true, true, true));
        // A kernel page: PAN does not apply; an unprivileged access (EL0's
        // permissions, as LDTR/STTR at EL1 have) is refused.
        assert_eq!(p(kernel_rw, AccessLevel::KernelPan), (true, true, true));
        assert_eq!(p(kernel_rw, AccessLevel::User), (false, false, true));
        // A user page the kernel may execute (read-only at EL0): PAN
        // denies its data accesses, not its fetches.
        let user_ro = user_rw | 1 << 7;
        assert_eq!(p(user_ro, AccessLevel::KernelPan), (false, false, true));
    }

    #[test]
    fn mmu_off_is_identity() {
        let ram = FakeRam::default();
        let r = TranslationRegs::default();
        assert_eq!(
            r.translate(0x4123_4567, &ram),
            Ok(Translation::Mapped(0x4123_4567))
        );
    }

    #[test]
    fn level3_page_keeps_the_page_offset_and_ignores_asid() {
        let mut ram = FakeRam::default();
        map_page(&mut ram, 0x4010_0000, 0x10_0000_3000, 0x4200_5000);
        let r = regs(0x4010_0000);
        assert_eq!(
            r.translate(0x10_0000_3abc, &ram),
            Ok(Translation::Mapped(0x4200_5abc))
        );
        // Top byte ignored in the lower half.
        assert_eq!(
            r.translate(0x5a00_0010_0000_3abc, &ram),
            Ok(Translation::Mapped(0x4200_5abc))
        );
    }

    #[test]
    fn level2_block_maps_2mib() {
        let mut ram = FakeRam::default();
        let l1 = 0x4010_0000;
        let l2 = 0x4010_1000;
        ram.write_u64(l1, l2 | 0b11);
        ram.write_u64(l2 + 2 * 8, 0x4060_0000 | (1 << 10) | 0b01);
        let r = regs(l1);
        assert_eq!(
            r.translate(0x0045_6789, &ram),
            Ok(Translation::Mapped(0x4065_6789))
        );
    }

    #[test]
    fn upper_half_uses_ttbr1() {
        let mut ram = FakeRam::default();
        let va = 0xFFFF_FF80_0000_1000u64;
        // 39-bit upper half: index bits are the same as for the lower half.
        map_page(&mut ram, 0x4020_0000, va, 0x4300_0000);
        let r = TranslationRegs {
            ttbr1: 0x4020_0000,
            ..regs(0x4010_0000)
        };
        assert_eq!(
            r.translate(va + 8, &ram),
            Ok(Translation::Mapped(0x4300_0008))
        );
    }

    #[test]
    fn withheld_table_page_is_reported_not_read() {
        let mut ram = FakeRam::default();
        map_page(&mut ram, 0x4010_0000, 0x1000, 0x4200_0000);
        ram.withhold(0x4010_2000);
        let r = regs(0x4010_0000);
        assert_eq!(
            r.translate(0x1000, &ram),
            Ok(Translation::WalkNeedsPage(0x4010_2000))
        );
    }

    #[test]
    fn bad_guest_setups_are_errors_not_panics() {
        let mut ram = FakeRam::default();
        let r = regs(0x4010_0000);
        // Unmapped.
        assert!(matches!(
            r.translate(0x1000, &ram),
            Err(WalkError::NotMapped { level: 1, .. })
        ));
        // Outside the 39-bit lower half.
        assert!(matches!(
            r.translate(0x0000_8000_0000_0000, &ram),
            Err(WalkError::OutOfRange { .. })
        ));
        // 64 KiB granule.
        let r64 = TranslationRegs {
            tcr: TCR_39 | (0b01 << 14),
            ..r
        };
        assert_eq!(
            r64.translate(0x1000, &ram),
            Err(WalkError::Unsupported(UnsupportedSetup::Granule {
                half: 0,
                tg: 0b01
            }))
        );
        // Table pointer outside RAM.
        ram.write_u64(0x4010_0000, 0x1234_5000 | 0b11);
        assert!(matches!(
            r.translate(0x1000, &ram),
            Err(WalkError::TableOutsideRam { level: 2, .. })
        ));
        // Reserved level-3 encoding 0b01.
        let mut ram = FakeRam::default();
        map_page(&mut ram, 0x4010_0000, 0x1000, 0x4200_0000);
        ram.write_u64(0x4010_2000 + 8, 0x4200_0000 | 0b01);
        assert!(matches!(
            r.translate(0x1000, &ram),
            Err(WalkError::NotMapped { level: 3, .. })
        ));
        // TnSZ out of range.
        let rbad = TranslationRegs {
            tcr: TCR_39 & !0x3f | 8,
            ..r
        };
        assert_eq!(
            rbad.translate(0, &ram),
            Err(WalkError::Unsupported(UnsupportedSetup::RegionSize {
                half: 0,
                tsz: 8
            }))
        );
        assert_eq!(
            rbad.translate(0, &ram).unwrap_err().to_string(),
            "unsupported stage-1 setup: TnSZ outside 16..=39 (TCR_EL1.T0SZ = 8)"
        );
    }
}
