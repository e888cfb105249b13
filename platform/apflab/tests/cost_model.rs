//! The emu backend's cost model as a run sees it: presets load and are
//! recorded, an unknown one is exit 2 naming the file, line and key, a
//! fault the host kernel handles costs an in-kernel exit instead of an exit
//! to the VMM, and "page ready" for a running vCPU costs a kick.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const APFLAB: &str = env!("CARGO_BIN_EXE_apflab");

/// One memory task on one vCPU reading 2 MiB that is not resident (512
/// synchronous faults of a constant 20 µs), with `extra` appended to the
/// `[pager]` section and `cost` as `[backend.cost]`.
fn memtouch(cost: &str, extra: &str) -> String {
    format!(
        "seed = 3\n[guest]\nvcpus = 1\nmemory_mib = 64\n\
         [workload]\nkind = \"memtouch\"\ntasks = 1\nmib = 2\npattern = \"seq\"\npasses = 1\n\
         verify = \"store\"\n\
         [backend]\nkind = \"emu\"\nmax_virtual_ms = 60000\ncost = {{ {cost} }}\n\
         [pager]\nstore = {{ kind = \"synthetic\", seed = 5 }}\n\
         latency = {{ model = \"constant\", us = 20.0 }}\ninitially_resident = 0.0\n{extra}"
    )
}

/// The mixed workload on one vCPU (a CPU task beside a memory task whose
/// every fault is async, "page ready" delivered as `ready`: `interrupt` or
/// `exception`), `cost` as `[backend.cost]`.
fn async_mixed(cost: &str, ready: &str) -> String {
    format!(
        "seed = 3\n[guest]\nvcpus = 1\nmemory_mib = 64\n\
         [workload]\nkind = \"mixed\"\nops = 2000000\nmib = 1\npattern = \"seq\"\npasses = 1\n\
         verify = \"store\"\n\
         [backend]\nkind = \"emu\"\nmax_virtual_ms = 60000\ncost = {{ {cost} }}\n\
         [pager]\nstore = {{ kind = \"synthetic\", seed = 5 }}\n\
         latency = {{ model = \"constant\", us = 200.0 }}\ninitially_resident = 0.0\n\
         [policy]\ndecision = {{ not_present = \"data-abort\", ready = \"{ready}\", \
         initiation = \"host\", sleep = \"reschedule\" }}\n"
    )
}

/// Runs `config` in `dir`: the exit status, stderr and the results (if the
/// run wrote them).
fn run(dir: &Path, name: &str, config: &str) -> (Option<i32>, String, Option<Value>) {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let out_dir = dir.join(name);
    let out = Command::new(APFLAB)
        .args(["run", path.to_str().unwrap(), "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    let result = std::fs::read_to_string(out_dir.join("result.json"))
        .ok()
        .map(|s| serde_json::from_str(&s).unwrap());
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        result,
    )
}

fn ok(dir: &Path, name: &str, config: &str) -> Value {
    let (code, stderr, result) = run(dir, name, config);
    assert_eq!(code, Some(0), "{name}: {stderr}");
    result.unwrap()
}

fn u(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} in {v}"))
}

#[test]
fn presets_load_with_overrides_and_an_unknown_one_is_exit_2_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let r = ok(
        dir.path(),
        "m400",
        &memtouch("preset = \"m400-kvm\", hypercall_ns = 250", ""),
    );
    let cost = &r["config"]["parsed"]["backend"]["cost"];
    assert_eq!(cost["preset"], "m400-kvm");
    // Dall et al.: 6,500 cycles at 2.4 GHz.
    assert_eq!(cost["kernel_exit_ns"], 2708);
    assert_eq!(cost["kick_ns"], 2708);
    assert_eq!(cost["exit_ns"], 5416);
    assert_eq!(cost["hypercall_ns"], 250);
    let r = ok(
        dir.path(),
        "nested",
        &memtouch("preset = \"nested-tcg\"", ""),
    );
    assert_eq!(r["config"]["parsed"]["backend"]["cost"]["exit_ns"], 220_000);
    let r = ok(dir.path(), "default", &memtouch("", ""));
    assert_eq!(
        r["config"]["parsed"]["backend"]["cost"]["preset"],
        "uncalibrated"
    );

    let config = memtouch("preset = \"vhe-server\"", "");
    let line = 1 + config
        .lines()
        .position(|l| l.starts_with("cost ="))
        .unwrap();
    let (code, stderr, _) = run(dir.path(), "unknown", &config);
    assert_eq!(code, Some(2), "{stderr}");
    for want in [
        format!("unknown.toml:{line}:"),
        "backend.cost.preset".to_owned(),
        "vhe-server".to_owned(),
        "\"m400-kvm\"".to_owned(),
        "\"nested-tcg\"".to_owned(),
    ] {
        assert!(stderr.contains(&want), "{want:?} not in {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (code, stderr, _) = run(
        dir.path(),
        "too-dear",
        &memtouch("kick_ns = 18446744073709551615", ""),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("backend.cost.kick_ns"), "{stderr}");
}

