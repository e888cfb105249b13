//! `always-halt`: every fault is async and the vCPU halts until the page is
//! ready, whatever the guest could do meanwhile. With the RFCv2 transport
//! (data abort, exception ready, host initiation), so that it differs from
//! `gavin-rfcv2` and `always-reschedule` only in the sleep decision.
#![cfg_attr(target_arch = "wasm32", no_std)]

use apflab_policy_sdk::{Decision, FaultInfo, Policy, Sleep, rfcv2};

/// Always async, always halt.
#[derive(Clone, Copy, Debug, Default)]
pub struct AlwaysHalt;

impl Policy for AlwaysHalt {
    fn decide(&mut self, _fault: &FaultInfo) -> Decision {
        rfcv2(Sleep::Halt)
    }
}

apflab_policy_sdk::export_policy!(AlwaysHalt);
