//! The policy ABI, version [`POLICY_ABI_VERSION`].
//!
//! A policy is a core WebAssembly module without WASI. It must export:
//!
//! | export | signature | meaning |
//! |---|---|---|
//! | [`EXPORT_ABI_VERSION`] | `() -> i32` | returns [`POLICY_ABI_VERSION`] |
//! | [`EXPORT_DECIDE`] | `(i32 vcpu, i64 ipa, i32 el, i32 can_reschedule, i32 runnable, i32 outstanding, i64 now_ns, i64 est_fetch_ns) -> i64` | one decision per fault, packed as [`Decision`] |
//! | [`EXPORT_ON_READY`] | `(i64 token, i64 latency_ns) -> ()` | a page became ready |
//! | [`EXPORT_ON_RUN_END`] | `() -> ()` | the run is over |
//! | `memory` | memory | the module's own state |
//!
//! and may import only [`IMPORT_MODULE`].[`IMPORT_LOG`] `(i32 ptr, i32 len)`
//! (UTF-8 text in its memory, rate limited by the host). Nothing gives a
//! policy time, randomness or I/O, so a run is deterministic.

/// Version of this ABI, returned by the module's `apf_abi_version`.
///
/// Version 2 added [`NotPresentDelivery::Sdei`] ([`bits::SDEI`]); a
/// version 1 module is refused, naming both versions.
pub const POLICY_ABI_VERSION: i32 = 2;

/// Export: `apf_abi_version() -> i32`.
pub const EXPORT_ABI_VERSION: &str = "apf_abi_version";
/// Export: `apf_decide(...) -> i64`.
pub const EXPORT_DECIDE: &str = "apf_decide";
/// Export: `apf_on_ready(token: i64, latency_ns: i64)`.
pub const EXPORT_ON_READY: &str = "apf_on_ready";
/// Export: `apf_on_run_end()`.
pub const EXPORT_ON_RUN_END: &str = "apf_on_run_end";
/// Export: the module's linear memory.
pub const EXPORT_MEMORY: &str = "memory";
/// The only import module a policy may use.
pub const IMPORT_MODULE: &str = "apf";
/// `apf.log(ptr: i32, len: i32)`.
pub const IMPORT_LOG: &str = "log";

/// Longest `apf.log` message the host keeps, in bytes; longer ones are
/// truncated.
pub const LOG_MAX_BYTES: usize = 256;

/// Largest prefetch count a decision may ask for.
pub const MAX_PREFETCH: u32 = 16;

/// The facts a policy decides on, one fault at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FaultInfo {
    /// vCPU that faulted.
    pub vcpu: u32,
    /// Faulting guest physical address.
    pub ipa: u64,
    /// Exception level the guest was in (0 = user task, 1 = kernel).
    pub el: u32,
    /// The guest says it can reschedule now (control block state).
    pub can_reschedule: bool,
    /// Runnable tasks on the vCPU's run queue (control block).
    pub runnable: u32,
    /// Async faults already outstanding on this vCPU.
    pub outstanding: u32,
    /// Now, in ns: virtual on emu, monotonic since VM start on kvm.
    pub now_ns: u64,
    /// The store's recent fetch latency estimate in ns.
    pub est_fetch_ns: u64,
}

/// The parameters of [`EXPORT_DECIDE`] in order, as the Wasm types carry
/// them: `(vcpu, ipa, el, can_reschedule, runnable, outstanding, now_ns,
/// est_fetch_ns)`. Unsigned values travel bit for bit in signed types.
pub type DecideArgs = (i32, i64, i32, i32, i32, i32, i64, i64);

impl FaultInfo {
    /// The arguments of [`EXPORT_DECIDE`] for these facts.
    pub const fn to_args(&self) -> DecideArgs {
        (
            self.vcpu as i32,
            self.ipa as i64,
            self.el as i32,
            self.can_reschedule as i32,
            self.runnable as i32,
            self.outstanding as i32,
            self.now_ns as i64,
            self.est_fetch_ns as i64,
        )
    }

    /// The facts carried by the arguments of [`EXPORT_DECIDE`] (any non-zero
    /// `can_reschedule` is true).
    pub const fn from_args(args: DecideArgs) -> FaultInfo {
        let (vcpu, ipa, el, can_reschedule, runnable, outstanding, now_ns, est_fetch_ns) = args;
        FaultInfo {
            vcpu: vcpu as u32,
            ipa: ipa as u64,
            el: el as u32,
            can_reschedule: can_reschedule != 0,
            runnable: runnable as u32,
            outstanding: outstanding as u32,
            now_ns: now_ns as u64,
            est_fetch_ns: est_fetch_ns as u64,
        }
    }
}

/// How "not present" reaches the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotPresentDelivery {
    /// Reused data abort plus the reason in the control block (RFCv2).
    DataAbort,
    /// Dedicated exception class with the token in ESR.ISS.
    DedicatedEc,
    /// An SDEI event, the token in the control block (Gavin Shan's v4).
    Sdei,
}

