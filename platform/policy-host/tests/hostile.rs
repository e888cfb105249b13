//! Hostile modules: each is refused at load with a specific error, or its
//! bad calls are contained, answered with the fallback and counted. Nothing
//! panics, nothing hangs.

use apflab_policy_host::{
    Completion, Decision, FailureCause, FaultInfo, Policy, PolicyConfig, PolicyError, PolicyModule,
    WasmPolicy,
};

/// An async completion, as the engine reports one.
fn async_done() -> Completion {
    Completion {
        asynchronous: true,
        token: 1,
        fetch_ns: 10,
        wait_ns: 10,
        ..Completion::default()
    }
}

/// A valid ABI v2 policy (the previous version, which hosts keep running)
/// with `decide` as the body of `apf_decide` (params 0..=7 are the facts)
/// and `extra` as more module fields.
fn policy(decide: &str, extra: &str) -> String {
    format!(
        r#"(module
             {extra}
             (memory (export "memory") 1)
             (func (export "apf_abi_version") (result i32) i32.const 2)
             (func (export "apf_decide")
               (param i32 i64 i32 i32 i32 i32 i64 i64) (result i64)
               {decide})
             (func (export "apf_on_ready") (param i64 i64))
             (func (export "apf_on_run_end")))"#
    )
}

fn load(wat: &str) -> Result<PolicyModule, PolicyError> {
    load_with(wat, &PolicyConfig::default())
}

fn load_with(wat: &str, config: &PolicyConfig) -> Result<PolicyModule, PolicyError> {
    PolicyModule::from_bytes("test.wat", wat.as_bytes(), config)
}

fn run(wat: &str) -> WasmPolicy {
    load(wat)
        .unwrap_or_else(|e| panic!("{e}"))
        .instantiate()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn fault() -> FaultInfo {
    FaultInfo {
        runnable: 1,
        can_reschedule: true,
        ..FaultInfo::default()
    }
}

/// Decides once with a policy that fails, and checks that the decision is
/// the fallback and counted under `cause`.
fn assert_contained(p: &mut WasmPolicy, cause: FailureCause) {
    assert_eq!(p.decide(&fault()), Decision::FALLBACK);
    let stats = p.stats();
    assert_eq!(stats.fallbacks.get(cause), 1, "{stats:?}");
    assert_eq!(stats.fallbacks.total(), 1, "{stats:?}");
    assert!(!stats.disabled);
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let mut p = run(&policy("(loop $l (br $l)) i64.const 0", ""));
    assert_contained(&mut p, FailureCause::OutOfFuel);
    assert!(p.stats().fuel_used >= PolicyConfig::DEFAULT_FUEL_PER_CALL);
    assert!(p.stats().last_failure.unwrap().contains("fuel"));
}

#[test]
fn memory_grow_bomb_hits_the_memory_limit() {
    // Grows by 1 MiB until refused; with the limit refusal traps.
    let bomb =
        "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) i64.const 1";
    let mut p = run(&policy(bomb, ""));
    assert_contained(&mut p, FailureCause::ResourceLimit);
}

#[test]
fn unreachable_is_a_counted_trap() {
    let mut p = run(&policy("unreachable", ""));
    assert_contained(&mut p, FailureCause::Trap);
    let failure = p.stats().last_failure.unwrap();
    assert!(failure.contains("unreachable"), "{failure}");
    // The message names the export that trapped, and the log keeps it.
    assert!(failure.contains("`apf_decide`"), "{failure}");
    let log = p.log().render();
    assert!(
        log.contains("WARN  host: call failed (trap): `apf_decide`"),
        "{log}"
    );
}

/// A valid ABI v3 policy: `decide` is the body of `apf_decide`, which
/// may read its record with `$input`.
fn policy_v3(decide: &str, extra: &str) -> String {
    format!(
        r#"(module
             (import "apf" "input" (func $input (param i32 i32) (result i32)))
             {extra}
             (memory (export "memory") 1)
             (func (export "apf_abi_version") (result i32) i32.const 3)
             (func (export "apf_decide") (result i64) {decide}))"#
    )
}

