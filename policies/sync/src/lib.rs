//! `sync`: the baseline. Every fault is handled synchronously: the vCPU
//! stalls until the page is in, as without async page faults at all. This is
//! also the host's built-in fallback decision.
#![cfg_attr(target_arch = "wasm32", no_std)]

use apflab_policy_sdk::{Decision, FaultInfo, Policy};

/// The synchronous baseline.
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncPolicy;

impl Policy for SyncPolicy {
    fn decide(&mut self, _fault: &FaultInfo) -> Decision {
        Decision::Sync
    }
}

apflab_policy_sdk::export_policy!(SyncPolicy);
