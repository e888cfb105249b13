//! Emulated devices of the apflab machine.

pub mod doorbell;
pub mod gic;
pub mod interrupts;
pub mod pl011;
pub mod pl031;
pub mod timer;
pub mod virtio_mmio;
