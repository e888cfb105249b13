//! A guest that misuses the async PF protocol (`apflab.apf_abuse=on`), so
//! the tests can check that the host refuses every misuse with an SMCCC
//! error, counts it by kind and lets the well-behaved rest of the run
//! finish. The boot CPU does it once, around its own `APF_ENABLE`.

use core::ptr::{addr_of, addr_of_mut};

use apflab_abi::apf::{CONTROL_BLOCK_VERSION, ControlBlock};
use apflab_abi::boot::APF_ABUSE_ACK_FLOOD;
use apflab_abi::hypercall::SMCCC_INVALID_PARAMETERS;

use crate::{console, hypercall};

/// A token the host never handed out (its id is far beyond any run's).
const NEVER_GIVEN: u64 = 0xdead_beef << 12;
/// An address outside guest RAM (below it, where the board has flash).
const OUTSIDE_RAM: u64 = 0x1000;

/// How many misuses were sent and how many the host refused.
#[derive(Clone, Copy, Debug, Default)]
pub struct Refused {
    sent: u64,
    refused: u64,
}

impl Refused {
    fn expect_refused(&mut self, result: i64) {
        self.sent += 1;
        self.refused += u64::from(result == SMCCC_INVALID_PARAMETERS);
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: Refused) {
        self.sent += other.sent;
        self.refused += other.refused;
    }

    /// Prints the tally for the tests to read.
    pub fn print(&self) {
        console::println!(
            "apf abuse: {} of {} misuses refused",
            self.refused,
            self.sent
        );
    }
}

/// Misuses before `cb` is registered: calls that need async PF enabled,
/// and control blocks the host must not accept (misaligned, outside RAM,
/// of another version). `cb` is left as it was.
pub fn before_enable(cb: *mut ControlBlock, offered: u64) -> Refused {
    let mut r = Refused::default();
    r.expect_refused(hypercall::apf_ack());
    r.expect_refused(hypercall::apf_page_request(NEVER_GIVEN));
    r.expect_refused(hypercall::apf_disable());
    r.expect_refused(hypercall::apf_enable(cb as u64 + 8, offered));
    r.expect_refused(hypercall::apf_enable(OUTSIDE_RAM, offered));
    // SAFETY: this CPU's own block, not registered with the host yet.
    unsafe { addr_of_mut!((*cb).version).write_volatile(CONTROL_BLOCK_VERSION + 1) };
    r.expect_refused(hypercall::apf_enable(cb as u64, offered));
    // SAFETY: as above.
    unsafe { addr_of_mut!((*cb).version).write_volatile(CONTROL_BLOCK_VERSION) };
    r
}

/// Misuses once `cb` is registered (nothing outstanding yet): a request
/// for a token never given, ACKs with nothing consumed (a flood), and a
/// consumed count beyond what the host published. `cb` is left as it was.
pub fn after_enable(cb: *mut ControlBlock) -> Refused {
    let mut r = Refused::default();
    r.expect_refused(hypercall::apf_page_request(NEVER_GIVEN));
    for _ in 0..APF_ABUSE_ACK_FLOOD {
        r.expect_refused(hypercall::apf_ack());
    }
    // SAFETY: this CPU's own block; the host reads `ready_tail` only at an
    // ACK, and nothing is in the ring yet.
    let tail = unsafe { addr_of!((*cb).ready_tail).read_volatile() };
    // SAFETY: as above.
    unsafe { addr_of_mut!((*cb).ready_tail).write_volatile(tail.wrapping_add(9)) };
    r.expect_refused(hypercall::apf_ack());
    // SAFETY: as above.
    unsafe { addr_of_mut!((*cb).ready_tail).write_volatile(tail) };
    r
}
