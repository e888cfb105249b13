//! The memory thread's page pattern and its check, on memory the caller
//! has mapped: Gavin Shan's test thread writes every word of its memory,
//! reads it back and compares.
//!
//! A word's value is [`synthetic_word`] of the seed, the page's index in
//! the whole working set (a process cannot know its page frames, and need
//! not: the pattern only has to differ per page, pass and word) and the
//! pass, so a page that comes back from far memory stale, from another
//! page or zeroed shows up as mismatching words.

use apflab_abi::pattern::{WORDS_PER_PAGE, splitmix64, synthetic_word};

use crate::bootargs::Pattern;

/// The pattern's version for pass `pass` (0-based); version 0 is the
/// far-memory store's own content, which a Linux process never sees.
pub fn version(pass: u64) -> u32 {
    // Passes are at most limits::PASSES.max (2^20), so this never wraps.
    (pass + 1) as u32
}

/// Writes the pattern of `version` into `pages` (whole pages, the first of
/// which is page `first_page` of the working set).
pub fn fill(pages: &mut [u64], first_page: u64, seed: u64, version: u32) {
    for (i, page) in pages
        .as_chunks_mut::<WORDS_PER_PAGE>()
        .0
        .iter_mut()
        .enumerate()
    {
        let index = first_page + i as u64;
        for (w, word) in page.iter_mut().enumerate() {
            // Volatile: the check must read what memory holds, not what
            // the compiler remembers having written.
            // SAFETY: `word` is a valid, aligned, exclusive reference.
            unsafe { core::ptr::write_volatile(word, synthetic_word(seed, index, version, w)) };
        }
    }
}

/// Words of page `index` of the working set that differ from the pattern
/// of `version`, given `words`, which are the page's words from word
/// `first_word` on (`kv` leaves out the counter in word 0).
pub fn mismatches_in_words(
    words: &[u64],
    index: u64,
    seed: u64,
    version: u32,
    first_word: usize,
) -> u64 {
    words
        .iter()
        .enumerate()
        .map(|(k, word)| {
            // SAFETY: `word` is a valid, aligned reference.
            let v = unsafe { core::ptr::read_volatile(word) };
            u64::from(v != synthetic_word(seed, index, version, first_word + k))
        })
        .sum()
}

/// The page a draw picks among `pages` pages: draw `n` of the stream of
/// `seed` (counter-based, so any thread can compute any draw).
pub fn draw(seed: u64, n: u64, pages: u64) -> u64 {
    splitmix64(seed ^ splitmix64(n)) % pages
}

/// What one check of a thread's pages found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Pages read and compared.
    pub pages: u64,
    /// Words that differed.
    pub mismatches: u64,
}

/// Reads back `pages` (as written by [`fill`]) and counts the words that
/// differ: every page once in order, or as many pages drawn at random.
/// `draw_seed` makes each thread's and pass's random order its own.
/// `compare` gives the mismatching words of one page, given its words and
/// its index in the working set (it reads the page the way the workload
/// was asked to).
pub fn check<E>(
    pages: &[u64],
    first_page: u64,
    pattern: Pattern,
    draw_seed: u64,
    mut compare: impl FnMut(&[u64], u64) -> Result<u64, E>,
) -> Result<Checked, E> {
    let count = (pages.len() / WORDS_PER_PAGE) as u64;
    let mut found = Checked::default();
    for n in 0..count {
        let i = match pattern {
            Pattern::Sequential => n,
            Pattern::Random => draw(draw_seed, n, count),
        };
        let at = i as usize * WORDS_PER_PAGE;
        found.mismatches += compare(&pages[at..at + WORDS_PER_PAGE], first_page + i)?;
        found.pages += 1;
    }
    Ok(found)
}

/// [`check`] with the thread's own loads.
pub fn check_loads(
    pages: &[u64],
    first_page: u64,
    seed: u64,
    version: u32,
    pattern: Pattern,
    draw_seed: u64,
) -> Checked {
    let Ok(found) =
        check::<core::convert::Infallible>(pages, first_page, pattern, draw_seed, |page, index| {
            Ok(mismatches_in_words(page, index, seed, version, 0))
        });
    found
}

