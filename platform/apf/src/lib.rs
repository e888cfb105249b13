//! The apflab fault engine: the one place a not-resident fault is decided
//! and served, whichever backend runs the guest.
//!
//! Both backends report faults, async-PF hypercalls and the passing of time
//! through the VMM's [`apflab_hypervisor::FaultHook`]; [`Engine`] implements it.
//! It asks the run's [`apflab_abi::policy::Policy`] (native, or Wasm through
//! the policy host) for a decision per fault and serves it:
//!
//! - synchronously: the vCPU stalls until its page is in (the baseline);
//! - asynchronously: the guest gets a token. One module per axis of the
//!   protocol: [`not_present`] (data abort or dedicated exception class),
//!   [`ready`] (the ready ring and PPI, acknowledged, or an exception held
//!   until the guest can take it), [`initiation`] (host
//!   or guest starts the fetch), [`sleep`] (halt or reschedule); [`decision`]
//!   says when an async decision falls back to sync, [`control_block`]
//!   reads and writes the guest's block, [`events`] logs every token's life.
//!
//! The page side ([`FarMemory`]: evict, write back, complete, install) is
//! the same for both, and [`FaultMetrics`] is the run's one set of fault
//! counters. The engine does no I/O of its own: guest memory and residency
//! come from the backend, time from its clock; [`plain`] stands in for a
//! backend off-line.

pub mod control_block;
pub mod decision;
mod engine;
mod error;
pub mod events;
pub mod far_memory;
pub mod hostile;
pub mod initiation;
mod metrics;
pub mod not_present;
pub mod plain;
pub mod ready;
pub mod sleep;

pub use engine::{ApfConfig, Engine};
pub use error::ApfError;
pub use events::{BrokenLife, Event, LifeRule, PolicyCall, Stall, TokenEvent};
pub use far_memory::{FarMemory, Fetch};
pub use metrics::{FaultMetrics, LATENCY_BUCKETS};
