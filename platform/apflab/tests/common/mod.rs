//! What the async PF tests of apflab's own guest and of the Linux guest
//! share: running a config with its token log, and the check that every
//! token goes through its life exactly once.

// Each test binary that includes this module uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const APFLAB: &str = env!("CARGO_BIN_EXE_apflab");

/// The `[policy]` section of a fixed decision.
pub fn decision(not_present: &str, ready: &str, initiation: &str, sleep: &str) -> String {
    format!(
        "[policy]\ndecision = {{ not_present = \"{not_present}\", ready = \"{ready}\", \
         initiation = \"{initiation}\", sleep = \"{sleep}\" }}\n"
    )
}

/// One row of a run's `tokens.csv`.
#[derive(Debug)]
pub struct TokenEvent {
    pub t: u64,
    pub token: String,
    pub event: String,
}

/// Runs `config` in `dir` with `flags` added to `apflab run` (the run
/// must succeed); its results and the folder they are in.
pub fn run_in(dir: &Path, config: &str, flags: &[&str]) -> (Value, PathBuf) {
    let path = dir.join("apf.toml");
    std::fs::write(&path, config).unwrap();
    let out_dir = dir.join("out");
    let out = Command::new(APFLAB)
        .args([
            "run",
            path.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .args(flags)
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}\n--- config:\n{config}");
    let text = std::fs::read_to_string(out_dir.join("result.json")).unwrap();
    (serde_json::from_str(&text).unwrap(), out_dir)
}

/// Runs `config` with its token log; its results, the log and the guest's
/// console.
pub fn run_logged(config: &str) -> (Value, Vec<TokenEvent>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (r, out_dir) = run_in(dir.path(), config, &["--token-log"]);
    // Written for every run; a run without an engine in the VMM logs no
    // token.
    let csv = std::fs::read_to_string(out_dir.join("tokens.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("t_ns,vcpu,token,event"));
    let events = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 4, "{l}");
            TokenEvent {
                t: f[0].parse().unwrap(),
                token: f[2].to_owned(),
                event: f[3].to_owned(),
            }
        })
        .collect();
    let console = std::fs::read_to_string(out_dir.join("console.log")).unwrap();
    (r, events, console)
}

/// From the token log: every token's life, in order, is fault, "not
/// present", (its request, when the guest initiates), fetch done, (pushed
/// into the ring, for interrupt ready), consumed, each exactly once; so no
/// fetch started before its request and every token reached the guest
/// exactly once. Returns the number of tokens.
pub fn assert_each_token_once(events: &[TokenEvent], guest_initiated: bool, ring: bool) -> usize {
    let mut lives: std::collections::BTreeMap<&str, Vec<(u64, &str)>> = Default::default();
    for e in events {
        lives
            .entry(e.token.as_str())
            .or_default()
            .push((e.t, e.event.as_str()));
    }
    let mut expected = vec!["fault", "not_present"];
    if guest_initiated {
        expected.push("request");
    }
    expected.push("fetch_done");
    if ring {
        expected.push("pushed");
    }
    expected.push("consumed");
    for (token, life) in &lives {
        let kinds: Vec<&str> = life.iter().map(|(_, k)| *k).collect();
        assert_eq!(kinds, expected, "token {token}");
        assert!(
            life.windows(2).all(|w| w[0].0 <= w[1].0),
            "token {token}: {life:?}"
        );
    }
    lives.len()
}

/// A number in the results, which must be there.
pub fn u(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} missing in {v:#}"))
}

/// Every combination of the four axes (not present x ready x initiation x
/// sleep).
pub const VARIANTS: [(&str, &str, &str, &str); 24] = {
    let mut v = [("", "", "", ""); 24];
    let np = ["data-abort", "dedicated-ec", "sdei"];
    let ready = ["interrupt", "exception"];
    let init = ["host", "guest"];
    let sleep = ["halt", "reschedule"];
    let mut i = 0;
    while i < 24 {
        v[i] = (
            np[i / 8],
            ready[(i / 4) % 2],
            init[(i / 2) % 2],
            sleep[i % 2],
        );
        i += 1;
    }
    v
};

/// A kernel the test suite is given in the environment variable `var`
/// (`scripts/test` sets it from `script`); `None`, and the test says it
/// did not run, when it is not given outside CI. CI must give it.
pub fn kernel_from_env(var: &str, script: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(k) => Some(PathBuf::from(k)),
        None if std::env::var_os("CI").is_some() => {
            panic!("{var} is not set: scripts/test sets it from {script}")
        }
        None => {
            eprintln!("not run: set {var} ({script} prints it)");
            None
        }
    }
}

/// Debian's arm64 kernel (`scripts/linux-kernel`).
pub fn debian_kernel() -> Option<PathBuf> {
    kernel_from_env("APFLAB_LINUX_KERNEL", "scripts/linux-kernel")
}

/// apflab's Linux kernel with the async PF client
/// (`scripts/linux-apf-kernel`).
pub fn apf_kernel() -> Option<PathBuf> {
    kernel_from_env("APFLAB_LINUX_APF_KERNEL", "scripts/linux-apf-kernel")
}

/// Runs `config` (written to `dir/name.toml`, the run named `point` in
/// its results whatever the file) with `extra` options into `dir/name`;
/// returns the exit status, the log, the results (if written) and the
/// console.
pub fn run_named(
    dir: &Path,
    name: &str,
    config: &str,
    extra: &[&str],
) -> (Option<i32>, String, Option<Value>, String) {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let out = dir.join(name);
    let o = Command::new(APFLAB)
        .arg("run")
        .arg(&path)
        .arg("--out")
        .arg(&out)
        .args(["--name", "point"])
        .args(extra)
        .output()
        .expect("apflab runs");
    let log = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(!log.contains("panicked"), "apflab panicked:\n{log}");
    let result = std::fs::read_to_string(out.join("result.json"))
        .ok()
        .map(|s| serde_json::from_str(&s).expect("result.json is JSON"));
    let console = std::fs::read_to_string(out.join("console.log")).unwrap_or_default();
    (o.status.code(), log, result, console)
}

/// A result without `wall` (host time, which no two runs share), as text.
pub fn outside_wall(mut r: Value) -> String {
    r.as_object_mut().unwrap().remove("wall");
    serde_json::to_string_pretty(&r).unwrap()
}

/// Saves the boot of config `first` (in a folder of its own), then runs
/// config `second` from power-on and resumed from that boot: the results
/// and console of each. `what` names the case in a failure.
pub fn from_boot_and_resumed(what: &str, first: &str, second: &str) -> [(Value, String); 2] {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("boot.snap");
    let snap = snap.to_str().unwrap();
    let (code, log, _, _) = run_named(dir.path(), "save", first, &["--save-snapshot", snap]);
    assert_eq!(code, Some(0), "{what}: {log}");
    [("from-boot", &[][..]), ("resumed", &["--resume", snap][..])].map(|(name, flags)| {
        let (code, log, result, console) = run_named(dir.path(), name, second, flags);
        assert_eq!(code, Some(0), "{what}, {name}: {log}");
        (result.expect("results written"), console)
    })
}
