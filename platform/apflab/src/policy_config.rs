//! The `[policy]` and `[apf]` sections: which policy decides every fault,
//! and what the host offers the guest's async PF client.
//!
//! ```toml
//! [policy]
//! module = "paolo"        # a built-in example, or a path to a .wasm / .wat
//!                         # (relative to this config file)
//! params = { threshold_ns = 50000 }  # handed to the module's `apf_configure`
//! # or a fixed decision for every fault, without Wasm:
//! # decision = { not_present = "dedicated-ec", ready = "interrupt", initiation = "host", sleep = "reschedule" }
//!
//! [apf]
//! ring_depth = 64         # 1 (x86: one token per interrupt) ..= 64
//! guest_enables = true    # false: boot the guest with `apflab.apf=off`
//! guest_abuses = false    # true: the guest first misuses the protocol (`apflab.apf_abuse=on`)
//! ```
//!
//! Without `[policy]` no async PF is offered (the guest never enables it)
//! and every fault is the synchronous baseline.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use apflab_abi::apf::READY_RING_SLOTS;
use apflab_abi::policy::{
    Decision, Initiation, NotPresentDelivery, PARAMS_MAX_BYTES, ParamValue, ReadyDelivery, Sleep,
    record,
};
use apflab_artifacts::{EXAMPLE_POLICIES, WAT_POLICIES};
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// `[policy]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    module: Option<Spanned<String>>,
    decision: Option<Spanned<FixedDecision>>,
    params: Option<Spanned<toml::Table>>,
}

/// `[apf]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApf {
    ring_depth: Option<Spanned<u32>>,
    guest_enables: Option<bool>,
    guest_abuses: Option<bool>,
}

/// A decision given in the config, the same for every fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedDecision {
    /// `data-abort`, `dedicated-ec` or `sdei`.
    pub not_present: NotPresentName,
    /// `exception` or `interrupt`.
    pub ready: ReadyName,
    /// `host` or `guest`.
    pub initiation: InitiationName,
    /// `halt` or `reschedule`.
    pub sleep: SleepName,
}

/// How "not present" is delivered, as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotPresentName {
    /// RFCv2's data abort.
    DataAbort,
    /// The dedicated exception class.
    DedicatedEc,
    /// The SDEI event (Gavin Shan's v4).
    Sdei,
}

/// How "ready" is delivered, as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadyName {
    /// An injected exception.
    Exception,
    /// The PPI and the ready ring.
    Interrupt,
}

/// Who starts the fetch, as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitiationName {
    /// The host, at the fault.
    Host,
    /// The guest, with `APF_PAGE_REQUEST`.
    Guest,
}

/// What the guest does meanwhile, as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SleepName {
    /// The vCPU waits.
    Halt,
    /// Another task runs.
    Reschedule,
}

impl FixedDecision {
    /// The policy ABI's decision.
    pub fn decision(&self) -> Decision {
        Decision::Async {
            not_present: match self.not_present {
                NotPresentName::DataAbort => NotPresentDelivery::DataAbort,
                NotPresentName::DedicatedEc => NotPresentDelivery::DedicatedEc,
                NotPresentName::Sdei => NotPresentDelivery::Sdei,
            },
            ready: match self.ready {
                ReadyName::Exception => ReadyDelivery::Exception,
                ReadyName::Interrupt => ReadyDelivery::Interrupt,
            },
            initiation: match self.initiation {
                InitiationName::Host => Initiation::Host,
                InitiationName::Guest => Initiation::Guest,
            },
            sleep: match self.sleep {
                SleepName::Halt => Sleep::Halt,
                SleepName::Reschedule => Sleep::Reschedule,
            },
        }
    }
}

/// Which policy a run uses.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyChoice {
    /// A Wasm module: a built-in example or a file.
    Module {
        /// As written (a built-in name or a path).
        name: String,
        /// The file that is loaded.
        #[serde(skip)]
        path: PathBuf,
        /// `[policy] params`, handed to the module's `apf_configure`.
        #[serde(skip_serializing_if = "PolicyParams::is_empty")]
        params: PolicyParams,
    },
    /// The same decision for every fault, decided natively.
    Decision(FixedDecision),
}

/// `[policy] params`: scalar values by name, in name order.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct PolicyParams(pub BTreeMap<String, ParamScalar>);

/// One parameter's value.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ParamScalar {
    /// An integer.
    Int(i64),
    /// A finite float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A one-line string.
    Str(String),
}

impl PolicyParams {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The text of the params record the module reads
    /// ([`apflab_abi::policy::Params`]).
    pub fn record_text(&self) -> String {
        use std::fmt::Write as _;
        let mut text = String::new();
        for (name, value) in &self.0 {
            let v = match value {
                ParamScalar::Int(i) => ParamValue::Int(*i),
                ParamScalar::Float(f) => ParamValue::Float(*f),
                ParamScalar::Bool(b) => ParamValue::Bool(*b),
                ParamScalar::Str(s) => ParamValue::Str(s),
            };
            let _ = writeln!(text, "{name}={v}");
        }
        text
    }

    /// Checks a `[policy] params` table: names of letters, digits, `_` and
    /// `-`; values integers, finite floats, booleans or one-line strings
    /// without `"`; the whole within a params record.
    pub fn from_table(table: &toml::Table) -> Result<PolicyParams, ParamsError> {
        let mut params = BTreeMap::new();
        for (name, value) in table {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(ParamsError::Name(name.clone()));
            }
            let v = match value {
                toml::Value::Integer(i) => ParamScalar::Int(*i),
                toml::Value::Float(f) if f.is_finite() => ParamScalar::Float(*f),
                toml::Value::Boolean(b) => ParamScalar::Bool(*b),
                toml::Value::String(s) if !s.contains(['\n', '\r', '"']) => {
                    ParamScalar::Str(s.clone())
                }
                other => {
                    return Err(ParamsError::Value {
                        name: name.clone(),
                        value: other.clone(),
                    });
                }
            };
            params.insert(name.clone(), v);
        }
        let params = PolicyParams(params);
        let size = record::HEADER_BYTES + params.record_text().len();
        if size > PARAMS_MAX_BYTES {
            return Err(ParamsError::TooLarge(size));
        }
        Ok(params)
    }
}

