//! Runs apflab's per-fault policies: sandboxed WebAssembly modules
//! (wasmtime) or native Rust, behind one [`Policy`] trait.
//!
//! A Wasm policy speaks ABI v3, or v2 for modules built before it
//! ([`apflab_abi::policy`]). Loading ([`PolicyModule::load`]) compiles it
//! once and checks everything that can be checked before a run: size,
//! imports (only `apf.log`, `apf.log_at`, `apf.input`; no WASI), the
//! exports its version requires or allows and their signatures, that it
//! starts within its fuel and speaks a version this host runs. A text
//! module's errors name its file and line. Each run gets a fresh instance
//! ([`PolicyModule::instantiate`]), a [`WasmPolicy`], whose calls run under
//! fuel and memory/table limits. A call that fails in any way gives the
//! built-in fallback decision ([`Decision::FALLBACK`], the `sync` baseline)
//! and is counted in [`PolicyStats`]; too many failures in a row disable the
//! policy for the rest of the run. Nothing gives a module time, randomness
//! or I/O, so a run is deterministic.
//!
//! Native policies (the example crates under `policies/`, or
//! [`BuiltinSync`]) implement the same trait, so the VMM and the benchmarks
//! can use either.

mod check;
mod config;
mod error;
mod log;
mod module;
mod runner;
mod sandbox;
mod source;
mod stats;

pub use apflab_abi::policy::{Completion, Decision, FaultInfo, Params, Policy};
pub use check::{CallCheck, CallOutcome, CheckReport, sample_calls};
pub use config::PolicyConfig;
pub use error::{ConfigureError, PolicyError};
pub use log::{LogLine, LogSource, MAX_LOG_LINES, PolicyLog};
pub use module::{ItemInfo, ModuleInfo, PolicyModule, check, check_with};
pub use runner::WasmPolicy;
pub use stats::{CauseCounts, FailureCause, PolicyStats};

/// The built-in policy used when no module is configured: the `sync`
/// baseline, identical to [`Decision::FALLBACK`].
#[derive(Clone, Copy, Debug, Default)]
pub struct BuiltinSync;

impl Policy for BuiltinSync {
    fn decide(&mut self, _fault: &FaultInfo) -> Decision {
        Decision::FALLBACK
    }
}

/// A policy that gives the same decision for every fault (a config's
/// `[policy] decision = { ... }`): the variants without a Wasm module.
#[derive(Clone, Copy, Debug)]
pub struct BuiltinFixed(pub Decision);

impl Policy for BuiltinFixed {
    fn decide(&mut self, _fault: &FaultInfo) -> Decision {
        self.0
    }
}

// A run may drive its policy from a vCPU thread, and a matrix may share one
// compiled module between runs on several threads.
const _: () = {
    const fn send<T: Send>() {}
    const fn send_sync<T: Send + Sync>() {}
    send::<WasmPolicy>();
    send_sync::<PolicyModule>();
};
