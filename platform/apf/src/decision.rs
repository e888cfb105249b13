//! From the policy's decision to what the engine serves: an async decision
//! is served async only if the guest can take it, and otherwise falls back
//! to a synchronous fault, counted by cause.
//!
//! A fault the kernel takes (EL1) is async only as async-halt (the SEND_ALWAYS
//! analogue): the guest accepted [`features::KERNEL_MODE_ASYNC`], the policy
//! chose [`Sleep::Halt`] and the kernel had IRQs unmasked at the access (it
//! can wait for "ready" there). A kernel never reschedules on a token: its
//! faulting context may not be a task at all.

use apflab_abi::apf::{MAX_OUTSTANDING, features};
use apflab_abi::policy::{Decision, Initiation, NotPresentDelivery, ReadyDelivery, Sleep};

use crate::initiation;
use crate::not_present;
use crate::ready;

/// An async decision the engine serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncPlan {
    /// How "not present" is delivered.
    pub not_present: NotPresentDelivery,
    /// How "ready" is delivered.
    pub ready: ReadyDelivery,
    /// Who starts the fetch.
    pub initiation: Initiation,
    /// What the guest does meanwhile.
    pub sleep: Sleep,
}

/// Why an async decision was served synchronously.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fallback {
    /// The guest has not enabled async PF on this vCPU.
    NotEnabled,
    /// The fault was taken in the kernel, where async PF is delivered only
    /// as async-halt, with IRQs unmasked, to a guest that accepted it.
    KernelMode,
    /// The vCPU already has [`MAX_OUTSTANDING`] tokens outstanding.
    OutstandingCap,
    /// The decision needs a feature the host does not offer or the guest
    /// did not accept.
    FeatureNotAccepted,
    /// The vCPU faulted again on a page it already holds a token for (it
    /// waits for it, as x86's APF_HALT does).
    RepeatFault,
    /// The guest was in its exception entry/exit window
    /// ([`apflab_abi::apf::GUEST_NO_INJECT`]), where an injected "not
    /// present" would overwrite state it has not saved yet.
    NoInjectWindow,
}

impl Fallback {
    /// The name used in the results.
    pub fn name(self) -> &'static str {
        match self {
            Fallback::NotEnabled => "not_enabled",
            Fallback::KernelMode => "kernel_mode",
            Fallback::OutstandingCap => "outstanding_cap",
            Fallback::FeatureNotAccepted => "feature_not_accepted",
            Fallback::RepeatFault => "repeat_fault",
            Fallback::NoInjectWindow => "no_inject_window",
        }
    }
}

/// What the engine does with a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// The vCPU stalls until the page is in; why, if the policy wanted
    /// async.
    Sync(Option<Fallback>),
    /// Async, as planned.
    Async(AsyncPlan),
}

/// The facts about the vCPU a decision is checked against.
#[derive(Clone, Copy, Debug)]
pub struct VcpuFacts {
    /// Features accepted on this vCPU (`None`: async PF not enabled).
    pub accepted: Option<u64>,
    /// Exception level of the fault.
    pub el: u8,
    /// Tokens outstanding on the vCPU.
    pub outstanding: usize,
    /// It already holds a token for this page.
    pub repeat: bool,
    /// IRQs were masked at the access.
    pub irqs_masked: bool,
    /// The guest said it is in its no-inject window.
    pub no_inject: bool,
}

/// Whether a kernel-mode fault with `facts` can be served as async `sleep`
/// delivered as `not_present`. Never through SDEI: its handler runs with
/// everything masked, where the kernel can wait for nothing (v4 sent it
/// only for a task's faults), so the token would stay unread.
fn kernel_can_wait(
    facts: &VcpuFacts,
    accepted: u64,
    sleep: Sleep,
    not_present: NotPresentDelivery,
) -> bool {
    accepted & features::KERNEL_MODE_ASYNC != 0
        && sleep == Sleep::Halt
        && !facts.irqs_masked
        && not_present != NotPresentDelivery::Sdei
}

