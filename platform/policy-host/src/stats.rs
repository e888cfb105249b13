//! What a policy did during a run, for the results file.

use apflab_abi::policy::FailureCounts;
use serde::Serialize;
use std::fmt;
use wasmtime::Trap;

/// Why a call into a policy produced no usable result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCause {
    /// The module trapped (`unreachable`, out-of-bounds access, stack
    /// overflow, a panic in Rust, ...).
    Trap,
    /// The call used up its fuel (an endless or too long loop).
    OutOfFuel,
    /// The module tried to grow memory or a table beyond its limits.
    ResourceLimit,
    /// `apf_decide` returned bits that are not a decision.
    MalformedDecision,
    /// The policy was already disabled, so it was not called.
    Disabled,
}

impl FailureCause {
    /// The cause of a call into the module that failed with `err`;
    /// `limit_hit` says whether the store's limiter refused something
    /// during it.
    pub(crate) fn of_call(err: &wasmtime::Error, limit_hit: bool) -> Self {
        if err.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) {
            FailureCause::OutOfFuel
        } else if limit_hit {
            FailureCause::ResourceLimit
        } else {
            FailureCause::Trap
        }
    }
}

impl fmt::Display for FailureCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureCause::Trap => "trap",
            FailureCause::OutOfFuel => "out of fuel",
            FailureCause::ResourceLimit => "resource limit",
            FailureCause::MalformedDecision => "malformed decision",
            FailureCause::Disabled => "policy disabled",
        })
    }
}

/// A count per [`FailureCause`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CauseCounts {
    /// [`FailureCause::Trap`].
    pub trap: u64,
    /// [`FailureCause::OutOfFuel`].
    pub out_of_fuel: u64,
    /// [`FailureCause::ResourceLimit`].
    pub resource_limit: u64,
    /// [`FailureCause::MalformedDecision`].
    pub malformed_decision: u64,
    /// [`FailureCause::Disabled`].
    pub disabled: u64,
}

impl CauseCounts {
    /// Adds one for `cause`.
    pub fn add(&mut self, cause: FailureCause) {
        *match cause {
            FailureCause::Trap => &mut self.trap,
            FailureCause::OutOfFuel => &mut self.out_of_fuel,
            FailureCause::ResourceLimit => &mut self.resource_limit,
            FailureCause::MalformedDecision => &mut self.malformed_decision,
            FailureCause::Disabled => &mut self.disabled,
        } += 1;
    }

    /// The count for `cause`.
    pub fn get(&self, cause: FailureCause) -> u64 {
        match cause {
            FailureCause::Trap => self.trap,
            FailureCause::OutOfFuel => self.out_of_fuel,
            FailureCause::ResourceLimit => self.resource_limit,
            FailureCause::MalformedDecision => self.malformed_decision,
            FailureCause::Disabled => self.disabled,
        }
    }

    /// All causes together.
    pub fn total(&self) -> u64 {
        self.trap + self.out_of_fuel + self.resource_limit + self.malformed_decision + self.disabled
    }

    /// These counts and `other`'s together, as the ABI's usage carries
    /// them.
    pub fn plus(&self, other: &CauseCounts) -> FailureCounts {
        FailureCounts {
            trap: self.trap + other.trap,
            out_of_fuel: self.out_of_fuel + other.out_of_fuel,
            resource_limit: self.resource_limit + other.resource_limit,
            malformed_decision: self.malformed_decision + other.malformed_decision,
            disabled: self.disabled + other.disabled,
        }
    }
}

/// The record of one run of a Wasm policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyStats {
    /// Decisions asked for (each answered by the policy or by the fallback).
    pub decisions: u64,
    /// Decisions answered by the fallback, by cause.
    pub fallbacks: CauseCounts,
    /// `on_complete` (`on_ready` for ABI v2) and `on_run_end` calls made.
    pub notifications: u64,
    /// Notifications that failed (or were skipped once disabled), by cause.
    pub failed_notifications: CauseCounts,
    /// The policy was disabled after too many failures in a row.
    pub disabled: bool,
    /// How many calls (decisions and notifications) had been made when it
    /// was disabled.
    pub disabled_after_calls: Option<u64>,
    /// What went wrong last, for the results file.
    pub last_failure: Option<String>,
    /// Fuel consumed by all calls.
    pub fuel_used: u64,
    /// Decisions of an ABI v2 module that asked for a prefetch (ignored).
    pub prefetch_ignored: u64,
    /// `apf.log` messages passed on to tracing.
    pub log_messages: u64,
    /// `apf.log` messages dropped by the rate limit or for pointing outside
    /// the module's memory.
    pub log_dropped: u64,
}
