//! A run's policy input log, `DIR/policy-calls.csv` (`apflab run
//! --token-log`): every call the engine made into its policy with what it
//! passed, and each decision. `apflab policy test` replays such a file, or
//! one written by hand, through a module: the policy's test bench.
//!
//! One row per call, in order, with a header naming the columns:
//!
//! `t_ns,call,vcpu,token,ipa,access,el,can_reschedule,runnable,outstanding,est_fetch_ns,fetches_completed,decision,asynchronous,fetch_ns,wait_ns`
//!
//! `call` is `decide` (the fault's facts and the `decision` taken) or
//! `complete` (`asynchronous`, `fetch_ns`, `wait_ns`). Numbers are decimal,
//! `token` and `ipa` may be hex (`0x...`). A file written by hand may leave
//! out any column but `call` (a missing value is 0, or `read`, or no
//! recorded decision).

use std::collections::HashMap;
use std::fmt::Write as _;

use apflab_abi::policy::{
    AccessKind, Completion, Decision, FaultInfo, Initiation, NotPresentDelivery, ReadyDelivery,
    Sleep,
};
use apflab_apf::PolicyCall;

/// The file name in a run's folder.
pub const POLICY_CALLS_LOG: &str = "policy-calls.csv";

/// The header of a policy input log.
pub const HEADER: &str = "t_ns,call,vcpu,token,ipa,access,el,can_reschedule,runnable,outstanding,\
                          est_fetch_ns,fetches_completed,decision,asynchronous,fetch_ns,wait_ns";

/// A decision as the log writes it: `sync`, or
/// `async/<not present>/<ready>/<initiation>/<sleep>` with the config's
/// names (`async/dedicated-ec/interrupt/guest/reschedule`).
pub fn decision_name(d: &Decision) -> String {
    match d {
        Decision::Sync => "sync".into(),
        Decision::Async {
            not_present,
            ready,
            initiation,
            sleep,
        } => format!(
            "async/{}/{}/{}/{}",
            match not_present {
                NotPresentDelivery::DataAbort => "data-abort",
                NotPresentDelivery::DedicatedEc => "dedicated-ec",
                NotPresentDelivery::Sdei => "sdei",
            },
            match ready {
                ReadyDelivery::Exception => "exception",
                ReadyDelivery::Interrupt => "interrupt",
            },
            match initiation {
                Initiation::Host => "host",
                Initiation::Guest => "guest",
            },
            match sleep {
                Sleep::Halt => "halt",
                Sleep::Reschedule => "reschedule",
            },
        ),
    }
}

/// The decision [`decision_name`] wrote.
pub fn parse_decision(text: &str) -> Option<Decision> {
    if text == "sync" {
        return Some(Decision::Sync);
    }
    let parts: Vec<&str> = text.split('/').collect();
    let ["async", np, ready, init, sleep] = parts[..] else {
        return None;
    };
    Some(Decision::Async {
        not_present: match np {
            "data-abort" => NotPresentDelivery::DataAbort,
            "dedicated-ec" => NotPresentDelivery::DedicatedEc,
            "sdei" => NotPresentDelivery::Sdei,
            _ => return None,
        },
        ready: match ready {
            "exception" => ReadyDelivery::Exception,
            "interrupt" => ReadyDelivery::Interrupt,
            _ => return None,
        },
        initiation: match init {
            "host" => Initiation::Host,
            "guest" => Initiation::Guest,
            _ => return None,
        },
        sleep: match sleep {
            "halt" => Sleep::Halt,
            "reschedule" => Sleep::Reschedule,
            _ => return None,
        },
    })
}

/// The text of a policy input log of `calls`.
pub fn render(calls: &[PolicyCall]) -> String {
    let mut csv = String::from(HEADER);
    csv.push('\n');
    for call in calls {
        let _ = match call {
            PolicyCall::Decide { fault: f, decision } => writeln!(
                csv,
                "{},decide,{},{:#x},{:#x},{},{},{},{},{},{},{},{},,,",
                f.now_ns,
                f.vcpu,
                f.token,
                f.ipa,
                f.access.name(),
                f.el,
                u8::from(f.can_reschedule),
                f.runnable,
                f.outstanding,
                f.est_fetch_ns,
                f.fetches_completed,
                decision_name(decision),
            ),
            PolicyCall::Complete(c) => writeln!(
                csv,
                "{},complete,{},{:#x},{:#x},,,,,,,,,{},{},{}",
                c.now_ns,
                c.vcpu,
                c.token,
                c.ipa,
                u8::from(c.asynchronous),
                c.fetch_ns,
                c.wait_ns,
            ),
        };
    }
    csv
}

