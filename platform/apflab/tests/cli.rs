//! The `apflab` command end to end on the emu backend: the real guest, the
//! real VMM, the results file as a user reads it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use apflab_abi::report::GuestReport;
use serde_json::Value;

const APFLAB: &str = env!("CARGO_BIN_EXE_apflab");

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

fn apflab(args: &[&str]) -> Output {
    Command::new(APFLAB)
        .args(args)
        .output()
        .expect("apflab runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Writes `config` into a fresh directory and runs it; returns the exit
/// status, stdout+stderr and the results (if written).
fn run_config(config: &str) -> (Option<i32>, String, Option<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.toml");
    std::fs::write(&path, config).unwrap();
    run_file(&path, dir.path())
}

fn run_file(path: &Path, dir: &Path) -> (Option<i32>, String, Option<Value>) {
    let out_dir = dir.join("out");
    let out = apflab(&[
        "run",
        path.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let log = text(&out.stdout) + &text(&out.stderr);
    assert!(!log.contains("panicked"), "apflab panicked:\n{log}");
    let result = std::fs::read_to_string(out_dir.join("result.json"))
        .ok()
        .map(|s| serde_json::from_str(&s).expect("result.json is JSON"));
    (out.status.code(), log, result)
}

fn u(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} missing in {v:#}"))
}

fn workload_config(vcpus: u32, workload: &str) -> String {
    format!(
        "seed = 7\n[guest]\nvcpus = {vcpus}\nmemory_mib = 64\n[workload]\n{workload}\n[backend]\nkind = \"emu\"\n"
    )
}

#[test]
fn quick_config_runs_and_writes_every_required_field() {
    let dir = tempfile::tempdir().unwrap();
    let (code, log, result) = run_file(&configs_dir().join("quick.toml"), dir.path());
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("quick (emu, 2 vCPUs): ok"), "summary: {log}");
    let r = result.unwrap();
    assert_eq!(
        u(&r, "/schema_version"),
        u64::from(apflab::result::SCHEMA_VERSION)
    );
    assert!(r["watchdog"].is_null(), "{:#}", r["watchdog"]);
    assert_eq!(r["backend"], "emu");
    assert_eq!(u(&r, "/vcpus"), 2);
    assert!(u(&r, "/virtual_time_ns") > 0);
    assert!(r.pointer("/wall/wall_time_ms").unwrap().as_f64().unwrap() > 0.0);
    assert_eq!(u(&r, "/guest/tasks_completed"), 2);
    assert!(r.pointer("/guest/context_switches").is_some());
    assert_eq!(u(&r, "/guest/metrics/cpu/ops"), 200_000);
    assert_eq!(u(&r, "/guest/metrics/memtouch/pages_verified"), 4 * 256);
    assert_eq!(u(&r, "/integrity/mismatches"), 0);
    assert!(
        u(&r, "/vmm/exits/mmio") > 0,
        "console writes are MMIO exits"
    );
    assert!(u(&r, "/vmm/instructions") > 1_000_000);
    assert_eq!(r["config"]["sha256"].as_str().unwrap().len(), 64);
    // The README's first command shows a real async run, and says so.
    assert_eq!(r["policy"]["module"], "paolo");
    assert!(u(&r, "/apf/async_faults") > 0, "{:#}", r["apf"]);
    assert_eq!(u(&r, "/apf/ready_delivered"), u(&r, "/apf/async_faults"));
    assert!(log.contains("async PF (paolo): "), "summary: {log}");
    let console = std::fs::read_to_string(dir.path().join("out/console.log")).unwrap();
    assert!(
        console.contains("apflab-guest: 2 cpus"),
        "console: {console}"
    );
}

#[test]
fn every_workload_completes_on_one_and_four_vcpus() {
    for vcpus in [1, 4] {
        let (code, log, r) = run_config(&workload_config(
            vcpus,
            "kind = \"cpu\"\ntasks = 3\nops = 50000",
        ));
        assert_eq!(code, Some(0), "{log}");
        let r = r.unwrap();
        assert_eq!(u(&r, "/guest/cpus_online"), u64::from(vcpus));
        assert_eq!(u(&r, "/guest/tasks_completed"), 3);
        assert_eq!(u(&r, "/guest/metrics/cpu/ops"), 150_000);

        let (code, log, r) = run_config(&workload_config(
            vcpus,
            "kind = \"memtouch\"\nmib = 2\npattern = \"random\"\npasses = 2",
        ));
        assert_eq!(code, Some(0), "{log}");
        let r = r.unwrap();
        assert_eq!(u(&r, "/guest/metrics/memtouch/pages_verified"), 2 * 256 * 2);
        assert_eq!(u(&r, "/guest/metrics/memtouch/mismatches"), 0);

        let (code, log, r) = run_config(&workload_config(
            vcpus,
            "kind = \"mixed\"\nops = 50000\nmib = 1",
        ));
        assert_eq!(code, Some(0), "{log}");
        let r = r.unwrap();
        assert_eq!(u(&r, "/guest/tasks_completed"), 2);
        assert_eq!(u(&r, "/guest/metrics/cpu/ops"), 50_000);
        assert_eq!(u(&r, "/guest/metrics/memtouch/pages_verified"), 256);

        // kv serves with as many tasks as it is told, each its share of
        // the table.
        for tasks in [1, 3] {
            let (code, log, r) = run_config(&workload_config(
                vcpus,
                &format!(
                    "kind = \"kv\"\ntasks = {tasks}\nmib = 4\nrequests = 200\ninterval_us = 20"
                ),
            ));
            assert_eq!(code, Some(0), "{log}");
            let r = r.unwrap();
            assert_eq!(u(&r, "/guest/tasks_completed"), tasks);
            assert_eq!(
                r["vmm"]["task_done_ns"].as_object().unwrap().len(),
                tasks as usize
            );
            assert_eq!(u(&r, "/guest/metrics/kv/requests"), 200);
            assert_eq!(u(&r, "/guest/metrics/kv/latency/count"), 200);
            assert_eq!(u(&r, "/guest/metrics/kv/pages_verified"), 200);
            assert_eq!(u(&r, "/guest/metrics/kv/mismatches"), 0);
        }
    }
}

#[test]
fn two_cpu_bound_tasks_on_one_vcpu_are_preempted_and_both_finish() {
    let (code, log, r) = run_config(&workload_config(
        1,
        "kind = \"cpu\"\ntasks = 2\nops = 400000\ntimeslice_us = 100",
    ));
    assert_eq!(code, Some(0), "{log}");
    let r = r.unwrap();
    assert!(u(&r, "/guest/context_switches") >= 4, "{:#}", r["guest"]);
    assert!(u(&r, "/guest/timer_irqs") > 0);
    let done = r
        .pointer("/guest/task_done_ns")
        .unwrap()
        .as_array()
        .unwrap();
    let (a, b) = (done[0].as_u64().unwrap(), done[1].as_u64().unwrap());
    assert!(a > 0 && b > 0, "both tasks finished: {done:?}");
    // Interleaved, not one after the other: the second finishes well before
    // twice the first's time.
    let (first, last) = (a.min(b), a.max(b));
    assert!(
        last < first * 3 / 2,
        "tasks ran one after the other: {done:?}"
    );
}

/// The result without its host- and time-dependent section.
fn deterministic_part(mut r: Value) -> Value {
    r.as_object_mut().unwrap().remove("wall");
    r
}

#[test]
fn the_same_config_and_seed_give_the_same_results() {
    let config = workload_config(
        2,
        "kind = \"kv\"\ntasks = 2\nmib = 2\nrequests = 100\ninterval_us = 30",
    ) + "[pager]\nstore = { kind = \"synthetic\", seed = 3 }\nlatency = { model = \"lognormal\", median_us = 10.0, sigma = 0.5 }\nresident_limit = \"1 MiB\"\ninitially_resident = 0.5\nseed = 9\n";
    let (c1, log1, r1) = run_config(&config);
    let (c2, _, r2) = run_config(&config);
    assert_eq!((c1, c2), (Some(0), Some(0)), "{log1}");
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    assert!(
        u(&r1, "/pager/fetches") > 0,
        "the pager did work: {:#}",
        r1["pager"]
    );
    assert_eq!(deterministic_part(r1), deterministic_part(r2));
}

#[test]
fn sync_far_memory_twice_the_resident_limit_keeps_every_page_intact() {
    let config = workload_config(
        2,
        "kind = \"memtouch\"\nmib = 8\npattern = \"random\"\npasses = 2\nverify = \"store\"",
    ) + "[pager]\nstore = { kind = \"synthetic\", seed = 11 }\nlatency = { model = \"constant\", us = 20.0 }\nresident_limit = \"4 MiB\"\ninitially_resident = 0.0\n";
    let (code, log, r) = run_config(&config);
    assert_eq!(code, Some(0), "{log}");
    let r = r.unwrap();
    assert_eq!(u(&r, "/integrity/pages_verified"), 8 * 256 * 2);
    assert_eq!(u(&r, "/integrity/mismatches"), 0);
    // Post-copy start: every page of the working set is fetched at least
    // once, and with half of it resident at most, pages leave and return.
    assert!(u(&r, "/pager/fetches") >= 8 * 256, "{:#}", r["pager"]);
    assert!(u(&r, "/pager/evictions") > 0);
    assert!(u(&r, "/pager/refaults") > 0);
    assert!(u(&r, "/pager/resident_high_water_bytes") <= 4 << 20);
    assert!(u(&r, "/pager/fetch_latency/p50_ns") >= 20_000);
    // Every not-resident exit was one pager decision.
    assert_eq!(
        u(&r, "/vmm/exits/not_resident"),
        u(&r, "/pager/fetches")
            + u(&r, "/pager/joined_in_flight")
            + u(&r, "/pager/spurious")
            + u(&r, "/pager/no_frame_waits")
    );
}

#[test]
fn post_copy_from_an_image_keeps_the_guests_writes_across_evictions() {
    // A guest RAM image (sparse: all zeros) as the store, nothing resident
    // at start, a quarter of the working set resident at most: the guest's
    // own writes must come back from the store's write-back overlay.
    let dir = tempfile::tempdir().unwrap();
    let image = std::fs::File::create(dir.path().join("ram.img")).unwrap();
    image.set_len(64 << 20).unwrap();
    let config = workload_config(
        1,
        "kind = \"memtouch\"\nmib = 4\npattern = \"random\"\npasses = 3\nverify = \"self\"",
    ) + "[pager]\nstore = { kind = \"file\", path = \"ram.img\" }\nresident_limit = \"1 MiB\"\ninitially_resident = 0.0\n";
    let path = dir.path().join("test.toml");
    std::fs::write(&path, config).unwrap();
    let (code, log, r) = run_file(&path, dir.path());
    assert_eq!(code, Some(0), "{log}");
    let r = r.unwrap();
    assert!(
        u(&r, "/integrity/pages_verified") > 0,
        "{:#}",
        r["integrity"]
    );
    assert_eq!(u(&r, "/integrity/mismatches"), 0);
    assert!(u(&r, "/pager/refaults") > 0, "{:#}", r["pager"]);
    assert!(u(&r, "/pager/write_backs") > 0);
    assert!(u(&r, "/pager/resident_high_water_bytes") <= 1 << 20);
    // A short image is refused before any VM is built.
    std::fs::File::create(dir.path().join("ram.img"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let (code, log, _) = run_file(&path, dir.path());
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("pager.store.path"), "{log}");
}

#[test]
fn injected_store_errors_are_retried_or_stop_the_run_naming_the_page() {
    let memtouch = workload_config(
        1,
        "kind = \"memtouch\"\nmib = 2\npattern = \"seq\"\npasses = 1\nverify = \"store\"",
    ) + "[pager]\nstore = { kind = \"synthetic\", seed = 5 }\nlatency = { model = \"constant\", us = 10.0 }\ninitially_resident = 0.0\n";

    // Every 7th store read fails once and is retried: the content is still
    // right, and a retried fetch costs a second latency.
    let (code, log, r) =
        run_config(&(memtouch.clone() + "inject_errors = { transient_every = 7 }\n"));
    assert_eq!(code, Some(0), "{log}");
    let r = r.unwrap();
    assert_eq!(u(&r, "/integrity/pages_verified"), 512);
    assert_eq!(u(&r, "/integrity/mismatches"), 0);
    assert_eq!(u(&r, "/pager/fetches"), 512);
    // 512 reads plus the retries, every 7th of them failing: 597 / 7.
    assert_eq!(u(&r, "/retries"), 85, "{:#}", r["pager"]);
    assert!(r["pager"].get("store_retries").is_none(), "kept once");
    // (The histogram keeps three significant digits.)
    let p50 = u(&r, "/pager/fetch_latency/p50_ns");
    assert!((10_000..10_010).contains(&p50), "{p50}");
    assert!(u(&r, "/pager/fetch_latency/max_ns") >= 20_000);

    // Far memory that silently corrupts every 64th page it reads: the
    // guest's check finds each one, and the run fails saying so.
    let (code, log, r) =
        run_config(&(memtouch.clone() + "inject_errors = { corrupt_every = 64 }\n"));
    assert_eq!(code, Some(1), "{log}");
    let r = r.unwrap();
    assert_eq!(r["outcome"]["success"], false);
    assert_eq!(u(&r, "/integrity/pages_verified"), 512);
    // One corrupted word in each of 512 / 64 pages.
    assert_eq!(u(&r, "/integrity/mismatches"), 8, "{:#}", r["integrity"]);
    assert!(
        r["outcome"]["failure"]
            .as_str()
            .unwrap()
            .contains("found 8 words that did not match"),
        "{:#}",
        r["outcome"]
    );

    // A page that can never be read stops the run, named; no zero page is
    // handed to the guest in its place.
    let (code, log, r) =
        run_config(&(memtouch + "inject_errors = { permanent = [0x4210_0000] }\n"));
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("guest page 0x42100"), "{log}");
    assert!(log.contains("injected media error"), "{log}");
    if let Some(r) = r {
        assert_eq!(r["outcome"]["success"], false);
        assert_eq!(u(&r, "/integrity/mismatches"), 0);
    }
}

#[test]
fn a_guest_panic_fails_the_run_with_its_message() {
    let image = apflab_artifacts::guest_elf();
    let out = apflab(&[
        "boot",
        image.to_str().unwrap(),
        "--append",
        "apflab.workload=cpu apflab.ops=banana",
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("guest panic"), "{err}");
    assert!(
        err.contains("apflab.ops"),
        "the guest's message names the key: {err}"
    );
}

fn assert_bad_config(config: &str, expected: &[&str]) {
    let (code, log, result) = run_config(config);
    assert_eq!(code, Some(2), "{log}");
    for e in expected {
        assert!(log.contains(e), "expected {e:?} in: {log}");
    }
    assert!(result.is_none(), "no results for a bad config");
}

#[test]
fn bad_configs_are_clear_errors_with_exit_code_2() {
    let good = workload_config(1, "kind = \"cpu\"");
    assert_bad_config(
        &good.replace("seed = 7", "seed = 7\ncolour = \"blue\""),
        &["test.toml:", "colour"],
    );
    assert_bad_config(
        &good.replace("vcpus = 1", "vcpus = \"two\""),
        &["test.toml:", "guest.vcpus"],
    );
    assert_bad_config(
        &good.replace("vcpus = 1", "vcpus = 0"),
        &["guest.vcpus", "0 vCPUs"],
    );
    assert_bad_config(
        &good.replace("memory_mib = 64", "memory_mib = 100000000"),
        &["guest.memory_mib", "more memory than this host has"],
    );
    assert_bad_config(
        &good.replace("[workload]", "kernel = \"no-such-guest.elf\"\n[workload]"),
        &["guest.kernel", "no-such-guest.elf"],
    );
    assert_bad_config(
        &format!("{good}[pager]\nstore = {{ kind = \"zero\" }}\nresident_limit = \"1 GiB\"\n"),
        &["pager.resident_limit", "larger than guest RAM"],
    );
    assert_bad_config(
        &format!("{good}[pager]\nstore = {{ kind = \"zero\" }}\nresident_limit = 100\n"),
        &["pager.resident_limit", "smaller than one page"],
    );
    assert_bad_config(
        &format!("{good}[pager]\nstore = {{ kind = \"file\", path = \"missing.img\" }}\n"),
        &["pager.store.path", "missing.img"],
    );
    assert_bad_config(
        &workload_config(1, "kind = \"memtouch\"\nverify = \"store\""),
        &["workload.verify", "[pager]"],
    );
    assert_bad_config(
        &format!(
            "{good}[pager]\nstore = {{ kind = \"zero\" }}\ninject_errors = {{ permanent = [0x1000] }}\n"
        ),
        &[
            "pager.inject_errors.permanent = 0x1000",
            "not in the pager's range",
        ],
    );
    // A pager value is named at its own line, not the section's.
    let config = format!(
        "{good}[pager]\nstore = {{ kind = \"zero\" }}\nlatency = {{ model = \"constant\", us = -1.0 }}\n"
    );
    let line = 1 + config
        .lines()
        .position(|l| l.starts_with("latency"))
        .unwrap();
    assert_bad_config(
        &config,
        &[&format!("test.toml:{line}:1: pager.latency.us = -1")],
    );
    assert_bad_config(
        &format!("{good}[pager]\nstore = {{ kind = \"zero\" }}\nserver_poll_us = 50\n"),
        &["pager.server_poll_us = 50", "kernel fault path"],
    );
    assert_bad_config(
        &format!("{good}[pager]\nstore = {{ kind = \"zero\" }}\nfault_path = \"guest\"\n"),
        &["test.toml:", "fault_path", "guest"],
    );
}

#[test]
fn bad_policy_and_apf_sections_are_exit_2_naming_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = workload_config(1, "kind = \"cpu\"");
    assert_bad_config(
        &format!("{good}[policy]\nmodule = \"paolo\"\n"),
        &["test.toml", "[policy]", "without a [pager] section"],
    );
    let good = format!("{good}[pager]\nstore = {{ kind = \"zero\" }}\n");
    assert_bad_config(
        &format!("{good}[policy]\nmodule = \"no-such-policy\"\n"),
        &[
            "test.toml:",
            "policy.module",
            "no policy `no-such-policy`",
            "paolo",
        ],
    );
    assert_bad_config(
        &format!(
            "{good}[policy]\nmodule = \"paolo\"\ndecision = {{ not_present = \"sdei\", ready = \"interrupt\", initiation = \"host\", sleep = \"halt\" }}\n"
        ),
        &["test.toml:", "policy.module", "not both"],
    );
    assert_bad_config(
        &format!(
            "{good}[policy]\ndecision = {{ not_present = \"page-fault\", ready = \"interrupt\", initiation = \"host\", sleep = \"halt\" }}\n"
        ),
        &["test.toml:", "page-fault"],
    );
    assert_bad_config(
        &format!("{good}[policy]\nmodule = \"paolo\"\n[apf]\nring_depth = 65\n"),
        &["test.toml:", "apf.ring_depth", "65"],
    );
    assert_bad_config(
        &format!("{good}[policy]\nmodule = \"paolo\"\n[apf]\nguest_abuses = \"yes\"\n"),
        &["test.toml:", "guest_abuses"],
    );
    // A file that is not a Wasm module: refused before anything runs.
    std::fs::write(dir.path().join("not-wasm.wasm"), "this is text").unwrap();
    let config = format!("{good}[policy]\nmodule = \"not-wasm.wasm\"\n");
    let path = dir.path().join("test.toml");
    std::fs::write(&path, config).unwrap();
    let (code, log, r) = run_file(&path, dir.path());
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("test.toml") && log.contains("policy.module"),
        "{log}"
    );
    assert!(log.contains("not-wasm.wasm"), "{log}");
    assert!(r.is_none());
}

#[test]
fn an_empirical_samples_file_with_a_bad_line_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("samples.txt"), "12.5\n13\nfast\n").unwrap();
    let config = workload_config(1, "kind = \"cpu\"")
        + "[pager]\nstore = { kind = \"zero\" }\nlatency = { model = \"empirical\", samples = \"samples.txt\" }\n";
    let path = dir.path().join("test.toml");
    std::fs::write(&path, config).unwrap();
    let (code, log, _) = run_file(&path, dir.path());
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("samples.txt:3"), "{log}");
}

