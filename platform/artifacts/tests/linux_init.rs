//! The Linux guest's init is built as the initramfs needs it: a static
//! aarch64 ELF executable, with no program interpreter (there is no
//! dynamic loader in the initramfs) and no dynamic section.

use std::fs;

/// ELF `e_machine` of AArch64.
const EM_AARCH64: u16 = 183;
/// ELF `e_type` of an executable (static, not position-independent).
const ET_EXEC: u16 = 2;
/// Program header types that a static binary does not have.
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn linux_init_is_a_static_aarch64_executable() {
    let path = apflab_artifacts::linux_init();
    let elf = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&elf[..4], b"\x7fELF", "{} is not ELF", path.display());
    assert_eq!(elf[4], 2, "not 64-bit");
    assert_eq!(elf[5], 1, "not little-endian");
    assert_eq!(u16_at(&elf, 16), ET_EXEC, "not a static executable");
    assert_eq!(u16_at(&elf, 18), EM_AARCH64, "not AArch64");
    let (phoff, phentsize, phnum) = (
        u64_at(&elf, 32) as usize,
        usize::from(u16_at(&elf, 54)),
        usize::from(u16_at(&elf, 56)),
    );
    assert!(phnum > 0);
    for i in 0..phnum {
        let p_type = u32_at(&elf, phoff + i * phentsize);
        assert!(
            p_type != PT_INTERP && p_type != PT_DYNAMIC,
            "program header {i} is of type {p_type}: the binary is not static"
        );
    }
}
