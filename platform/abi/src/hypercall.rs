//! Hypercall function ids and return codes.
//!
//! apflab's own calls live in the SMCCC *vendor specific hypervisor service*
//! range (owning entity 6), as fast SMC64 calls: `0xC600_0000 | n`. PSCI uses
//! the standard ids. Arguments go in x1..x5, the result comes back in x0 (and
//! x1 for calls that return two values). On a machine that does not implement
//! apflab (plain QEMU `virt`), every apflab call returns
//! [`SMCCC_NOT_SUPPORTED`], which the guest treats as "run without async PF".

/// Base of the apflab function ids (fast call, SMC64, vendor hypervisor).
pub const APFLAB_FN_BASE: u32 = 0xC600_0000;

/// `FEATURES() -> bitmap`: which [`crate::apf::features`] the host offers.
pub const FN_FEATURES: u32 = APFLAB_FN_BASE;
/// `APF_ENABLE(control_block_ipa, features) -> 0 | error`: register this
/// vCPU's control block (see [`crate::apf::ControlBlock`]) and the delivery
/// features the guest accepts.
pub const FN_APF_ENABLE: u32 = APFLAB_FN_BASE | 1;
/// `APF_DISABLE() -> 0`: stop async PF on this vCPU. The host wakes every
/// outstanding token with [`crate::apf::TOKEN_WAKE_ALL`] first.
pub const FN_APF_DISABLE: u32 = APFLAB_FN_BASE | 2;
/// `APF_ACK(token) -> 0 | error`: the guest has consumed a "page ready"
/// interrupt for `token` (or for the ready ring, with token 0), so the host
/// may deliver the next one.
pub const FN_APF_ACK: u32 = APFLAB_FN_BASE | 3;
/// `APF_PAGE_REQUEST(token) -> 0 | error`: guest-initiated variant; the guest
/// asks the host to start fetching the page behind a "not present" token.
pub const FN_APF_PAGE_REQUEST: u32 = APFLAB_FN_BASE | 4;
/// `REPORT(report_ipa, len) -> 0 | error`: the guest hands over its results
/// (a [`crate::report::GuestReport`]) before powering off.
pub const FN_REPORT: u32 = APFLAB_FN_BASE | 5;
/// `PANIC(msg_ipa, len) -> never returns`: the guest kernel panicked; the
/// message (UTF-8, at most [`PANIC_MSG_MAX`] bytes) fails the run.
pub const FN_PANIC: u32 = APFLAB_FN_BASE | 6;
/// `TASK_DONE(task_id, ops) -> 0`: a workload task finished (for per-task
/// completion time measured by the host clock).
pub const FN_TASK_DONE: u32 = APFLAB_FN_BASE | 7;
/// `TRACE(records_ipa, count, dropped) -> 0 | error`: the guest hands over
/// `count` (at most [`crate::trace::TRACE_BATCH`]) records of its timeline
/// log ([`crate::trace::TraceRecord`]s), and how many it could not keep
/// since the last call.
pub const FN_TRACE: u32 = APFLAB_FN_BASE | 8;

/// Longest panic message the host reads.
pub const PANIC_MSG_MAX: u64 = 1024;

/// PSCI 0.2+ `PSCI_VERSION`.
pub const PSCI_VERSION: u32 = 0x8400_0000;
/// PSCI `CPU_OFF`.
pub const PSCI_CPU_OFF: u32 = 0x8400_0002;
/// PSCI `CPU_ON` (SMC64).
pub const PSCI_CPU_ON: u32 = 0xC400_0003;
/// PSCI `AFFINITY_INFO` (SMC64).
pub const PSCI_AFFINITY_INFO: u32 = 0xC400_0004;
/// PSCI `SYSTEM_OFF`.
pub const PSCI_SYSTEM_OFF: u32 = 0x8400_0008;
/// PSCI `SYSTEM_RESET`.
pub const PSCI_SYSTEM_RESET: u32 = 0x8400_0009;
/// PSCI `PSCI_FEATURES`.
pub const PSCI_FEATURES: u32 = 0x8400_000A;
/// The PSCI version the emulated firmware reports (1.0).
pub const PSCI_VERSION_1_0: u64 = 0x0001_0000;

/// SMCCC / PSCI success.
pub const SMCCC_SUCCESS: i64 = 0;
/// SMCCC "not supported" (also PSCI `NOT_SUPPORTED`).
pub const SMCCC_NOT_SUPPORTED: i64 = -1;
/// PSCI / apflab "invalid parameters".
pub const SMCCC_INVALID_PARAMETERS: i64 = -2;
/// PSCI / apflab "denied" (e.g. a second ACK of the same token).
pub const SMCCC_DENIED: i64 = -3;
/// PSCI `ALREADY_ON`.
pub const PSCI_ALREADY_ON: i64 = -4;

/// Register layout of the hypercall doorbell page at
/// [`crate::memory_map::DOORBELL_BASE`].
///
/// The guest writes the arguments, then the function id to [`FUNCTION`];
/// that write is the exit. On return [`RESULT0`]/[`RESULT1`] hold x0/x1 of
/// the equivalent HVC. Every register is 64 bits wide and must be accessed
/// with single 64-bit `LDR`/`STR` (so the access is decodable on every host).
///
/// [`FUNCTION`]: doorbell::FUNCTION
/// [`RESULT0`]: doorbell::RESULT0
/// [`RESULT1`]: doorbell::RESULT1
pub mod doorbell {
    /// Offsets of argument registers x1..x5.
    pub const ARGS: [u64; 5] = [0x08, 0x10, 0x18, 0x20, 0x28];
    /// Writing the function id here performs the call.
    pub const FUNCTION: u64 = 0x00;
    /// First result (x0).
    pub const RESULT0: u64 = 0x40;
    /// Second result (x1).
    pub const RESULT1: u64 = 0x48;
}

/// Owning-entity field of an SMCCC function id.
pub const fn smccc_owner(function_id: u32) -> u32 {
    (function_id >> 24) & 0x3f
}

/// Whether `function_id` is one of apflab's vendor hypervisor calls.
pub const fn is_apflab_call(function_id: u32) -> bool {
    function_id & 0xFFFF_0000 == APFLAB_FN_BASE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apflab_ids_are_fast_smc64_vendor_hypervisor_calls() {
        for id in [
            FN_FEATURES,
            FN_APF_ENABLE,
            FN_APF_DISABLE,
            FN_APF_ACK,
            FN_APF_PAGE_REQUEST,
            FN_REPORT,
            FN_PANIC,
            FN_TASK_DONE,
        ] {
            assert_eq!(smccc_owner(id), 6, "{id:#x}");
            assert_ne!(id & (1 << 31), 0, "fast call bit");
            assert_ne!(id & (1 << 30), 0, "SMC64 bit");
            assert!(is_apflab_call(id));
        }
        assert!(!is_apflab_call(PSCI_CPU_ON));
    }
}
