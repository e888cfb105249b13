//! The virtio-mmio transports of QEMU's `virt` board with nothing plugged
//! in: each answers its identification registers with "virt", version 1
//! (the legacy layout QEMU uses by default) and DeviceID 0, which a guest
//! reads as "no device here"; every other register reads as zero and
//! ignores writes, as an empty transport does.

/// "virt" in little-endian ASCII.
const MAGIC: u32 = 0x7472_6976;
/// The transport layout version.
const VERSION: u32 = 1;

/// Reads the register at `offset` of one empty transport.
pub fn read_empty(offset: u64) -> u32 {
    match offset {
        0x000 => MAGIC,
        0x004 => VERSION,
        // DeviceID 0: no device; VendorID and the rest read as zero.
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_transport_says_no_device() {
        assert_eq!(read_empty(0), MAGIC);
        assert_eq!(read_empty(4), VERSION);
        assert_eq!(read_empty(8), 0);
        assert_eq!(read_empty(0x70), 0);
    }
}
