//! The example policies, built to Wasm by the normal build, decide as their
//! documentation says, and exactly as their Rust source does natively.

use apflab_abi::apf::MAX_OUTSTANDING;
use apflab_abi::policy::{AccessKind, Initiation, NotPresentDelivery, ReadyDelivery, Sleep};
use apflab_artifacts::{policy_wasm, policy_wat};
use apflab_policy_host::{
    Completion, Decision, FaultInfo, Params, Policy, PolicyConfig, PolicyModule, WasmPolicy, check,
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
        token: 0x1001,
        access: AccessKind::Read,
        el: 0,
        can_reschedule: true,
        runnable: 3,
        outstanding: 0,
        now_ns: 1_000_000,
        est_fetch_ns: 50_000,
        fetches_completed: 4,
    }
}

/// A completed fetch of `fetch_ns` (async, on vCPU 1).
fn done(token: u64, fetch_ns: u64) -> Completion {
    Completion {
        vcpu: 1,
        asynchronous: true,
        token,
        ipa: 0x4800_0000,
        fetch_ns,
        wait_ns: fetch_ns + 500,
        now_ns: 2_000_000,
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
    }
}

fn paolo(sleep: Sleep) -> Decision {
    Decision::Async {
        not_present: NotPresentDelivery::DedicatedEc,
        ready: ReadyDelivery::Interrupt,
        initiation: Initiation::Guest,
        sleep,
    }
}

const SYNC: Decision = Decision::Sync;

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
fn adaptive_learns_from_completed_fetches_and_logs_at_the_end() {
    let mut p = load("adaptive");
    // The store says 50 µs, but pages arrive in 1 µs: halting is cheaper.
    assert_eq!(p.decide(&user()), rfcv2(Sleep::Reschedule));
    p.on_complete(&Completion {
        asynchronous: false,
        ..done(0x1001, 1_000)
    });
    assert_eq!(p.decide(&user()), rfcv2(Sleep::Halt));
    // One slow page moves the average to 1000 + (100000 - 1000) / 8 =
    // 13375 ns, above the 10 µs reschedule cost.
    p.on_complete(&done(0x2001, 100_000));
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
        (kernel(), Decision::Sync),
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
    p.on_complete(&done(0x1001, 5));
    p.on_run_end();
    let stats = p.stats();
    assert_eq!(
        stats.fallbacks.total() + stats.failed_notifications.total(),
        0
    );
    assert_eq!(stats.log_messages, 1);
    assert!(
        p.log()
            .render()
            .contains("INFO  module: threshold: run ended")
    );
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
                                token: 0x1000 + u64::from(vcpu),
                                access: AccessKind::Write,
                                el,
                                can_reschedule,
                                runnable,
                                outstanding,
                                now_ns: 123_456_789,
                                est_fetch_ns,
                                fetches_completed: 1,
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
            let c = Completion {
                asynchronous: i % 2 == 0,
                ..done(i as u64, (i as u64 * 7919) % 200_000)
            };
            wasm.on_complete(&c);
            native.on_complete(&c);
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
    assert_same_as_native("ewma", ewma::Ewma::default());
}

#[test]
fn ewma_starts_sync_learns_from_sync_fetches_and_goes_async_past_its_threshold() {
    let mut p = load("ewma");
    let async_reschedule = Decision::Async {
        not_present: NotPresentDelivery::DedicatedEc,
        ready: ReadyDelivery::Interrupt,
        initiation: Initiation::Host,
        sleep: Sleep::Reschedule,
    };
    // Nothing learned: sync, whatever the engine's estimate says.
    assert_eq!(p.decide(&user()), SYNC);
    // Sync fetches of 10 µs: below the default 20 µs threshold.
    let sync_done = |fetch_ns| Completion {
        asynchronous: false,
        ..done(0x1001, fetch_ns)
    };
    p.on_complete(&sync_done(10_000));
    assert_eq!(p.decide(&user()), SYNC);
    // Slower fetches pull the average (weight 1/8) over the threshold:
    // 10000 + (100000 - 10000) / 8 = 21250 ns.
    p.on_complete(&sync_done(100_000));
    assert_eq!(p.decide(&user()), async_reschedule);
    assert_eq!(p.decide(&kernel()), SYNC);
    assert_eq!(p.decide(&cannot_reschedule()), SYNC);
    p.on_run_end();
    let log = p.log().render();
    assert!(log.contains("reached the threshold 20000 ns"), "{log}");
    assert!(log.contains("4 sync and 1 async decisions"), "{log}");
}