/// How `decision` is served on a vCPU with `facts`.
pub fn serve(decision: Decision, facts: VcpuFacts) -> Served {
    let Decision::Async {
        not_present,
        ready,
        initiation,
        sleep,
        ..
    } = decision
    else {
        return Served::Sync(None);
    };
    let Some(accepted) = facts.accepted else {
        return Served::Sync(Some(Fallback::NotEnabled));
    };
    let fallback = if facts.repeat {
        Some(Fallback::RepeatFault)
    } else if facts.no_inject {
        Some(Fallback::NoInjectWindow)
    } else if facts.el != 0 && !kernel_can_wait(&facts, accepted, sleep, not_present) {
        Some(Fallback::KernelMode)
    } else if facts.outstanding >= MAX_OUTSTANDING {
        Some(Fallback::OutstandingCap)
    } else {
        let needs = not_present::feature(not_present)
            | ready::feature(ready)
            | initiation::feature(initiation);
        (accepted & needs != needs).then_some(Fallback::FeatureNotAccepted)
    };
    match fallback {
        Some(f) => Served::Sync(Some(f)),
        None => Served::Async(AsyncPlan {
            not_present,
            ready,
            initiation,
            sleep,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apflab_abi::apf::features as f;

    const PAOLO: Decision = Decision::Async {
        not_present: NotPresentDelivery::DedicatedEc,
        ready: ReadyDelivery::Interrupt,
        initiation: Initiation::Guest,
        sleep: Sleep::Reschedule,
    };

    fn facts(accepted: Option<u64>) -> VcpuFacts {
        VcpuFacts {
            accepted,
            el: 0,
            outstanding: 0,
            repeat: false,
            irqs_masked: false,
            no_inject: false,
        }
    }

    #[test]
    fn an_async_decision_is_served_only_when_the_guest_can_take_it() {
        let all = f::NOT_PRESENT_DEDICATED_EC | f::READY_INTERRUPT | f::GUEST_INITIATED;
        assert!(matches!(serve(PAOLO, facts(Some(all))), Served::Async(_)));
        assert_eq!(
            serve(PAOLO, facts(None)),
            Served::Sync(Some(Fallback::NotEnabled))
        );
        assert_eq!(
            serve(PAOLO, facts(Some(all & !f::GUEST_INITIATED))),
            Served::Sync(Some(Fallback::FeatureNotAccepted))
        );
        let kernel = VcpuFacts {
            el: 1,
            ..facts(Some(all))
        };
        assert_eq!(
            serve(PAOLO, kernel),
            Served::Sync(Some(Fallback::KernelMode))
        );
        let in_window = VcpuFacts {
            no_inject: true,
            ..kernel
        };
        assert_eq!(
            serve(PAOLO, in_window),
            Served::Sync(Some(Fallback::NoInjectWindow))
        );
        let full = VcpuFacts {
            outstanding: MAX_OUTSTANDING,
            ..facts(Some(all))
        };
        assert_eq!(
            serve(PAOLO, full),
            Served::Sync(Some(Fallback::OutstandingCap))
        );
        assert_eq!(serve(Decision::Sync, facts(Some(all))), Served::Sync(None));
    }

    #[test]
    fn the_kernel_gets_async_halt_only_when_it_can_wait() {
        let halt = Decision::Async {
            not_present: NotPresentDelivery::DataAbort,
            ready: ReadyDelivery::Interrupt,
            initiation: Initiation::Host,
            sleep: Sleep::Halt,
        };
        let all = f::NOT_PRESENT_DATA_ABORT | f::READY_INTERRUPT | f::KERNEL_MODE_ASYNC;
        let kernel = VcpuFacts {
            el: 1,
            ..facts(Some(all))
        };
        assert!(matches!(serve(halt, kernel), Served::Async(_)));
        let masked = VcpuFacts {
            irqs_masked: true,
            ..kernel
        };
        assert_eq!(
            serve(halt, masked),
            Served::Sync(Some(Fallback::KernelMode))
        );
        let not_accepted = VcpuFacts {
            accepted: Some(all & !f::KERNEL_MODE_ASYNC),
            ..kernel
        };
        assert_eq!(
            serve(halt, not_accepted),
            Served::Sync(Some(Fallback::KernelMode))
        );
        // SDEI reaches a task's faults only: its handler can wait for nothing.
        let sdei = Decision::Async {
            not_present: NotPresentDelivery::Sdei,
            ready: ReadyDelivery::Interrupt,
            initiation: Initiation::Host,
            sleep: Sleep::Halt,
        };
        let sdei_kernel = VcpuFacts {
            accepted: Some(all | f::NOT_PRESENT_SDEI),
            ..kernel
        };
        assert_eq!(
            serve(sdei, sdei_kernel),
            Served::Sync(Some(Fallback::KernelMode))
        );
        assert!(matches!(
            serve(
                sdei,
                VcpuFacts {
                    el: 0,
                    ..sdei_kernel
                }
            ),
            Served::Async(_)
        ));
        let Decision::Async {
            not_present,
            ready,
            initiation,
            ..
        } = halt
        else {
            unreachable!()
        };
        let reschedule = Decision::Async {
            not_present,
            ready,
            initiation,
            sleep: Sleep::Reschedule,
        };
        assert_eq!(
            serve(reschedule, kernel),
            Served::Sync(Some(Fallback::KernelMode))
        );
    }
}
