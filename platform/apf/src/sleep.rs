//! What the guest does while its page is fetched, as the control block's
//! `action` tells it: [`Sleep::Halt`] (the vCPU waits in WFI until its
//! token is ready, still taking interrupts) or [`Sleep::Reschedule`] (the
//! faulting task blocks on its token and another task runs). The host's
//! part ends with writing it; the guest does the rest.

use apflab_abi::apf::{ACTION_HALT, ACTION_RESCHEDULE};
use apflab_abi::policy::Sleep;

/// The control block's `action` for `sleep`.
pub fn action(sleep: Sleep) -> u32 {
    match sleep {
        Sleep::Halt => ACTION_HALT,
        Sleep::Reschedule => ACTION_RESCHEDULE,
    }
}