#[test]
fn a_fault_the_host_kernel_handles_costs_an_in_kernel_exit_not_an_exit_to_the_vmm() {
    let dir = tempfile::tempdir().unwrap();
    // An exit to the VMM ten times dearer than one handled in the kernel,
    // so that the difference is far above any change of interleaving.
    let cost = "preset = \"m400-kvm\", exit_ns = 50000, kernel_exit_ns = 5000";
    let vmm = ok(dir.path(), "vmm", &memtouch(cost, ""));
    let kernel = ok(
        dir.path(),
        "kernel",
        &memtouch(cost, "fault_path = \"kernel\"\n"),
    );
    assert_eq!(kernel["config"]["parsed"]["pager"]["fault_path"], "kernel");
    // Only kvm's page-server threads poll: on emu the key would be lost.
    let (code, stderr, _) = run(
        dir.path(),
        "poll",
        &memtouch(cost, "fault_path = \"kernel\"\nserver_poll_us = 50\n"),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("server_poll_us = 50"), "{stderr}");
    // The same faults, the same fetches, every page verified.
    let fetches = u(&vmm, "/pager/fetches");
    assert!(fetches >= 512, "{fetches} fetches");
    assert_eq!(u(&kernel, "/pager/fetches"), fetches);
    assert_eq!(u(&kernel, "/integrity/mismatches"), 0);
    assert_eq!(u(&kernel, "/integrity/pages_verified"), 512);
    // Each of them 45 µs cheaper, which is all that changed.
    let saved = u(&vmm, "/virtual_time_ns") - u(&kernel, "/virtual_time_ns");
    let expected = fetches * 45_000;
    assert!(
        saved.abs_diff(expected) * 100 <= expected,
        "saved {saved} ns, expected {expected} ns (within 1 %)"
    );
}

#[test]
fn page_ready_for_a_running_vcpu_costs_a_kick_and_a_stall_costs_none() {
    let dir = tempfile::tempdir().unwrap();
    // As an interrupt (raised at the fetch's end) and as an exception
    // (entered where the hook sees the guest, at once only if kicked).
    for ready in ["interrupt", "exception"] {
        let free = ok(
            dir.path(),
            &format!("free-{ready}"),
            &async_mixed("kick_ns = 0", ready),
        );
        let dear = ok(
            dir.path(),
            &format!("dear-{ready}"),
            &async_mixed("kick_ns = 100000", ready),
        );
        let kicks = u(&dear, "/vmm/exits/ready_kick");
        assert!(u(&dear, "/apf/async_faults") > 0);
        // While the memory task waits the CPU task runs, so most pages
        // come back to a running vCPU.
        assert!(kicks > 0, "{ready}: no kick in {}", dear["vmm"]["exits"]);
        assert!(
            u(&dear, "/virtual_time_ns") >= u(&free, "/virtual_time_ns") + kicks * 50_000,
            "{ready}: {kicks} kicks of 100 us cost too little"
        );
    }
    // The synchronous baseline never sends "page ready".
    let sync = ok(dir.path(), "sync", &memtouch("kick_ns = 100000", ""));
    assert!(sync["vmm"]["exits"].get("ready_kick").is_none());
}

#[test]
fn boot_takes_a_cost_preset_and_refuses_an_unknown_one() {
    let image = apflab_artifacts::guest_elf();
    let elapsed_ns = |preset: &str| -> u64 {
        let out = Command::new(APFLAB)
            .args(["boot", image.to_str().unwrap(), "--append"])
            .arg("apflab.workload=cpu apflab.ops=1000")
            .args(["--cost-preset", preset])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{preset}: {stdout}");
        let line = stdout
            .lines()
            .find(|l| l.starts_with("APFLAB-REPORT"))
            .unwrap_or_else(|| panic!("{preset}: no report in {stdout}"));
        line.split_whitespace()
            .find_map(|f| f.strip_prefix("elapsed_ns="))
            .unwrap()
            .parse()
            .unwrap()
    };
    // The same instructions and exits; nested exits cost over a hundred
    // times more.
    let default = elapsed_ns("uncalibrated");
    let nested = elapsed_ns("nested-tcg");
    assert!(nested > 10 * default, "{nested} ns against {default} ns");
    let out = Command::new(APFLAB)
        .args(["boot", image.to_str().unwrap(), "--cost-preset", "vhe"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--cost-preset") && stderr.contains("\"m400-kvm\""),
        "{stderr}"
    );
}
