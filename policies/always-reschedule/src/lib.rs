//! `always-reschedule`: every fault is async and the guest is asked to run
//! another task, even when it said it cannot (a stress case for the guest's
//! fallback path). With the RFCv2 transport (data abort, exception ready,
//! host initiation), so that it differs from `gavin-rfcv2` and `always-halt`
//! only in the sleep decision.
#![cfg_attr(target_arch = "wasm32", no_std)]

use apflab_policy_sdk::{Decision, FaultInfo, Policy, Sleep, rfcv2};

/// Always async, always reschedule.
#[derive(Clone, Copy, Debug, Default)]
pub struct AlwaysReschedule;

impl Policy for AlwaysReschedule {
    fn decide(&mut self, _fault: &FaultInfo) -> Decision {
        rfcv2(Sleep::Reschedule)
    }
}

apflab_policy_sdk::export_policy!(AlwaysReschedule);
