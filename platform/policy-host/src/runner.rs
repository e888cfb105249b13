//! One run of a Wasm policy: calls under fuel, fallback on failure, and the
//! run's statistics and log.

use crate::config::PolicyConfig;
use crate::error::{ConfigureError, PolicyError};
use crate::log::PolicyLog;
use crate::sandbox::HostState;
use crate::stats::{FailureCause, PolicyStats};
use apflab_abi::policy::{
    Completion, Decision, EXPORT_CONFIGURE, EXPORT_DECIDE, EXPORT_ON_COMPLETE, EXPORT_ON_READY,
    EXPORT_ON_RUN_END, FaultInfo, LogLevel, PARAMS_MAX_BYTES, ParamError, ParamProblem, Params,
    Policy, PolicyUsage, record, v2,
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

/// The module's entry points, by the ABI version it speaks. Kept apart from
/// the store so a call can borrow both without cloning a function handle
/// (a clone costs as much as a small policy's whole decision).
enum Exports {
    V2 {
        decide: TypedFunc<v2::DecideArgs, i64>,
        on_ready: TypedFunc<(i64, i64), ()>,
        on_run_end: TypedFunc<(), ()>,
    },
    V3 {
        decide: TypedFunc<(), i64>,
        on_complete: Option<TypedFunc<(), ()>>,
        configure: Option<TypedFunc<(), i32>>,
        on_run_end: Option<TypedFunc<(), ()>>,
    },
}

/// Which kind of call failed, for counting.
#[derive(Clone, Copy)]
enum Entry {
    Decide,
    Notify,
}

/// A failed call: its cause and what wasmtime said, the export named.
type CallError = (FailureCause, String);

impl WasmPolicy {
    pub(crate) fn new(
        mut store: Store<HostState>,
        instance: Instance,
        config: &PolicyConfig,
        module: &str,
        abi_version: i32,
    ) -> Result<Self, PolicyError> {
        // The exports were checked at load, so these only fail if wasmtime
        // disagrees with that check; say so rather than panic.
        let wrong = |export: &'static str, e: wasmtime::Error| PolicyError::WrongExport {
            module: module.into(),
            export,
            expected: format!("the ABI v{abi_version} signature"),
            found: format!("unusable: {e:#}"),
        };
        let exports = if abi_version == 2 {
            Exports::V2 {
                decide: instance
                    .get_typed_func(&mut store, EXPORT_DECIDE)
                    .map_err(|e| wrong(EXPORT_DECIDE, e))?,
                on_ready: instance
                    .get_typed_func(&mut store, EXPORT_ON_READY)
                    .map_err(|e| wrong(EXPORT_ON_READY, e))?,
                on_run_end: instance
                    .get_typed_func(&mut store, EXPORT_ON_RUN_END)
                    .map_err(|e| wrong(EXPORT_ON_RUN_END, e))?,
            }
        } else {
            // Optional exports: absent is fine, and a present one was
            // checked at load.
            let optional = |store: &mut Store<HostState>, export: &'static str| match instance
                .get_func(&mut *store, export)
            {
                None => Ok(None),
                Some(_) => instance
                    .get_typed_func(&mut *store, export)
                    .map(Some)
                    .map_err(|e| wrong(export, e)),
            };
            Exports::V3 {
                decide: instance
                    .get_typed_func(&mut store, EXPORT_DECIDE)
                    .map_err(|e| wrong(EXPORT_DECIDE, e))?,
                on_complete: optional(&mut store, EXPORT_ON_COMPLETE)?,
                configure: match instance.get_func(&mut store, EXPORT_CONFIGURE) {
                    None => None,
                    Some(_) => Some(
                        instance
                            .get_typed_func(&mut store, EXPORT_CONFIGURE)
                            .map_err(|e| wrong(EXPORT_CONFIGURE, e))?,
                    ),
                },
                on_run_end: optional(&mut store, EXPORT_ON_RUN_END)?,
            }
        };
        Ok(Self {
            store,
            exports,
            fuel_per_call: config.fuel_per_call,
            max_consecutive_failures: config.max_consecutive_failures,
            consecutive_failures: 0,
            calls: 0,
            stats: PolicyStats::default(),
        })
    }

    /// The ABI version the module speaks.
    pub fn abi_version(&self) -> i32 {
        match self.exports {
            Exports::V2 { .. } => 2,
            Exports::V3 { .. } => 3,
        }
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

    /// What the module logged and the host said about it so far, in order
    /// (the run's `policy.log`).
    pub fn log(&self) -> &PolicyLog {
        &self.store.data().lines
    }

    /// Whether the policy was disabled for the rest of the run.
    pub fn is_disabled(&self) -> bool {
        self.stats.disabled
    }

    /// Hands the module the config's `[policy] params` (its
    /// `apf_configure`), once, before the first decision. A module without
    /// `apf_configure` takes no parameters.
    pub fn configure_params(&mut self, params: &Params<'_>) -> Result<(), ConfigureError> {
        let module = self.store.data().module.to_string();
        let refuse = |message: String| ConfigureError {
            module: module.clone(),
            message,
        };
        let configure = match &self.exports {
            Exports::V3 {
                configure: Some(c), ..
            } => c.clone(),
            Exports::V3 { .. } | Exports::V2 { .. } => {
                if params.is_empty() {
                    return Ok(());
                }
                return Err(refuse(format!(
                    "takes no parameters (it has no `{EXPORT_CONFIGURE}` export; ABI v{}), so \
                     [policy] params cannot be given",
                    self.abi_version()
                )));
            }
        };
        let text = params.text().as_bytes();
        let size = record::HEADER_BYTES + text.len();
        if size > PARAMS_MAX_BYTES {
            return Err(refuse(format!(
                "[policy] params take {size} bytes, more than the {PARAMS_MAX_BYTES} a params \
                 record may have"
            )));
        }
        let mut input = Vec::with_capacity(size);
        input.extend_from_slice(&(size as u32).to_le_bytes());
        input.extend_from_slice(&record::KIND_PARAMS.to_le_bytes());
        input.extend_from_slice(text);
        self.store.data_mut().input = input;
        let logged_before = self.store.data().lines.lines.len();
        let result = self.call(EXPORT_CONFIGURE, |store, _| configure.call(store, ()));
        self.store.data_mut().input.clear();
        match result {
            Ok(0) => Ok(()),
            Ok(code) => {
                // The module says why in its log (the SDK logs the
                // parameter error).
                let said = self.store.data().lines.lines[logged_before..]
                    .iter()
                    .rev()
                    .map(|l| l.text.clone())
                    .next();
                Err(refuse(match said {
                    Some(why) => format!("refused its [policy] params: {why}"),
                    None => format!(
                        "refused its [policy] params (`{EXPORT_CONFIGURE}` returned {code} and \
                         logged no reason)"
                    ),
                }))
            }
            Err((cause, message)) => Err(refuse(format!(
                "configuring with its [policy] params failed ({cause}): {message}"
            ))),
        }
    }

    /// Runs one call into the module under fresh fuel, classifying a
    /// failure; the error names `export`. (Its host time is what the
    /// `policy` benchmark measures; reading the clock around every call
    /// would cost as much as the call.)
    fn call<R>(
        &mut self,
        export: &'static str,
        f: impl FnOnce(&mut Store<HostState>, &Exports) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        self.calls += 1;
        self.store.data_mut().limits.hit = false;
        if let Err(e) = self.store.set_fuel(self.fuel_per_call) {
            return Err((FailureCause::Trap, format!("cannot set fuel: {e:#}")));
        }
        let result = f(&mut self.store, &self.exports);
        let left = self.store.get_fuel().unwrap_or(0);
        self.stats.fuel_used += self.fuel_per_call.saturating_sub(left);
        result.map_err(|e| {
            (
                FailureCause::of_call(&e, self.store.data().limits.hit),
                format!("`{export}`: {e:#}"),
            )
        })
    }

    /// Counts a failed call and disables the policy when there were too
    /// many in a row.
    fn failed(&mut self, entry: Entry, cause: FailureCause, message: String) {
        match entry {
            Entry::Decide => self.stats.fallbacks.add(cause),
            Entry::Notify => self.stats.failed_notifications.add(cause),
        }
        let module = self.store.data().module.clone();
        tracing::debug!(target: "apflab::policy", policy = %module, %cause, "{message}");
        let line = format!("call failed ({cause}): {message}");
        self.store.data_mut().host_message(LogLevel::Warn, line);
        self.stats.last_failure = Some(format!("{cause}: {message}"));
        self.consecutive_failures += 1;
        if self.max_consecutive_failures != 0
            && self.consecutive_failures >= self.max_consecutive_failures
        {
            self.stats.disabled = true;
            self.stats.disabled_after_calls = Some(self.calls);
            let text = format!(
                "policy disabled for the rest of the run after {} failed calls in a row; every \
                 later decision is the fallback (sync); last: {cause}: {message}",
                self.consecutive_failures,
            );
            tracing::warn!(target: "apflab::policy", policy = %module, "{text}");
            self.store.data_mut().host_message(LogLevel::Error, text);
        }
    }

    fn notify(&mut self, f: impl FnOnce(&mut Self) -> Result<(), CallError>) {
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

    /// Decides with a module of either version.
    fn call_decide(&mut self, fault: &FaultInfo) -> Result<Decision, CallError> {
        let malformed = |raw: i64, e: apflab_abi::policy::DecisionError| {
            (
                FailureCause::MalformedDecision,
                format!("`{EXPORT_DECIDE}` returned {raw:#x}: {e}"),
            )
        };
        if let Exports::V2 { .. } = self.exports {
            let args = fault.to_v2_args();
            let raw = self.call(EXPORT_DECIDE, |store, e| match e {
                Exports::V2 { decide, .. } => decide.call(store, args),
                Exports::V3 { .. } => unreachable!("matched V2"),
            })?;
            let (decision, prefetch) = Decision::unpack_v2(raw).map_err(|e| malformed(raw, e))?;
            if prefetch > 0 {
                self.stats.prefetch_ignored += 1;
            }
            return Ok(decision);
        }
        self.store.data_mut().input = fault.encode().to_vec();
        let raw = self.call(EXPORT_DECIDE, |store, e| match e {
            Exports::V3 { decide, .. } => decide.call(store, ()),
            Exports::V2 { .. } => unreachable!("matched V3"),
        })?;
        Decision::unpack(raw).map_err(|e| malformed(raw, e))
    }
}

impl Policy for WasmPolicy {
    /// [`WasmPolicy::configure_params`]; the module's reason is in its log
    /// (use `configure_params` to get it).
    fn configure<'p>(&mut self, params: &Params<'p>) -> Result<(), ParamError<'p>> {
        self.configure_params(params).map_err(|_| ParamError {
            name: "",
            problem: ParamProblem::Invalid("refused by the module (see its log)"),
        })
    }

    fn decide(&mut self, fault: &FaultInfo) -> Decision {
        self.stats.decisions += 1;
        self.store.data_mut().now_ns = fault.now_ns;
        if self.stats.disabled {
            self.stats.fallbacks.add(FailureCause::Disabled);
            return Decision::FALLBACK;
        }
        self.store.data_mut().log.on_decision();
        match self.call_decide(fault) {
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

    fn on_complete(&mut self, done: &Completion) {
        self.store.data_mut().now_ns = done.now_ns;
        let v2 = matches!(self.exports, Exports::V2 { .. });
        let v3_complete = matches!(
            self.exports,
            Exports::V3 {
                on_complete: Some(_),
                ..
            }
        );
        match (v2, v3_complete) {
            // Version 2 heard of async faults only, with the time from the
            // fault to the page being in.
            (true, _) if done.asynchronous => {
                let (token, latency) = (done.token as i64, done.wait_ns as i64);
                self.notify(|this| {
                    this.call(EXPORT_ON_READY, |store, e| match e {
                        Exports::V2 { on_ready, .. } => on_ready.call(store, (token, latency)),
                        Exports::V3 { .. } => unreachable!("matched V2"),
                    })
                });
            }
            (false, true) => {
                self.store.data_mut().input = done.encode().to_vec();
                self.notify(|this| {
                    this.call(EXPORT_ON_COMPLETE, |store, e| match e {
                        Exports::V3 {
                            on_complete: Some(f),
                            ..
                        } => f.call(store, ()),
                        _ => unreachable!("matched V3 with on_complete"),
                    })
                });
            }
            _ => {}
        }
    }

    fn on_run_end(&mut self) {
        self.store.data_mut().input.clear();
        let has = match &self.exports {
            Exports::V2 { .. } => true,
            Exports::V3 { on_run_end, .. } => on_run_end.is_some(),
        };
        if !has {
            return;
        }
        self.notify(|this| {
            this.call(EXPORT_ON_RUN_END, |store, e| match e {
                Exports::V2 { on_run_end, .. }
                | Exports::V3 {
                    on_run_end: Some(on_run_end),
                    ..
                } => on_run_end.call(store, ()),
                Exports::V3 { .. } => unreachable!("checked above"),
            })
        });
    }

    fn write_log(&self, out: &mut dyn std::fmt::Write) -> std::fmt::Result {
        out.write_str(&self.log().render())
    }

    fn usage(&self) -> PolicyUsage {
        let failures = self.stats.fallbacks.plus(&self.stats.failed_notifications);
        PolicyUsage {
            fuel_used: self.stats.fuel_used,
            failed_calls: failures.total(),
            failures,
            disabled: self.stats.disabled,
            prefetch_ignored: self.stats.prefetch_ignored,
        }
    }
}
