//! Boot once, run many with Linux: Debian's arm64 kernel (see
//! `tests/linux_guest.rs` for where it comes from) saved at the end of its
//! boot (its `/init` announces it and then fetches the workload's words),
//! and resumed with another workload, on 1 and 4 vCPUs.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const APFLAB: &str = env!("CARGO_BIN_EXE_apflab");

/// Debian's arm64 kernel, as `scripts/test` names it; `None` (and the test
/// says it did not run) outside CI when it is not given. CI must give it.
fn debian_kernel() -> Option<PathBuf> {
    match std::env::var_os("APFLAB_LINUX_KERNEL") {
        Some(k) => Some(PathBuf::from(k)),
        None if std::env::var_os("CI").is_some() => {
            panic!("APFLAB_LINUX_KERNEL is not set: scripts/test sets it from scripts/linux-kernel")
        }
        None => {
            eprintln!("not run: set APFLAB_LINUX_KERNEL (scripts/linux-kernel prints it)");
            None
        }
    }
}

/// `apflab run` of `config` (as `dir/name.toml`, the run named `point`)
/// with `extra` options: exit code, log, results and console.
fn run(
    dir: &Path,
    name: &str,
    config: &str,
    extra: &[&str],
) -> (Option<i32>, String, Value, String) {
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
        .unwrap();
    let log = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(!log.contains("panicked"), "{log}");
    let result = std::fs::read_to_string(out.join("result.json"))
        .map(|s| serde_json::from_str(&s).unwrap())
        .unwrap_or(Value::Null);
    let console = std::fs::read_to_string(out.join("console.log")).unwrap_or_default();
    (o.status.code(), log, result, console)
}

fn config(kernel: &Path, vcpus: u32, workload: &str) -> String {
    format!(
        "seed = 7\n[guest]\nvcpus = {vcpus}\nmemory_mib = 256\nkernel = {:?}\n\
         [workload]\n{workload}\n[backend]\nkind = \"emu\"\n",
        kernel.display().to_string()
    )
}

fn outside_wall(mut r: Value) -> String {
    r.as_object_mut().unwrap().remove("wall");
    serde_json::to_string_pretty(&r).unwrap()
}

#[test]
fn a_linux_run_resumed_from_its_boot_gives_the_results_of_one_from_power_on() {
    let Some(kernel) = debian_kernel() else {
        return;
    };
    for vcpus in [1, 4] {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("linux.snap");
        let snap = snap.to_str().unwrap();
        let first = config(&kernel, vcpus, "kind = \"cpu\"\nops = 50000");
        let (code, log, _, _) = run(dir.path(), "save", &first, &["--save-snapshot", snap]);
        assert_eq!(code, Some(0), "{vcpus} vCPUs: {log}");

        let second = config(&kernel, vcpus, "kind = \"cpu\"\ntasks = 2\nops = 120000");
        let (code, log, from_boot, boot_console) = run(dir.path(), "from-boot", &second, &[]);
        assert_eq!(code, Some(0), "{vcpus} vCPUs: {log}");
        let (code, log, resumed, resumed_console) =
            run(dir.path(), "resumed", &second, &["--resume", snap]);
        assert_eq!(code, Some(0), "{vcpus} vCPUs: {log}");
        assert_eq!(
            from_boot["guest"]["metrics"]["cpu"]["ops"], 240_000,
            "{from_boot:#}"
        );
        assert_eq!(
            outside_wall(resumed),
            outside_wall(from_boot),
            "{vcpus} vCPUs"
        );
        assert_eq!(resumed_console, boot_console, "{vcpus} vCPUs");
        // The workload's words never reach the kernel's command line.
        assert!(
            resumed_console.contains("Kernel command line:")
                && !resumed_console.contains("apflab.ops"),
            "{resumed_console}"
        );
    }
}
