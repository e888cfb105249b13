//! What the CPU tells the guest it has: the ID registers, with every
//! feature this machine does not give the guest faithfully taken out.
//!
//! The engine is QEMU's `-cpu max` of its day, and a kernel that reads a
//! feature in the ID registers uses it. Some of those features this backend
//! cannot run as hardware would, so they must read as absent:
//!
//! - PMU: its counters count host time (MDCR_EL2 traps it; see `vcpu.rs`).
//! - RNDR: random numbers from the host make runs differ (and a kernel
//!   seeds KASLR from it).
//! - SVE and SME: their registers trap to an EL3 that has no firmware.
//! - Pointer authentication: its keys trap to that EL3 too, and QARMA in
//!   software costs every function entry and return of a kernel built with
//!   it.
//! - MTE: tags need memory this machine does not have.
//! - Hardware updates of the access flag and dirty state: this backend's
//!   stage-1 walk (`tlb.rs`) reads descriptors, it never writes them.
//!
//! A guest that uses such a feature anyway gets what the engine does;
//! Linux and apflab's guest look first. At EL0 the ID registers are the
//! kernel's to emulate (an EL0 MRS of them is UNDEFINED), so only EL1 reads
//! are answered here.

use apflab_hypervisor::arch::SysRegId;

/// A 4-bit field of an ID register: its lowest bit.
#[derive(Clone, Copy, Debug)]
struct Field(u32);

impl Field {
    const fn mask(self) -> u64 {
        0xf << self.0
    }
}

/// One ID register and the fields that read as 0 ("not implemented").
struct Hidden {
    reg: SysRegId,
    fields: &'static [(Field, &'static str)],
}

const HIDDEN: &[Hidden] = &[
    // ID_AA64PFR0_EL1
    Hidden {
        reg: SysRegId::new(3, 0, 0, 4, 0),
        fields: &[(Field(32), "SVE"), (Field(40), "MPAM"), (Field(44), "AMU")],
    },
    // ID_AA64PFR1_EL1
    Hidden {
        reg: SysRegId::new(3, 0, 0, 4, 1),
        fields: &[(Field(8), "MTE"), (Field(24), "SME")],
    },
    // ID_AA64ZFR0_EL1: SVE's own features.
    Hidden {
        reg: SysRegId::new(3, 0, 0, 4, 4),
        fields: &[
            (Field(0), "SVEver"),
            (Field(4), "AES"),
            (Field(16), "BitPerm"),
            (Field(20), "BF16"),
            (Field(32), "SHA3"),
            (Field(40), "SM4"),
            (Field(44), "I8MM"),
            (Field(52), "F32MM"),
            (Field(56), "F64MM"),
        ],
    },
    // ID_AA64DFR0_EL1
    Hidden {
        reg: SysRegId::new(3, 0, 0, 5, 0),
        fields: &[(Field(8), "PMUVer"), (Field(32), "PMSVer")],
    },
    // ID_AA64ISAR0_EL1
    Hidden {
        reg: SysRegId::new(3, 0, 0, 6, 0),
        fields: &[(Field(60), "RNDR")],
    },
    // ID_AA64ISAR1_EL1
    Hidden {
        reg: SysRegId::new(3, 0, 0, 6, 1),
        fields: &[
            (Field(4), "APA"),
            (Field(8), "API"),
            (Field(24), "GPA"),
            (Field(28), "GPI"),
        ],
    },
    // ID_AA64ISAR2_EL1
    Hidden {
        reg: SysRegId::new(3, 0, 0, 6, 2),
        fields: &[(Field(8), "GPA3"), (Field(12), "APA3")],
    },
    // ID_AA64MMFR1_EL1
    Hidden {
        reg: SysRegId::new(3, 0, 0, 7, 1),
        fields: &[(Field(0), "HAFDBS")],
    },
];

/// Whether `reg` is an ID register with fields hidden from the guest.
pub(super) fn is_hidden_from(reg: SysRegId) -> bool {
    HIDDEN.iter().any(|h| h.reg == reg)
}

/// The value an EL1 read of `reg` gets when the engine holds `raw`, or
/// `None` if `reg` is not an ID register with hidden fields.
pub(super) fn sanitize(reg: SysRegId, raw: u64) -> Option<u64> {
    let hidden = HIDDEN.iter().find(|h| h.reg == reg)?;
    Some(
        hidden
            .fields
            .iter()
            .fold(raw, |v, (field, _)| v & !field.mask()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_fields_read_as_zero_and_the_others_are_kept() {
        let isar0 = SysRegId::new(3, 0, 0, 6, 0);
        assert_eq!(sanitize(isar0, 0x1000_0000_0000_0020), Some(0x20));
        let isar1 = SysRegId::new(3, 0, 0, 6, 1);
        // DPB (3:0) stays; APA, API, GPA and GPI go.
        assert_eq!(sanitize(isar1, 0xff00_0ff1), Some(0x0000_0001));
        // MIDR_EL1 is no ID register with hidden fields.
        assert_eq!(sanitize(SysRegId::new(3, 0, 0, 0, 0), 0x000f_0510), None);
    }

    #[test]
    fn no_field_is_listed_twice_and_all_are_aligned() {
        for h in HIDDEN {
            let mut seen = 0u64;
            for (f, name) in h.fields {
                assert_eq!(f.0 % 4, 0, "{name}");
                assert_eq!(seen & f.mask(), 0, "{name}");
                seen |= f.mask();
            }
        }
    }
}