/// Splits `pages` pages among `threads` threads: `(first page, pages)` of
/// each, evenly, the last one taking the rest (as the built-in guest's
/// `memtouch` does). Fewer shares than threads if there are fewer pages.
pub fn shares(pages: u64, threads: u32) -> Vec<(u64, u64)> {
    let threads = u64::from(threads).min(pages).max(1);
    let share = pages / threads;
    (0..threads)
        .map(|i| {
            let count = if i == threads - 1 {
                pages - share * i
            } else {
                share
            };
            (share * i, count)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(pages: usize) -> Vec<u64> {
        vec![0; pages * WORDS_PER_PAGE]
    }

    #[test]
    fn written_pages_check_clean_in_either_order() {
        let mut mem = region(8);
        fill(&mut mem, 40, 7, version(0));
        for pattern in [Pattern::Sequential, Pattern::Random] {
            let found = check_loads(&mem, 40, 7, version(0), pattern, 3);
            assert_eq!(
                found,
                Checked {
                    pages: 8,
                    mismatches: 0
                }
            );
        }
    }

    #[test]
    fn every_kind_of_corruption_is_counted() {
        let mut mem = region(4);
        fill(&mut mem, 0, 7, version(0));
        // One flipped bit, a zeroed page, a page swapped with another.
        mem[5] ^= 1 << 17;
        mem[WORDS_PER_PAGE..2 * WORDS_PER_PAGE].fill(0);
        let (a, b) = mem.split_at_mut(3 * WORDS_PER_PAGE);
        a[2 * WORDS_PER_PAGE..].swap_with_slice(&mut b[..WORDS_PER_PAGE]);
        let found = check_loads(&mem, 0, 7, version(0), Pattern::Sequential, 0);
        assert_eq!(found.mismatches, 1 + 512 + 2 * 512);
        // Stale content (the previous pass's) is wrong for this pass.
        let mut stale = region(1);
        fill(&mut stale, 0, 7, version(0));
        assert_eq!(
            check_loads(&stale, 0, 7, version(1), Pattern::Sequential, 0).mismatches,
            512
        );
        // The same content checked as another page of the set is wrong too.
        assert_eq!(
            check_loads(&stale, 1, 7, version(0), Pattern::Sequential, 0).mismatches,
            512
        );
    }

    #[test]
    fn the_pattern_is_the_abis() {
        let mut mem = region(2);
        fill(&mut mem, 10, 99, 4);
        assert_eq!(mem[WORDS_PER_PAGE + 3], synthetic_word(99, 11, 4, 3));
        assert_eq!(mismatches_in_words(&mem[..WORDS_PER_PAGE], 10, 99, 4, 0), 0);
        assert_eq!(
            mismatches_in_words(&mem[WORDS_PER_PAGE + 1..], 11, 99, 4, 1),
            0
        );
        assert_eq!(
            mismatches_in_words(&mem[WORDS_PER_PAGE + 1..], 11, 99, 4, 0),
            511
        );
    }

    #[test]
    fn random_order_is_seeded_and_stays_in_range() {
        let a: Vec<u64> = (0..100).map(|n| draw(5, n, 10)).collect();
        let b: Vec<u64> = (0..100).map(|n| draw(5, n, 10)).collect();
        let c: Vec<u64> = (0..100).map(|n| draw(6, n, 10)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|&p| p < 10));
        // Random order visits pages unevenly, which sequential order never does.
        assert!((0..10).any(|p| a.iter().filter(|&&x| x == p).count() != 10));
    }

    #[test]
    fn shares_cover_the_working_set_once() {
        assert_eq!(shares(10, 3), vec![(0, 3), (3, 3), (6, 4)]);
        assert_eq!(shares(2, 4), vec![(0, 1), (1, 1)]);
        assert_eq!(shares(16384, 1), vec![(0, 16384)]);
    }
}
