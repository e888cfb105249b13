//! The fault-site decoder and the stage-1 walk (`apflab_hypervisor::arch`): from
//! any PC, translation registers, general registers and guest memory
//! (page tables and instruction words included), locate the withheld page
//! behind a fault, as the kvm backend does after an `EFAULT`. Also every
//! other decoder of a guest instruction word in `arch`.
//!
//! Input: PC, SCTLR_EL1, TCR_EL1, TTBR0_EL1, TTBR1_EL1, a residency mask,
//! X0..X30 and SP (little-endian u64s), then guest RAM from RAM_BASE (page
//! `i` of it is resident if bit `i % 64` of the mask is set). Every
//! address past the end is outside RAM.

#![no_main]

use apflab_abi::memory_map::{PAGE_SIZE, RAM_BASE};
use apflab_hypervisor::arch::access::{AddrReg, RegisterSource, alignment_unit, data_access};
use apflab_hypervisor::arch::fault_site::{FaultKind, locate};
use apflab_hypervisor::arch::stage1::{
    AccessLevel, GuestPhysMem, Permissions, TranslationRegs, Walk,
};
use apflab_hypervisor::arch::{insn, syndrome};
use libfuzzer_sys::fuzz_target;

const HEADER_WORDS: usize = 6 + 32;

struct Ram<'a> {
    bytes: &'a [u8],
    resident_mask: u64,
}

impl Ram<'_> {
    fn read<const N: usize>(&self, ipa: u64) -> Option<[u8; N]> {
        let at = usize::try_from(ipa.checked_sub(RAM_BASE)?).ok()?;
        self.bytes.get(at..at.checked_add(N)?)?.try_into().ok()
    }
}

impl GuestPhysMem for Ram<'_> {
    fn is_resident(&self, ipa: u64) -> bool {
        match ipa.checked_sub(RAM_BASE) {
            Some(off) if off < self.bytes.len() as u64 => {
                self.resident_mask >> ((off / PAGE_SIZE) % 64) & 1 != 0
            }
            // Not RAM: nothing the pager withholds.
            _ => true,
        }
    }
    fn read_u64(&self, ipa: u64) -> Option<u64> {
        self.read(ipa).map(u64::from_le_bytes)
    }
    fn read_u32(&self, ipa: u64) -> Option<u32> {
        self.read(ipa).map(u32::from_le_bytes)
    }
}

struct Regs([u64; 32]);

impl RegisterSource for Regs {
    type Error = std::convert::Infallible;
    fn read(&mut self, reg: AddrReg) -> Result<u64, Self::Error> {
        Ok(match reg {
            // X31 names XZR as an index and SP as a base: never a read.
            AddrReg::X(n) => *self.0[..31]
                .get(usize::from(n))
                .unwrap_or_else(|| panic!("X{n} asked for")),
            AddrReg::Sp => self.0[31],
        })
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER_WORDS * 8 {
        return;
    }
    let (header, ram) = data.split_at(HEADER_WORDS * 8);
    let mut words = header
        .as_chunks::<8>()
        .0
        .iter()
        .map(|c| u64::from_le_bytes(*c));
    let mut next = || words.next().expect("a header word");
    let pc = next();
    let tregs = TranslationRegs {
        sctlr: next(),
        tcr: next(),
        ttbr0: next(),
        ttbr1: next(),
    };
    let ram = Ram {
        bytes: ram,
        resident_mask: next(),
    };
    let mut regs = Regs(std::array::from_fn(|_| next()));

    match locate(pc, &tregs, &mut regs, &ram) {
        Ok(site) => {
            assert_eq!(site.ipa_page % PAGE_SIZE, 0, "{site:?}");
            assert!(
                !ram.is_resident(site.ipa_page),
                "the located page is one the host withholds: {site:?}"
            );
            if site.kind == FaultKind::InstructionFetch {
                assert!(!site.write && site.va == pc, "{site:?}");
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    for va in [pc, regs.0[0], regs.0[31]] {
        if let Ok(Walk::Leaf { desc, level, .. }) = tregs.walk(va, &ram) {
            assert!(level <= 3);
            for level in [
                AccessLevel::User,
                AccessLevel::Kernel,
                AccessLevel::KernelPan,
            ] {
                let _ = Permissions::of(desc, level);
            }
            let _ = Permissions::access_flag_clear(desc);
        }
    }

    // Each word of the first instruction page through every decoder.
    for chunk in ram.bytes.as_chunks::<4>().0.iter().take(64) {
        let word = u32::from_le_bytes(*chunk);
        if let Ok(access) = data_access(word, pc, &mut regs) {
            let unit = alignment_unit(word, access.size);
            assert!(
                unit > 0 && unit <= access.size.max(1),
                "{word:#x}: {access:?}"
            );
        }
        let _ = insn::exception_generating(word);
        let _ = syndrome::el0_trap(word, tregs.sctlr);
        let _ = syndrome::is_fp_simd(word);
    }
});