/// Why a `[policy] params` table (or `--param`s) cannot be handed to a
/// policy ([`PolicyParams::from_table`]).
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ParamsError {
    /// A name with other characters than letters, digits, `_` and `-`.
    #[error("parameter name {0:?}: expected letters, digits, `_` and `-` only")]
    Name(String),
    /// A value of another kind than a params record holds.
    #[error(
        "{name} = {value}: expected an integer, a finite float, a boolean or a one-line string \
         without `\"`"
    )]
    Value {
        /// The parameter.
        name: String,
        /// Its value.
        value: toml::Value,
    },
    /// The whole does not fit in a params record.
    #[error("{0} bytes as a params record; expected at most {max}", max = PARAMS_MAX_BYTES)]
    TooLarge(usize),
}

/// What the host offers the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ApfSettings {
    /// Most unconsumed tokens in a vCPU's ready ring.
    pub ring_depth: u32,
    /// Whether the guest may enable async PF (false: its `apflab.apf=off`
    /// boot option, so every fault is sync although the host offers it).
    pub guest_enables: bool,
    /// Whether the guest first misuses the protocol in every way the host
    /// must refuse (its `apflab.apf_abuse=on` boot option).
    pub guest_abuses: bool,
}

impl Default for ApfSettings {
    fn default() -> Self {
        ApfSettings {
            ring_depth: READY_RING_SLOTS as u32,
            guest_enables: true,
            guest_abuses: false,
        }
    }
}

/// A `[policy]` or `[apf]` key that is wrong: where, which, what was
/// expected.
pub struct KeyProblem {
    /// Byte span of the value in the file (None: the key is missing).
    pub span: Option<Range<usize>>,
    /// The dotted key.
    pub key: &'static str,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Checks `[policy]`; relative module paths are resolved against
/// `base_dir`.
pub fn policy(raw: &RawPolicy, base_dir: &Path) -> Result<PolicyChoice, KeyProblem> {
    match (&raw.module, &raw.decision) {
        (Some(m), None) => {
            let mut choice = module(m.get_ref(), base_dir).map_err(|mut p| {
                p.span = Some(m.span());
                p
            })?;
            if let (Some(table), PolicyChoice::Module { params, .. }) = (&raw.params, &mut choice) {
                *params = PolicyParams::from_table(table.get_ref()).map_err(|e| KeyProblem {
                    span: Some(table.span()),
                    key: "policy.params",
                    message: e.to_string(),
                })?;
            }
            Ok(choice)
        }
        (None, Some(d)) => match &raw.params {
            Some(p) => Err(KeyProblem {
                span: Some(p.span()),
                key: "policy.params",
                message: "params are handed to a module's `apf_configure`; a fixed `decision` \
                          takes none"
                    .into(),
            }),
            None => Ok(PolicyChoice::Decision(*d.get_ref())),
        },
        (Some(m), Some(_)) => Err(KeyProblem {
            span: Some(m.span()),
            key: "policy.module",
            message: "give either `module` or `decision`, not both".into(),
        }),
        (None, None) => Err(KeyProblem {
            span: None,
            key: "policy.module",
            message: "missing; expected `module = NAME` (one of the built-in examples or a \
                      .wasm path) or `decision = { ... }`"
                .into(),
        }),
    }
}

/// The policy module `name` (a built-in example, or a file relative to
/// `base_dir`).
pub fn module(name: &str, base_dir: &Path) -> Result<PolicyChoice, KeyProblem> {
    let path = if EXAMPLE_POLICIES.contains(&name) {
        apflab_artifacts::policy_wasm(name)
    } else if WAT_POLICIES.contains(&name) {
        apflab_artifacts::policy_wat(name)
    } else {
        base_dir.join(name)
    };
    if !path.is_file() {
        return Err(KeyProblem {
            span: None,
            key: "policy.module",
            message: format!(
                "no policy `{name}` ({} is not a file); expected one of {} or a path to a .wasm \
                 or .wat file, relative to the config file",
                path.display(),
                [&EXAMPLE_POLICIES[..], &WAT_POLICIES[..]]
                    .concat()
                    .join(", ")
            ),
        });
    }
    Ok(PolicyChoice::Module {
        name: name.to_owned(),
        path,
        params: PolicyParams::default(),
    })
}

/// Checks `[apf]`.
pub fn apf(raw: &RawApf) -> Result<ApfSettings, KeyProblem> {
    let mut s = ApfSettings::default();
    if let Some(d) = &raw.ring_depth {
        if !(1..=READY_RING_SLOTS as u32).contains(d.get_ref()) {
            return Err(KeyProblem {
                span: Some(d.span()),
                key: "apf.ring_depth",
                message: format!(
                    "{}; expected 1 (one token per interrupt, as x86) ..= {READY_RING_SLOTS}",
                    d.get_ref()
                ),
            });
        }
        s.ring_depth = *d.get_ref();
    }
    if let Some(g) = raw.guest_enables {
        s.guest_enables = g;
    }
    if let Some(a) = raw.guest_abuses {
        s.guest_abuses = a;
    }
    Ok(s)
}