/// How "page ready" reaches the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadyDelivery {
    /// Injected synchronous exception.
    Exception,
    /// PPI plus `APF_ACK`.
    Interrupt,
}

/// Who starts the fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Initiation {
    /// The VMM starts fetching when it sees the fault, then injects.
    Host,
    /// The VMM injects; the guest asks with `APF_PAGE_REQUEST`.
    Guest,
}

/// What the guest does while the page is fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sleep {
    /// Idle the vCPU until ready.
    Halt,
    /// Run another task.
    Reschedule,
}

/// One decision. `Sync` means no async PF: the vCPU stalls until the page
/// is in (the baseline and the fallback).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Stall the vCPU, optionally prefetching neighbours.
    Sync {
        /// Neighbouring pages to fetch along (0..=[`MAX_PREFETCH`]).
        prefetch: u32,
    },
    /// Deliver "not present" and "ready".
    Async {
        /// How "not present" is delivered.
        not_present: NotPresentDelivery,
        /// How "ready" is delivered.
        ready: ReadyDelivery,
        /// Who starts the fetch.
        initiation: Initiation,
        /// What the guest does meanwhile.
        sleep: Sleep,
        /// Neighbouring pages to fetch along (0..=[`MAX_PREFETCH`]).
        prefetch: u32,
    },
}

/// A per-fault policy, written once and run either natively or as a Wasm
/// module: the policy SDK exports an implementation through the ABI above,
/// and the host's Wasm runner implements it by calling those exports. One
/// value lives for one run; its state is whatever the implementation keeps.
pub trait Policy {
    /// Decides how one fault is handled.
    fn decide(&mut self, fault: &FaultInfo) -> Decision;
    /// The page of async fault `token` became ready `latency_ns` after the
    /// fault was taken.
    fn on_ready(&mut self, token: u64, latency_ns: u64) {
        let _ = (token, latency_ns);
    }
    /// The run is over; no more calls follow.
    fn on_run_end(&mut self) {}
    /// What running the policy has cost so far (a policy the host runs
    /// natively reports nothing).
    fn usage(&self) -> PolicyUsage {
        PolicyUsage::default()
    }
}

/// The cost of a policy over a run, for the results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyUsage {
    /// Wasm fuel consumed by all calls.
    pub fuel_used: u64,
    /// Calls that trapped, ran out of fuel, hit a limit or returned a
    /// malformed decision, and those skipped once the policy was disabled
    /// (each decision among them answered by the fallback).
    pub failed_calls: u64,
    /// The host disabled the policy after repeated failures.
    pub disabled: bool,
}

/// Bit layout of the packed `i64` decision.
pub mod bits {
    /// Set: async; clear: sync (all other bits but prefetch ignored).
    pub const ASYNC: u64 = 1 << 0;
    /// Set: reschedule; clear: halt.
    pub const RESCHEDULE: u64 = 1 << 1;
    /// Set: guest-initiated; clear: host-initiated.
    pub const GUEST_INITIATED: u64 = 1 << 2;
    /// Set: ready as interrupt; clear: ready as exception.
    pub const READY_INTERRUPT: u64 = 1 << 3;
    /// Set: dedicated EC; clear: data abort (unless [`SDEI`]).
    pub const DEDICATED_EC: u64 = 1 << 4;
    /// Set: "not present" as an SDEI event (with [`DEDICATED_EC`] clear).
    pub const SDEI: u64 = 1 << 5;
    /// Shift of the prefetch count field.
    pub const PREFETCH_SHIFT: u32 = 8;
    /// Mask of the prefetch count field (after shifting).
    pub const PREFETCH_MASK: u64 = 0x1f;
    /// Every bit that has a meaning; a decision with any other bit set is
    /// malformed.
    pub const DEFINED: u64 = ASYNC
        | RESCHEDULE
        | GUEST_INITIATED
        | READY_INTERRUPT
        | DEDICATED_EC
        | SDEI
        | (PREFETCH_MASK << PREFETCH_SHIFT);
}

/// Why a packed decision was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecisionError {
    /// Bits outside [`bits::DEFINED`] were set.
    UndefinedBits(u64),
    /// The prefetch count exceeds [`MAX_PREFETCH`].
    PrefetchTooLarge(u32),
    /// Both [`bits::DEDICATED_EC`] and [`bits::SDEI`]: two "not present"
    /// deliveries at once.
    TwoNotPresentDeliveries,
}

impl core::fmt::Display for DecisionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecisionError::UndefinedBits(b) => write!(f, "undefined decision bits {b:#x}"),
            DecisionError::PrefetchTooLarge(n) => {
                write!(f, "prefetch {n} exceeds the maximum {MAX_PREFETCH}")
            }
            DecisionError::TwoNotPresentDeliveries => {
                write!(f, "both the dedicated-EC and the SDEI bit are set")
            }
        }
    }
}

