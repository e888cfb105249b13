//! Helpers for tests that boot tiny hand-assembled guests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use apflab_vmm::{BackendKind, CostModel, VmConfig};

/// A raw image made of code pieces placed at byte offsets from the load
/// address (RAM base).
pub fn image(pieces: &[(usize, &[u32])]) -> Vec<u8> {
    let len = pieces
        .iter()
        .map(|(o, w)| o + 4 * w.len())
        .max()
        .unwrap_or(0);
    let mut img = vec![0u8; len];
    for (off, words) in pieces {
        for (i, w) in words.iter().enumerate() {
            img[off + 4 * i..off + 4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
    }
    img
}

/// Writes `bytes` to a fresh file under the target's temp dir.
pub fn temp_file(bytes: &[u8]) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join("apflab-vmm-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!(
        "guest-{}-{}.bin",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A config for a raw test image.
pub fn config(kernel: PathBuf, vcpus: u32) -> VmConfig {
    VmConfig {
        backend: BackendKind::Emu,
        vcpus,
        memory_mib: 64,
        kernel,
        initrd: None,
        bootargs: String::new(),
        cost: CostModel::default(),
        faults_in_kernel: false,
        slice_instructions: 10_000,
        max_virtual_ns: 1_000_000_000,
        watchdog_ns: 1_000_000_000,
        wall_timeout: None,
        echo_console: false,
    }
}

/// `movz x0, #0x8; movk x0, #0x8400, lsl #16; hvc #0`: PSCI SYSTEM_OFF.
pub const SYSTEM_OFF: [u32; 3] = [0xd2800100, 0xf2b08000, 0xd4000002];

/// Programs the virtual timer 1 ms (62,500 ticks) ahead with its PPI
/// enabled in the GIC (VBAR_EL1 at RAM base + 0x800), then, as its last
/// word (0x048), unmasks IRQs.
pub const TIMER_SETUP: [u32; 19] = [
    0xd2a12001, // 0x000: movz x1, #0x900, lsl #16
    0xd2a80009, // 0x004: movz x9, #0x4000, lsl #16
    0x9120012a, // 0x008: add x10, x9, #0x800
    0xd518c00a, // 0x00c: msr vbar_el1, x10
    0xd2a10163, // 0x010: movz x3, #0x080B, lsl #16  (GICR SGI frame, CPU 0)
    0x52a10004, // 0x014: mov w4, #0x8000000          (1 << 27)
    0xb9008064, // 0x018: str w4, [x3, #0x80]         (IGROUPR0)
    0xb9010064, // 0x01c: str w4, [x3, #0x100]        (ISENABLER0)
    0xd2801fe4, // 0x020: mov x4, #0xff
    0xd5184604, // 0x024: msr icc_pmr_el1, x4
    0xd2800024, // 0x028: mov x4, #1
    0xd518cce4, // 0x02c: msr icc_igrpen1_el1, x4
    0xd53be045, // 0x030: mrs x5, cntvct_el0
    0xd29e8486, // 0x034: movz x6, #62500
    0x8b0600a5, // 0x038: add x5, x5, x6
    0xd51be345, // 0x03c: msr cntv_cval_el0, x5
    0xd2800024, // 0x040: mov x4, #1
    0xd51be324, // 0x044: msr cntv_ctl_el0, x4
    0xd50342ff, // 0x048: msr daifclr, #2
];