/// One row of a policy input log: the call, and for a decision the one
/// recorded (if the row has it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Row {
    /// Line in the file (1-based).
    pub line: usize,
    /// The call.
    pub call: PolicyCall,
    /// The decision the run took, for a `decide` row that has one.
    pub recorded: Option<Decision>,
}

/// A policy input log that cannot be read: the file, the line (none for
/// an empty file) and what is wrong there.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {problem}", .line.map(|n| format!(":{n}")).unwrap_or_default())]
pub struct CallsError {
    /// The file, as the caller names it.
    pub file: String,
    /// The line (1-based).
    pub line: Option<usize>,
    /// What is wrong.
    pub problem: CallsProblem,
}

/// What is wrong in a policy input log ([`CallsError`]).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallsProblem {
    /// Not even a header line.
    #[error("empty; expected the header line `{}`", HEADER)]
    Empty,
    /// A header column this reader does not know.
    #[error("unknown column `{0}`; expected columns of `{header}`", header = HEADER)]
    UnknownColumn(String),
    /// The header has no `call` column.
    #[error("no `call` column; expected `{}`", HEADER)]
    NoCallColumn,
    /// A number column holds something else.
    #[error("{column}: `{value}`; expected a non-negative integer")]
    NotANumber {
        /// The column.
        column: String,
        /// What it holds.
        value: String,
    },
    /// A 32-bit column holds a larger number.
    #[error("{0}: expected at most {max}", max = u32::MAX)]
    TooLarge(String),
    /// An access kind other than read, write or fetch.
    #[error("access: `{0}`; expected read, write or fetch")]
    Access(String),
    /// A decision this reader does not know.
    #[error(
        "decision: `{0}`; expected sync or \
         async/<data-abort|dedicated-ec|sdei>/<exception|interrupt>/<host|guest>/<halt|reschedule>"
    )]
    Decision(String),
    /// A call other than decide or complete.
    #[error("call: `{0}`; expected decide or complete")]
    Call(String),
}

