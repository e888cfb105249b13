//! Boot once, run many: `apflab run --save-snapshot` and `--resume` on
//! the emu backend, end to end. A run resumed from a snapshot must write
//! the results of the same config run from power-on, byte for byte
//! outside `wall`; a snapshot of another boot must be refused.

mod common;
use common::{from_boot_and_resumed, outside_wall, run_named as run};

/// A far-memory config: a `mixed` workload on `vcpus` vCPUs over a pager
/// that withholds every page at the start, with the policy `policy`.
/// `ops`, `mib`, `latency_us` and `policy` are what runs sharing one
/// snapshot may change.
fn config(vcpus: u32, ops: u64, mib: u64, latency_us: f64, policy: &str) -> String {
    format!(
        r#"seed = 1
[guest]
vcpus = {vcpus}
memory_mib = 64
[workload]
kind = "mixed"
ops = {ops}
mib = {mib}
pattern = "random"
passes = 1
verify = "store"
timeslice_us = 1000
[backend]
kind = "emu"
[pager]
store = {{ kind = "synthetic", seed = 42 }}
latency = {{ model = "lognormal", median_us = {latency_us}, sigma = 0.5 }}
resident_limit = "2 MiB"
initially_resident = 0.0
seed = 3
[policy]
module = "{policy}"
"#
    )
}

fn resumed_run_matches_a_run_from_power_on(vcpus: u32) {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("boot.snap");
    let snap = snap.to_str().unwrap();
    let first = config(vcpus, 150_000, 4, 50.0, "paolo");
    let (code, log, saved, saved_console) =
        run(dir.path(), "save", &first, &["--save-snapshot", snap]);
    assert_eq!(code, Some(0), "{log}");
    // Saving changes nothing of the run that saves.
    let (code, log, plain, plain_console) = run(dir.path(), "plain", &first, &[]);
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(outside_wall(saved.unwrap()), outside_wall(plain.unwrap()));
    assert_eq!(saved_console, plain_console);

    // Another workload, policy and pager latency: what a matrix varies.
    let second = config(vcpus, 260_000, 6, 20.0, "gavin-v4");
    let (code, log, from_boot, boot_console) = run(dir.path(), "from-boot", &second, &[]);
    assert_eq!(code, Some(0), "{log}");
    let (code, log, resumed, resumed_console) =
        run(dir.path(), "resumed", &second, &["--resume", snap]);
    assert_eq!(code, Some(0), "{log}");
    let (from_boot, resumed) = (from_boot.unwrap(), resumed.unwrap());
    // The run did fault, in the other workload's working set.
    assert_eq!(from_boot["integrity"]["pages_verified"], 1536);
    assert!(from_boot["pager"]["fetches"].as_u64().unwrap() > 0);
    assert_eq!(outside_wall(resumed), outside_wall(from_boot));
    assert_eq!(resumed_console, boot_console);
    assert!(resumed_console.contains("MiB RAM, workload mixed"));
}

#[test]
fn a_resumed_run_gives_the_results_of_a_run_from_power_on_on_one_vcpu() {
    resumed_run_matches_a_run_from_power_on(1);
}

#[test]
fn a_resumed_run_gives_the_results_of_a_run_from_power_on_on_four_vcpus() {
    resumed_run_matches_a_run_from_power_on(4);
}

