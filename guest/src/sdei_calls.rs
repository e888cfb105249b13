//! The SDEI client's calls (Arm DEN0054 over HVC), the arguments a
//! handler is registered with, and the entry point the firmware is given.
//!
//! What the firmware enters, and where each event goes from there, is
//! [`crate::sdei`]. The calls are apart from it because what registers a
//! handler (the async PF client, the self-test) makes them, while the
//! handler calls back into what registered it: together they would import
//! each other.
//!
//! For async PF (Gavin Shan's v4) each CPU registers, enables and unmasks
//! the event at boot ([`enable_for_apf`]).

use apflab_abi::sdei as abi;

use crate::hypercall;

/// What a handler registered with argument `arg` is for.
pub mod arg {
    /// The conformance self-test ([`crate::sdei_selftest`]).
    pub const SELFTEST: u64 = 1;
    /// "Not present" of async PF.
    pub const APF: u64 = 2;
}

unsafe extern "C" {
    /// The handler entry point registered with the firmware (never called
    /// from Rust), defined by the assembly of [`crate::sdei`].
    fn sdei_entry();
}

/// The address to register as the handler's entry point.
pub fn entry_point() -> u64 {
    sdei_entry as *const () as u64
}

/// Registers, enables and unmasks the async PF event on this CPU; whether
/// the host can now deliver "not present" through it.
pub fn enable_for_apf() -> bool {
    let ev = u64::from(abi::EVENT_APF);
    call(abi::FN_EVENT_REGISTER, ev, entry_point(), arg::APF, 0) == abi::SUCCESS
        && call(abi::FN_EVENT_ENABLE, ev, 0, 0, 0) == abi::SUCCESS
        && call(abi::FN_PE_UNMASK, 0, 0, 0, 0) == abi::SUCCESS
}

/// An SDEI call with up to four arguments; x0 as a signed status or value.
pub fn call(function: u32, a1: u64, a2: u64, a3: u64, a4: u64) -> i64 {
    hypercall::hvc(function, &[a1, a2, a3, a4])
}

/// `SDEI_VERSION`: (major, minor), or `None` without an SDEI firmware
/// (plain QEMU answers NOT_SUPPORTED).
pub fn version() -> Option<(u64, u64)> {
    let v = call(abi::FN_VERSION, 0, 0, 0, 0);
    (v >= 0).then_some(((v as u64 >> 48) & 0x7fff, (v as u64 >> 32) & 0xffff))
}
