//! Linux as a guest: what a config with an arm64 Linux Image as its kernel
//! may say (every key that does not apply to Linux is exit 2 naming it),
//! and, with Debian's arm64 kernel (`scripts/linux-kernel` fetches it and
//! `scripts/test` names it in `APFLAB_LINUX_KERNEL`), boots to `/init` and
//! the far-memory workload on emu; with apflab's own Linux kernel
//! (`guest/linux/kernel`), runs every async PF variant in Linux.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

const APFLAB: &str = env!("CARGO_BIN_EXE_apflab");

/// An arm64 Image header of a 4 KiB-page little-endian kernel: enough for
/// the config to take the file as a Linux kernel.
fn fake_image(dir: &Path) -> PathBuf {
    let mut image = vec![0u8; 4096];
    image[16..24].copy_from_slice(&0x10_0000u64.to_le_bytes());
    image[24..32].copy_from_slice(&0xau64.to_le_bytes());
    image[0x38..0x3c].copy_from_slice(b"ARM\x64");
    let path = dir.join("Image");
    std::fs::write(&path, image).unwrap();
    std::fs::write(dir.join("initrd.cpio"), b"070701").unwrap();
    path
}

/// `apflab run` of `config` (written as `linux.toml` in `dir`): exit code
/// and output.
fn run(dir: &Path, config: &str) -> (Option<i32>, String) {
    let path = dir.join("linux.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(APFLAB)
        .args(["run", path.to_str().unwrap(), "--out"])
        .arg(dir.join("out"))
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("panicked"), "{log}");
    (out.status.code(), log)
}

fn linux_config(guest: &str, workload: &str, rest: &str) -> String {
    format!(
        "seed = 7\n[guest]\nvcpus = 1\nmemory_mib = 256\nkernel = \"Image\"\n{guest}\n\
         [workload]\n{workload}\n[backend]\nkind = \"emu\"\n{rest}"
    )
}

#[test]
fn keys_that_do_not_apply_to_linux_are_exit_2_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    fake_image(dir.path());
    let initrd = "initrd = \"initrd.cpio\"";
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            linux_config(initrd, "kind = \"cpu\"\nops = 10\ntimeslice_us = 500", ""),
            vec![
                "linux.toml:",
                "workload.timeslice_us",
                "Linux guest",
                "tasks, ops",
            ],
        ),
        (
            linux_config(
                initrd,
                "kind = \"memtouch\"\nmib = 8\nverify = \"store\"",
                "",
            ),
            vec!["workload.verify", "Linux guest"],
        ),
        (
            linux_config(initrd, "kind = \"cpu\"", "[apf]\nguest_abuses = true\n"),
            vec!["apf", "guest_abuses = false", "Linux guest"],
        ),
        (
            linux_config(
                &format!("{initrd}\nbootargs = \"{}\"", "x".repeat(2100)),
                "kind = \"cpu\"",
                "",
            ),
            vec!["guest.bootargs", "at most 2047"],
        ),
        (
            linux_config(
                &format!("{initrd}\nbootargs = \"a\\u0000b\""),
                "kind = \"cpu\"",
                "",
            ),
            vec!["guest.bootargs", "NUL"],
        ),
        (
            linux_config("initrd = \"missing.cpio\"", "kind = \"cpu\"", ""),
            vec!["guest.initrd", "missing.cpio"],
        ),
    ];
    for (config, needles) in cases {
        let (code, log) = run(dir.path(), &config);
        assert_eq!(code, Some(2), "{config}\n{log}");
        for needle in needles {
            assert!(
                log.contains(needle),
                "{needle:?} not in:\n{log}\nfor:\n{config}"
            );
        }
        assert!(!dir.path().join("out/result.json").exists());
    }
}