#[test]
fn a_snapshot_of_another_boot_is_refused_with_what_differs() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("boot.snap");
    let snap = snap.to_str().unwrap();
    let base = config(2, 100_000, 2, 50.0, "paolo");
    let (code, log, _, _) = run(dir.path(), "save", &base, &["--save-snapshot", snap]);
    assert_eq!(code, Some(0), "{log}");
    // Written compactly: a 64 MiB guest's few MiB of non-zero pages.
    let size = std::fs::metadata(snap).unwrap().len();
    assert!(size < 4 << 20, "{size} bytes");

    for (name, config, says) in [
        (
            "memory",
            base.replace("memory_mib = 64", "memory_mib = 128"),
            "memory_mib is \"64\" in the snapshot and \"128\" here",
        ),
        (
            "vcpus",
            base.replace("vcpus = 2", "vcpus = 4"),
            "vcpus is \"2\" in the snapshot and \"4\" here",
        ),
        (
            "timeslice",
            base.replace("timeslice_us = 1000", "timeslice_us = 500"),
            "apflab.timeslice_us=500",
        ),
        (
            "residency",
            base.replace("initially_resident = 0.0", "initially_resident = 0.5"),
            "pager is",
        ),
        (
            // Without [policy] the guest is offered no async PF at boot.
            "sync",
            base.replace("[policy]\nmodule = \"paolo\"\n", ""),
            "the fault engine of this run answers the boot's call",
        ),
    ] {
        let (code, log, result, _) = run(dir.path(), name, &config, &["--resume", snap]);
        assert_eq!(code, Some(2), "{name}: {log}");
        assert!(log.contains(says), "{name}: {log}");
        assert!(result.is_none(), "{name}: results written");
    }

    let junk = dir.path().join("junk.snap");
    std::fs::write(&junk, b"not a snapshot at all").unwrap();
    let (code, log, _, _) = run(
        dir.path(),
        "junk",
        &base,
        &["--resume", junk.to_str().unwrap()],
    );
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("not an apflab snapshot"), "{log}");

    let cut = dir.path().join("cut.snap");
    let bytes = std::fs::read(snap).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (code, log, _, _) = run(
        dir.path(),
        "cut",
        &base,
        &["--resume", cut.to_str().unwrap()],
    );
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("damaged"), "{log}");

    let (code, log, _, _) = run(
        dir.path(),
        "both",
        &base,
        &["--resume", snap, "--save-snapshot", snap],
    );
    assert_eq!(code, Some(2), "{log}");
}

#[test]
fn far_memory_from_the_boot_point_serves_the_store_s_pages_and_resumes_alike() {
    let dir = tempfile::tempdir().unwrap();
    let boot_point = |latency_us| {
        config(2, 150_000, 4, latency_us, "paolo")
            .replace("seed = 3\n", "seed = 3\narmed_at = \"boot-point\"\n")
    };
    let ran = |name, config: &str| {
        let (code, log, result, _) = run(dir.path(), name, config, &[]);
        assert_eq!(code, Some(0), "{name}: {log}");
        (result.expect("results written"), log)
    };
    let (power_on, _) = ran("power-on", &config(2, 150_000, 4, 50.0, "paolo"));
    let (at_boot, log) = ran("boot-point", &boot_point(50.0));
    // apflab's guest touches no managed page before its boot point, so
    // both runs see the synthetic store's pages and fault on the same
    // working set; far memory only starts later.
    for r in [&power_on, &at_boot] {
        assert_eq!(r["integrity"]["pages_verified"], 1024, "{r:#}");
        assert_eq!(r["integrity"]["mismatches"], 0, "{r:#}");
    }
    assert_eq!(at_boot["pager"]["fetches"], power_on["pager"]["fetches"]);
    let arming = &at_boot["pager"]["boot_point"];
    assert_eq!(arming["pages_withheld"], at_boot["pager"]["managed_pages"]);
    assert_eq!(
        arming["pages_stored"], 0,
        "the boot changed no managed page"
    );
    assert!(log.contains("far from the boot point at"), "{log}");
    assert!(power_on["pager"].get("boot_point").is_none());

    // Runs of another latency resume from its boot.
    let [(from_boot, _), (resumed, _)] =
        from_boot_and_resumed("boot point", &boot_point(50.0), &boot_point(20.0));
    assert_eq!(outside_wall(resumed), outside_wall(from_boot));
}

#[test]
fn far_memory_from_a_boot_point_the_guest_never_reaches_says_it_never_started() {
    let dir = tempfile::tempdir().unwrap();
    // The sieve kernel computes and powers off without a boot point.
    let config = format!(
        "seed = 1\n[guest]\nvcpus = 1\nmemory_mib = 256\nkernel = {:?}\n[workload]\n\
         kind = \"cpu\"\n[backend]\nkind = \"emu\"\nmax_virtual_ms = 1000000\n[pager]\n\
         store = {{ kind = \"zero\" }}\narmed_at = \"boot-point\"\n",
        apflab_artifacts::sieve_elf().display().to_string()
    );
    let (code, log, result, _) = run(dir.path(), "sieve", &config, &[]);
    // It sends apflab no report either: a failed run, with its results.
    assert_eq!(code, Some(1), "{log}");
    let pager = &result.unwrap()["pager"];
    assert_eq!(
        pager["boot_point"]["at_ns"],
        serde_json::Value::Null,
        "{pager:#}"
    );
    assert_eq!(pager["boot_point"]["pages_withheld"], 0, "{pager:#}");
    assert!(log.contains("far memory never started"), "{log}");
}