/// The guest's own report of a run on `qemu-system-aarch64 -M virt`.
fn report_on_qemu(vcpus: u64, memory_mib: u64, bootargs: &str) -> GuestReport {
    let qemu = apflab_artifacts::qemu_virt(vcpus as u32, memory_mib, bootargs);
    // `timeout` bounds a guest that never powers off.
    let out = Command::new("timeout")
        .arg("120")
        .arg(qemu.get_program())
        .args(qemu.get_args())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("cannot run qemu-system-aarch64 (Debian package qemu-system-arm)");
    let console = text(&out.stdout);
    assert!(
        out.status.success(),
        "qemu: {}\n{console}",
        text(&out.stderr)
    );
    console
        .lines()
        .find_map(|l| GuestReport::parse_console_line(l.trim_end()))
        .unwrap_or_else(|| panic!("no report line on QEMU's console:\n{console}"))
}

#[test]
fn the_guest_reports_the_same_work_on_qemu_and_on_the_emu_backend() {
    let (code, log, r) = run_config(&workload_config(
        2,
        "kind = \"mixed\"\nops = 300000\nmib = 3\npattern = \"random\"\npasses = 2",
    ));
    assert_eq!(code, Some(0), "{log}");
    let r = r.unwrap();
    let bootargs = r.pointer("/config/bootargs").unwrap().as_str().unwrap();
    let qemu = report_on_qemu(2, 64, bootargs);
    assert_eq!(u64::from(qemu.cpus_online), u(&r, "/guest/cpus_online"));
    assert_eq!(
        u64::from(qemu.tasks_completed),
        u(&r, "/guest/tasks_completed")
    );
    assert_eq!(qemu.cpu_ops, u(&r, "/guest/metrics/cpu/ops"));
    assert_eq!(
        qemu.pages_verified,
        u(&r, "/guest/metrics/memtouch/pages_verified")
    );
    assert_eq!(qemu.mismatches, 0);
    assert_eq!(u(&r, "/guest/metrics/memtouch/mismatches"), 0);
    // Without the apflab VMM, async PF is not offered.
    assert_eq!(qemu.apf_enabled, 0);
}