#[test]
fn an_initrd_for_a_kernel_that_is_not_linux_is_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    fake_image(dir.path());
    let config = "[guest]\nvcpus = 1\nmemory_mib = 64\ninitrd = \"initrd.cpio\"\n[workload]\n\
                  kind = \"cpu\"\n[backend]\nkind = \"emu\"\n";
    let (code, log) = run(dir.path(), config);
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("guest.initrd") && log.contains("only a Linux kernel"),
        "{log}"
    );
}

/// `apflab boot` of Debian's kernel with apflab's initramfs: exit code and
/// console.
fn boot_linux(kernel: &Path, vcpus: u32, workload: &str) -> (Option<i32>, String) {
    let out = Command::new(APFLAB)
        .arg("boot")
        .arg(kernel)
        .arg("--initrd")
        .arg(apflab_artifacts::linux_initramfs())
        .args(["--memory", "512", "--vcpus", &vcpus.to_string(), "--append"])
        .arg(format!("{} {workload}", apflab::linux_guest::BASE_BOOTARGS))
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    let log = console.clone() + &String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("panicked"), "{log}");
    (out.status.code(), console)
}

#[test]
fn debians_kernel_boots_to_init_and_powers_off_the_same_way_twice_on_1_and_4_vcpus() {
    let Some(kernel) = common::debian_kernel() else {
        return;
    };
    for vcpus in [1, 4] {
        let workload = "apflab.workload=cpu apflab.tasks=1 apflab.ops=100000";
        let (code, console) = boot_linux(&kernel, vcpus, workload);
        assert_eq!(code, Some(0), "{console}");
        let cpus = if vcpus == 1 { "CPU" } else { "CPUs" };
        for landmark in [
            format!("smp: Brought up 1 node, {vcpus} {cpus}"),
            "Memory: ".to_owned(),
            "Freeing unused kernel memory".to_owned(),
            "rtc-pl031 9010000.pl031: registered as rtc0".to_owned(),
            "sdei: SDEIv1.0 (0x0) detected in firmware.".to_owned(),
            "Run /init as init process".to_owned(),
            "APFLAB-REPORT".to_owned(),
            "reboot: Power down".to_owned(),
        ] {
            assert!(
                console.contains(&landmark),
                "{landmark:?} missing:\n{console}"
            );
        }
        for trouble in [
            "WARNING:",
            "BUG:",
            "Oops",
            "Call trace",
            "cut here",
            "timed out",
        ] {
            assert!(
                !console.contains(trouble),
                "{trouble:?} on the console:\n{console}"
            );
        }
        let (_, again) = boot_linux(&kernel, vcpus, workload);
        assert!(console == again, "two boots on {vcpus} vCPUs differ");
    }
}

#[test]
fn the_mixed_workload_runs_on_far_memory_holding_half_its_working_set() {
    let Some(kernel) = common::debian_kernel() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "seed = 7\n[guest]\nvcpus = 2\nmemory_mib = 256\nkernel = {kernel:?}\n\
         [workload]\nkind = \"mixed\"\nops = 1000000\nmib = 32\npasses = 2\n\
         [backend]\nkind = \"emu\"\n\
         [pager]\nstore = {{ kind = \"zero\" }}\nresident_limit = \"16 MiB\"\n\
         latency = {{ model = \"lognormal\", median_us = 20.0, sigma = 0.5 }}\n"
    );
    let (code, log) = run(dir.path(), &config);
    assert_eq!(code, Some(0), "{log}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/result.json")).unwrap())
            .unwrap();
    let n = |p: &str| {
        r.pointer(p)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    assert_eq!(n("/integrity/mismatches"), 0, "{r:#}");
    assert_eq!(n("/integrity/pages_verified"), 2 * 32 * 256, "{r:#}");
    // Every fault is synchronous: far memory really fetched and evicted.
    assert!(n("/pager/fetches") > 1000, "{r:#}");
    assert!(n("/pager/evictions") > 0, "{r:#}");
    assert_eq!(n("/apf/async_faults"), 0, "{r:#}");
}