impl Decision {
    /// The built-in fallback: the `sync` baseline without prefetch.
    pub const FALLBACK: Decision = Decision::Sync { prefetch: 0 };

    /// Packs the decision into the ABI's `i64`.
    pub const fn pack(self) -> i64 {
        let v = match self {
            Decision::Sync { prefetch } => (prefetch as u64) << bits::PREFETCH_SHIFT,
            Decision::Async {
                not_present,
                ready,
                initiation,
                sleep,
                prefetch,
            } => {
                let mut v = bits::ASYNC | ((prefetch as u64) << bits::PREFETCH_SHIFT);
                if matches!(sleep, Sleep::Reschedule) {
                    v |= bits::RESCHEDULE;
                }
                if matches!(initiation, Initiation::Guest) {
                    v |= bits::GUEST_INITIATED;
                }
                if matches!(ready, ReadyDelivery::Interrupt) {
                    v |= bits::READY_INTERRUPT;
                }
                match not_present {
                    NotPresentDelivery::DataAbort => {}
                    NotPresentDelivery::DedicatedEc => v |= bits::DEDICATED_EC,
                    NotPresentDelivery::Sdei => v |= bits::SDEI,
                }
                v
            }
        };
        v as i64
    }

    /// Unpacks and validates an `i64` returned by a policy.
    pub const fn unpack(raw: i64) -> Result<Decision, DecisionError> {
        let v = raw as u64;
        if v & !bits::DEFINED != 0 {
            return Err(DecisionError::UndefinedBits(v & !bits::DEFINED));
        }
        let prefetch = ((v >> bits::PREFETCH_SHIFT) & bits::PREFETCH_MASK) as u32;
        if prefetch > MAX_PREFETCH {
            return Err(DecisionError::PrefetchTooLarge(prefetch));
        }
        if v & bits::ASYNC == 0 {
            return Ok(Decision::Sync { prefetch });
        }
        let not_present = match (v & bits::DEDICATED_EC != 0, v & bits::SDEI != 0) {
            (true, true) => return Err(DecisionError::TwoNotPresentDeliveries),
            (true, false) => NotPresentDelivery::DedicatedEc,
            (false, true) => NotPresentDelivery::Sdei,
            (false, false) => NotPresentDelivery::DataAbort,
        };
        Ok(Decision::Async {
            not_present,
            ready: if v & bits::READY_INTERRUPT != 0 {
                ReadyDelivery::Interrupt
            } else {
                ReadyDelivery::Exception
            },
            initiation: if v & bits::GUEST_INITIATED != 0 {
                Initiation::Guest
            } else {
                Initiation::Host
            },
            sleep: if v & bits::RESCHEDULE != 0 {
                Sleep::Reschedule
            } else {
                Sleep::Halt
            },
            prefetch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_decision_round_trips() {
        let nps = [
            NotPresentDelivery::DataAbort,
            NotPresentDelivery::DedicatedEc,
            NotPresentDelivery::Sdei,
        ];
        let rds = [ReadyDelivery::Exception, ReadyDelivery::Interrupt];
        let ins = [Initiation::Host, Initiation::Guest];
        let sls = [Sleep::Halt, Sleep::Reschedule];
        for prefetch in [0, 1, 16] {
            let d = Decision::Sync { prefetch };
            assert_eq!(Decision::unpack(d.pack()), Ok(d));
            for not_present in nps {
                for ready in rds {
                    for initiation in ins {
                        for sleep in sls {
                            let d = Decision::Async {
                                not_present,
                                ready,
                                initiation,
                                sleep,
                                prefetch,
                            };
                            assert_eq!(Decision::unpack(d.pack()), Ok(d));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn two_not_present_deliveries_are_malformed() {
        let v = (bits::ASYNC | bits::DEDICATED_EC | bits::SDEI) as i64;
        assert_eq!(
            Decision::unpack(v),
            Err(DecisionError::TwoNotPresentDeliveries)
        );
    }

    #[test]
    fn fault_info_round_trips_through_args() {
        let f = FaultInfo {
            vcpu: 3,
            ipa: 0xffff_0000_4000_1000,
            el: 1,
            can_reschedule: true,
            runnable: u32::MAX,
            outstanding: 64,
            now_ns: u64::MAX - 1,
            est_fetch_ns: 50_000,
        };
        assert_eq!(FaultInfo::from_args(f.to_args()), f);
        assert!(FaultInfo::from_args((0, 0, 0, 7, 0, 0, 0, 0)).can_reschedule);
    }

    #[test]
    fn malformed_decisions_are_rejected() {
        assert_eq!(
            Decision::unpack(1 << 40),
            Err(DecisionError::UndefinedBits(1 << 40))
        );
        assert_eq!(
            Decision::unpack(17 << bits::PREFETCH_SHIFT),
            Err(DecisionError::PrefetchTooLarge(17))
        );
        assert!(Decision::unpack(-1).is_err());
    }
}
