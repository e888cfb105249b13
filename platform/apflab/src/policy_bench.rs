//! The policy author's bench: `apflab policy test` (a module's exports run
//! on a recorded or written sequence of faults and completions, each
//! decision printed and checked as the engine would check it) and `apflab
//! policy new` (a crate or WAT file outside the repository that builds
//! with one command).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use apflab_abi::policy::{Params, Policy};
use apflab_apf::decision::{Served, VcpuFacts, serve};
use apflab_apf::{ApfConfig, PolicyCall};
use apflab_policy_host::{ConfigureError, PolicyConfig, PolicyError, PolicyModule};

use crate::policy_calls::{Row, decision_name};
use crate::policy_config::PolicyParams;

/// What `policy test` found.
#[derive(Debug, Default)]
pub struct TestReport {
    /// One line per call, as printed.
    pub lines: Vec<String>,
    /// Decisions made.
    pub decisions: u64,
    /// Decisions equal to the one the row recorded.
    pub same: u64,
    /// Decisions that differ from the one the row recorded.
    pub differ: u64,
    /// Calls that failed (the engine would have used the fallback).
    pub failed: u64,
    /// Completions passed to the module.
    pub completions: u64,
    /// The module's log over the test.
    pub log: String,
}

impl TestReport {
    /// Whether every call worked and every recorded decision was
    /// reproduced.
    pub fn passed(&self) -> bool {
        self.failed == 0 && self.differ == 0
    }

    /// The closing line.
    pub fn summary(&self) -> String {
        format!(
            "{} decisions ({} as recorded, {} different, {} without a recorded one), {} \
             completions, {} failed calls",
            self.decisions,
            self.same,
            self.differ,
            self.decisions - self.same - self.differ,
            self.completions,
            self.failed
        )
    }
}

/// Why a policy module cannot be tested on a call log.
#[derive(Debug, thiserror::Error)]
pub enum ModuleTestError {
    /// The module cannot be instantiated.
    #[error(transparent)]
    Instance(#[from] PolicyError),
    /// The module refused the params.
    #[error("policy.params: {0}")]
    Params(#[source] ConfigureError),
}

/// Runs `module` (a fresh instance under the run's limits, configured with
/// `params`) on `rows` in order: each `decide` row's decision, whether the
/// call failed, whether it matches the recorded one, and how the engine
/// would serve it given the row's facts (assuming the guest accepted every
/// feature, IRQs were unmasked and it was not in its no-inject window:
/// facts the log does not carry).
pub fn test_module(
    module: &PolicyModule,
    params: &PolicyParams,
    rows: &[Row],
) -> Result<TestReport, ModuleTestError> {
    let mut p = module.instantiate()?;
    let text = params.record_text();
    p.configure_params(&Params::new(&text))
        .map_err(ModuleTestError::Params)?;
    let mut report = TestReport::default();
    let failures = |p: &apflab_policy_host::WasmPolicy| {
        let s = p.stats();
        s.fallbacks.total() + s.failed_notifications.total()
    };
    for row in rows {
        let before = failures(&p);
        match row.call {
            PolicyCall::Decide { fault: f, .. } => {
                report.decisions += 1;
                let decision = p.decide(&f);
                let mut line = format!(
                    "{:>6} t={} vcpu {} token {:#x} {} el{} runnable {} outstanding {} est {} ns -> {}",
                    row.line,
                    f.now_ns,
                    f.vcpu,
                    f.token,
                    f.access.name(),
                    f.el,
                    f.runnable,
                    f.outstanding,
                    f.est_fetch_ns,
                    decision_name(&decision),
                );
                if failures(&p) > before {
                    report.failed += 1;
                    let why = p.stats().last_failure.unwrap_or_default();
                    let _ = write!(line, "  FAILED, the engine uses the fallback: {why}");
                } else if let Served::Sync(Some(fallback)) = serve(
                    decision,
                    VcpuFacts {
                        accepted: Some(ApfConfig::IMPLEMENTED),
                        el: f.el as u8,
                        outstanding: f.outstanding as usize,
                        repeat: false,
                        irqs_masked: false,
                        no_inject: false,
                    },
                ) {
                    let _ = write!(line, "  (served sync: {})", fallback.name());
                }
                match row.recorded {
                    Some(r) if r == decision => report.same += 1,
                    Some(r) => {
                        report.differ += 1;
                        let _ = write!(line, "  DIFFERS from the recorded {}", decision_name(&r));
                    }
                    None => {}
                }
                report.lines.push(line);
            }
            PolicyCall::Complete(c) => {
                report.completions += 1;
                p.on_complete(&c);
                if failures(&p) > before {
                    report.failed += 1;
                    let why = p.stats().last_failure.unwrap_or_default();
                    report.lines.push(format!(
                        "{:>6} t={} complete token {:#x}: FAILED: {why}",
                        row.line, c.now_ns, c.token
                    ));
                }
            }
        }
    }
    p.on_run_end();
    report.log = p.log().render();
    Ok(report)
}

/// The language of `policy new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// A Rust crate against the SDK.
    Rust,
    /// One WebAssembly text file.
    Wat,
}

/// Where this apflab's policy SDK is (a path dependency of new crates).
pub fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/sdk")
}

