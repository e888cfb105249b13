//! Who starts the fetch: the host when it sees the fault
//! ([`Initiation::Host`], what KVM does today), or the guest's handler with
//! `APF_PAGE_REQUEST` for the token ([`Initiation::Guest`], Paolo Bonzini's
//! third point), in which case the fetch and its latency start only then.

use apflab_abi::apf::{ACTION_REQUEST_PAGE, features};
use apflab_abi::policy::Initiation;

/// The feature bit the guest must have accepted for `initiation`.
pub fn feature(initiation: Initiation) -> u64 {
    match initiation {
        Initiation::Host => 0,
        Initiation::Guest => features::GUEST_INITIATED,
    }
}

/// Whether the fetch starts when the host sees the fault.
pub fn fetch_at_fault(initiation: Initiation) -> bool {
    initiation == Initiation::Host
}

/// What [`apflab_abi::apf::ControlBlock::action`] adds for `initiation`:
/// the guest must ask for the page when it starts the fetch.
pub fn action_flags(initiation: Initiation) -> u32 {
    match initiation {
        Initiation::Host => 0,
        Initiation::Guest => ACTION_REQUEST_PAGE,
    }
}
