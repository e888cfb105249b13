//! Writing a policy, end to end on the emu backend: a policy that learns
//! changes its decisions during a run, parameters reach it, `policy test`
//! replays a run's calls, results follow the module's bytes, a disabled
//! policy shows wherever the run does, and `policy new` makes a policy
//! that builds outside the repository.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const APFLAB: &str = env!("CARGO_BIN_EXE_apflab");

fn apflab(dir: &Path, args: &[&str]) -> Output {
    Command::new(APFLAB)
        .current_dir(dir)
        .args(args)
        .output()
        .expect("apflab runs")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A CPU task beside a memory task whose working set is twice the
/// resident limit, on one vCPU, with 100 µs fetches; then `policy`
/// (TOML lines).
fn config(policy: &str) -> String {
    format!(
        "seed = 3\n[guest]\nvcpus = 1\nmemory_mib = 64\n\
         [workload]\nkind = \"mixed\"\nops = 2000000\nmib = 4\npattern = \"random\"\npasses = 1\nverify = \"store\"\n\
         [backend]\nkind = \"emu\"\n\
         [pager]\nstore = {{ kind = \"synthetic\", seed = 5 }}\nlatency = {{ model = \"constant\", us = 100.0 }}\n\
         resident_limit = \"2 MiB\"\ninitially_resident = 0.0\n{policy}"
    )
}

/// Writes `config` as `dir/run.toml` and runs it into `dir/out` with
/// `flags`; the output and the results.
fn run(dir: &Path, config: &str, flags: &[&str]) -> (Output, Value) {
    std::fs::write(dir.join("run.toml"), config).unwrap();
    let out = apflab(
        dir,
        &[&["run", "run.toml", "--out", "out"][..], flags].concat(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = std::fs::read_to_string(dir.join("out/result.json")).unwrap();
    (out, serde_json::from_str(&r).unwrap())
}

fn u(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} in {v:#}"))
}

/// The `decide` rows of a policy input log: (fetches completed before,
/// decision).
fn decisions(csv: &str) -> Vec<(u64, String)> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|c| *c == name).unwrap();
    let (call, done, decision) = (col("call"), col("fetches_completed"), col("decision"));
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f[call] == "decide")
        .map(|f| (f[done].parse().unwrap(), f[decision].to_owned()))
        .collect()
}

#[test]
fn a_policy_that_starts_sync_learns_the_fetch_time_and_goes_async() {
    let dir = tempfile::tempdir().unwrap();
    let (out, r) = run(
        dir.path(),
        &config("[policy]\nmodule = \"ewma\"\n"),
        &["--token-log"],
    );
    let csv = std::fs::read_to_string(dir.path().join("out/policy-calls.csv")).unwrap();
    let d = decisions(&csv);
    let first_async = d
        .iter()
        .position(|(_, decision)| decision != "sync")
        .unwrap_or_else(|| panic!("never async:\n{csv}"));
    // Before it had learned anything it decided sync, and learned from
    // those sync fetches alone (nothing async had completed yet).
    assert!(first_async >= 1, "{csv}");
    assert_eq!(d[0], (0, "sync".to_owned()));
    assert!(d[first_async].0 >= 1, "{:?}", d[first_async]);
    let after_async = d[first_async..].iter().filter(|(_, x)| x != "sync").count();
    assert!(
        after_async > 10,
        "{after_async} async decisions after learning"
    );
    // The run says the same: sync faults and async faults in one run.
    assert!(u(&r, "/apf/async_faults") > 0 && u(&r, "/apf/sync_faults") > 0);
    assert!(u(&r, "/apf/completions") >= u(&r, "/apf/async_faults"));
    // Its log says when it crossed the threshold, at which virtual time.
    let log = std::fs::read_to_string(dir.path().join("out/policy.log")).unwrap();
    assert!(log.contains("reached the threshold 20000 ns"), "{log}");
    assert!(log.starts_with("# policy ewma (sha256 "), "{log}");
    assert!(
        text(&out).contains("policy ewma (sha256 "),
        "{}",
        text(&out)
    );
}

