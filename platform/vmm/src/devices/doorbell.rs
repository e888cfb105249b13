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
    /// Reads the register at `offset` (only aligned 64-bit accesses are
    /// defined; anything else reads 0).
    pub fn read(&self, offset: u64, len: usize) -> u64 {
        if len != 8 {
            return 0;
        }
        match offset {
            layout::RESULT0 => self.results[0],
            layout::RESULT1 => self.results[1],
            o => layout::ARGS
                .iter()
                .position(|&a| a == o)
                .map_or(0, |i| self.args[i]),
        }
    }

    /// Writes the register at `offset`.
    pub fn write(&mut self, offset: u64, len: usize, value: u64) -> DoorbellWrite {
        if len != 8 {
            return DoorbellWrite::Stored;
        }
        if offset == layout::FUNCTION {
            return DoorbellWrite::Call {
                function: value as u32,
                args: self.args,
            };
        }
        if let Some(i) = layout::ARGS.iter().position(|&a| a == offset) {
            self.args[i] = value;
        }
        DoorbellWrite::Stored
    }

    /// Stores the results of the call.
    pub fn set_results(&mut self, results: [u64; 2]) {
        self.results = results;
    }
}
