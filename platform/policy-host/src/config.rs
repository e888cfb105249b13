//! The limits a policy runs under.

use serde::{Deserialize, Serialize};

/// How a Wasm policy is sandboxed. Every field has a default, so a config
/// file only names what it changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Fuel (roughly, Wasm instructions) for one call into the module, and
    /// for its start function at instantiation.
    pub fuel_per_call: u64,
    /// Most bytes of linear memory the module may have.
    pub memory_limit_bytes: usize,
    /// Most elements any one table may have.
    pub table_elements_limit: usize,
    /// Largest module file accepted, in bytes (binary or text).
    pub max_module_bytes: usize,
    /// After this many failed calls in a row the policy is disabled for the
    /// rest of the run and every decision is the fallback. 0: never disable.
    pub max_consecutive_failures: u32,
    /// `apf.log` messages a module may send in a burst.
    pub log_burst: u32,
    /// One more `apf.log` message is allowed after this many decisions
    /// (a rate in decisions, not in time, so runs stay deterministic).
    pub log_refill_decisions: u64,
}

impl PolicyConfig {
    /// Default fuel per call.
    pub const DEFAULT_FUEL_PER_CALL: u64 = 100_000;
    /// Default memory limit: 16 MiB.
    pub const DEFAULT_MEMORY_LIMIT_BYTES: usize = 16 << 20;
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            fuel_per_call: Self::DEFAULT_FUEL_PER_CALL,
            memory_limit_bytes: Self::DEFAULT_MEMORY_LIMIT_BYTES,
            table_elements_limit: 10_000,
            max_module_bytes: 4 << 20,
            max_consecutive_failures: 8,
            log_burst: 16,
            log_refill_decisions: 1_000,
        }
    }
}
