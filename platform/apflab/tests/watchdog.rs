//! The watchdog end to end: a run whose guest shows no sign of life for
//! `backend.watchdog_ms` ends with exit 1, a diagnosis naming the vCPU, its
//! state and the page it waits for, and the `watchdog` field of the results;
//! `apflab boot --timeout` ends an image that spins or waits in WFI with
//! interrupts masked the same way. A run the watchdog does not stop records
//! `watchdog: null`. And a scaled-down `configs/scale.toml`: many vCPUs
//! over far memory larger than the resident limit end with every page
//! intact, no watchdog, and a peak resident set within guest RAM + 128 MiB.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

const APFLAB: &str = env!("CARGO_BIN_EXE_apflab");

fn apflab(args: &[&str]) -> (Option<i32>, String) {
    let out: Output = Command::new(APFLAB)
        .args(args)
        .output()
        .expect("apflab runs");
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !log.contains("panicked"),
        "apflab {args:?} panicked:\n{log}"
    );
    (out.status.code(), log)
}

/// Runs `config` from a fresh directory; exit status, output and results.
fn run(config: &str) -> (Option<i32>, String, Value) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.toml");
    std::fs::write(&path, config).unwrap();
    let out = dir.path().join("out");
    let (code, log) = apflab(&[
        "run",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(out.join("result.json"))
        .unwrap_or_else(|e| panic!("no result.json ({e}):\n{log}"));
    (code, log, serde_json::from_str(&text).unwrap())
}

/// One vCPU touching 1 MiB of far memory whose every fetch takes `us`.
fn far_memory(us: f64, watchdog_ms: u64) -> String {
    format!(
        "seed = 3\n[guest]\nvcpus = 1\nmemory_mib = 64\n[workload]\nkind = \"memtouch\"\n\
         mib = 1\npattern = \"seq\"\npasses = 1\nverify = \"store\"\n[backend]\nkind = \"emu\"\n\
         watchdog_ms = {watchdog_ms}\n[pager]\nstore = {{ kind = \"synthetic\", seed = 5 }}\n\
         latency = {{ model = \"constant\", us = {us:?} }}\ninitially_resident = 0.0\n"
    )
}

#[test]
fn a_vcpu_stalled_on_a_page_that_does_not_come_is_stopped_naming_it() {
    // A fetch of 1000 s against a watchdog of 20 ms (of virtual time).
    let (code, log, r) = run(&far_memory(1e9, 20));
    assert_eq!(code, Some(1), "{log}");
    assert_eq!(r["outcome"]["exit"], "hang", "{log}");
    assert_eq!(r["outcome"]["success"], false);
    assert!(log.contains("watchdog: no sign of life"), "{log}");
    let w = &r["watchdog"];
    assert_eq!(w["quiet_ms"], 20, "{w:#}");
    let at = w["at_ns"].as_u64().unwrap();
    assert!((20_000_000..30_000_000).contains(&at), "{w:#}");
    let state = w["vcpus"][0]["state"].as_str().unwrap();
    assert!(
        state.starts_with("stalled by the fault engine until"),
        "{w:#}"
    );
    let outstanding = w["outstanding"].as_array().unwrap();
    assert_eq!(outstanding.len(), 1, "{w:#}");
    let line = outstanding[0].as_str().unwrap();
    assert!(
        line.starts_with("vCPU 0 stalled on page 0x") && line.contains("its fetch due at"),
        "{line}"
    );
    // Stopped at the watchdog, not at the time limit.
    assert!(r["virtual_time_ns"].as_u64().unwrap() < 1_000_000_000);
}

#[test]
fn a_run_the_watchdog_does_not_stop_records_null() {
    // 100 µs fetches, 512 of them in a row, against the default watchdog.
    let config = far_memory(100.0, 1_000).replace("watchdog_ms = 1000\n", "");
    let (code, log, r) = run(&config);
    assert_eq!(code, Some(0), "{log}");
    assert!(r["watchdog"].is_null(), "{:#}", r["watchdog"]);
    assert_eq!(r["config"]["parsed"]["backend"]["watchdog_ms"], 1_000);
}

/// A raw image of `words` in a fresh file.
fn image(dir: &Path, words: &[u32]) -> String {
    let path = dir.join("image.bin");
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn boot_timeout_ends_an_image_that_spins_or_waits_with_interrupts_masked() {
    let dir = tempfile::tempdir().unwrap();
    let masked_spin = [0xd5034fdf, 0x14000000]; // msr daifset, #0xf; b .
    let masked_wfi = [0xd50342df, 0xd503207f, 0x17ffffff]; // msr daifset, #2; wfi; b .-4
    for (what, words) in [("spin", &masked_spin[..]), ("wfi", &masked_wfi[..])] {
        let img = image(dir.path(), words);
        let start = Instant::now();
        let (code, log) = apflab(&["boot", &img, "--timeout", "50"]);
        assert_eq!(code, Some(1), "{what}: {log}");
        assert!(
            log.contains("guest hung: watchdog: no sign of life") && log.contains("for 50 ms"),
            "{what}: {log}"
        );
        assert!(log.contains("IRQs masked"), "{what}: {log}");
        assert!(start.elapsed() < Duration::from_secs(30), "{what}");
    }
    let (code, log) = apflab(&["boot", &image(dir.path(), &masked_spin), "--timeout", "0"]);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("--timeout 0"), "{log}");
}

#[test]
fn a_scaled_down_scale_run_keeps_every_page_and_its_memory_within_bounds() {
    let config = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/scale.toml"),
    )
    .unwrap()
    .replace("vcpus = 8", "vcpus = 4")
    .replace("memory_mib = 1024", "memory_mib = 256")
    .replace("tasks = 8", "tasks = 4")
    .replace("mib = 768", "mib = 96")
    .replace(
        "resident_limit = \"256 MiB\"",
        "resident_limit = \"32 MiB\"",
    );
    let (code, log, r) = run(&config);
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(r["integrity"]["mismatches"], 0);
    assert_eq!(r["integrity"]["pages_verified"], 2 * 96 * 256);
    assert!(r["watchdog"].is_null());
    let fetches = r["pager"]["fetches"].as_u64().unwrap();
    // Every page once, and again after its eviction for many.
    assert!(fetches > 96 * 256 + 5_000, "{fetches}");
    let rss = r["wall"]["peak_rss_mib"].as_f64().unwrap();
    assert!(rss > 0.0 && rss < 256.0 + 128.0, "peak RSS {rss} MiB");
}
