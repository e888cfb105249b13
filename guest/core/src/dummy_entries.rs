//! Tokens whose "page ready" arrived before anyone slept on them (Linux's
//! dummy entries in `arch/x86/kernel/kvm.c`): the sleeper finds its token
//! here and does not sleep.
//!
//! A token is outstanding at most once per CPU, and at most
//! [`apflab_abi::apf::MAX_OUTSTANDING`] are outstanding, so a CPU's set
//! never holds more than that; an insert beyond it (a host that breaks the
//! protocol) is refused and counted rather than overwriting a token a
//! sleeper still needs.

use apflab_abi::apf::MAX_OUTSTANDING;

/// A CPU's dummy entries.
#[derive(Clone, Copy, Debug)]
pub struct DummyEntries {
    tokens: [u64; MAX_OUTSTANDING],
    len: usize,
    refused: u64,
}

impl DummyEntries {
    /// No entries.
    pub const EMPTY: DummyEntries = DummyEntries {
        tokens: [0; MAX_OUTSTANDING],
        len: 0,
        refused: 0,
    };

    /// Leaves an entry for `token` (ready before its sleeper). An entry
    /// already there is kept once: a token is woken once.
    pub fn insert(&mut self, token: u64) {
        if self.contains(token) {
            return;
        }
        if self.len < self.tokens.len() {
            self.tokens[self.len] = token;
            self.len += 1;
        } else {
            self.refused += 1;
        }
    }

    /// Takes the entry for `token`: whether there was one (its sleeper
    /// need not sleep).
    pub fn take(&mut self, token: u64) -> bool {
        match self.tokens[..self.len].iter().position(|&t| t == token) {
            Some(i) => {
                self.len -= 1;
                self.tokens[i] = self.tokens[self.len];
                true
            }
            None => false,
        }
    }

    /// Whether `token` has an entry.
    pub fn contains(&self, token: u64) -> bool {
        self.tokens[..self.len].contains(&token)
    }

    /// Drops every entry (wake-all: every sleeper was woken, so no entry
    /// can be waited for any more).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts refused because the set was full (a protocol violation by
    /// the host).
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_before_its_sleeper_is_found_once() {
        let mut d = DummyEntries::EMPTY;
        d.insert(0x1000);
        d.insert(0x2000);
        assert!(d.take(0x2000));
        assert!(!d.take(0x2000), "an entry wakes one sleeper once");
        assert!(!d.take(0x3000));
        assert!(d.take(0x1000));
        assert!(d.is_empty());
    }

    #[test]
    fn a_duplicate_ready_leaves_one_entry() {
        let mut d = DummyEntries::EMPTY;
        d.insert(7);
        d.insert(7);
        assert_eq!(d.len(), 1);
        assert!(d.take(7));
        assert!(!d.take(7));
    }

    #[test]
    fn beyond_the_outstanding_limit_inserts_are_refused_not_overwritten() {
        let mut d = DummyEntries::EMPTY;
        for t in 1..=MAX_OUTSTANDING as u64 {
            d.insert(t << 12);
        }
        d.insert(0xdead << 12);
        assert_eq!((d.len(), d.refused()), (MAX_OUTSTANDING, 1));
        assert!(!d.contains(0xdead << 12));
        for t in 1..=MAX_OUTSTANDING as u64 {
            assert!(d.take(t << 12), "token {t} kept");
        }
    }

    #[test]
    fn wake_all_clears_every_entry() {
        let mut d = DummyEntries::EMPTY;
        d.insert(1);
        d.insert(2);
        d.clear();
        assert!(d.is_empty());
        assert!(!d.take(1));
    }
}
