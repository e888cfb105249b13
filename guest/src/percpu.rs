//! Which CPU am I: the logical CPU index (0 = boot CPU, in device tree
//! order) is kept in TPIDR_EL1, which only EL1 can read.

use aarch64_cpu::registers::{Readable, TPIDR_EL1, Writeable};
use apflab_abi::memory_map::MAX_VCPUS;

/// Most CPUs the kernel drives.
pub const MAX_CPUS: usize = MAX_VCPUS as usize;

/// Records this CPU's logical index; called once per CPU at bring-up.
pub fn set_cpu_index(index: usize) {
    assert!(index < MAX_CPUS, "cpu index {index} beyond {MAX_CPUS}");
    TPIDR_EL1.set(index as u64);
}

/// This CPU's logical index.
#[inline]
pub fn cpu_index() -> usize {
    TPIDR_EL1.get() as usize
}