#[test]
fn params_reach_the_module_and_change_its_decisions() {
    let module = PolicyModule::load(&policy_wasm("ewma"), &PolicyConfig::default()).unwrap();
    let decide_after_30us = |params: &str| {
        let mut p = module.instantiate().unwrap();
        p.configure_params(&Params::new(params)).unwrap();
        p.on_complete(&done(0x1001, 30_000));
        p.decide(&user())
    };
    // Default threshold 20 µs: a 30 µs average is slow enough.
    assert!(matches!(decide_after_30us(""), Decision::Async { .. }));
    // Raised to 50 µs by a parameter: not slow enough.
    assert_eq!(decide_after_30us("threshold_ns=50000\n"), SYNC);
    assert!(matches!(
        decide_after_30us("threshold_ns=30000\nshift=0\n"),
        Decision::Async { .. }
    ));

    // Refused parameters name the parameter and the problem.
    let refuse = |params: &str| {
        let mut p = module.instantiate().unwrap();
        p.configure_params(&Params::new(params))
            .unwrap_err()
            .to_string()
    };
    let e = refuse("threshold=5\n");
    assert!(
        e.contains("policy.params.threshold: unknown parameter"),
        "{e}"
    );
    let e = refuse("threshold_ns=-5\n");
    assert!(
        e.contains("policy.params.threshold_ns: a integer, expected a non-negative integer")
            || e.contains("policy.params.threshold_ns: an integer"),
        "{e}"
    );
    let e = refuse("shift=40\n");
    assert!(e.contains("policy.params.shift: expected 0..=16"), "{e}");

    // A module without `apf_configure` takes none.
    let mut threshold = PolicyModule::load(&policy_wat("threshold"), &PolicyConfig::default())
        .unwrap()
        .instantiate()
        .unwrap();
    threshold.configure_params(&Params::EMPTY).unwrap();
    let e = threshold
        .configure_params(&Params::new("x=1\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("takes no parameters"), "{e}");
}

/// Modules built against ABI v2 (before records, completions and
/// params): the binaries the previous SDK built, and the previous
/// hand-written WAT module, kept as they were.
fn abi2_fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn a_module_built_against_abi_v2_still_loads_and_decides_the_same() {
    // gavin-rfcv2's rule did not change: its v2 build and its v3 build
    // decide alike on every fact combination.
    let v2 = PolicyModule::load(
        &abi2_fixture("gavin-rfcv2-abi2.wasm"),
        &PolicyConfig::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v2.info().abi_version, 2);
    let mut old = v2.instantiate().unwrap();
    let mut new = load("gavin_rfcv2");
    assert_eq!(new.abi_version(), 3);
    for fault in grid() {
        assert_eq!(old.decide(&fault), new.decide(&fault), "{fault:?}");
    }
    assert_eq!(old.stats().fallbacks.total(), 0);

    // adaptive v2 learned from `apf_on_ready(token, fault-to-ready)` of
    // async faults: the host still calls it so, and never with sync
    // completions, so it decides as its v2 rule says.
    let mut old = PolicyModule::load(
        &abi2_fixture("adaptive-abi2.wasm"),
        &PolicyConfig::default(),
    )
    .unwrap()
    .instantiate()
    .unwrap();
    assert_eq!(old.decide(&user()), rfcv2(Sleep::Reschedule));
    // A sync completion: v2 never heard of those.
    old.on_complete(&Completion {
        asynchronous: false,
        ..done(0x1001, 1_000)
    });
    assert_eq!(old.decide(&user()), rfcv2(Sleep::Reschedule));
    // An async one: on_ready with the wait (fault to page in), 1500 ns.
    old.on_complete(&done(0x1001, 1_000));
    assert_eq!(old.decide(&user()), rfcv2(Sleep::Halt));
    assert_eq!(old.stats().notifications, 1);
    assert_eq!(old.usage().failed_calls, 0);

    // The v2 WAT module asks for a prefetch in kernel mode: the decision
    // is sync and the prefetch is ignored, counted.
    let mut old = PolicyModule::load(
        &abi2_fixture("threshold-abi2.wat"),
        &PolicyConfig::default(),
    )
    .unwrap()
    .instantiate()
    .unwrap();
    let mut new = PolicyModule::load(&policy_wat("threshold"), &PolicyConfig::default())
        .unwrap()
        .instantiate()
        .unwrap();
    for fault in grid() {
        assert_eq!(old.decide(&fault), new.decide(&fault), "{fault:?}");
    }
    assert!(old.usage().prefetch_ignored > 0);
    assert_eq!(old.usage().failed_calls, 0);
}

#[test]
fn check_reports_exports_and_abi_version() {
    let info = check(&policy_wasm("gavin_rfcv2")).unwrap();
    assert_eq!(info.abi_version, 3);
    assert_eq!(info.sha256.len(), 64);
    let decide = info
        .exports
        .iter()
        .find(|e| e.name == "apf_decide")
        .unwrap();
    assert_eq!(decide.ty, "func() -> (i64)");
    assert!(
        info.exports
            .iter()
            .any(|e| e.name == "memory" && e.ty == "memory")
    );
    assert!(info.imports.iter().any(|i| i.name == "apf.input"));
    assert!(info.to_string().contains("ABI version 3"));

    let info = check(&policy_wat("threshold")).unwrap();
    let names: Vec<&str> = info.imports.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["apf.input", "apf.log_at"]);

    let info = check(&abi2_fixture("gavin-rfcv2-abi2.wasm")).unwrap();
    assert_eq!(info.abi_version, 2);
}

#[test]
fn check_calls_each_export_once_under_the_run_limits() {
    let module = PolicyModule::load(&policy_wasm("ewma"), &PolicyConfig::default()).unwrap();
    let report = apflab_policy_host::sample_calls(&module, &Params::EMPTY).unwrap();
    assert!(report.passed(), "{report}");
    let exports: Vec<&str> = report.calls.iter().map(|c| c.export).collect();
    assert_eq!(
        exports,
        [
            "apf_configure",
            "apf_decide",
            "apf_decide",
            "apf_decide",
            "apf_on_complete",
            "apf_on_complete",
            "apf_on_run_end"
        ]
    );
    // A module that loops in `apf_decide` or returns garbage is not valid.
    for (body, cause) in [
        ("(loop $l (br $l)) i64.const 0", "out of fuel"),
        ("i64.const 0x4000", "malformed decision"),
    ] {
        let wat = format!(
            r#"(module (memory (export "memory") 1)
                 (func (export "apf_abi_version") (result i32) i32.const 3)
                 (func (export "apf_decide") (result i64) {body}))"#
        );
        let m =
            PolicyModule::from_bytes("bad.wat", wat.as_bytes(), &PolicyConfig::default()).unwrap();
        let report = apflab_policy_host::sample_calls(&m, &Params::EMPTY).unwrap();
        assert!(!report.passed());
        let text = report.to_string();
        assert!(text.contains("FAIL  apf_decide"), "{text}");
        assert!(text.contains(cause), "{text}");
        assert!(text.contains("`apf_decide`"), "{text}");
    }
}

#[test]
fn every_example_is_built() {
    for name in apflab_artifacts::EXAMPLE_POLICIES {
        let path = policy_wasm(name);
        assert!(path.is_file(), "{} missing", path.display());
        check(&path).unwrap_or_else(|e| panic!("{e}"));
    }
}
