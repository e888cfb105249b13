//! Kernel images (`guest.kernel`, `apflab boot IMAGE`) through the loader:
//! any bytes as an ELF (program headers, segments, entry) or a raw image,
//! into guest RAM; and the device tree built for any vCPU count, RAM size
//! and kernel command line (`apflab boot --append`) the VMM accepts.
//!
//! Input: vCPUs (1 byte), RAM in MiB above the minimum (1 byte), the
//! length of the command line (2 bytes, little-endian), the command line,
//! then the image.

#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use apflab_abi::memory_map::{DTB_MAX_SIZE, MAX_VCPUS, RAM_BASE};
use apflab_vmm::{fdt, loader};
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// The largest guest RAM tried; RAM is mapped once and reused (the loader
/// writes only where the image goes).
const RAM_MIB: u64 = 64;

static RAM: LazyLock<GuestMemoryMmap> = LazyLock::new(|| {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), (RAM_MIB << 20) as usize)])
        .expect("guest RAM can be mapped")
});

fuzz_target!(|data: &[u8]| {
    let [vcpus, mib, len_lo, len_hi, rest @ ..] = data else {
        return;
    };
    let vcpus = u32::from(*vcpus) % MAX_VCPUS + 1;
    let ram_size = (8 + u64::from(*mib) % (RAM_MIB - 7)) << 20;
    let len = usize::from(u16::from_le_bytes([*len_lo, *len_hi])).min(rest.len());
    let (bootargs, image) = rest.split_at(len);

    let bootargs = String::from_utf8_lossy(bootargs);
    let chosen = fdt::Chosen {
        bootargs: &bootargs,
        initrd: None,
    };
    match fdt::build(vcpus, ram_size, &chosen) {
        Ok(blob) => {
            assert!(blob.len() as u64 <= DTB_MAX_SIZE);
            assert_eq!(blob[..4], [0xd0, 0x0d, 0xfe, 0xed], "FDT magic");
            let total = u32::from_be_bytes(blob[4..8].try_into().expect("4 bytes"));
            assert_eq!(total as usize, blob.len(), "totalsize is the blob's");
        }
        // vm-fdt refuses a NUL inside a string, and a command line Linux
        // would cut short is refused; nothing else may fail.
        Err(e) => assert!(
            bootargs.contains('\0') || bootargs.len() > fdt::MAX_BOOTARGS_LEN,
            "{vcpus} vCPUs, {ram_size} bytes of RAM, a {}-byte command line: {e}",
            bootargs.len()
        ),
    }

    let ram_end = RAM_BASE + ram_size;
    if let Ok(k) = loader::load_image(Path::new("fuzz.img"), image, &RAM, ram_size) {
        assert!(
            RAM_BASE <= k.start && k.start < k.end && k.end <= ram_end,
            "{k:?}"
        );
        assert!(
            k.start <= k.entry && k.entry < k.end,
            "entry in the image: {k:?}"
        );
        let dtb_end = k.dtb_addr + DTB_MAX_SIZE;
        assert!(RAM_BASE <= k.dtb_addr && dtb_end <= ram_end, "{k:?}");
        assert!(
            dtb_end <= k.start || k.end <= k.dtb_addr,
            "the image does not overlap the device tree: {k:?}"
        );
    }
});
