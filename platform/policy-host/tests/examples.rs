//! The example policies, built to Wasm by the normal build, decide as their
//! documentation says, and exactly as their Rust source does natively.

use apflab_abi::apf::MAX_OUTSTANDING;
use apflab_abi::policy::{Initiation, NotPresentDelivery, ReadyDelivery, Sleep};
use apflab_artifacts::{policy_wasm, policy_wat};
use apflab_policy_host::{
    Decision, FaultInfo, Policy, PolicyConfig, PolicyModule, WasmPolicy, check,
};

fn load(name: &str) -> WasmPolicy {
    PolicyModule::load(&policy_wasm(name), &PolicyConfig::default())
        .unwrap_or_else(|e| panic!("{e}"))
        .instantiate()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A user-mode fault on vCPU 1 that could be rescheduled, with nothing
/// outstanding and a 50 µs fetch estimate; tests change what they need.
fn user() -> FaultInfo {
    FaultInfo {
        vcpu: 1,
        ipa: 0x4800_0000,
        el: 0,
        can_reschedule: true,
        runnable: 3,
        outstanding: 0,
        now_ns: 1_000_000,
        est_fetch_ns: 50_000,
    }
}

fn kernel() -> FaultInfo {
    FaultInfo { el: 1, ..user() }
}

fn cannot_reschedule() -> FaultInfo {
    FaultInfo {
        can_reschedule: false,
        ..user()
    }
}

fn full() -> FaultInfo {
    FaultInfo {
        outstanding: MAX_OUTSTANDING as u32,
        ..user()
    }
}

fn rfcv2(sleep: Sleep) -> Decision {
    Decision::Async {
        not_present: NotPresentDelivery::DataAbort,
        ready: ReadyDelivery::Exception,
        initiation: Initiation::Host,
        sleep,
        prefetch: 0,
    }
}

fn paolo(sleep: Sleep) -> Decision {
    Decision::Async {
        not_present: NotPresentDelivery::DedicatedEc,
        ready: ReadyDelivery::Interrupt,
        initiation: Initiation::Guest,
        sleep,
        prefetch: 0,
    }
}

const SYNC: Decision = Decision::Sync { prefetch: 0 };

fn assert_table(name: &str, table: &[(FaultInfo, Decision)]) {
    let mut p = load(name);
    for (fault, want) in table {
        assert_eq!(p.decide(fault), *want, "{name} on {fault:?}");
    }
    let stats = p.stats();
    assert_eq!(stats.decisions, table.len() as u64);
    assert_eq!(stats.fallbacks.total(), 0, "{name}: {stats:?}");
    assert!(stats.fuel_used > 0);
}

#[test]
fn sync_is_always_sync() {
    assert_table(
        "sync",
        &[
            (user(), SYNC),
            (kernel(), SYNC),
            (full(), SYNC),
            (cannot_reschedule(), SYNC),
        ],
    );
}

#[test]
fn gavin_rfcv2_decision_table() {
    assert_table(
        "gavin_rfcv2",
        &[
            (user(), rfcv2(Sleep::Reschedule)),
            (cannot_reschedule(), rfcv2(Sleep::Halt)),
            (kernel(), rfcv2(Sleep::Halt)),
            (
                FaultInfo {
                    outstanding: MAX_OUTSTANDING as u32 - 1,
                    ..user()
                },
                rfcv2(Sleep::Reschedule),
            ),
            (full(), SYNC),
        ],
    );
}

#[test]
fn gavin_v4_decision_table() {
    let v4 = Decision::Async {
        not_present: NotPresentDelivery::Sdei,
        ready: ReadyDelivery::Interrupt,
        initiation: Initiation::Host,
        sleep: Sleep::Reschedule,
        prefetch: 0,
    };
    assert_table(
        "gavin_v4",
        &[
            (user(), v4),
            (cannot_reschedule(), SYNC),
            (kernel(), SYNC),
            (full(), SYNC),
        ],
    );
}

#[test]
fn paolo_decision_table() {
    assert_table(
        "paolo",
        &[
            (user(), paolo(Sleep::Reschedule)),
            (cannot_reschedule(), paolo(Sleep::Halt)),
            (kernel(), SYNC),
            (
                FaultInfo {
                    can_reschedule: false,
                    ..kernel()
                },
                SYNC,
            ),
            (full(), SYNC),
        ],
    );
}

#[test]
fn always_halt_and_always_reschedule_ignore_the_facts() {
    let faults = [user(), kernel(), cannot_reschedule(), full()];
    assert_table("always-halt", &faults.map(|f| (f, rfcv2(Sleep::Halt))));
    assert_table(
        "always_reschedule",
        &faults.map(|f| (f, rfcv2(Sleep::Reschedule))),
    );
}

#[test]
fn adaptive_decision_table_before_learning() {
    assert_table(
        "adaptive",
        &[
            (user(), rfcv2(Sleep::Reschedule)),
            (
                FaultInfo {
                    est_fetch_ns: 9_999,
                    ..user()
                },
                rfcv2(Sleep::Halt),
            ),
            (
                FaultInfo {
                    est_fetch_ns: 10_000,
                    ..user()
                },
                rfcv2(Sleep::Reschedule),
            ),
            (
                FaultInfo {
                    runnable: 0,
                    ..user()
                },
                rfcv2(Sleep::Halt),
            ),
            (cannot_reschedule(), rfcv2(Sleep::Halt)),
            (kernel(), rfcv2(Sleep::Halt)),
            (full(), SYNC),
        ],
    );
}

#[test]
fn adaptive_learns_from_ready_latencies_and_logs_at_the_end() {
    let mut p = load("adaptive");
    // The store says 50 µs, but pages arrive in 1 µs: halting is cheaper.
    assert_eq!(p.decide(&user()), rfcv2(Sleep::Reschedule));
    p.on_ready(0x1001, 1_000);
    assert_eq!(p.decide(&user()), rfcv2(Sleep::Halt));
    // One slow page moves the average to 1000 + (100000 - 1000) / 8 =
    // 13375 ns, above the 10 µs reschedule cost.
    p.on_ready(0x2001, 100_000);
    assert_eq!(
        p.decide(&FaultInfo {
            est_fetch_ns: 0,
            ..user()
        }),
        rfcv2(Sleep::Reschedule)
    );
    p.on_run_end();
    let stats = p.stats();
    assert_eq!(stats.notifications, 3);
    assert_eq!(stats.failed_notifications.total(), 0);
    assert_eq!(stats.log_messages, 1, "{stats:?}");
}

#[test]
fn wat_threshold_decision_table() {
    let mut p = PolicyModule::load(&policy_wat("threshold"), &PolicyConfig::default())
        .unwrap_or_else(|e| panic!("{e}"))
        .instantiate()
        .unwrap();
    let table = [
        (kernel(), Decision::Sync { prefetch: 4 }),
        (user(), rfcv2(Sleep::Reschedule)),
        (
            FaultInfo {
                est_fetch_ns: 49_999,
                ..user()
            },
            rfcv2(Sleep::Halt),
        ),
        (
            FaultInfo {
                runnable: 0,
                ..user()
            },
            rfcv2(Sleep::Halt),
        ),
        (cannot_reschedule(), rfcv2(Sleep::Halt)),
    ];
    for (fault, want) in table {
        assert_eq!(p.decide(&fault), want, "{fault:?}");
    }
    p.on_ready(0x1001, 5);
    p.on_run_end();
    let stats = p.stats();
    assert_eq!(
        stats.fallbacks.total() + stats.failed_notifications.total(),
        0
    );
    assert_eq!(stats.log_messages, 1);
}

/// Every combination of the facts that matter, with fixed values elsewhere.
fn grid() -> Vec<FaultInfo> {
    let mut out = Vec::new();
    for el in [0, 1] {
        for can_reschedule in [false, true] {
            for runnable in [0, 1, 5] {
                for outstanding in [0, 63, 64, 1000] {
                    for est_fetch_ns in [0, 9_999, 10_000, 50_000, u64::MAX] {
                        for vcpu in [0, 7] {
                            out.push(FaultInfo {
                                vcpu,
                                ipa: 0x4000_0000 + u64::from(vcpu) * 0x1000,
                                el,
                                can_reschedule,
                                runnable,
                                outstanding,
                                now_ns: 123_456_789,
                                est_fetch_ns,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// Feeds the same events to the Wasm build and the native build.
fn assert_same_as_native(name: &str, mut native: impl Policy) {
    let mut wasm = load(name);
    for (i, fault) in grid().iter().enumerate() {
        assert_eq!(
            wasm.decide(fault),
            native.decide(fault),
            "{name} on {fault:?}"
        );
        if i % 7 == 0 {
            let latency = (i as u64 * 7919) % 200_000;
            wasm.on_ready(i as u64, latency);
            native.on_ready(i as u64, latency);
        }
    }
    assert_eq!(wasm.stats().fallbacks.total(), 0);
}

#[test]
fn wasm_builds_decide_exactly_like_the_native_ones() {
    assert_same_as_native("sync", sync::SyncPolicy);
    assert_same_as_native("gavin_rfcv2", gavin_rfcv2::GavinRfcv2);
    assert_same_as_native("paolo", paolo::Paolo);
    assert_same_as_native("always_halt", always_halt::AlwaysHalt);
    assert_same_as_native("always_reschedule", always_reschedule::AlwaysReschedule);
    assert_same_as_native("adaptive", adaptive::Adaptive::default());
}

#[test]
fn check_reports_exports_and_abi_version() {
    let info = check(&policy_wasm("gavin_rfcv2")).unwrap();
    assert_eq!(info.abi_version, 2);
    assert_eq!(info.sha256.len(), 64);
    let decide = info
        .exports
        .iter()
        .find(|e| e.name == "apf_decide")
        .unwrap();
    assert_eq!(
        decide.ty,
        "func(i32, i64, i32, i32, i32, i32, i64, i64) -> (i64)"
    );
    assert!(
        info.exports
            .iter()
            .any(|e| e.name == "memory" && e.ty == "memory")
    );
    assert!(info.imports.is_empty());
    assert!(info.to_string().contains("ABI version 2"));

    let info = check(&policy_wat("threshold")).unwrap();
    assert_eq!(info.imports.len(), 1);
    assert_eq!(info.imports[0].name, "apf.log");
    assert_eq!(info.imports[0].ty, "func(i32, i32) -> ()");
}

#[test]
fn every_example_is_built() {
    for name in apflab_artifacts::EXAMPLE_POLICIES {
        let path = policy_wasm(name);
        assert!(path.is_file(), "{} missing", path.display());
        check(&path).unwrap_or_else(|e| panic!("{e}"));
    }
}