/// Writes a new policy `name` into `parent/name/`: for Rust a crate that
/// builds with `cargo build --release` (its own workspace, the SDK as a
/// path dependency, the wasm32 target set in `.cargo/config.toml`); for
/// WAT one `.wat` file. Both get a config that runs it (module path
/// relative to the config) and a README. The files written, in order.
pub fn new_policy(name: &str, lang: Lang, parent: &Path) -> Result<Vec<PathBuf>, NewPolicyError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        || !name.starts_with(|c: char| c.is_ascii_lowercase())
    {
        return Err(NewPolicyError::Name(name.to_owned()));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(NewPolicyError::Exists(dir));
    }
    let snake = name.replace('-', "_");
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    let module_path = match lang {
        Lang::Rust => {
            let sdk = sdk_dir();
            let sdk = sdk
                .canonicalize()
                .map_err(|source| NewPolicyError::NoSdk { sdk, source })?;
            files.push((
                "Cargo.toml".into(),
                RUST_CARGO
                    .replace("@NAME@", name)
                    .replace("@SDK@", &sdk.display().to_string()),
            ));
            files.push((".cargo/config.toml".into(), CARGO_CONFIG.into()));
            files.push((
                "rust-toolchain.toml".into(),
                include_str!("../../../rust-toolchain.toml").into(),
            ));
            let type_name: String = name
                .split(['-', '_'])
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                        .unwrap_or_default()
                })
                .collect();
            files.push((
                "src/lib.rs".into(),
                RUST_LIB
                    .replace("@NAME@", name)
                    .replace("@TYPE@", &type_name),
            ));
            format!("target/wasm32-unknown-unknown/release/{snake}.wasm")
        }
        Lang::Wat => {
            let log_len = format!("{name}: run ended").len();
            files.push((
                format!("{name}.wat").into(),
                WAT.replace("@NAME@", name)
                    .replace("@LEN@", &log_len.to_string()),
            ));
            format!("{name}.wat")
        }
    };
    files.push((
        format!("{name}.toml").into(),
        CONFIG
            .replace("@NAME@", name)
            .replace("@MODULE@", &module_path),
    ));
    let build = match lang {
        Lang::Rust => "cargo build --release",
        Lang::Wat => "(nothing to build: apflab reads the text)",
    };
    files.push((
        "README.md".into(),
        README
            .replace("@NAME@", name)
            .replace("@BUILD@", build)
            .replace("@MODULE@", &module_path),
    ));
    let mut written = Vec::new();
    for (rel, text) in files {
        let path = dir.join(rel);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(|source| NewPolicyError::Write {
                path: p.to_owned(),
                source,
            })?;
        }
        if let Err(source) = std::fs::write(&path, text) {
            return Err(NewPolicyError::Write { path, source });
        }
        written.push(path);
    }
    Ok(written)
}

/// Why `apflab policy new` made no policy.
#[derive(Debug, thiserror::Error)]
pub enum NewPolicyError {
    /// The name cannot be a crate's.
    #[error(
        "policy name {0:?}: expected lower-case letters, digits, `-` and `_`, starting with a \
         letter (it becomes the crate's name)"
    )]
    Name(String),
    /// Its folder is there already.
    #[error("{}: already exists; choose another name or folder", .0.display())]
    Exists(PathBuf),
    /// The policy SDK a Rust policy depends on is not where apflab was
    /// built.
    #[error(
        "{}: the policy SDK of this apflab is not there ({source}); `policy new` needs the \
         checkout apflab was built from",
        .sdk.display()
    )]
    NoSdk {
        /// Where it should be.
        sdk: PathBuf,
        /// Why it is not.
        #[source]
        source: std::io::Error,
    },
    /// A file or folder could not be written.
    #[error("{}: {source}", .path.display())]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A policy module by name (a built-in example) or path, with the run's
/// limits.
pub fn load_module(path: &Path) -> Result<PolicyModule, PolicyError> {
    PolicyModule::load(path, &PolicyConfig::default())
}

const RUST_CARGO: &str = r#"[package]
name = "@NAME@"
version = "0.1.0"
edition = "2024"

[lib]
# cdylib: the .wasm apflab loads; rlib: the same policy as a Rust library,
# for native tests.
crate-type = ["cdylib", "rlib"]

[dependencies]
# The policy SDK of the apflab checkout this crate was made from. It is not
# on crates.io: keep this a path dependency (absolute, or relative to this
# file).
apflab-policy-sdk = { path = "@SDK@" }

[profile.release]
opt-level = "s"
panic = "abort"
lto = true
codegen-units = 1

# A workspace of its own, wherever it is put.
[workspace]
"#;