#[test]
fn policy_test_on_a_recorded_log_reproduces_the_decisions_of_its_run() {
    let dir = tempfile::tempdir().unwrap();
    run(
        dir.path(),
        &config("[policy]\nmodule = \"ewma\"\n"),
        &["--token-log"],
    );
    let out = apflab(
        dir.path(),
        &["policy", "test", "ewma", "out/policy-calls.csv", "--quiet"],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    let csv = std::fs::read_to_string(dir.path().join("out/policy-calls.csv")).unwrap();
    let n = decisions(&csv).len();
    assert!(
        t.contains(&format!("{n} decisions ({n} as recorded, 0 different")),
        "{t}"
    );
    // Another threshold decides otherwise, and says where.
    let out = apflab(
        dir.path(),
        &[
            "policy",
            "test",
            "ewma",
            "out/policy-calls.csv",
            "--param",
            "threshold_ns=1000000000",
        ],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("DIFFERS from the recorded async/"), "{t}");
    // A file written by hand needs only the columns it uses.
    std::fs::write(
        dir.path().join("mine.csv"),
        "call,el,can_reschedule,runnable,fetch_ns\ndecide,0,1,1,\ncomplete,,,,90000\ndecide,0,1,1,\n",
    )
    .unwrap();
    let out = apflab(dir.path(), &["policy", "test", "ewma", "mine.csv"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    let lines: Vec<&str> = t.lines().filter(|l| l.contains(" -> ")).collect();
    assert!(lines[0].ends_with("-> sync"), "{t}");
    assert!(
        lines[1].contains("-> async/dedicated-ec/interrupt/host/reschedule"),
        "{t}"
    );
    // Bad input names the file, line and column.
    std::fs::write(dir.path().join("bad.csv"), "call,el\ndecide,one\n").unwrap();
    let out = apflab(dir.path(), &["policy", "test", "ewma", "bad.csv"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("bad.csv:2: el: `one`"),
        "{}",
        text(&out)
    );
}

#[test]
fn params_reach_the_module_change_its_decisions_and_are_matrix_axes() {
    let dir = tempfile::tempdir().unwrap();
    let (_, low) = run(
        dir.path(),
        &config("[policy]\nmodule = \"ewma\"\nparams = { threshold_ns = 1000 }\n"),
        &[],
    );
    let (_, high) = run(
        dir.path(),
        &config("[policy]\nmodule = \"ewma\"\nparams = { threshold_ns = 1000000000 }\n"),
        &[],
    );
    assert!(u(&low, "/apf/async_faults") > 0);
    assert_eq!(u(&high, "/apf/async_faults"), 0);
    assert_eq!(
        low["config"]["parsed"]["policy"]["module"]["params"]["threshold_ns"],
        1000
    );
    assert_ne!(low["config"]["sha256"], high["config"]["sha256"]);

    // Refused: by the module (its reason), by a module without
    // `apf_configure`, and with a fixed decision.
    std::fs::write(
        dir.path().join("run.toml"),
        config("[policy]\nmodule = \"ewma\"\nparams = { shift = 40 }\n"),
    )
    .unwrap();
    let out = apflab(dir.path(), &["run", "run.toml", "--out", "out"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("policy.params.shift: expected 0..=16"),
        "{}",
        text(&out)
    );
    std::fs::write(
        dir.path().join("run.toml"),
        config("[policy]\nmodule = \"threshold\"\nparams = { x = 1 }\n"),
    )
    .unwrap();
    let out = apflab(dir.path(), &["run", "run.toml", "--out", "out"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("takes no parameters"), "{}", text(&out));
    std::fs::write(
        dir.path().join("run.toml"),
        config(
            "[policy]\ndecision = { not_present = \"data-abort\", ready = \"interrupt\", \
             initiation = \"host\", sleep = \"halt\" }\nparams = { x = 1 }\n",
        ),
    )
    .unwrap();
    let out = apflab(dir.path(), &["run", "run.toml", "--out", "out"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("run.toml:"), "{}", text(&out));
    assert!(text(&out).contains("policy.params"), "{}", text(&out));

    // A matrix axis like any other key.
    std::fs::write(
        dir.path().join("base.toml"),
        config("[policy]\nmodule = \"ewma\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("exp.toml"),
        "base = \"base.toml\"\n[axes]\n\"policy.params.threshold_ns\" = [1000, 1000000000]\n",
    )
    .unwrap();
    let out = apflab(
        dir.path(),
        &["matrix", "exp.toml", "--out", "m", "--jobs", "2"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = std::fs::read_to_string(dir.path().join("m/table.csv")).unwrap();
    assert!(
        table.starts_with("run,policy.params.threshold_ns,"),
        "{table}"
    );
    let r0: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("m/r000/result.json")).unwrap(),
    )
    .unwrap();
    let r1: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("m/r001/result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(u(&r0, "/apf/async_faults"), u(&low, "/apf/async_faults"));
    assert_eq!(u(&r1, "/apf/async_faults"), 0);
    assert!(dir.path().join("m/r000/policy.log").is_file());
}

/// A v3 module in WAT that decides async halt, or traps in `apf_decide`
/// when `trap` is set.
fn wat_module(trap: bool) -> String {
    format!(
        r#"(module
  (memory (export "memory") 1)
  (func (export "apf_abi_version") (result i32) i32.const 3)
  (func (export "apf_decide") (result i64)
    {}
    i64.const 1))
"#,
        if trap { "unreachable" } else { "" }
    )
}

#[test]
fn editing_a_module_makes_matrix_rerun_the_points_that_use_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mine.wat"), wat_module(false)).unwrap();
    std::fs::write(
        dir.path().join("base.toml"),
        config("[policy]\nmodule = \"sync\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("exp.toml"),
        "base = \"base.toml\"\n[axes]\npolicy = [{ module = \"mine.wat\" }, { module = \"sync\" }]\n",
    )
    .unwrap();
    let matrix = || {
        apflab(
            dir.path(),
            &["matrix", "exp.toml", "--out", "m", "--jobs", "2"],
        )
    };
    let out = matrix();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let sha_of = |id: &str| {
        let r: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(format!("m/{id}/result.json"))).unwrap(),
        )
        .unwrap();
        (
            r["policy"]["sha256"].as_str().unwrap().to_owned(),
            r["config"]["sha256"].as_str().unwrap().to_owned(),
        )
    };
    let (module_before, config_before) = sha_of("r000");
    let sync_before = sha_of("r001");
    // Unchanged: nothing runs.
    let out = matrix();
    assert!(
        text(&out).contains("2 of 2 points already have results"),
        "{}",
        text(&out)
    );
    // The module's bytes change (a comment is enough): its point reruns,
    // the other does not.
    std::fs::write(
        dir.path().join("mine.wat"),
        wat_module(false) + ";; edited\n",
    )
    .unwrap();
    let out = matrix();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(!t.contains("2 of 2 points already have results"), "{t}");
    let (module_after, config_after) = sha_of("r000");
    assert_ne!(module_before, module_after);
    assert_ne!(config_before, config_after);
    assert_eq!(sha_of("r001"), sync_before);
    let table = std::fs::read_to_string(dir.path().join("m/table.csv")).unwrap();
    assert!(table.contains(&module_after), "{table}");
    assert!(
        table
            .lines()
            .next()
            .unwrap()
            .contains("policy_sha256,policy_failed_calls,policy_failure_causes,policy_disabled"),
        "{table}"
    );
}

#[test]
fn a_disabled_policy_shows_in_the_summary_the_table_and_the_report() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("trap.wat"), wat_module(true)).unwrap();
    let (out, r) = run(
        dir.path(),
        &config("[policy]\nmodule = \"trap.wat\"\n"),
        &[],
    );
    let t = text(&out);
    let first = t.lines().next().unwrap();
    assert!(first.contains("ok, POLICY DISABLED"), "{t}");
    assert!(
        t.contains("8 failed calls (trap 8)") || t.contains("failed calls (disabled"),
        "{t}"
    );
    assert_eq!(r["policy"]["disabled"], true);
    assert_eq!(u(&r, "/policy/failures/trap"), 8);
    assert!(u(&r, "/policy/failures/disabled") > 0);
    assert_eq!(
        u(&r, "/policy/failed_calls"),
        u(&r, "/policy/failures/trap") + u(&r, "/policy/failures/disabled")
    );
    let log = std::fs::read_to_string(dir.path().join("out/policy.log")).unwrap();
    assert!(log.contains("# DISABLED after repeated failures"), "{log}");
    assert!(
        log.contains("WARN  host: call failed (trap): `apf_decide`"),
        "{log}"
    );
    assert!(log.contains("ERROR host: policy disabled"), "{log}");

    std::fs::write(
        dir.path().join("base.toml"),
        config("[policy]\nmodule = \"trap.wat\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("exp.toml"),
        "base = \"base.toml\"\n[axes]\nseed = [3]\n",
    )
    .unwrap();
    let out = apflab(dir.path(), &["matrix", "exp.toml", "--out", "m"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = std::fs::read_to_string(dir.path().join("m/table.csv")).unwrap();
    let mut rows = table.lines().map(|l| l.split(',').collect::<Vec<_>>());
    let header = rows.next().unwrap();
    let row = rows.next().unwrap();
    let cell = |name: &str| row[header.iter().position(|c| *c == name).unwrap()];
    assert_eq!(cell("policy_disabled"), "true", "{table}");
    assert!(cell("policy_failure_causes").contains("trap 8"), "{table}");
    assert_eq!(
        cell("policy_sha256"),
        r["policy"]["sha256"].as_str().unwrap()
    );

    let out = apflab(dir.path(), &["report", "m", "--out", "report.md"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(report.contains("trap.wat (DISABLED)"), "{report}");
    assert!(report.contains("## Policy modules"), "{report}");
    assert!(report.contains("**DISABLED**"), "{report}");
}

#[test]
fn policy_check_calls_each_export_and_refuses_a_module_that_loops() {
    let dir = tempfile::tempdir().unwrap();
    let out = apflab(
        dir.path(),
        &["policy", "check", "ewma", "--param", "threshold_ns=5"],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("ok    apf_configure"), "{t}");
    assert!(t.contains("ok    apf_on_complete"), "{t}");
    assert!(t.contains("every call worked"), "{t}");
    std::fs::write(
        dir.path().join("loop.wat"),
        wat_module(false).replace("i64.const 1))", "(loop $l (br $l)) i64.const 1))"),
    )
    .unwrap();
    let out = apflab(dir.path(), &["policy", "check", "loop.wat"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("FAIL  apf_decide") && t.contains("out of fuel"),
        "{t}"
    );
    // A type error points at the file and line.
    std::fs::write(
        dir.path().join("typo.wat"),
        wat_module(false).replace("i64.const 1))", "i32.const 1))"),
    )
    .unwrap();
    let out = apflab(dir.path(), &["policy", "check", "typo.wat"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("typo.wat:6:"), "{}", text(&out));
}

fn sdk_builds_here() -> bool {
    Command::new("cargo").arg("--version").output().is_ok()
}

#[test]
fn policy_new_makes_a_policy_that_builds_outside_the_repository_and_runs() {
    if !sdk_builds_here() {
        panic!("cargo is needed to build the new crate");
    }
    let dir = tempfile::tempdir().unwrap();
    // WAT: nothing to build; its config runs it.
    let out = apflab(dir.path(), &["policy", "new", "mine", "--lang", "wat"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let wat_dir: PathBuf = dir.path().join("mine");
    let out = apflab(&wat_dir, &["policy", "check", "mine.wat"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = apflab(&wat_dir, &["run", "mine.toml", "--out", "out"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = std::fs::read_to_string(wat_dir.join("out/policy.log")).unwrap();
    assert!(log.contains("mine: run ended"), "{log}");

    // Rust: `cargo build --release` in the new crate, outside any
    // workspace, builds the module.
    let out = apflab(dir.path(), &["policy", "new", "my-policy"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let crate_dir = dir.path().join("my-policy");
    let build = Command::new("cargo")
        .current_dir(&crate_dir)
        .args(["build", "--release", "--offline"])
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", text(&build));
    let wasm = "target/wasm32-unknown-unknown/release/my_policy.wasm";
    assert!(crate_dir.join(wasm).is_file());
    let out = apflab(
        &crate_dir,
        &["policy", "check", wasm, "--param", "threshold_ns=1000"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // An existing folder is not overwritten.
    let out = apflab(dir.path(), &["policy", "new", "my-policy"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("already exists"), "{}", text(&out));
}
