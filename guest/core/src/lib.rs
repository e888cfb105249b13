//! The guest kernel's plain data structures, kept apart from everything
//! that touches the hardware so they are tested on the host: the
//! scheduler's [`RunQueue`], the async PF client's [`DummyEntries`] and the
//! tasks' random numbers ([`XorShift64Star`]).
//!
//! `no_std` and without `unsafe`; the kernel wraps them in its locks.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

mod dummy_entries;
mod rng;
mod run_queue;

pub use dummy_entries::DummyEntries;
pub use rng::XorShift64Star;
pub use run_queue::RunQueue;