#[test]
fn a_v3_module_needs_only_decide_and_reads_its_record() {
    // Async halt when the record's token (offset 24) is odd, else sync;
    // the record's size comes back from `apf.input`.
    let body = "(if (i32.ne (call $input (i32.const 0) (i32.const 72)) (i32.const 72))
                  (then unreachable))
                (i64.and (i64.load (i32.const 24)) (i64.const 1))";
    let mut p = run(&policy_v3(body, ""));
    let odd = FaultInfo {
        token: 0x1001,
        ..fault()
    };
    assert!(matches!(p.decide(&odd), Decision::Async { .. }));
    assert_eq!(
        p.decide(&FaultInfo {
            token: 0x1002,
            ..fault()
        }),
        Decision::Sync
    );
    // No on_complete, no on_run_end: nothing is called, nothing fails.
    p.on_complete(&async_done());
    p.on_run_end();
    assert_eq!(p.usage().failed_calls, 0);
    assert_eq!(p.stats().notifications, 0);
}

#[test]
fn an_input_copy_outside_memory_is_a_counted_trap_naming_the_import() {
    let mut p = run(&policy_v3(
        "(drop (call $input (i32.const 65530) (i32.const 72))) i64.const 0",
        "",
    ));
    assert_contained(&mut p, FailureCause::Trap);
    let failure = p.stats().last_failure.unwrap();
    assert!(
        failure.contains("apf.input") && failure.contains("`apf_decide`"),
        "{failure}"
    );
}

#[test]
fn a_v3_decision_with_the_old_prefetch_bits_is_malformed() {
    let mut p = run(&policy_v3("i64.const 0x200", ""));
    assert_contained(&mut p, FailureCause::MalformedDecision);
}

#[test]
fn a_wat_type_error_names_the_file_and_line() {
    let wat = "(module\n  (memory (export \"memory\") 1)\n  (func (export \"apf_abi_version\") (result i32)\n    i64.const 3))\n";
    let err = load(wat).unwrap_err().to_string();
    assert!(err.contains("test.wat:4:"), "{err}");
}

#[test]
fn endless_recursion_is_a_counted_trap() {
    let body = "(call $deep (i32.const 0)) i64.extend_i32_u";
    let extra =
        "(func $deep (param i32) (result i32) (call $deep (i32.add (local.get 0) (i32.const 1))))";
    let cfg = PolicyConfig {
        fuel_per_call: 100_000_000,
        ..PolicyConfig::default()
    };
    let mut p = load_with(&policy(body, extra), &cfg)
        .unwrap()
        .instantiate()
        .unwrap();
    assert_contained(&mut p, FailureCause::Trap);
}

#[test]
fn malformed_decision_falls_back() {
    let mut p = run(&policy("i64.const -1", ""));
    assert_contained(&mut p, FailureCause::MalformedDecision);
    let mut p = run(&policy("i64.const 0x1100", "")); // prefetch 17
    assert_contained(&mut p, FailureCause::MalformedDecision);
}

#[test]
fn wrong_export_signature_is_refused_with_expected_and_found() {
    let wat = r#"(module (memory (export "memory") 1)
        (func (export "apf_abi_version") (result i32) i32.const 2)
        (func (export "apf_decide") (param i32) (result i64) i64.const 0)
        (func (export "apf_on_ready") (param i64 i64))
        (func (export "apf_on_run_end")))"#;
    let err = load(wat).unwrap_err();
    match &err {
        PolicyError::WrongExport {
            export,
            expected,
            found,
            ..
        } => {
            assert_eq!(*export, "apf_decide");
            assert_eq!(
                expected,
                "func(i32, i64, i32, i32, i32, i32, i64, i64) -> (i64)"
            );
            assert_eq!(found, "func(i32) -> (i64)");
        }
        other => panic!("unexpected {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("test.wat") && msg.contains("func(i32) -> (i64)"),
        "{msg}"
    );
}

#[test]
fn memory_exported_as_something_else_is_refused() {
    let wat = policy("i64.const 0", "").replace(
        r#"(memory (export "memory") 1)"#,
        r#"(memory 1) (global (export "memory") i32 (i32.const 0))"#,
    );
    assert!(matches!(
        load(&wat).unwrap_err(),
        PolicyError::WrongExport { export: "memory", ref found, .. } if found == "global"
    ));
}

