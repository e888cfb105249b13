//! The synthetic store's page content: a deterministic function of the store
//! seed, the guest page frame and the page's write-back version.
//!
//! The pager fills non-resident pages with it and the guest verifies every
//! page it reads against it, so corruption anywhere on the fetch path shows
//! up as a mismatch in the guest's report.

/// Words (u64) per 4 KiB page.
pub const WORDS_PER_PAGE: usize = 512;

/// SplitMix64 step: a fast, well-mixed 64-bit bijection.
pub const fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Word `word` (0..[`WORDS_PER_PAGE`]) of guest page frame `pfn`
/// (guest physical address >> 12) at write-back version `version`.
pub const fn synthetic_word(seed: u64, pfn: u64, version: u32, word: usize) -> u64 {
    let page_key = splitmix64(seed ^ splitmix64(pfn ^ ((version as u64) << 52)));
    splitmix64(page_key.wrapping_add(word as u64))
}

/// Fills `page` with the synthetic content of `pfn` at `version`.
pub fn fill_page(seed: u64, pfn: u64, version: u32, page: &mut [u64; WORDS_PER_PAGE]) {
    for (i, w) in page.iter_mut().enumerate() {
        *w = synthetic_word(seed, pfn, version, i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_differ_by_frame_version_and_seed() {
        let a = synthetic_word(1, 100, 0, 0);
        assert_ne!(a, synthetic_word(1, 101, 0, 0));
        assert_ne!(a, synthetic_word(1, 100, 1, 0));
        assert_ne!(a, synthetic_word(2, 100, 0, 0));
        assert_ne!(a, synthetic_word(1, 100, 0, 1));
        assert_eq!(a, synthetic_word(1, 100, 0, 0));
    }
}
