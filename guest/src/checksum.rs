//! The page checksum of `memtouch` with `reader = kernel`: the kernel
//! computes it over the page it reads, the task over the content it
//! expects, so one comparison per page checks every word.

/// Starting value of a checksum.
pub const INITIAL: u64 = 0x243F_6A88_85A3_08D3;

/// Folds word `index` with value `word` into `acc`. Position-dependent, so
/// swapped words do not cancel out.
pub fn fold(acc: u64, index: usize, word: u64) -> u64 {
    (acc.rotate_left(7) ^ word ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

/// The checksum as a system call returns it: never negative (the top two
/// bits cleared), so it cannot be read as an error code.
pub fn finish(acc: u64) -> u64 {
    acc >> 2
}