#[test]
fn linux_kv_reports_its_request_latencies_at_fine_resolution() {
    let Some(kernel) = common::debian_kernel() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "seed = 7\n[guest]\nvcpus = 2\nmemory_mib = 256\nkernel = {kernel:?}\n\
         [workload]\nkind = \"kv\"\nmib = 4\nrequests = 300\ninterval_us = 100\n\
         [backend]\nkind = \"emu\"\n"
    );
    let (code, log) = run(dir.path(), &config);
    assert_eq!(code, Some(0), "{log}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/result.json")).unwrap())
            .unwrap();
    let kv = &r["guest"]["metrics"]["kv"];
    assert_eq!(kv["requests"], 300, "{kv:#}");
    // The init's console line carries the fine histogram (its only channel),
    // so the percentiles come from it, and it holds every request.
    let latency = &kv["latency"];
    assert_eq!(latency["resolution"], "fine", "{kv:#}");
    assert_eq!(latency["count"], 300, "{kv:#}");
    let fine: u64 = kv["latency_fine"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(fine, 300, "{kv:#}");
    let ns = |k: &str| latency[k].as_u64().unwrap();
    assert!(0 < ns("p50_ns") && ns("p50_ns") <= ns("p99_ns") && ns("p99_ns") <= ns("max_ns"));
}

#[test]
fn the_initramfs_is_in_the_results_and_a_changed_one_makes_a_matrix_run_again() {
    let Some(kernel) = common::debian_kernel() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio.gz");
    let built = std::fs::read(apflab_artifacts::linux_initramfs()).unwrap();
    std::fs::write(&initrd, &built).unwrap();
    std::fs::write(
        dir.path().join("base.toml"),
        format!(
            "seed = 7\n[guest]\nvcpus = 1\nmemory_mib = 256\nkernel = {kernel:?}\n\
             initrd = \"initrd.cpio.gz\"\n[workload]\nkind = \"cpu\"\nops = 100000\n\
             [backend]\nkind = \"emu\"\n"
        ),
    )
    .unwrap();
    let exp = dir.path().join("exp.toml");
    std::fs::write(&exp, "base = \"base.toml\"\n[axes]\nseed = [7]\n").unwrap();
    let out_dir = dir.path().join("out");
    let matrix = || {
        let out = Command::new(APFLAB)
            .arg("matrix")
            .arg(&exp)
            .arg("--out")
            .arg(&out_dir)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{log}");
        log
    };
    let recorded = || {
        let r: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out_dir.join("r000/result.json")).unwrap(),
        )
        .unwrap();
        r["config"]["initrd_sha256"].as_str().unwrap().to_owned()
    };

    matrix();
    assert_eq!(recorded(), apflab::config::sha256_hex(&built));
    assert!(matrix().contains("1 of 1 points already have results"));
    // Zeros after the archive are padding to the kernel's unpacker: the same
    // files, other bytes, so the point is another run.
    let mut padded = built.clone();
    padded.extend_from_slice(&[0; 512]);
    std::fs::write(&initrd, &padded).unwrap();
    let log = matrix();
    assert!(!log.contains("already"), "{log}");
    assert_eq!(recorded(), apflab::config::sha256_hex(&padded));
}

/// Linux's `mixed` workload on far memory holding half its working set,
/// 100 µs fetches, plus `extra` sections.
fn linux_apf_config(kernel: &Path, vcpus: u32, extra: &str) -> String {
    format!(
        "seed = 3\n[guest]\nvcpus = {vcpus}\nmemory_mib = 256\nkernel = {kernel:?}\n\
         [workload]\nkind = \"mixed\"\nops = 100000\nmib = 8\npattern = \"random\"\npasses = 2\n\
         [backend]\nkind = \"emu\"\n\
         [pager]\nstore = {{ kind = \"zero\" }}\nlatency = {{ model = \"constant\", us = 100.0 }}\n\
         queue_depth = 4\nresident_limit = \"4 MiB\"\ninitially_resident = 0.0\n{extra}"
    )
}

