//! `apflab policy check`'s second half: each export called once with
//! sample inputs, under the limits a run uses, and judged as a run would
//! judge it.

use apflab_abi::policy::{
    AccessKind, Completion, EXPORT_CONFIGURE, EXPORT_DECIDE, EXPORT_ON_COMPLETE, EXPORT_ON_READY,
    EXPORT_ON_RUN_END, FaultInfo, Params, Policy,
};
use serde::Serialize;
use std::fmt;

use crate::module::ModuleInfo;
use crate::{PolicyError, PolicyModule};

/// One sample call and how it went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CallCheck {
    /// The export called.
    pub export: &'static str,
    /// What it was called with.
    pub input: String,
    /// What it returned, or why it failed.
    pub outcome: CallOutcome,
}

/// How one sample call went: part of the report, not an error of the
/// check (a failed call is what the check is there to find). Serialized as
/// `{"Ok": ...}` or `{"Err": ...}`, the form `--json` has always had.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum CallOutcome {
    /// What the call returned (a decision, `accepted`, `ok`).
    #[serde(rename = "Ok")]
    Returned(String),
    /// Why the call failed, as the sandbox recorded it (a trap, fuel or
    /// memory exhausted, a decision the engine rejects, refused params).
    #[serde(rename = "Err")]
    Failed(String),
}

impl CallOutcome {
    /// The outcome of a call that failed if the policy's failure count
    /// went up from `before`, with the sandbox's last failure as the why.
    fn of(p: &crate::WasmPolicy, before: u64, returned: impl FnOnce() -> String) -> Self {
        if failures(p) > before {
            CallOutcome::Failed(p.stats().last_failure.unwrap_or_default())
        } else {
            CallOutcome::Returned(returned())
        }
    }
}

/// The policy's failed calls and notifications so far.
fn failures(p: &crate::WasmPolicy) -> u64 {
    let s = p.stats();
    s.fallbacks.total() + s.failed_notifications.total()
}

/// What `apflab policy check` reports: the module and its sample calls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The module as loaded.
    pub info: ModuleInfo,
    /// Each export called once.
    pub calls: Vec<CallCheck>,
}

impl CheckReport {
    /// Whether every call worked.
    pub fn passed(&self) -> bool {
        self.calls
            .iter()
            .all(|c| matches!(c.outcome, CallOutcome::Returned(_)))
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.info)?;
        writeln!(
            f,
            "  calls (sample inputs, the run's fuel and memory limits)"
        )?;
        for c in &self.calls {
            match &c.outcome {
                CallOutcome::Returned(what) => {
                    writeln!(f, "    ok    {:<16} {} -> {what}", c.export, c.input)?
                }
                CallOutcome::Failed(why) => {
                    writeln!(f, "    FAIL  {:<16} {}: {why}", c.export, c.input)?
                }
            }
        }
        if self.passed() {
            writeln!(f, "  every call worked")
        } else {
            writeln!(
                f,
                "  a run would answer the failed calls with the fallback (sync)"
            )
        }
    }
}

/// Loads nothing new: calls each export of `module` once in a fresh
/// instance, as a run would (configure with `params`, decide for a user
/// fault, a kernel fault and a vCPU at its outstanding limit, a sync and
/// an async completion, the run's end). A call that fails, or a decision
/// the engine would reject, is a failed check.
pub fn sample_calls(
    module: &PolicyModule,
    params: &Params<'_>,
) -> Result<CheckReport, PolicyError> {
    let mut p = module.instantiate()?;
    let mut calls = Vec::new();
    let v3 = p.abi_version() >= 3;
    let configure_input = format!("params {:?}", params.text());
    let outcome = match p.configure_params(params) {
        Ok(()) => CallOutcome::Returned("accepted".to_owned()),
        Err(e) => CallOutcome::Failed(e.message),
    };
    let has_configure = module
        .info()
        .exports
        .iter()
        .any(|e| e.name == EXPORT_CONFIGURE);
    if has_configure || matches!(outcome, CallOutcome::Failed(_)) {
        calls.push(CallCheck {
            export: EXPORT_CONFIGURE,
            input: configure_input,
            outcome,
        });
    }
    let user = FaultInfo {
        vcpu: 0,
        ipa: 0x4010_0000,
        token: 0x1000,
        access: AccessKind::Read,
        el: 0,
        can_reschedule: true,
        runnable: 2,
        outstanding: 1,
        now_ns: 1_000_000,
        est_fetch_ns: 50_000,
        fetches_completed: 10,
    };
    let samples = [
        ("user task, 2 runnable", user),
        (
            "kernel, write",
            FaultInfo {
                el: 1,
                access: AccessKind::Write,
                can_reschedule: false,
                runnable: 0,
                ..user
            },
        ),
        (
            "64 outstanding, no estimate",
            FaultInfo {
                outstanding: 64,
                est_fetch_ns: 0,
                fetches_completed: 0,
                ..user
            },
        ),
    ];
    for (what, fault) in samples {
        let before = failures(&p);
        let decision = p.decide(&fault);
        calls.push(CallCheck {
            export: EXPORT_DECIDE,
            input: what.to_owned(),
            outcome: CallOutcome::of(&p, before, || format!("{decision:?}")),
        });
    }
    let completions = [("sync, 30 us", false), ("async, 30 us", true)];
    for (what, asynchronous) in completions {
        if !v3 && !asynchronous {
            continue;
        }
        let before = failures(&p);
        p.on_complete(&Completion {
            vcpu: 0,
            asynchronous,
            token: 0x1000,
            ipa: 0x4010_0000,
            fetch_ns: 30_000,
            wait_ns: 31_000,
            now_ns: 1_031_000,
        });
        let export = if v3 {
            EXPORT_ON_COMPLETE
        } else {
            EXPORT_ON_READY
        };
        if v3 && !module.info().exports.iter().any(|e| e.name == export) {
            continue;
        }
        calls.push(CallCheck {
            export,
            input: what.to_owned(),
            outcome: CallOutcome::of(&p, before, || "ok".into()),
        });
    }
    if module
        .info()
        .exports
        .iter()
        .any(|e| e.name == EXPORT_ON_RUN_END)
    {
        let before = failures(&p);
        p.on_run_end();
        calls.push(CallCheck {
            export: EXPORT_ON_RUN_END,
            input: "-".into(),
            outcome: CallOutcome::of(&p, before, || "ok".into()),
        });
    }
    Ok(CheckReport {
        info: module.info().clone(),
        calls,
    })
}
