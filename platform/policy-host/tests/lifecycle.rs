//! A policy's state lives in its instance: it persists across the calls of
//! a run and starts afresh with the next run.

use apflab_artifacts::policy_wasm;
use apflab_policy_host::{
    BuiltinSync, Completion, Decision, FaultInfo, Policy, PolicyConfig, PolicyModule,
};

/// Answers the n-th decision of its run with async (halt) when n is odd
/// and sync when it is even (a counter in its memory).
const COUNTER: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "apf_abi_version") (result i32) i32.const 3)
  (func (export "apf_decide") (result i64)
    (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 1)))
    (i64.and (i64.extend_i32_u (i32.load (i32.const 0))) (i64.const 1))))"#;

#[test]
fn state_persists_within_a_run_and_is_fresh_per_run() {
    let module =
        PolicyModule::from_bytes("counter", COUNTER.as_bytes(), &PolicyConfig::default()).unwrap();
    for _run in 0..2 {
        let mut p = module.instantiate().unwrap();
        for n in 1..=3 {
            let d = p.decide(&FaultInfo::default());
            assert_eq!(d == Decision::Sync, n % 2 == 0, "decision {n}: {d:?}");
        }
        assert_eq!(p.stats().decisions, 3);
    }
}

#[test]
fn rust_policy_state_is_fresh_per_run() {
    let module = PolicyModule::load(&policy_wasm("adaptive"), &PolicyConfig::default()).unwrap();
    let fault = FaultInfo {
        can_reschedule: true,
        runnable: 2,
        est_fetch_ns: 1_000_000,
        ..FaultInfo::default()
    };
    let mut first = module.instantiate().unwrap();
    first.on_complete(&Completion {
        fetch_ns: 10,
        ..Completion::default()
    });
    let learned = first.decide(&fault);
    let mut second = module.instantiate().unwrap();
    let fresh = second.decide(&fault);
    assert_ne!(
        learned, fresh,
        "the second run must not know what the first learned"
    );
    assert_eq!(
        first.decide(&fault),
        learned,
        "the first run keeps what it learned"
    );
}

#[test]
fn builtin_sync_is_the_fallback() {
    assert_eq!(
        BuiltinSync.decide(&FaultInfo::default()),
        Decision::FALLBACK
    );
}
