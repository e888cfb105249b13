//! `paolo`: the design Paolo Bonzini suggested in review of the arm64 async
//! page fault series, closer to x86's current one.
//!
//! | fault | decision |
//! |---|---|
//! | kernel mode (EL1) | sync |
//! | [`MAX_OUTSTANDING`](apflab_policy_sdk::MAX_OUTSTANDING) already outstanding on the vCPU | sync |
//! | guest cannot reschedule | async, halt |
//! | otherwise | async, reschedule |
//!
//! Async decisions deliver "not present" with a dedicated exception class
//! (token in ESR.ISS), "ready" as an interrupt acknowledged by hypercall, and
//! the guest asks for the page itself (`APF_PAGE_REQUEST`).
#![cfg_attr(target_arch = "wasm32", no_std)]

use apflab_policy_sdk::{
    Decision, FaultInfo, Initiation, NotPresentDelivery, Policy, ReadyDelivery, Sleep,
    has_async_room,
};

/// Paolo Bonzini's suggested design.
#[derive(Clone, Copy, Debug, Default)]
pub struct Paolo;

impl Policy for Paolo {
    fn decide(&mut self, fault: &FaultInfo) -> Decision {
        if fault.el != 0 || !has_async_room(fault) {
            return Decision::Sync;
        }
        Decision::Async {
            not_present: NotPresentDelivery::DedicatedEc,
            ready: ReadyDelivery::Interrupt,
            initiation: Initiation::Guest,
            sleep: if fault.can_reschedule {
                Sleep::Reschedule
            } else {
                Sleep::Halt
            },
        }
    }
}

apflab_policy_sdk::export_policy!(Paolo);
