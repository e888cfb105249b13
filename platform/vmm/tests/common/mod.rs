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
        bootargs: String::new(),
        cost: CostModel::default(),
        slice_instructions: 10_000,
        max_virtual_ns: 1_000_000_000,
        echo_console: false,
    }
}

/// `movz x0, #0x8; movk x0, #0x8400, lsl #16; hvc #0`: PSCI SYSTEM_OFF.
pub const SYSTEM_OFF: [u32; 3] = [0xd2800100, 0xf2b08000, 0xd4000002];
