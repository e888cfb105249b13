//! Boot once, run many with Linux: Debian's arm64 kernel (see
//! `tests/linux_guest.rs` for where it comes from) saved at the end of its
//! boot (its `/init` announces it and then fetches the workload's words),
//! and resumed with another workload, on 1 and 4 vCPUs.

use std::path::Path;

mod common;
use common::{debian_kernel, from_boot_and_resumed, outside_wall, run_named as run};

fn config(kernel: &Path, vcpus: u32, workload: &str) -> String {
    format!(
        "seed = 7\n[guest]\nvcpus = {vcpus}\nmemory_mib = 256\nkernel = {:?}\n\
         [workload]\n{workload}\n[backend]\nkind = \"emu\"\n",
        kernel.display().to_string()
    )
}

#[test]
fn a_linux_run_resumed_from_its_boot_gives_the_results_of_one_from_power_on() {
    let Some(kernel) = debian_kernel() else {
        return;
    };
    for vcpus in [1, 4] {
        let [(from_boot, boot_console), (resumed, resumed_console)] = from_boot_and_resumed(
            &format!("{vcpus} vCPUs"),
            &config(&kernel, vcpus, "kind = \"cpu\"\nops = 50000"),
            &config(&kernel, vcpus, "kind = \"cpu\"\ntasks = 2\nops = 120000"),
        );
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

/// A Linux run whose memory goes far at its boot point: a memory-bound
/// workload over twice the resident limit, fetches of `latency_us`.
fn far_config(kernel: &Path, vcpus: u32, latency_us: f64) -> String {
    config(
        kernel,
        vcpus,
        "kind = \"memtouch\"\nmib = 16\npattern = \"random\"\npasses = 2",
    ) + &format!(
        "[pager]\nstore = {{ kind = \"zero\" }}\n\
         latency = {{ model = \"constant\", us = {latency_us:?} }}\n\
         resident_limit = \"2 MiB\"\ninitially_resident = 0.0\narmed_at = \"boot-point\"\n"
    )
}

#[test]
fn far_memory_armed_at_the_boot_point_lets_runs_of_other_latencies_share_the_boot() {
    let Some(kernel) = debian_kernel() else {
        return;
    };
    for vcpus in [1, 4] {
        let [(from_boot, _), (resumed, _)] = from_boot_and_resumed(
            &format!("{vcpus} vCPUs"),
            &far_config(&kernel, vcpus, 10.0),
            &far_config(&kernel, vcpus, 200.0),
        );

        // Far memory started at the boot point: everything Linux holds
        // above its image went to the store, what the boot wrote kept.
        let arming = &from_boot["pager"]["boot_point"];
        let withheld = arming["pages_withheld"].as_u64().unwrap();
        let stored = arming["pages_stored"].as_u64().unwrap();
        assert!(arming["at_ns"].as_u64().unwrap() > 0, "{arming}");
        assert_eq!(withheld, from_boot["pager"]["managed_pages"], "{arming}");
        assert!(stored > 0 && stored < withheld, "{arming}");
        // The workload then ran on it, over eight times the resident
        // limit: its pages (those Linux did not give it from below the
        // managed region) fault in and out, every page it checks intact.
        let pager = &from_boot["pager"];
        assert!(
            pager["fetches"].as_u64().unwrap() > 1024 && pager["refaults"].as_u64().unwrap() > 0,
            "{pager:#}"
        );
        assert_eq!(from_boot["integrity"]["mismatches"], 0, "{from_boot:#}");
        assert_eq!(
            outside_wall(resumed),
            outside_wall(from_boot),
            "{vcpus} vCPUs"
        );
    }
}

#[test]
fn a_matrix_boots_once_per_group_and_gets_the_results_of_runs_on_their_own() {
    let Some(kernel) = debian_kernel() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.toml"), far_config(&kernel, 1, 10.0)).unwrap();
    // Two latencies, two repetitions (the pager's seed varies), and two
    // vCPU counts, which boot otherwise: two groups of four.
    std::fs::write(
        dir.path().join("exp.toml"),
        "base = \"base.toml\"\nrepetitions = 2\n[axes]\n\
         \"pager.latency.us\" = [10.0, 200.0]\n\"guest.vcpus\" = [1, 2]\n",
    )
    .unwrap();
    let matrix = dir.path().join("m");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_apflab"))
        .arg("matrix")
        .arg(dir.path().join("exp.toml"))
        .arg("--out")
        .arg(&matrix)
        .args(["--jobs", "2"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{log}");
    assert!(log.contains("8 points boot alike in 2 groups"), "{log}");
    assert!(log.contains("8 runs, 8 ok"), "{log}");
    // Its scratch snapshots are gone.
    let hidden: Vec<_> = std::fs::read_dir(&matrix)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
    for i in 0..8 {
        let id = format!("r{i:03}");
        let point =
            std::fs::read_to_string(matrix.join("points").join(format!("{id}.toml"))).unwrap();
        let (code, log, alone, _) = run(dir.path(), &id, &point, &[]);
        assert_eq!(code, Some(0), "{id}: {log}");
        let in_matrix: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(matrix.join(&id).join("result.json")).unwrap(),
        )
        .unwrap();
        // Outside the run's name (`exp/r000` in the matrix).
        let strip = |mut r: serde_json::Value| {
            r["config"].as_object_mut().unwrap().remove("name");
            outside_wall(r)
        };
        assert_eq!(strip(alone.expect("results")), strip(in_matrix), "{id}");
    }
}