/// What every complete run of [`linux_apf_config`] shows.
fn assert_linux_mixed_complete(r: &serde_json::Value, variant: &str) {
    assert_eq!(
        common::u(r, "/guest/tasks_completed"),
        2,
        "{variant}: {:#}",
        r["guest"]
    );
    assert_eq!(common::u(r, "/integrity/mismatches"), 0, "{variant}");
    assert_eq!(
        common::u(r, "/integrity/pages_verified"),
        2 * 8 * 256,
        "{variant}"
    );
}

#[test]
fn every_variant_runs_in_linux_and_delivers_each_token_exactly_once() {
    let Some(kernel) = common::apf_kernel() else {
        return;
    };
    // Without a policy the client finds nothing offered and stays off.
    let (sync, _, console) = common::run_logged(&linux_apf_config(&kernel, 1, ""));
    assert_linux_mixed_complete(&sync, "sync");
    assert!(console.contains("apflab-apf: "), "{console}");
    assert_eq!(common::u(&sync, "/guest/apf/not_present"), 0);
    // Two runs at a time: each is one emu process on one host core.
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while let Some(&v) =
                    common::VARIANTS.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                {
                    check_linux_variant(&kernel, v);
                }
            });
        }
    });
}

#[test]
fn kernel_mode_faults_in_linux_are_sync_by_default_and_async_halt_when_the_host_says_halt() {
    let Some(kernel) = common::apf_kernel() else {
        return;
    };
    // The memory thread writes its pages itself (user-mode faults) and
    // reads them back through a pipe: the kernel's copy_from_user faults
    // on the pages evicted since, with IRQs unmasked.
    let kernel_reads = |decision: String| {
        linux_apf_config(&kernel, 1, &decision)
            .replace("passes = 2\n", "passes = 2\nreader = \"kernel\"\n")
    };
    // Reschedule is never served in the kernel: its faults fall back to
    // sync, the thread's own go async.
    let (r, tokens, _) = common::run_logged(&kernel_reads(common::decision(
        "data-abort",
        "interrupt",
        "host",
        "reschedule",
    )));
    assert_linux_mixed_complete(&r, "reschedule");
    let n = common::u(&r, "/apf/async_faults");
    assert!(
        common::u(&r, "/fallbacks/kernel_mode") > 0,
        "{:#}",
        r["fallbacks"]
    );
    assert!(n > 0);
    assert_eq!(
        common::assert_each_token_once(&tokens, false, true),
        n as usize
    );
    assert_eq!(
        common::u(&r, "/guest/apf/kernel_halts"),
        0,
        "{:#}",
        r["guest"]
    );
    // Async-halt: the kernel's faults go async too, and it waits for each
    // in its halt loop, where the ready interrupt reaches it.
    let (r, tokens, _) = common::run_logged(&kernel_reads(common::decision(
        "data-abort",
        "interrupt",
        "host",
        "halt",
    )));
    assert_linux_mixed_complete(&r, "halt");
    let n = common::u(&r, "/apf/async_faults");
    assert_eq!(
        common::assert_each_token_once(&tokens, false, true),
        n as usize
    );
    let g = &r["guest"]["apf"];
    assert!(common::u(g, "/kernel_halts") > 0, "{g:#}");
    assert_eq!(common::u(g, "/parked"), 0, "{g:#}");
}

