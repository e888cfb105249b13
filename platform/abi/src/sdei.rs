//! SDEI, the Software Delegated Exception Interface (Arm DEN0054), as the
//! apflab firmware offers it: version 1.0 over HVC, one private event
//! ([`EVENT_APF`]) per PE, through which the VMM can deliver "page not
//! present" (Gavin Shan's v4 design).
//!
//! Function ids, status codes and field values are the specification's
//! (Linux has the same numbers in `include/uapi/linux/arm_sdei.h`). SDEI
//! calls are fast SMC64 calls in the standard secure service range; the
//! arguments go in x1..x5 and the result comes back in x0.

use crate::hypercall::APFLAB_FN_BASE;

/// First SDEI 1.0 function id.
pub const FN_BASE: u32 = 0xC400_0020;
/// `SDEI_VERSION`.
pub const FN_VERSION: u32 = FN_BASE;
/// `SDEI_EVENT_REGISTER(event, entry, arg, flags, affinity)`.
pub const FN_EVENT_REGISTER: u32 = FN_BASE + 0x01;
/// `SDEI_EVENT_ENABLE(event)`.
pub const FN_EVENT_ENABLE: u32 = FN_BASE + 0x02;
/// `SDEI_EVENT_DISABLE(event)`.
pub const FN_EVENT_DISABLE: u32 = FN_BASE + 0x03;
/// `SDEI_EVENT_CONTEXT(register)`: x0..x17 of the interrupted context,
/// from the handler.
pub const FN_EVENT_CONTEXT: u32 = FN_BASE + 0x04;
/// `SDEI_EVENT_COMPLETE(status)`: the handler is done; the interrupted
/// context resumes.
pub const FN_EVENT_COMPLETE: u32 = FN_BASE + 0x05;
/// `SDEI_EVENT_COMPLETE_AND_RESUME(address)`: the handler is done; the
/// client resumes at `address` as if an IRQ had been taken in the
/// interrupted context.
pub const FN_EVENT_COMPLETE_AND_RESUME: u32 = FN_BASE + 0x06;
/// `SDEI_EVENT_UNREGISTER(event)`.
pub const FN_EVENT_UNREGISTER: u32 = FN_BASE + 0x07;
/// `SDEI_EVENT_STATUS(event)`: [`STATUS_REGISTERED`] | [`STATUS_ENABLED`] |
/// [`STATUS_RUNNING`].
pub const FN_EVENT_STATUS: u32 = FN_BASE + 0x08;
/// `SDEI_EVENT_GET_INFO(event, info)`, `info` one of the `INFO_*` values.
pub const FN_EVENT_GET_INFO: u32 = FN_BASE + 0x09;
/// `SDEI_EVENT_ROUTING_SET` (shared events only; none is offered).
pub const FN_EVENT_ROUTING_SET: u32 = FN_BASE + 0x0A;
/// `SDEI_PE_MASK`: returns 1 if the PE was unmasked, 0 if it already was
/// masked.
pub const FN_PE_MASK: u32 = FN_BASE + 0x0B;
/// `SDEI_PE_UNMASK`.
pub const FN_PE_UNMASK: u32 = FN_BASE + 0x0C;
/// `SDEI_INTERRUPT_BIND` (not offered: no interrupt is bindable).
pub const FN_INTERRUPT_BIND: u32 = FN_BASE + 0x0D;
/// `SDEI_INTERRUPT_RELEASE` (not offered).
pub const FN_INTERRUPT_RELEASE: u32 = FN_BASE + 0x0E;
/// `SDEI_PRIVATE_RESET`: unregisters every private event of the PE.
pub const FN_PRIVATE_RESET: u32 = FN_BASE + 0x11;
/// `SDEI_SHARED_RESET`: unregisters every shared event.
pub const FN_SHARED_RESET: u32 = FN_BASE + 0x12;
/// Mask that selects the SDEI 1.0 range out of a function id.
const FN_RANGE_MASK: u32 = 0xFFFF_FFE0;

