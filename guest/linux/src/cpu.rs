//! The CPU thread's work: a fixed dependent arithmetic loop, the same one
//! the built-in guest's `cpu` task runs, so operations compare across
//! guests.

/// Runs `iterations` operations of the loop from state `x`; returns the
/// new state (which the caller keeps, so the work cannot be elided).
pub fn work(iterations: u64, mut x: u64) -> u64 {
    for done in 0..iterations {
        // black_box keeps one real dependent operation per iteration.
        x = core::hint::black_box(x.wrapping_mul(0x5851_F42D_4C95_7F2D).wrapping_add(done));
    }
    x
}

/// The loop's initial state.
pub const INITIAL: u64 = 0x1234_5678;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_is_a_deterministic_function_of_its_length() {
        assert_eq!(work(0, INITIAL), INITIAL);
        assert_eq!(work(1000, INITIAL), work(1000, INITIAL));
        assert_ne!(work(1000, INITIAL), work(999, INITIAL));
    }
}