/// Runs one variant of the protocol on Linux's `mixed` workload and checks
/// every token's life and the kernel's counters against the host's.
fn check_linux_variant(
    kernel: &Path,
    (not_present, ready, initiation, sleep): (&str, &str, &str, &str),
) {
    let variant = format!("{not_present}/{ready}/{initiation}/{sleep}");
    let (r, tokens, console) = common::run_logged(&linux_apf_config(
        kernel,
        1,
        &common::decision(not_present, ready, initiation, sleep),
    ));
    assert_linux_mixed_complete(&r, &variant);
    for trouble in ["WARNING:", "BUG:", "Oops", "Call trace", "cut here"] {
        assert!(
            !console.contains(trouble),
            "{variant}: {trouble:?}:\n{console}"
        );
    }
    let a = &r["apf"];
    let n = common::u(a, "/async_faults");
    assert!(n > 0, "{variant}: {a:#}");
    assert_eq!(
        common::assert_each_token_once(&tokens, initiation == "guest", ready == "interrupt"),
        n as usize,
        "{variant}"
    );
    assert_eq!(r["violations"], serde_json::json!({}), "{variant}");
    assert_eq!(common::u(a, "/ready_delivered"), n, "{variant}");
    assert_eq!(common::u(a, "/tokens_dropped"), 0, "{variant}");
    // The kernel's own counters, read by the init before its report (the
    // faults of its last steps come after): every "not present" it took
    // ended in exactly one wait, and it took no more than the host sent.
    let g = &r["guest"]["apf"];
    let taken = common::u(g, "/not_present");
    assert!(taken > 0 && taken <= n, "{variant}: {g:#}");
    assert!(common::u(g, "/ready") <= n, "{variant}: {g:#}");
    let waits = common::u(g, "/parked") + common::u(g, "/halts") + common::u(g, "/early_ready");
    assert_eq!(waits, taken, "{variant}: {g:#}");
    if sleep == "halt" {
        assert_eq!(common::u(g, "/parked"), 0, "{variant}: {g:#}");
    } else {
        // Only the kernel's own faults halt when the host says reschedule.
        assert_eq!(
            common::u(g, "/halts"),
            common::u(g, "/kernel_halts"),
            "{variant}: {g:#}"
        );
    }
}

#[test]
fn cpu_offline_and_online_mid_run_wakes_that_cpus_sleepers_and_loses_nothing() {
    let Some(kernel) = common::apf_kernel() else {
        return;
    };
    let config = linux_apf_config(
        &kernel,
        2,
        &common::decision("data-abort", "interrupt", "host", "reschedule"),
    )
    .replace(
        "[workload]\nkind = \"mixed\"\nops = 100000\n",
        &format!(
            "bootargs = \"{}=on\"\n[workload]\nkind = \"memtouch\"\ntasks = 2\n",
            apflab_abi::linux::KEY_HOTPLUG
        ),
    );
    let (r, tokens, console) = common::run_logged(&config);
    // Taken down through PSCI, and brought up again.
    assert!(console.contains("psci: CPU1 killed"), "{console}");
    assert_eq!(
        console.matches("CPU1: Booted secondary processor").count(),
        2,
        "{console}"
    );
    for trouble in ["WARNING:", "BUG:", "Oops", "Call trace", "cut here"] {
        assert!(!console.contains(trouble), "{trouble:?}:\n{console}");
    }
    assert_eq!(
        common::u(&r, "/guest/tasks_completed"),
        2,
        "{:#}",
        r["guest"]
    );
    assert_eq!(common::u(&r, "/integrity/mismatches"), 0);
    assert_eq!(common::u(&r, "/integrity/pages_verified"), 2 * 8 * 256);
    assert_eq!(r["violations"], serde_json::json!({}));
    let g = &r["guest"]["apf"];
    // CPU 1 disabled once, waking its sleepers.
    assert!(common::u(g, "/wake_alls") >= 1, "{g:#}");
    assert_eq!(g["enabled"], true, "{g:#}");
    assert!(common::u(&r, "/apf/async_faults") > 0, "{:#}", r["apf"]);
    // No token reaches the guest twice.
    let mut consumed = std::collections::BTreeSet::new();
    for e in tokens.iter().filter(|e| e.event == "consumed") {
        assert!(
            consumed.insert(e.token.clone()),
            "{} consumed twice",
            e.token
        );
    }
}
