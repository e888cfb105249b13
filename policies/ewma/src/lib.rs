//! `ewma`: a policy that learns. It starts synchronous and goes async once
//! the fetches it has seen are slow enough to be worth a task switch.
//!
//! It keeps an exponentially weighted moving average of the fetch time of
//! every completed fetch (`on_complete`, sync and async alike; weight
//! `1 / 2^shift`, integer arithmetic, so deterministic). Per fault:
//!
//! | fault | decision |
//! |---|---|
//! | nothing learned yet, or the average is below `threshold_ns` | sync |
//! | kernel mode, or the guest cannot reschedule, or no other task is runnable | sync |
//! | [`MAX_OUTSTANDING`](apflab_policy_sdk::MAX_OUTSTANDING) outstanding | sync |
//! | otherwise | async, reschedule (Paolo Bonzini's transport: dedicated EC, interrupt ready, host-initiated) |
//!
//! Parameters (`[policy] params`): `threshold_ns` (non-negative integer,
//! default [`DEFAULT_THRESHOLD_NS`]) and `shift` (0..=16, default 3).
//! A sync policy that never learned a latency would stay sync forever;
//! since every sync stall completes a fetch too, this one learns from its
//! first fault. It logs each time it crosses the threshold, and its
//! counts at the end of the run.
#![cfg_attr(target_arch = "wasm32", no_std)]

use apflab_policy_sdk::{
    Completion, Decision, FaultInfo, Initiation, NotPresentDelivery, ParamError, ParamProblem,
    Params, Policy, ReadyDelivery, Sleep, has_async_room,
};

/// Threshold used without `threshold_ns`: 20 µs.
pub const DEFAULT_THRESHOLD_NS: u64 = 20_000;

/// The learning sync-or-async policy.
#[derive(Clone, Copy, Debug)]
pub struct Ewma {
    threshold_ns: u64,
    shift: u32,
    average_ns: Option<u64>,
    samples: u64,
    /// Whether the average was at or above the threshold at the last
    /// completion (to log crossings).
    above: bool,
    sync_decisions: u64,
    async_decisions: u64,
}

impl Ewma {
    /// A policy with `threshold_ns` and weight `1 / 2^shift` that has
    /// learned nothing.
    pub const fn new(threshold_ns: u64, shift: u32) -> Self {
        Ewma {
            threshold_ns,
            shift,
            average_ns: None,
            samples: 0,
            above: false,
            sync_decisions: 0,
            async_decisions: 0,
        }
    }

    /// The average fetch time learned so far.
    pub const fn average_ns(&self) -> Option<u64> {
        self.average_ns
    }

    /// Whether the learned latency makes async worth it.
    const fn slow(&self) -> bool {
        match self.average_ns {
            Some(avg) => avg >= self.threshold_ns,
            None => false,
        }
    }
}

impl Default for Ewma {
    fn default() -> Self {
        Ewma::new(DEFAULT_THRESHOLD_NS, 3)
    }
}

impl Policy for Ewma {
    fn configure<'p>(&mut self, params: &Params<'p>) -> Result<(), ParamError<'p>> {
        params.only(&["threshold_ns", "shift"])?;
        if let Some(ns) = params.u64("threshold_ns")? {
            self.threshold_ns = ns;
        }
        if let Some(shift) = params.u64("shift")? {
            if shift > 16 {
                return Err(ParamError {
                    name: "shift",
                    problem: ParamProblem::Invalid(
                        "expected 0..=16 (a new sample weighs 1 / 2^shift)",
                    ),
                });
            }
            self.shift = shift as u32;
        }
        Ok(())
    }

    fn decide(&mut self, fault: &FaultInfo) -> Decision {
        let worth_it = self.slow()
            && fault.el == 0
            && fault.can_reschedule
            && fault.runnable > 0
            && has_async_room(fault);
        if !worth_it {
            self.sync_decisions += 1;
            return Decision::Sync;
        }
        self.async_decisions += 1;
        Decision::Async {
            not_present: NotPresentDelivery::DedicatedEc,
            ready: ReadyDelivery::Interrupt,
            initiation: Initiation::Host,
            sleep: Sleep::Reschedule,
        }
    }

    fn on_complete(&mut self, done: &Completion) {
        let sample = done.fetch_ns;
        self.samples += 1;
        self.average_ns = Some(match self.average_ns {
            None => sample,
            // avg + (sample - avg) / 2^shift, without overflow.
            Some(avg) if sample >= avg => avg + ((sample - avg) >> self.shift),
            Some(avg) => avg - ((avg - sample) >> self.shift),
        });
        let above = self.slow();
        if above != self.above {
            self.above = above;
            apflab_policy_sdk::log!(
                "ewma: average fetch {} ns {} the threshold {} ns at {} ns after {} samples",
                self.average_ns.unwrap_or(0),
                if above { "reached" } else { "fell below" },
                self.threshold_ns,
                done.now_ns,
                self.samples
            );
        }
    }

    fn on_run_end(&mut self) {
        apflab_policy_sdk::log!(
            "ewma: {} sync and {} async decisions; average fetch {} ns from {} samples",
            self.sync_decisions,
            self.async_decisions,
            self.average_ns.unwrap_or(0),
            self.samples
        );
    }
}

apflab_policy_sdk::export_policy!(Ewma);
