//! The apflab hypercall doorbell (see [`apflab_abi::hypercall::doorbell`]):
//! an MMIO page through which a guest makes hypercalls where HVC cannot be
//! forwarded to the VMM.
//!
//! The registers are banked per vCPU (each vCPU sees its own argument and
//! result registers at the same addresses), so two vCPUs calling at the
//! same time cannot mix their arguments.

use apflab_abi::hypercall::doorbell as layout;
use serde::{Deserialize, Serialize};

/// One vCPU's bank of doorbell registers.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct DoorbellBank {
    args: [u64; 5],
    results: [u64; 2],
}

/// The 64-bit register an access of `len` bytes at `offset` reaches, and
/// which 32-bit half of it (`None`: all of it), if it is an aligned 64-bit
/// access or an aligned 32-bit one.
fn register(offset: u64, len: usize) -> Option<(u64, Option<u64>)> {
    match len {
        8 if offset.is_multiple_of(8) => Some((offset, None)),
        4 if offset.is_multiple_of(4) => Some((offset & !7, Some((offset >> 2) & 1))),
        _ => None,
    }
}

/// What a doorbell write asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoorbellWrite {
    /// An argument or an ignored register was written.
    Stored,
    /// The function register was written: make the call.
    Call {
        /// Function id.
        function: u32,
        /// x1..x5 as written before.
        args: [u64; 5],
    },
}

impl DoorbellBank {
    /// Reads the register at `offset`: an aligned 64-bit access, or an
    /// aligned 32-bit half of one (the emu engine splits a 64-bit device
    /// access in two); anything else reads 0.
    pub fn read(&self, offset: u64, len: usize) -> u64 {
        let Some((reg, half)) = register(offset, len) else {
            return 0;
        };
        let value = match reg {
            layout::RESULT0 => self.results[0],
            layout::RESULT1 => self.results[1],
            o => layout::ARGS
                .iter()
                .position(|&a| a == o)
                .map_or(0, |i| self.args[i]),
        };
        match half {
            None => value,
            Some(0) => value & 0xffff_ffff,
            Some(_) => value >> 32,
        }
    }

    /// Writes the register at `offset` (the accesses [`DoorbellBank::read`]
    /// takes). A write of the function register, or of its low half (a
    /// function id is 32 bits), makes the call.
    pub fn write(&mut self, offset: u64, len: usize, value: u64) -> DoorbellWrite {
        let Some((reg, half)) = register(offset, len) else {
            return DoorbellWrite::Stored;
        };
        if reg == layout::FUNCTION {
            if half.is_some_and(|h| h != 0) {
                return DoorbellWrite::Stored;
            }
            return DoorbellWrite::Call {
                function: value as u32,
                args: self.args,
            };
        }
        if let Some(i) = layout::ARGS.iter().position(|&a| a == reg) {
            self.args[i] = match half {
                None => value,
                Some(0) => (self.args[i] & !0xffff_ffff) | (value & 0xffff_ffff),
                Some(_) => (self.args[i] & 0xffff_ffff) | (value << 32),
            };
        }
        DoorbellWrite::Stored
    }

    /// Stores the results of the call.
    pub fn set_results(&mut self, results: [u64; 2]) {
        self.results = results;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_made_in_32_bit_halves_is_the_call_made_whole() {
        let mut bank = DoorbellBank::default();
        let arg = layout::ARGS[0];
        assert_eq!(bank.write(arg, 4, 0x89ab_cdef), DoorbellWrite::Stored);
        assert_eq!(bank.write(arg + 4, 4, 0x0123_4567), DoorbellWrite::Stored);
        assert_eq!(bank.read(arg, 8), 0x0123_4567_89ab_cdef);
        assert_eq!(
            bank.write(layout::FUNCTION, 4, 0xc600_0021),
            DoorbellWrite::Call {
                function: 0xc600_0021,
                args: [0x0123_4567_89ab_cdef, 0, 0, 0, 0],
            }
        );
        assert_eq!(
            bank.write(layout::FUNCTION + 4, 4, 0),
            DoorbellWrite::Stored
        );
        bank.set_results([0x1_0000_0002, 7]);
        assert_eq!(bank.read(layout::RESULT0, 4), 2);
        assert_eq!(bank.read(layout::RESULT0 + 4, 4), 1);
        assert_eq!(bank.read(layout::RESULT1, 8), 7);
        // Unaligned or other sizes: nothing.
        assert_eq!(bank.read(layout::RESULT0 + 2, 4), 0);
        assert_eq!(bank.write(layout::FUNCTION, 2, 1), DoorbellWrite::Stored);
    }
}
