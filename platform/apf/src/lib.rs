//! The apflab fault engine: the one place a not-resident fault is decided
//! and served, whichever backend runs the guest.
//!
//! Both backends report faults, async-PF hypercalls and the passing of time
//! through the VMM's [`apflab_vmm::FaultHook`]; [`Engine`] implements it.
//! It owns the per-vCPU fault state, asks the run's
//! [`apflab_abi::policy::Policy`] (native, or Wasm through the policy host)
//! for a decision, serves the page through the pager ([`FarMemory`]: evict,
//! write back, complete, install) and keeps the run's fault metrics
//! ([`FaultMetrics`]). It does no I/O of its own: guest memory and
//! residency come from the backend, time from its clock.
//!
//! Today every fault is served synchronously (the vCPU stalls until its
//! page is in), which is the baseline every async variant is compared with.

mod engine;
mod error;
pub mod far_memory;
mod metrics;

pub use engine::Engine;
pub use error::ApfError;
pub use far_memory::{FarMemory, Fetch};
pub use metrics::FaultMetrics;
