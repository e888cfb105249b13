//! "Not present": how the guest learns, on the faulting instruction, that
//! its page is not there and which token stands for it.
//!
//! - [`NotPresentDelivery::DataAbort`] (Gavin Shan's RFCv2): the data abort
//!   the hardware would have taken (translation fault, FAR = the faulting
//!   address); the control block's `reason` says it is "not present" and
//!   carries the token.
//! - [`NotPresentDelivery::DedicatedEc`] (Paolo Bonzini's review): an
//!   exception class the architecture leaves unallocated
//!   ([`EC_APF_NOT_PRESENT`]), the token in ESR.ISS (and, in full, in the
//!   control block).
//! - [`NotPresentDelivery::Sdei`] (Gavin Shan's v4): the SDEI event the
//!   guest registered ([`apflab_abi::sdei::EVENT_APF`]), dispatched by the
//!   machine's SDEI firmware on the faulting instruction; the token is in
//!   the control block.

use apflab_abi::apf::{EC_APF_NOT_PRESENT, Token, esr, features};
use apflab_abi::policy::NotPresentDelivery;
use apflab_hypervisor::Action;
use apflab_hypervisor::arch::syndrome::{FaultStatus, data_abort};
use apflab_hypervisor::{NotResidentFault, SyncException};

/// The fault status of a "not present" data abort
/// ([`apflab_abi::apf::DFSC_TRANSLATION_L3`]).
pub(crate) const NOT_PRESENT_FAULT: FaultStatus = FaultStatus::Translation(3);

/// The feature bit the guest must have accepted for `delivery`.
pub fn feature(delivery: NotPresentDelivery) -> u64 {
    match delivery {
        NotPresentDelivery::DataAbort => features::NOT_PRESENT_DATA_ABORT,
        NotPresentDelivery::DedicatedEc => features::NOT_PRESENT_DEDICATED_EC,
        NotPresentDelivery::Sdei => features::NOT_PRESENT_SDEI,
    }
}

/// What the backend does to tell the guest "not present" for `token`:
/// inject [`exception`], or signal the SDEI event.
pub fn action(delivery: NotPresentDelivery, token: Token, fault: &NotResidentFault) -> Action {
    match delivery {
        NotPresentDelivery::Sdei => Action::SignalSdei,
        NotPresentDelivery::DataAbort | NotPresentDelivery::DedicatedEc => {
            Action::InjectException(exception(delivery, token, fault))
        }
    }
}

/// The exception that tells the guest "not present" for `token`, taken on
/// the faulting instruction (which runs again once the guest returns).
/// A data abort has the class of the level the fault was taken at (from a
/// task, or from the kernel in async-halt).
pub fn exception(
    delivery: NotPresentDelivery,
    token: Token,
    fault: &NotResidentFault,
) -> SyncException {
    let esr = match delivery {
        // An SDEI event has no syndrome; a data abort is what the
        // architecture would have taken.
        NotPresentDelivery::DataAbort | NotPresentDelivery::Sdei => {
            data_abort(fault.el == 0, fault.write, false, NOT_PRESENT_FAULT)
        }
        NotPresentDelivery::DedicatedEc => esr(EC_APF_NOT_PRESENT, token.0),
    };
    SyncException {
        esr,
        far: fault.va,
        return_pc: fault.pc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apflab_abi::addr::Gpa;
    use apflab_abi::apf::{
        DFSC_TRANSLATION_L3, EC_DATA_ABORT_CURRENT, EC_DATA_ABORT_LOWER, ESR_IL, esr_ec,
    };
    use apflab_hypervisor::PageAccess;
    use apflab_hypervisor::arch::pstate;

    /// ESR.ISS.WnR of a data abort: the access was a write.
    const ISS_WNR: u64 = 1 << 6;

    fn fault(write: bool) -> NotResidentFault {
        let access = if write {
            PageAccess::Write
        } else {
            PageAccess::Read
        };
        NotResidentFault::new(Gpa(0x4210_0000), access, 0x40_1000, 0x10_0123, pstate::EL0T)
    }

    #[test]
    fn each_delivery_builds_its_own_syndrome() {
        let t = Token::new(5, 1);
        let da = exception(NotPresentDelivery::DataAbort, t, &fault(true));
        assert_eq!(esr_ec(da.esr), EC_DATA_ABORT_LOWER);
        assert_eq!(da.esr & 0x3f, DFSC_TRANSLATION_L3);
        assert_ne!(da.esr & ISS_WNR, 0);
        assert_eq!((da.far, da.return_pc), (0x10_0123, 0x40_1000));
        let ec = exception(NotPresentDelivery::DedicatedEc, t, &fault(false));
        assert_eq!(esr_ec(ec.esr), EC_APF_NOT_PRESENT);
        assert_eq!(ec.esr & 0x1ff_ffff, t.0);
        assert_ne!(ec.esr & ESR_IL, 0);
        let kernel = NotResidentFault {
            el: 1,
            ..fault(false)
        };
        let da = exception(NotPresentDelivery::DataAbort, t, &kernel);
        assert_eq!(esr_ec(da.esr), EC_DATA_ABORT_CURRENT);
        assert_eq!(
            action(NotPresentDelivery::Sdei, t, &fault(false)),
            Action::SignalSdei
        );
        assert_eq!(
            action(NotPresentDelivery::DedicatedEc, t, &fault(false)),
            Action::InjectException(ec)
        );
    }
}
