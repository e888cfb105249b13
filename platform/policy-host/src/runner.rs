//! One run of a Wasm policy: calls under fuel, fallback on failure, and the
//! run's statistics.

use crate::config::PolicyConfig;
use crate::error::PolicyError;
use crate::module::classify;
use crate::sandbox::HostState;
use crate::stats::{FailureCause, PolicyStats};
use apflab_abi::policy::{
    DecideArgs, Decision, EXPORT_DECIDE, EXPORT_ON_READY, EXPORT_ON_RUN_END, FaultInfo, Policy,
    PolicyUsage,
};
use wasmtime::{Instance, Store, TypedFunc};

/// A policy module instantiated for one run. Implements [`Policy`]: a call
/// that traps, runs out of fuel, hits a limit or returns a malformed
/// decision yields [`Decision::FALLBACK`] and is counted; after
/// [`PolicyConfig::max_consecutive_failures`] failures in a row the module
/// is not called again this run.
pub struct WasmPolicy {
    store: Store<HostState>,
    exports: Exports,
    fuel_per_call: u64,
    max_consecutive_failures: u32,
    consecutive_failures: u32,
    calls: u64,
    stats: PolicyStats,
}

/// The module's entry points. Kept apart from the store so a call can
/// borrow both without cloning a function handle (a clone costs as much as
/// a small policy's whole decision).
struct Exports {
    decide: TypedFunc<DecideArgs, i64>,
    on_ready: TypedFunc<(i64, i64), ()>,
    on_run_end: TypedFunc<(), ()>,
}

/// Which kind of call failed, for counting.
#[derive(Clone, Copy)]
enum Entry {
    Decide,
    Notify,
}

impl WasmPolicy {
    pub(crate) fn new(
        mut store: Store<HostState>,
        instance: Instance,
        config: &PolicyConfig,
        module: &str,
    ) -> Result<Self, PolicyError> {
        // The exports were checked at load, so these only fail if wasmtime
        // disagrees with that check; say so rather than panic.
        let wrong = |export: &'static str, e: wasmtime::Error| PolicyError::WrongExport {
            module: module.into(),
            export,
            expected: "the ABI v2 signature".into(),
            found: format!("unusable: {e:#}"),
        };
        let decide = instance
            .get_typed_func(&mut store, EXPORT_DECIDE)
            .map_err(|e| wrong(EXPORT_DECIDE, e))?;
        let on_ready = instance
            .get_typed_func(&mut store, EXPORT_ON_READY)
            .map_err(|e| wrong(EXPORT_ON_READY, e))?;
        let on_run_end = instance
            .get_typed_func(&mut store, EXPORT_ON_RUN_END)
            .map_err(|e| wrong(EXPORT_ON_RUN_END, e))?;
        Ok(Self {
            store,
            exports: Exports {
                decide,
                on_ready,
                on_run_end,
            },
            fuel_per_call: config.fuel_per_call,
            max_consecutive_failures: config.max_consecutive_failures,
            consecutive_failures: 0,
            calls: 0,
            stats: PolicyStats::default(),
        })
    }

    /// What happened so far in this run.
    pub fn stats(&self) -> PolicyStats {
        let log = &self.store.data().log;
        PolicyStats {
            log_messages: log.passed,
            log_dropped: log.dropped,
            ..self.stats.clone()
        }
    }

    /// Whether the policy was disabled for the rest of the run.
    pub fn is_disabled(&self) -> bool {
        self.stats.disabled
    }

    /// Runs one call into the module under fresh fuel, classifying a
    /// failure. (Its host time is what the `policy` benchmark measures;
    /// reading the clock around every call would cost as much as the call.)
    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Store<HostState>, &Exports) -> wasmtime::Result<R>,
    ) -> Result<R, (FailureCause, String)> {
        self.calls += 1;
        self.store.data_mut().limits.hit = false;
        if let Err(e) = self.store.set_fuel(self.fuel_per_call) {
            return Err((FailureCause::Trap, format!("cannot set fuel: {e:#}")));
        }
        let result = f(&mut self.store, &self.exports);
        let left = self.store.get_fuel().unwrap_or(0);
        self.stats.fuel_used += self.fuel_per_call.saturating_sub(left);
        result.map_err(|e| (classify(&e, self.store.data().limits.hit), format!("{e:#}")))
    }

    /// Counts a failed call and disables the policy when there were too
    /// many in a row.
    fn failed(&mut self, entry: Entry, cause: FailureCause, message: String) {
        match entry {
            Entry::Decide => self.stats.fallbacks.add(cause),
            Entry::Notify => self.stats.failed_notifications.add(cause),
        }
        let module = &self.store.data().module;
        tracing::debug!(target: "apflab::policy", policy = %module, %cause, "{message}");
        self.stats.last_failure = Some(format!("{cause}: {message}"));
        self.consecutive_failures += 1;
        if self.max_consecutive_failures != 0
            && self.consecutive_failures >= self.max_consecutive_failures
        {
            self.stats.disabled = true;
            self.stats.disabled_after_calls = Some(self.calls);
            tracing::warn!(
                target: "apflab::policy",
                policy = %module,
                failures = self.consecutive_failures,
                "policy disabled for the rest of the run after {} failed calls in a row; last: {cause}: {message}",
                self.consecutive_failures,
            );
        }
    }

    fn notify(&mut self, f: impl FnOnce(&mut Self) -> Result<(), (FailureCause, String)>) {
        self.stats.notifications += 1;
        if self.stats.disabled {
            self.stats.failed_notifications.add(FailureCause::Disabled);
            return;
        }
        match f(self) {
            Ok(()) => self.consecutive_failures = 0,
            Err((cause, message)) => self.failed(Entry::Notify, cause, message),
        }
    }
}

impl Policy for WasmPolicy {
    fn decide(&mut self, fault: &FaultInfo) -> Decision {
        self.stats.decisions += 1;
        if self.stats.disabled {
            self.stats.fallbacks.add(FailureCause::Disabled);
            return Decision::FALLBACK;
        }
        self.store.data_mut().log.on_decision();
        let args = fault.to_args();
        let outcome = self
            .call(|store, e| e.decide.call(store, args))
            .and_then(|raw| {
                Decision::unpack(raw).map_err(|e| {
                    (
                        FailureCause::MalformedDecision,
                        format!("`apf_decide` returned {raw:#x}: {e}"),
                    )
                })
            });
        match outcome {
            Ok(decision) => {
                self.consecutive_failures = 0;
                decision
            }
            Err((cause, message)) => {
                self.failed(Entry::Decide, cause, message);
                Decision::FALLBACK
            }
        }
    }

    fn on_ready(&mut self, token: u64, latency_ns: u64) {
        self.notify(|this| {
            this.call(|store, e| e.on_ready.call(store, (token as i64, latency_ns as i64)))
        });
    }

    fn on_run_end(&mut self) {
        self.notify(|this| this.call(|store, e| e.on_run_end.call(store, ())));
    }

    fn usage(&self) -> PolicyUsage {
        PolicyUsage {
            fuel_used: self.stats.fuel_used,
            failed_calls: self.stats.fallbacks.total() + self.stats.failed_notifications.total(),
            disabled: self.stats.disabled,
        }
    }
}