/// Whether `function_id` is in the SDEI 1.0 function range.
pub const fn is_sdei_call(function_id: u32) -> bool {
    function_id & FN_RANGE_MASK == FN_BASE
}

/// `SDEI_VERSION`'s answer: major 1, minor 0 (bits 62:48 and 47:32),
/// vendor-defined 0 (bits 31:0).
pub const VERSION_1_0: u64 = 1 << 48;

/// Status: success.
pub const SUCCESS: i64 = 0;
/// Status: the function is not implemented.
pub const NOT_SUPPORTED: i64 = -1;
/// Status: a bad event number, address, flag or register index.
pub const INVALID_PARAMETERS: i64 = -2;
/// Status: the call is not allowed in the event's or PE's current state.
pub const DENIED: i64 = -3;
/// Status: the request takes effect when the running handler completes.
pub const PENDING: i64 = -5;
/// Status: out of resources.
pub const OUT_OF_RESOURCE: i64 = -10;

/// The event "page not present" is delivered through: private, normal
/// priority, in the hypervisor's implementation-defined range (the number
/// Gavin Shan's KVM series used).
pub const EVENT_APF: u32 = 0x4040_0000;

/// `EVENT_STATUS` bit: a handler is registered.
pub const STATUS_REGISTERED: u64 = 1 << 0;
/// `EVENT_STATUS` bit: the event is enabled.
pub const STATUS_ENABLED: u64 = 1 << 1;
/// `EVENT_STATUS` bit: its handler is running on this PE.
pub const STATUS_RUNNING: u64 = 1 << 2;

/// `EVENT_REGISTER` flags bit 0: routing mode (shared events only).
pub const REGISTER_FLAG_ROUTING_PE: u64 = 1;

/// `EVENT_GET_INFO`: the event's type ([`TYPE_PRIVATE`] or shared).
pub const INFO_TYPE: u64 = 0;
/// `EVENT_GET_INFO`: whether the event can be signalled by software.
pub const INFO_SIGNALED: u64 = 1;
/// `EVENT_GET_INFO`: the event's priority ([`PRIORITY_NORMAL`] or
/// critical).
pub const INFO_PRIORITY: u64 = 2;
/// `EVENT_GET_INFO`: routing mode (shared events only).
pub const INFO_ROUTING_MODE: u64 = 3;
/// `EVENT_GET_INFO`: routing affinity (shared events only).
pub const INFO_ROUTING_AFFINITY: u64 = 4;
/// Event type: private to each PE.
pub const TYPE_PRIVATE: u64 = 0;
/// Event priority: normal.
pub const PRIORITY_NORMAL: u64 = 0;

/// `EVENT_COMPLETE` status: the event was handled.
pub const EV_HANDLED: u64 = 0;
/// `EVENT_COMPLETE` status: the handler failed.
pub const EV_FAILED: u64 = 1;

/// Registers of the interrupted context the dispatcher saves and
/// `EVENT_CONTEXT` reads: x0..x17.
pub const CONTEXT_REGS: usize = 18;

/// apflab's own call (vendor hypervisor range) that signals [`EVENT_APF`]
/// on the calling PE, the way the VMM does when it delivers "not present"
/// through SDEI: returns [`SUCCESS`], or [`DENIED`] when no handler is
/// registered. It lets a guest check the dispatcher without a fault.
pub const FN_APFLAB_SIGNAL: u32 = APFLAB_FN_BASE | 0x100;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdei_range_is_the_specifications() {
        assert_eq!(FN_VERSION, 0xC400_0020);
        assert_eq!(FN_SHARED_RESET, 0xC400_0032);
        for f in [FN_VERSION, FN_EVENT_COMPLETE_AND_RESUME, FN_SHARED_RESET] {
            assert!(is_sdei_call(f));
        }
        // PSCI and apflab's own calls are not SDEI.
        assert!(!is_sdei_call(0xC400_0003));
        assert!(!is_sdei_call(0xC400_0040));
        assert!(!is_sdei_call(FN_APFLAB_SIGNAL));
    }
}
