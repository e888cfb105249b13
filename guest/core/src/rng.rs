//! xorshift64*: the guest's deterministic pseudo-random numbers (its EL0
//! tasks draw addresses and arrival times from it), and the host's tests of
//! a hostile guest draw from the same generator.

use apflab_abi::pattern::splitmix64;

/// A xorshift64* generator.
#[derive(Clone, Debug)]
pub struct XorShift64Star(u64);

impl XorShift64Star {
    /// A generator seeded through splitmix64, so that nearby seeds (and 0)
    /// give unrelated sequences.
    #[inline]
    pub fn new(seed: u64) -> Self {
        XorShift64Star(splitmix64(seed) | 1)
    }

    /// A generator starting from `state` as it is (not 0, which it never
    /// leaves).
    #[inline]
    pub const fn from_state(state: u64) -> Self {
        XorShift64Star(state)
    }

    /// The next number.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0; the bias is negligible for n << 2^64).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_is_xorshift64_star() {
        // The reference algorithm's first outputs from state 1 (Vigna, "An
        // experimental exploration of Marsaglia's xorshift generators,
        // scrambled"), worked out apart from this code.
        let mut r = XorShift64Star::from_state(1);
        assert_eq!(r.next_u64(), 0x47e4_ce4b_896c_dd1d);
        assert_eq!(r.next_u64(), 0xabcf_a6a8_e079_651d);
        assert!(r.below(10) < 10);
        assert_ne!(
            XorShift64Star::new(0).next_u64(),
            XorShift64Star::new(1).next_u64()
        );
    }
}
