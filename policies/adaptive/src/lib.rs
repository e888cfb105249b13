//! `adaptive`: halts when waiting is cheaper than switching tasks.
//!
//! The rule, per fault:
//!
//! 1. [`MAX_OUTSTANDING`](apflab_policy_sdk::MAX_OUTSTANDING) already
//!    outstanding on the vCPU: sync.
//! 2. The guest cannot use a reschedule (kernel mode, it says it cannot
//!    reschedule, or nothing else is runnable): async, halt.
//! 3. Otherwise compare the *expected fetch latency* with the *cost of a
//!    reschedule*: below it, async and halt (the page arrives before a task
//!    switch would pay off); at or above it, async and reschedule.
//!
//! The expected fetch latency is learned: an exponentially weighted moving
//! average (weight 1/8, integer arithmetic, so deterministic) of the fetch
//! times of every completed fetch, sync and async, reported by
//! `on_complete`. Until the first report it is the engine's own estimate
//! from the fault (`est_fetch_ns`, 0 before any fetch completed).
//!
//! The cost of a reschedule is the extra time a fault costs when the guest
//! switches tasks instead of halting: two context switches plus the
//! "not present" and "ready" deliveries. Measure it as the per-fault
//! difference between `always-reschedule` and `always-halt` at a near-zero
//! fetch latency and pass it to [`Adaptive::new`]; the exported module uses
//! [`DEFAULT_RESCHEDULE_COST_NS`].
//!
//! Async decisions use the RFCv2 transport (data abort, exception ready,
//! host initiation). At the end of the run the module logs what it learned.
#![cfg_attr(target_arch = "wasm32", no_std)]

use apflab_policy_sdk::{
    Completion, Decision, FaultInfo, ParamError, Params, Policy, Sleep, has_async_room, rfcv2,
};

/// Cost of a reschedule assumed by the exported module, in ns.
pub const DEFAULT_RESCHEDULE_COST_NS: u64 = 10_000;

/// Weight of a new sample in the moving average is `1 / 2^EWMA_SHIFT`.
const EWMA_SHIFT: u32 = 3;

/// The adaptive halt-or-reschedule policy.
#[derive(Clone, Copy, Debug)]
pub struct Adaptive {
    reschedule_cost_ns: u64,
    /// Moving average of reported fetch latencies; `None` before the first.
    learned_fetch_ns: Option<u64>,
    samples: u64,
}

impl Adaptive {
    /// A policy that has learned nothing yet and assumes a reschedule costs
    /// `reschedule_cost_ns`.
    pub const fn new(reschedule_cost_ns: u64) -> Self {
        Self {
            reschedule_cost_ns,
            learned_fetch_ns: None,
            samples: 0,
        }
    }

    /// The fetch latency this policy expects for `fault`.
    pub const fn expected_fetch_ns(&self, fault: &FaultInfo) -> u64 {
        match self.learned_fetch_ns {
            Some(ns) => ns,
            None => fault.est_fetch_ns,
        }
    }

    /// How many fetch times it has learned from.
    pub const fn samples(&self) -> u64 {
        self.samples
    }
}

impl Default for Adaptive {
    fn default() -> Self {
        Self::new(DEFAULT_RESCHEDULE_COST_NS)
    }
}

impl Policy for Adaptive {
    /// `reschedule_cost_ns` (a non-negative integer) replaces
    /// [`DEFAULT_RESCHEDULE_COST_NS`].
    fn configure<'p>(&mut self, params: &Params<'p>) -> Result<(), ParamError<'p>> {
        params.only(&["reschedule_cost_ns"])?;
        if let Some(ns) = params.u64("reschedule_cost_ns")? {
            self.reschedule_cost_ns = ns;
        }
        Ok(())
    }

    fn decide(&mut self, fault: &FaultInfo) -> Decision {
        if !has_async_room(fault) {
            return Decision::Sync;
        }
        let can_use_reschedule = fault.el == 0 && fault.can_reschedule && fault.runnable > 0;
        if !can_use_reschedule || self.expected_fetch_ns(fault) < self.reschedule_cost_ns {
            rfcv2(Sleep::Halt)
        } else {
            rfcv2(Sleep::Reschedule)
        }
    }

    fn on_complete(&mut self, done: &Completion) {
        let latency_ns = done.fetch_ns;
        self.samples += 1;
        self.learned_fetch_ns = Some(match self.learned_fetch_ns {
            None => latency_ns,
            // avg + (sample - avg) / 8, without overflow for any u64 inputs.
            Some(avg) if latency_ns >= avg => avg + ((latency_ns - avg) >> EWMA_SHIFT),
            Some(avg) => avg - ((avg - latency_ns) >> EWMA_SHIFT),
        });
    }

    fn on_run_end(&mut self) {
        match self.learned_fetch_ns {
            Some(ns) => apflab_policy_sdk::log!(
                "adaptive: learned fetch latency {} ns from {} samples (reschedule cost {} ns)",
                ns,
                self.samples,
                self.reschedule_cost_ns
            ),
            None => apflab_policy_sdk::log!("adaptive: no fetch completed"),
        }
    }
}

apflab_policy_sdk::export_policy!(Adaptive);
