//! `gavin-rfcv2`: the decisions of Gavin Shan's arm64 async page fault
//! series (RFCv2).
//!
//! | fault | decision |
//! |---|---|
//! | [`MAX_OUTSTANDING`](apflab_policy_sdk::MAX_OUTSTANDING) already outstanding on the vCPU | sync |
//! | kernel mode (EL1) | async, halt |
//! | guest cannot reschedule (idle task, preemption off) | async, halt |
//! | otherwise | async, reschedule |
//!
//! Every async decision uses the series' transport: "not present" as a data
//! abort with the reason in the control block, "ready" as an injected
//! exception, the host starts the fetch.
#![cfg_attr(target_arch = "wasm32", no_std)]

use apflab_policy_sdk::{Decision, FaultInfo, Policy, Sleep, has_async_room, rfcv2};

/// Gavin Shan's RFCv2 decisions.
#[derive(Clone, Copy, Debug, Default)]
pub struct GavinRfcv2;

impl Policy for GavinRfcv2 {
    fn decide(&mut self, fault: &FaultInfo) -> Decision {
        if !has_async_room(fault) {
            return Decision::Sync;
        }
        // The guest takes "not present" in any mode but only sleeps the
        // task when the scheduler may run: never in the idle task, with
        // preemption off or in the kernel.
        let sleep = if fault.el != 0 || !fault.can_reschedule {
            Sleep::Halt
        } else {
            Sleep::Reschedule
        };
        rfcv2(sleep)
    }
}

apflab_policy_sdk::export_policy!(GavinRfcv2);
