//! Emulated devices of the apflab machine.

pub mod doorbell;
pub mod gic;
pub mod pl011;
pub mod timer;
