//! Limits on the values the guest boots with, and on the machine.
//!
//! The CLI checks a config against them when it loads it (a value outside
//! is bad input, exit code 2, with the config's file, line and key), and the
//! guest checks the bootargs it parses against the same constants (a value
//! outside makes it panic naming the key, for a user who boots it by hand).
//! They live here only, so the two sides cannot disagree.

use crate::memory_map::RAM_BASE;
use crate::report::MAX_REPORTED_TASKS;

/// An inclusive range of one boot parameter, and where its ends come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound<T> {
    /// Smallest accepted value.
    pub min: T,
    /// Largest accepted value.
    pub max: T,
    /// Why these are the ends (one phrase, for error messages).
    pub why: &'static str,
}

impl<T: PartialOrd + Copy> Bound<T> {
    /// Whether `v` is in `min..=max`.
    pub fn contains(&self, v: T) -> bool {
        self.min <= v && v <= self.max
    }
}

/// [`crate::boot::KEY_TASKS`]: the guest reports each task's completion in
/// one slot of its report.
pub const TASKS: Bound<u32> = Bound {
    min: 1,
    max: MAX_REPORTED_TASKS as u32,
    why: "the guest's report has one slot per task",
};

/// [`crate::boot::KEY_OPS`]: loop operations per `cpu` task; the guest sums
/// them over its tasks and derives rates from them, which must not wrap.
pub const OPS: Bound<u64> = Bound {
    min: 1,
    max: u64::MAX >> 8,
    why: "operations summed over all tasks must fit in 64 bits",
};

/// [`crate::boot::KEY_MIB`]: the working set, in MiB; it must fit in RAM
/// (the CLI also checks it against `guest.memory_mib`).
pub const MIB: Bound<u64> = Bound {
    min: 1,
    max: 1 << 20,
    why: "the working set must fit in the machine's 1 TiB of RAM",
};

/// [`crate::boot::KEY_PASSES`]: passes of `memtouch` over its working set.
pub const PASSES: Bound<u64> = Bound {
    min: 1,
    max: 1 << 20,
    why: "the guest counts page accesses (passes x pages) in 64 bits",
};

/// [`crate::boot::KEY_REQUESTS`]: `kv` requests.
pub const REQUESTS: Bound<u64> = Bound {
    min: 1,
    max: 1 << 32,
    why: "the guest's request counters",
};

/// [`crate::boot::KEY_INTERVAL_US`]: `kv` mean inter-arrival time, µs.
pub const INTERVAL_US: Bound<u64> = Bound {
    min: 1,
    max: 1 << 32,
    why: "arrival times are drawn in timer ticks, which must not wrap",
};

/// [`crate::boot::KEY_TIMESLICE_US`]: the guest scheduler's time slice,
/// µs. Below 10 µs the timer interrupt would take most of every slice.
pub const TIMESLICE_US: Bound<u64> = Bound {
    min: 10,
    max: 10_000_000,
    why: "a slice of 10 µs to 10 s: shorter ones are all timer interrupt",
};

/// End of the machine's guest physical address space: 40 bits, the IPA
/// size arm64 KVM gives a VM by default (and the guest maps no more).
pub const PHYS_ADDR_END: u64 = 1 << 40;

/// Most guest RAM, in MiB: RAM starts at [`RAM_BASE`] and ends at the end
/// of the physical address space ([`PHYS_ADDR_END`]).
pub const MAX_MEMORY_MIB: u64 = (PHYS_ADDR_END - RAM_BASE) >> 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_inclusive() {
        assert!(TASKS.contains(1) && TASKS.contains(16));
        assert!(!TASKS.contains(0) && !TASKS.contains(17));
        assert!(TIMESLICE_US.contains(10) && !TIMESLICE_US.contains(9));
        assert_eq!(MAX_MEMORY_MIB, 1_047_552);
    }
}