#[test]
fn missing_export_is_refused() {
    let wat =
        policy("i64.const 0", "").replace(r#"(func (export "apf_on_ready") (param i64 i64))"#, "");
    let err = load(&wat).unwrap_err();
    assert!(
        matches!(err, PolicyError::MissingExport { export: "apf_on_ready", ref expected, .. } if expected == "func(i64, i64) -> ()"),
        "{err}"
    );
    let wat = policy("i64.const 0", "").replace(r#"(memory (export "memory") 1)"#, "");
    assert!(matches!(
        load(&wat).unwrap_err(),
        PolicyError::MissingExport {
            export: "memory",
            ..
        }
    ));
}

#[test]
fn wrong_abi_version_is_refused() {
    // Version 1 (before SDEI) and a future version 4 alike.
    for found in [1, 4] {
        let wat = policy("i64.const 0", "").replace("i32.const 2)", &format!("i32.const {found})"));
        let err = load(&wat).unwrap_err();
        assert!(
            matches!(err, PolicyError::AbiVersion { expected: 3, oldest: 2, found: f, .. } if f == found),
            "{err}"
        );
        assert!(
            err.to_string().contains(&format!(
                "ABI version {found}, this host speaks versions 2 to 3"
            )),
            "{err}"
        );
    }
}

#[test]
fn wasi_import_is_refused() {
    let extra = r#"(import "wasi_snapshot_preview1" "clock_time_get" (func (param i32 i64 i32) (result i32)))"#;
    let err = load(&policy("i64.const 0", extra)).unwrap_err();
    assert!(
        matches!(err, PolicyError::WasiImport { ref import_module, ref name, .. }
            if import_module == "wasi_snapshot_preview1" && name == "clock_time_get"),
        "{err}"
    );
    assert!(err.to_string().contains("WASI is not available"));
}

#[test]
fn unknown_import_is_refused() {
    let extra = r#"(import "env" "now" (func (result i64)))"#;
    let err = load(&policy("i64.const 0", extra)).unwrap_err();
    assert!(
        matches!(err, PolicyError::UnknownImport { ref import_module, ref name, ref ty, .. }
            if import_module == "env" && name == "now" && ty == "func() -> (i64)"),
        "{err}"
    );
    let extra = r#"(import "apf" "time" (func (result i64)))"#;
    assert!(matches!(
        load(&policy("i64.const 0", extra)).unwrap_err(),
        PolicyError::UnknownImport { .. }
    ));
    let extra = r#"(import "apf" "log" (func (param i64)))"#;
    assert!(matches!(
        load(&policy("i64.const 0", extra)).unwrap_err(),
        PolicyError::WrongImport { ref found, .. } if found == "func(i64) -> ()"
    ));
}

#[test]
fn looping_start_function_is_contained_at_load() {
    let extra = "(func $start (loop $l (br $l))) (start $start)";
    let err = load(&policy("i64.const 0", extra)).unwrap_err();
    assert!(
        matches!(
            err,
            PolicyError::Instantiate {
                cause: FailureCause::OutOfFuel,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn initial_memory_above_the_limit_is_refused() {
    // 300 pages = 18.75 MiB > 16 MiB.
    let wat = policy("i64.const 0", "").replace(
        r#"(memory (export "memory") 1)"#,
        r#"(memory (export "memory") 300)"#,
    );
    let err = load(&wat).unwrap_err();
    assert!(
        matches!(
            err,
            PolicyError::Instantiate {
                cause: FailureCause::ResourceLimit,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn oversized_module_is_refused_before_compiling() {
    let big = format!(r#"(data (i32.const 0) "{}")"#, "a".repeat(5 << 20));
    let wat = policy("i64.const 0", &big);
    let err = load(&wat).unwrap_err();
    assert!(
        matches!(err, PolicyError::TooLarge { max, size, .. } if max == 4 << 20 && size == wat.len()),
        "{err}"
    );
    // The same from a file, refused by its size without reading it.
    let path = std::env::temp_dir().join(format!("apflab-oversized-{}.wat", std::process::id()));
    std::fs::write(&path, &wat).unwrap();
    let err = PolicyModule::load(&path, &PolicyConfig::default()).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(err, PolicyError::TooLarge { .. }), "{err}");
    // And the cap is configurable.
    let small = PolicyConfig {
        max_module_bytes: 64,
        ..PolicyConfig::default()
    };
    assert!(matches!(
        load_with(&policy("i64.const 0", ""), &small).unwrap_err(),
        PolicyError::TooLarge { max: 64, .. }
    ));
}

#[test]
fn garbage_is_a_compile_error() {
    let err =
        PolicyModule::from_bytes("junk", b"\0asm\x01\0\0\0\xff\xff", &PolicyConfig::default())
            .unwrap_err();
    assert!(matches!(err, PolicyError::Compile { .. }), "{err}");
    let err = load("(module (func").unwrap_err();
    assert!(matches!(err, PolicyError::Compile { .. }), "{err}");
    let err = PolicyModule::load(
        std::path::Path::new("/nonexistent/p.wasm"),
        &PolicyConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(err, PolicyError::Read { .. }), "{err}");
}

#[test]
fn disabled_after_consecutive_failures() {
    let cfg = PolicyConfig {
        max_consecutive_failures: 3,
        ..PolicyConfig::default()
    };
    let mut p = load_with(&policy("unreachable", ""), &cfg)
        .unwrap()
        .instantiate()
        .unwrap();
    for _ in 0..5 {
        assert_eq!(p.decide(&fault()), Decision::FALLBACK);
    }
    p.on_complete(&async_done());
    let stats = p.stats();
    assert!(stats.disabled && p.is_disabled());
    assert_eq!(stats.disabled_after_calls, Some(3));
    assert_eq!(stats.fallbacks.trap, 3);
    assert_eq!(stats.fallbacks.disabled, 2);
    assert_eq!(stats.failed_notifications.disabled, 1);
    assert_eq!(stats.decisions, 5);
}

#[test]
fn a_success_resets_the_failure_streak() {
    // Traps on odd IPAs, decides async halt on even ones.
    let body =
        "(if (i32.wrap_i64 (i64.and (local.get 1) (i64.const 1))) (then unreachable)) i64.const 1";
    let cfg = PolicyConfig {
        max_consecutive_failures: 3,
        ..PolicyConfig::default()
    };
    let mut p = load_with(&policy(body, ""), &cfg)
        .unwrap()
        .instantiate()
        .unwrap();
    for ipa in [1, 3, 0, 5, 7, 2, 9, 11] {
        let d = p.decide(&FaultInfo { ipa, ..fault() });
        assert_eq!(d == Decision::FALLBACK, ipa % 2 == 1, "ipa {ipa}");
    }
    let stats = p.stats();
    assert!(!stats.disabled);
    assert_eq!(stats.fallbacks.trap, 6);
    // Three in a row now disables it.
    p.decide(&FaultInfo { ipa: 13, ..fault() });
    assert!(p.stats().disabled);
}

#[test]
fn failing_notifications_are_counted_too() {
    let wat = policy("i64.const 1", "").replace(
        r#"(func (export "apf_on_ready") (param i64 i64))"#,
        r#"(func (export "apf_on_ready") (param i64 i64) unreachable)"#,
    );
    let mut p = run(&wat);
    p.on_complete(&async_done());
    assert_eq!(p.decide(&fault()), Decision::unpack(1).unwrap());
    let stats = p.stats();
    assert_eq!(stats.failed_notifications.trap, 1);
    assert_eq!(stats.fallbacks.total(), 0);
}

#[test]
fn log_flood_is_rate_limited_and_bad_pointers_dropped() {
    let extra = r#"(import "apf" "log" (func $log (param i32 i32)))
                   (data (i32.const 0) "hello")"#;
    // Logs 100 times per decision.
    let body = "(local $i i32)
        (loop $l
          (call $log (i32.const 0) (i32.const 5))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const 100))))
        i64.const 0";
    // (The template puts the body first in the function, so the local
    // declaration is legal there.)
    let mut p = run(&policy(body, extra));
    assert_eq!(p.decide(&fault()), Decision::Sync);
    let stats = p.stats();
    assert_eq!(
        stats.log_messages,
        u64::from(PolicyConfig::default().log_burst)
    );
    assert_eq!(stats.log_messages + stats.log_dropped, 100);

    let bad = policy(
        "(call $log (i32.const 65530) (i32.const 100)) i64.const 0",
        extra,
    );
    let mut p = run(&bad);
    p.decide(&fault());
    let stats = p.stats();
    assert_eq!((stats.log_messages, stats.log_dropped), (0, 1));
    assert_eq!(stats.fallbacks.total(), 0);
}