const CARGO_CONFIG: &str = r#"# `cargo build --release` builds the Wasm module.
[build]
target = "wasm32-unknown-unknown"
"#;

const RUST_LIB: &str = r#"//! `@NAME@`: an apflab async page fault policy.
//!
//! It learns the fetch time of every completed fetch (sync and async) and
//! goes async, rescheduling the faulting task, once the average reaches
//! `threshold_ns` (a `[policy] params` key) for a user task that has
//! another task to run; otherwise sync.
#![cfg_attr(target_arch = "wasm32", no_std)]

use apflab_policy_sdk::{
    Completion, Decision, FaultInfo, ParamError, Params, Policy, Sleep, has_async_room, rfcv2,
};

/// The policy's state for one run.
pub struct @TYPE@ {
    threshold_ns: u64,
    average_ns: Option<u64>,
}

impl Default for @TYPE@ {
    fn default() -> Self {
        @TYPE@ {
            threshold_ns: 20_000,
            average_ns: None,
        }
    }
}

impl Policy for @TYPE@ {
    fn configure<'p>(&mut self, params: &Params<'p>) -> Result<(), ParamError<'p>> {
        params.only(&["threshold_ns"])?;
        if let Some(ns) = params.u64("threshold_ns")? {
            self.threshold_ns = ns;
        }
        Ok(())
    }

    fn decide(&mut self, fault: &FaultInfo) -> Decision {
        let slow = self.average_ns.is_some_and(|a| a >= self.threshold_ns);
        if slow && fault.el == 0 && fault.runnable > 0 && has_async_room(fault) {
            rfcv2(Sleep::Reschedule)
        } else {
            Decision::Sync
        }
    }

    fn on_complete(&mut self, done: &Completion) {
        // A moving average with weight 1/8.
        self.average_ns = Some(match self.average_ns {
            None => done.fetch_ns,
            Some(a) if done.fetch_ns >= a => a + (done.fetch_ns - a) / 8,
            Some(a) => a - (a - done.fetch_ns) / 8,
        });
    }

    fn on_run_end(&mut self) {
        apflab_policy_sdk::log!("@NAME@: average fetch {:?} ns", self.average_ns);
    }
}

apflab_policy_sdk::export_policy!(@TYPE@);
"#;

const WAT: &str = r#";; @NAME@: an apflab async page fault policy in WebAssembly text (ABI v3).
;;
;; Async (RFCv2 transport, reschedule) for a user task with another task to
;; run once the engine's fetch estimate reaches 20 us; otherwise sync. Each
;; call reads its input record with `apf.input`; the offsets are those of
;; `apflab_abi::policy::record` (fault: el at 12, runnable at 40,
;; est_fetch_ns at 56).
(module
  (import "apf" "input" (func $input (param i32 i32) (result i32)))
  (import "apf" "log_at" (func $log_at (param i32 i32 i32)))
  (memory (export "memory") 1)
  ;; 0: the input record (72 bytes); 128: the log line
  (data (i32.const 128) "@NAME@: run ended")

  (func (export "apf_abi_version") (result i32)
    i32.const 3)

  (func (export "apf_decide") (result i64)
    (drop (call $input (i32.const 0) (i32.const 72)))
    (if (i32.and
          (i32.and (i32.eqz (i32.load (i32.const 12)))
                   (i32.gt_u (i32.load (i32.const 40)) (i32.const 0)))
          (i64.ge_u (i64.load (i32.const 56)) (i64.const 20000)))
      (then (return (i64.const 3))))      ;; ASYNC | RESCHEDULE
    (i64.const 0))                        ;; sync

  (func (export "apf_on_run_end")
    (call $log_at (i32.const 3) (i32.const 128)
      (i32.const @LEN@))))
"#;

const CONFIG: &str = r#"# Runs the policy @NAME@ on a mixed workload over far memory:
#   apflab run @NAME@.toml
# Paths in a config (policy.module, guest.kernel, pager files) are relative
# to the config file's folder.
seed = 1

[guest]
vcpus = 2
memory_mib = 64

[workload]
kind = "mixed"
ops = 200000
mib = 4
pattern = "seq"
passes = 1
verify = "store"
timeslice_us = 1000

[backend]
kind = "emu"
max_virtual_ms = 5000

[pager]
store = { kind = "synthetic", seed = 42 }
latency = { model = "constant", us = 50.0 }
resident_limit = "2 MiB"
initially_resident = 0.0

[policy]
module = "@MODULE@"
"#;

const README: &str = r#"# @NAME@

An apflab policy.

```sh
@BUILD@
apflab policy check @MODULE@        # loads it and calls each export once
apflab run @NAME@.toml --token-log  # one run; see policy.log and policy-calls.csv in its folder
apflab policy test @MODULE@ results/@NAME@/policy-calls.csv  # replays that run's calls
```

`[policy] module` in a config is relative to the config file's folder;
`[policy] params = { name = value }` reaches the module's `configure`.
"#;
