//! The cost of one policy decision: through the Wasm host (wasmtime, fuel,
//! fallback checks, host-side timing) versus the same policy compiled as
//! native Rust. Goal: a Wasm decision ≤ 100 ns median.

use apflab_artifacts::policy_wasm;
use apflab_policy_host::{Completion, FaultInfo, Policy, PolicyConfig, PolicyModule};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;

/// A spread of faults (user and kernel mode, with and without room to
/// reschedule) so no branch is always taken.
fn faults() -> Vec<FaultInfo> {
    (0..64u32)
        .map(|i| FaultInfo {
            vcpu: i % 4,
            ipa: 0x4000_0000 + u64::from(i) * 0x1000,
            el: u32::from(i % 5 == 0),
            can_reschedule: i % 3 != 0,
            runnable: i % 4,
            outstanding: i % 70,
            now_ns: u64::from(i) * 10_000,
            est_fetch_ns: u64::from(i % 8) * 5_000,
            token: u64::from(i) << 8,
            fetches_completed: u64::from(i),
            ..FaultInfo::default()
        })
        .collect()
}

fn bench_decide(c: &mut Criterion, group_name: &str, wasm_name: &str, native: impl Policy) {
    let faults = faults();
    let mut group = c.benchmark_group(group_name);
    let module = PolicyModule::load(&policy_wasm(wasm_name), &PolicyConfig::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut wasm = module.instantiate().unwrap_or_else(|e| panic!("{e}"));
    let mut native = native;
    let mut i = 0;
    group.bench_function(BenchmarkId::new("decide", "wasm"), |b| {
        b.iter(|| {
            i = (i + 1) % faults.len();
            black_box(wasm.decide(black_box(&faults[i])))
        })
    });
    group.bench_function(BenchmarkId::new("decide", "native"), |b| {
        b.iter(|| {
            i = (i + 1) % faults.len();
            black_box(native.decide(black_box(&faults[i])))
        })
    });
    group.bench_function(BenchmarkId::new("on_complete", "wasm"), |b| {
        b.iter(|| {
            i = (i + 1) % faults.len();
            wasm.on_complete(black_box(&Completion {
                vcpu: faults[i].vcpu,
                asynchronous: i % 2 == 0,
                token: faults[i].token,
                ipa: faults[i].ipa,
                fetch_ns: faults[i].est_fetch_ns,
                wait_ns: faults[i].est_fetch_ns,
                now_ns: faults[i].now_ns,
            }))
        })
    });
    group.finish();
    let stats = wasm.stats();
    assert_eq!(stats.fallbacks.total(), 0, "{stats:?}");
}

fn policy_decision(c: &mut Criterion) {
    bench_decide(
        c,
        "policy/gavin_rfcv2",
        "gavin_rfcv2",
        gavin_rfcv2::GavinRfcv2,
    );
    bench_decide(
        c,
        "policy/adaptive",
        "adaptive",
        adaptive::Adaptive::default(),
    );
}

fn policy_instantiate(c: &mut Criterion) {
    let module = PolicyModule::load(&policy_wasm("adaptive"), &PolicyConfig::default())
        .unwrap_or_else(|e| panic!("{e}"));
    c.bench_function("policy/adaptive/instantiate", |b| {
        b.iter(|| black_box(module.instantiate().unwrap_or_else(|e| panic!("{e}"))))
    });
}

criterion_group!(benches, policy_decision, policy_instantiate);
criterion_main!(benches);
