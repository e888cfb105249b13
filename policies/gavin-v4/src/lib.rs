//! `gavin-v4`: the decisions of Gavin Shan's last arm64 async page fault
//! series (v4, 2021), which delivered "not present" as an SDEI event.
//!
//! | fault | decision |
//! |---|---|
//! | kernel mode (EL1) | sync |
//! | [`MAX_OUTSTANDING`](apflab_policy_sdk::MAX_OUTSTANDING) already outstanding on the vCPU | sync |
//! | guest cannot reschedule (idle task, preemption off) | sync |
//! | otherwise | async, reschedule |
//!
//! Every async decision uses the series' transport: "not present" as the
//! SDEI event, "ready" as the PPI acknowledged by hypercall, the host starts
//! the fetch. v4 had no halt: a fault the guest cannot sleep
//! on stays synchronous.
#![cfg_attr(target_arch = "wasm32", no_std)]

use apflab_policy_sdk::{
    Decision, FaultInfo, Initiation, NotPresentDelivery, Policy, ReadyDelivery, Sleep,
    has_async_room,
};

/// Gavin Shan's v4 decisions.
#[derive(Clone, Copy, Debug, Default)]
pub struct GavinV4;

impl Policy for GavinV4 {
    fn decide(&mut self, fault: &FaultInfo) -> Decision {
        if fault.el != 0 || !has_async_room(fault) || !fault.can_reschedule {
            return Decision::Sync;
        }
        Decision::Async {
            not_present: NotPresentDelivery::Sdei,
            ready: ReadyDelivery::Interrupt,
            initiation: Initiation::Host,
            sleep: Sleep::Reschedule,
        }
    }
}

apflab_policy_sdk::export_policy!(GavinV4);