/// Reads a policy input log; `file` names it in errors (`file:line: column
/// name: what was expected`).
pub fn parse(file: &str, text: &str) -> Result<Vec<Row>, CallsError> {
    let error = |line: Option<usize>, problem| CallsError {
        file: file.to_owned(),
        line,
        problem,
    };
    let mut lines = text.lines().enumerate();
    let Some((_, header)) = lines.next() else {
        return Err(error(None, CallsProblem::Empty));
    };
    let columns: HashMap<&str, usize> = header
        .split(',')
        .map(str::trim)
        .enumerate()
        .map(|(i, c)| (c, i))
        .collect();
    let known: Vec<&str> = HEADER.split(',').collect();
    if let Some(bad) = columns.keys().find(|c| !known.contains(c)) {
        return Err(error(Some(1), CallsProblem::UnknownColumn(bad.to_string())));
    }
    if !columns.contains_key("call") {
        return Err(error(Some(1), CallsProblem::NoCallColumn));
    }
    let mut rows = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let get = |name: &str| columns.get(name).and_then(|&c| fields.get(c)).copied();
        let at = |problem| error(Some(n), problem);
        let num = |name: &str| -> Result<u64, CallsError> {
            match get(name) {
                None | Some("") => Ok(0),
                Some(v) => {
                    let parsed = match v.strip_prefix("0x") {
                        Some(hex) => u64::from_str_radix(hex, 16),
                        None => v.parse(),
                    };
                    parsed.map_err(|_| {
                        at(CallsProblem::NotANumber {
                            column: name.to_owned(),
                            value: v.to_owned(),
                        })
                    })
                }
            }
        };
        let small = |name: &str| -> Result<u32, CallsError> {
            u32::try_from(num(name)?).map_err(|_| at(CallsProblem::TooLarge(name.to_owned())))
        };
        let call = match get("call") {
            Some("decide") => {
                let access = match get("access") {
                    None | Some("" | "read") => AccessKind::Read,
                    Some("write") => AccessKind::Write,
                    Some("fetch") => AccessKind::Fetch,
                    Some(v) => return Err(at(CallsProblem::Access(v.to_owned()))),
                };
                let recorded = match get("decision") {
                    None | Some("") => None,
                    Some(v) => Some(
                        parse_decision(v)
                            .ok_or_else(|| at(CallsProblem::Decision(v.to_owned())))?,
                    ),
                };
                let fault = FaultInfo {
                    vcpu: small("vcpu")?,
                    ipa: num("ipa")?,
                    token: num("token")?,
                    access,
                    el: small("el")?,
                    can_reschedule: num("can_reschedule")? != 0,
                    runnable: small("runnable")?,
                    outstanding: small("outstanding")?,
                    now_ns: num("t_ns")?,
                    est_fetch_ns: num("est_fetch_ns")?,
                    fetches_completed: num("fetches_completed")?,
                };
                rows.push(Row {
                    line: n,
                    call: PolicyCall::Decide {
                        fault,
                        decision: recorded.unwrap_or(Decision::Sync),
                    },
                    recorded,
                });
                continue;
            }
            Some("complete") => PolicyCall::Complete(Completion {
                vcpu: small("vcpu")?,
                asynchronous: num("asynchronous")? != 0,
                token: num("token")?,
                ipa: num("ipa")?,
                fetch_ns: num("fetch_ns")?,
                wait_ns: num("wait_ns")?,
                now_ns: num("t_ns")?,
            }),
            other => {
                return Err(at(CallsProblem::Call(other.unwrap_or("").to_owned())));
            }
        };
        rows.push(Row {
            line: n,
            call,
            recorded: None,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_reads_back_as_written() {
        let calls = [
            PolicyCall::Decide {
                fault: FaultInfo {
                    vcpu: 1,
                    ipa: 0x4010_2000,
                    token: 0x3001,
                    access: AccessKind::Write,
                    el: 0,
                    can_reschedule: true,
                    runnable: 2,
                    outstanding: 3,
                    now_ns: 123_456,
                    est_fetch_ns: 40_000,
                    fetches_completed: 9,
                },
                decision: Decision::Async {
                    not_present: NotPresentDelivery::Sdei,
                    ready: ReadyDelivery::Interrupt,
                    initiation: Initiation::Guest,
                    sleep: Sleep::Reschedule,
                },
            },
            PolicyCall::Complete(Completion {
                vcpu: 1,
                asynchronous: true,
                token: 0x3001,
                ipa: 0x4010_2000,
                fetch_ns: 30_000,
                wait_ns: 32_000,
                now_ns: 155_456,
            }),
        ];
        let rows = parse("x.csv", &render(&calls)).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].call, calls[0]);
        assert_eq!(rows[1].call, calls[1]);
        assert_eq!(
            rows[0].recorded,
            Some(match calls[0] {
                PolicyCall::Decide { decision, .. } => decision,
                PolicyCall::Complete(_) => unreachable!(),
            })
        );
    }

    #[test]
    fn a_hand_written_log_needs_only_some_columns_and_bad_values_name_the_line() {
        let rows = parse(
            "s.csv",
            "call,el,est_fetch_ns\ndecide,0,60000\ncomplete,,\n",
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        let PolicyCall::Decide { fault, .. } = rows[0].call else {
            panic!("{rows:?}");
        };
        assert_eq!((fault.el, fault.est_fetch_ns), (0, 60_000));
        assert!(rows[0].recorded.is_none());
        let e = parse("s.csv", "call,el\ndecide,x\n").unwrap_err();
        assert_eq!(
            (e.line, &e.problem),
            (
                Some(2),
                &CallsProblem::NotANumber {
                    column: "el".into(),
                    value: "x".into()
                }
            )
        );
        assert_eq!(
            e.to_string(),
            "s.csv:2: el: `x`; expected a non-negative integer"
        );
        let e = parse("s.csv", "call,color\n").unwrap_err();
        assert_eq!(
            (e.line, e.problem),
            (Some(1), CallsProblem::UnknownColumn("color".into()))
        );
        let e = parse("s.csv", "").unwrap_err();
        assert_eq!(
            e.to_string(),
            "s.csv: empty; expected the header line `".to_owned() + HEADER + "`"
        );
    }
}
