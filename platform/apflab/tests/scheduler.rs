//! The guest's schedulers on the emu backend, where virtual time is exact:
//! a CPU task beside a memory task whose faults stall its vCPU
//! synchronously for longer than a time slice. Round-robin leaves every
//! stall to the memory task's slice and gives the CPU task one slice per
//! turn, so the memory task holds the CPU most of the time; the fair
//! scheduler charges the stall to the memory task and gives the CPU task
//! its share back.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const APFLAB: &str = env!("CARGO_BIN_EXE_apflab");

/// Time slice of the runs, µs.
const SLICE_US: f64 = 1000.0;
/// Fetch latency of every fault, µs: three slices.
const FETCH_US: f64 = 3000.0;

/// The mixed workload on one vCPU (task 0 computes, task 1 reads a working
/// set of 1 MiB that is not resident, each page a synchronous stall of
/// [`FETCH_US`]) under `scheduler`.
fn config(scheduler: &str) -> String {
    format!(
        "seed = 3\n[guest]\nvcpus = 1\nmemory_mib = 64\n\
         [workload]\nkind = \"mixed\"\nops = 40000000\nmib = 1\npattern = \"seq\"\npasses = 1\n\
         verify = \"store\"\ntimeslice_us = {SLICE_US:.0}\nscheduler = \"{scheduler}\"\n\
         [backend]\nkind = \"emu\"\nmax_virtual_ms = 60000\n\
         [pager]\nstore = {{ kind = \"synthetic\", seed = 5 }}\n\
         latency = {{ model = \"constant\", us = {FETCH_US:.1} }}\ninitially_resident = 0.0\n"
    )
}

/// Runs `config` with `--trace` in `dir`; its results and the trace events.
fn run_traced(dir: &Path, config: &str) -> (Value, Vec<Value>) {
    let path = dir.join("sched.toml");
    std::fs::write(&path, config).unwrap();
    let out_dir = dir.join("out");
    let trace = dir.join("trace.json");
    let out = Command::new(APFLAB)
        .args(["run", path.to_str().unwrap(), "--out"])
        .arg(&out_dir)
        .arg("--trace")
        .arg(&trace)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("result.json")).unwrap())
            .unwrap();
    let t: Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    (r, t["traceEvents"].as_array().unwrap().clone())
}

/// Per task, the µs it was the running task up to `until_us` (from the task
/// tracks of the trace: the guest's own log of its switches, on the
/// virtual clock).
fn running_us(events: &[Value], until_us: f64) -> BTreeMap<u64, f64> {
    let mut running = BTreeMap::new();
    for e in events.iter().filter(|e| {
        e["ph"] == "X"
            && e["pid"] == 2
            && e["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("running on vCPU"))
    }) {
        let start = e["ts"].as_f64().unwrap();
        let end = (start + e["dur"].as_f64().unwrap()).min(until_us);
        if end > start {
            *running.entry(e["tid"].as_u64().unwrap()).or_insert(0.0) += end - start;
        }
    }
    running
}

/// The two tasks' running time while both were alive (up to the first
/// one's end), and the CPU task's end, µs.
fn shares(scheduler: &str) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let (r, events) = run_traced(dir.path(), &config(scheduler));
    assert_eq!(r["outcome"]["success"], true, "{r}");
    assert!(
        r["config"]["bootargs"]
            .as_str()
            .unwrap()
            .contains(&format!("apflab.scheduler={scheduler}")),
        "{r}"
    );
    let done = &r["vmm"]["task_done_ns"];
    let cpu_done = done["0"].as_u64().unwrap() as f64 / 1e3;
    let mem_done = done["1"].as_u64().unwrap() as f64 / 1e3;
    let running = running_us(&events, cpu_done.min(mem_done));
    (running[&0], running[&1], cpu_done)
}

#[test]
fn the_fair_scheduler_gives_a_task_beside_synchronous_stalls_its_share_and_round_robin_does_not() {
    let (rr_cpu, rr_mem, rr_cpu_done) = shares("round-robin");
    let (fair_cpu, fair_mem, fair_cpu_done) = shares("fair");
    // Round-robin: each turn is one slice of compute against a stall of
    // three slices (and more, while the next fault comes within the slice).
    assert!(
        rr_mem > 2.5 * rr_cpu,
        "round-robin: cpu {rr_cpu} us, memory {rr_mem} us"
    );
    // Fair: equal shares, to within one slice and one stall (the last
    // decision before the window closes).
    assert!(
        (fair_cpu - fair_mem).abs() <= SLICE_US + FETCH_US,
        "fair: cpu {fair_cpu} us, memory {fair_mem} us"
    );
    assert!(
        fair_cpu > 10.0 * (SLICE_US + FETCH_US),
        "a long enough window"
    );
    // So the CPU task, whose work is the same, ends sooner.
    assert!(
        fair_cpu_done < 0.6 * rr_cpu_done,
        "cpu task done at {fair_cpu_done} us (fair) against {rr_cpu_done} us (round-robin)"
    );
}