#[test]
fn policy_check_describes_a_module_and_rejects_a_wasi_one() {
    let out = apflab(&["policy", "check", "paolo"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let version = apflab_abi::policy::POLICY_ABI_VERSION;
    assert!(
        stdout.contains(&format!("valid policy, ABI version {version}")),
        "{stdout}"
    );
    assert!(stdout.contains("apf_decide"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasi.wat");
    std::fs::write(
        &path,
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))"#,
    )
    .unwrap();
    let out = apflab(&["policy", "check", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("wasi_snapshot_preview1.fd_write"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[cfg(not(target_arch = "aarch64"))]
#[test]
fn asking_for_kvm_on_a_host_without_arm64_kvm_is_one_clear_sentence_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let out = apflab(&[
        "run",
        configs_dir().join("quick.toml").to_str().unwrap(),
        "--backend",
        "kvm",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("aarch64 Linux host with /dev/kvm"),
        "{stderr}"
    );
    assert!(stderr.contains("use --backend emu"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!out_dir.join("result.json").exists());
}

/// The synchronous baseline on two vCPUs, pinned value by value: the emu
/// backend is deterministic, so any change to the fault path, the pager or
/// the guest that moves one of these numbers shows here. (Recorded before
/// the fault engine moved into `platform/apf`; a deliberate change updates
/// them and says why. The guest's async PF client changed its code, and
/// with it the instruction count (63,804,890 before) and the times that
/// follow from it; every exit, stall and pager figure stayed the same.
/// Then the guest's report gained three fields (51 more characters on the
/// console: 102 more MMIO exits, a status read and a data write each) and
/// `memtouch` its kernel-reader mode, the guest its SDEI client and
/// self-test, and its modules were rearranged, and the emu machine started
/// taking exceptions and interrupts as the architecture does (3,208 more
/// instructions on their own), and the guest is built with the checkout's
/// path remapped, and the timer interrupt reads the counter once again
/// (not once for the workload and once for the scheduler): 63,723,416
/// instructions and 146,060,114 ns before; exits, stalls and pager figures
/// unchanged. Then the guest gained its timeline log, whose checks (off
/// here) cost 12,731 instructions: 63,739,001 and 146,218,249 ns before,
/// everything exact unchanged. Then the emu backend stopped counting a
/// block twice when a slice ended before it or a fault cut it short:
/// 63,751,732 instructions and 146,222,446 ns before; exits, stalls and
/// pager figures unchanged. Then the guest gained its abusive task (off
/// here), and the compiler laid out a text segment 18 KB smaller: 81,985
/// more instructions, all before the first task completes (both tasks end
/// 27 us later): 63,689,303 and 146,201,853 ns before, exits, stalls and
/// pager figures unchanged. Then its HVC calls went through one helper:
/// 63,771,288 and 146,228,907 ns before, the rest unchanged. Then the GIC
/// grew to QEMU virt's 256 INTIDs, which the guest's GIC set-up writes
/// (55 more MMIO exits: 1216 and 6090 exits before, 63,770,241
/// instructions and 146,228,563 ns; stalls and pager figures unchanged).
/// Then the guest announced the end of its boot (`BOOT_DONE`, which costs
/// no virtual time and counts no exit) and parsed its workload's bootargs
/// only after it, printing its first line there: 63,779,688 instructions
/// and 146,314,169 ns before, every exit, stall and pager figure
/// unchanged. Then the device tree gained its last node, `apflab-apf`
/// (naming the ready PPI for Linux), and "page ready" as an exception
/// moved from class 0x1D (SME's) to 0x0F: 63,753,918 instructions and
/// 146,305,667 ns before, every exit, stall and pager figure unchanged.
/// Then the guest was built as one code generation unit, so that its code
/// no longer depends on how it is split into files: 75,799 more
/// instructions (63,753,554 before) and 25,013 ns more (146,305,547
/// before; the first task completes 26 us later, the second 25 us);
/// every exit, stall and pager figure unchanged.)
///
/// Instruction counts and the times that follow from them are pinned to
/// within [`LAYOUT_SLACK`]: the guest's layout depends on where the
/// checkout is (cargo's crate hashes order its sections), which moved them
/// by 5 instructions and 2 ns between two checkouts. Every other figure is
/// exact.
#[test]
fn farmem_sync_on_two_vcpus_gives_the_pinned_results() {
    let dir = tempfile::tempdir().unwrap();
    let (code, log, r) = run_file(&configs_dir().join("farmem-sync.toml"), dir.path());
    assert_eq!(code, Some(0), "{log}");
    let r = r.unwrap();
    assert_eq!(u(&r, "/vcpus"), 2);
    near(&r, "/virtual_time_ns", 146_330_560);
    near(&r, "/vmm/instructions", 63_829_353);
    let exits: Vec<(&str, u64)> = [
        ("hypercall", 5),
        ("irq", 141),
        ("mmio", 1271),
        ("not_resident", 4716),
        ("psci", 2),
        ("svc", 9),
        ("wfi", 1),
    ]
    .into();
    for (name, n) in &exits {
        assert_eq!(u(&r, &format!("/vmm/exits/{name}")), *n, "exits.{name}");
    }
    assert_eq!(r["vmm"]["exits"].as_object().unwrap().len(), exits.len());
    assert_eq!(u(&r, "/vmm/exits_total"), 6145);
    assert_eq!(r["vmm"]["stalled_ns"], serde_json::json!([116_239_841, 0]));
    assert_eq!(r["vmm"]["halted_ns"], serde_json::json!([0, 0]));
    assert_eq!(r["vmm"]["task_done_ns"].as_object().unwrap().len(), 2);
    near(&r, "/vmm/task_done_ns/0", 7_793_304);
    near(&r, "/vmm/task_done_ns/1", 144_846_856);
    assert_eq!(u(&r, "/vmm/interrupts/27"), 141);
    for (key, n) in [
        ("fetches", 4716),
        ("evictions", 2668),
        ("write_backs", 2668),
        ("refaults", 1192),
        ("bytes_fetched", 19_316_736),
        ("bytes_written_back", 10_928_128),
        ("resident_high_water_pages", 2048),
        ("joined_in_flight", 0),
        ("no_frame_waits", 0),
        ("spurious", 0),
    ] {
        assert_eq!(u(&r, &format!("/pager/{key}")), n, "pager.{key}");
    }
    assert_eq!(u(&r, "/retries"), 0);
    assert_eq!(r["pager"]["stalled_ns"], serde_json::json!([116_239_841]));
    assert_eq!(u(&r, "/pager/fetch_latency/max_ns"), 114_526);
    assert_eq!(u(&r, "/pager/fetch_latency/p50_ns"), 21_919);
    assert_eq!(u(&r, "/pager/fetch_latency/p99_ns"), 68_159);
    assert_eq!(u(&r, "/integrity/pages_verified"), 8192);
    assert_eq!(u(&r, "/integrity/mismatches"), 0);
    assert_eq!(u(&r, "/guest/context_switches"), 8);
    near(&r, "/guest/elapsed_ns", 144_775_296);
    assert_eq!(r["guest"]["task_done_ns"].as_array().unwrap().len(), 2);
    near(&r, "/guest/task_done_ns/0", 7_719_952);
    near(&r, "/guest/task_done_ns/1", 144_773_504);
}

/// How far an instruction count or a time of the pinned run may move with
/// the guest's layout alone.
const LAYOUT_SLACK: u64 = 256;

/// `pointer` in `r` is `pinned`, to within [`LAYOUT_SLACK`].
fn near(r: &Value, pointer: &str, pinned: u64) {
    let got = u(r, pointer);
    assert!(
        got.abs_diff(pinned) <= LAYOUT_SLACK,
        "{pointer} = {got}, pinned {pinned} (at most {LAYOUT_SLACK} apart)"
    );
}
