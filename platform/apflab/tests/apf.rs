//! The async PF protocol end to end on the emu backend: the real guest's
//! client, the real engine, each variant's own signature in the results
//! file and the guest's report. Emu runs are deterministic, so the
//! comparisons of virtual times are exact.

use std::process::Command;

use serde_json::Value;

const APFLAB: &str = env!("CARGO_BIN_EXE_apflab");

/// A mixed workload (a CPU task beside a memory task whose working set is
/// twice the resident limit, every word verified against the store) on
/// `vcpus` vCPUs with 100 µs fetches, plus `extra` sections.
fn config(vcpus: u32, cpu_ops: u64, extra: &str) -> String {
    format!(
        "seed = 3\n[guest]\nvcpus = {vcpus}\nmemory_mib = 64\n\
         [workload]\nkind = \"mixed\"\nops = {cpu_ops}\nmib = 8\npattern = \"random\"\npasses = 2\nverify = \"store\"\n\
         [backend]\nkind = \"emu\"\n\
         [pager]\nstore = {{ kind = \"synthetic\", seed = 5 }}\nlatency = {{ model = \"constant\", us = 100.0 }}\n\
         queue_depth = 4\nresident_limit = \"4 MiB\"\ninitially_resident = 0.0\n{extra}"
    )
}

fn decision(not_present: &str, ready: &str, initiation: &str, sleep: &str) -> String {
    format!(
        "[policy]\ndecision = {{ not_present = \"{not_present}\", ready = \"{ready}\", \
         initiation = \"{initiation}\", sleep = \"{sleep}\" }}\n"
    )
}

/// Runs `config`; its results (the run must succeed).
fn run(config: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apf.toml");
    std::fs::write(&path, config).unwrap();
    let out_dir = dir.path().join("out");
    let out = Command::new(APFLAB)
        .args([
            "run",
            path.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}\n--- config:\n{config}");
    let text = std::fs::read_to_string(out_dir.join("result.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn u(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} missing in {v:#}"))
}

/// What every correct run shows: all work done, every word intact.
fn assert_complete(r: &Value) {
    assert_eq!(u(r, "/guest/tasks_completed"), 2, "{:#}", r["guest"]);
    assert_eq!(u(r, "/integrity/mismatches"), 0);
    assert_eq!(u(r, "/integrity/pages_verified"), 8 * 256 * 2);
}

/// The CPU task's completion time (task 0 of `mixed`).
fn cpu_task_done(r: &Value) -> u64 {
    u(r, "/guest/task_done_ns/0")
}

/// Every combination of the four axes (not present x ready x initiation x
/// sleep).
const VARIANTS: [(&str, &str, &str, &str); 24] = {
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

#[test]
fn every_variant_delivers_each_token_exactly_once() {
    let sync = run(&config(1, 2_000_000, ""));
    assert_complete(&sync);
    assert!(sync.get("apf").is_none(), "no policy: no async PF offered");
    assert_eq!(sync["guest"]["apf"]["enabled"], false);
    for (not_present, ready, initiation, sleep) in VARIANTS {
        let variant = format!("{not_present}/{ready}/{initiation}/{sleep}");
        let r = run(&config(
            1,
            2_000_000,
            &decision(not_present, ready, initiation, sleep),
        ));
        assert_complete(&r);
        let a = &r["apf"];
        let n = u(a, "/async_faults");
        assert!(n > 0, "{variant}: {a:#}");
        assert_eq!(u(a, "/sync_faults"), 0, "{variant}: {a:#}");
        assert_eq!(a["fallbacks"], serde_json::json!({}), "{variant}");
        assert_eq!(a["violations"], serde_json::json!({}), "{variant}");
        // Exactly once: every token the guest was handed came back
        // ready once, and the guest woke once per "not present".
        assert_eq!(u(a, "/ready_delivered"), n, "{variant}");
        assert_eq!(u(a, "/tokens_dropped"), 0, "{variant}");
        assert_eq!(u(&r, "/guest/apf/not_present"), n, "{variant}");
        assert_eq!(u(&r, "/guest/apf/ready"), n, "{variant}");
        let key = not_present.replace('-', "_");
        assert_eq!(u(a, &format!("/not_present/{key}")), n, "{variant}");
        // Through SDEI, each "not present" is one handler entry.
        let dispatches = r["vmm"]["exits"]["sdei_dispatch"].as_u64().unwrap_or(0);
        let expected = if not_present == "sdei" { n } else { 0 };
        assert_eq!(dispatches, expected, "{variant}");
        if ready == "interrupt" {
            assert_eq!(u(a, "/ready_pushed"), n, "{variant}");
            assert_eq!(u(a, "/acks"), u(a, "/ready_interrupts"), "{variant}");
            assert_eq!(u(a, "/ready_exceptions"), 0, "{variant}");
        } else {
            assert_eq!(u(a, "/ready_exceptions"), n, "{variant}");
            assert_eq!((u(a, "/acks"), u(a, "/ready_pushed")), (0, 0), "{variant}");
        }
        // The variant's own signature.
        let requests = u(a, "/page_requests");
        match initiation {
            "guest" => {
                assert_eq!(requests, n, "{variant}: every fetch waits for its request")
            }
            _ => assert_eq!(requests, 0, "{variant}"),
        }
        let (parked, halts) = (u(&r, "/guest/apf/parked"), u(&r, "/guest/apf/halts"));
        if sleep == "halt" {
            assert_eq!((parked, halts), (0, n), "{variant}");
            assert!(u(&r, "/vmm/halted_ns/0") > 0, "{variant}");
            assert!(
                cpu_task_done(&r) >= cpu_task_done(&sync),
                "{variant}: a halted vCPU runs nothing"
            );
        } else {
            assert_eq!((parked, halts), (n, 0), "{variant}");
            assert!(
                cpu_task_done(&r) < cpu_task_done(&sync),
                "{variant}: the CPU task runs while the memory task waits ({} vs {} ns)",
                cpu_task_done(&r),
                cpu_task_done(&sync)
            );
        }
        assert_eq!(u(&r, "/vmm/stalled_ns/0"), 0, "{variant}: no vCPU stall");
    }
}

#[test]
fn async_reschedule_beats_sync_when_there_is_work_to_overlap() {
    // 1 vCPU, 100 µs fetches, a CPU task long enough to fill the stalls.
    let sync = run(&config(1, 60_000_000, ""));
    let r = run(&config(
        1,
        60_000_000,
        &decision("dedicated-ec", "interrupt", "host", "reschedule"),
    ));
    assert_complete(&sync);
    assert_complete(&r);
    let (s, a) = (u(&sync, "/virtual_time_ns"), u(&r, "/virtual_time_ns"));
    assert!(a < s, "async {a} ns vs sync {s} ns");
    // The most async can save: the stalls it hides, or the CPU task's own
    // run time (measured alone), whichever is less.
    let cpu_alone = run(&config(1, 60_000_000, "").replace(
        "kind = \"mixed\"\nops = 60000000\nmib = 8\npattern = \"random\"\npasses = 2\nverify = \"store\"",
        "kind = \"cpu\"\ntasks = 1\nops = 60000000",
    ));
    let ideal = u(&sync, "/vmm/stalled_ns/0").min(cpu_task_done(&cpu_alone));
    let fraction = (s - a) as f64 / ideal as f64;
    eprintln!(
        "makespan: sync {s} ns, async {a} ns: saving {} ns = {fraction:.3} of the ideal {ideal} ns",
        s - a
    );
    assert!(fraction >= 0.9, "saving {fraction:.3} of the ideal");
}

#[test]
fn a_ring_of_depth_one_carries_one_token_per_interrupt() {
    let r = run(&config(
        1,
        2_000_000,
        &(decision("dedicated-ec", "interrupt", "host", "reschedule") + "[apf]\nring_depth = 1\n"),
    ));
    assert_complete(&r);
    let per_ack = r["apf"]["tokens_per_ack"].as_object().unwrap();
    assert_eq!(per_ack.keys().collect::<Vec<_>>(), ["1"], "{per_ack:?}");
    assert_eq!(u(&r, "/apf/acks"), u(&r, "/apf/ready_delivered"));
}

#[test]
fn the_guest_boot_option_turns_async_pf_off() {
    let r = run(&config(
        1,
        2_000_000,
        &(decision("dedicated-ec", "interrupt", "host", "reschedule")
            + "[apf]\nguest_enables = false\n"),
    ));
    assert_complete(&r);
    assert!(
        r["config"]["bootargs"]
            .as_str()
            .unwrap()
            .contains("apflab.apf=off")
    );
    assert_eq!(r["guest"]["apf"]["enabled"], false);
    let a = &r["apf"];
    assert_eq!(u(a, "/async_faults"), 0);
    assert_eq!(u(a, "/fallbacks/not_enabled"), u(a, "/faults"));
    // The sync baseline's faults and stalls: nothing else changed (the
    // longer boot arguments cost the guest a few instructions to parse).
    let sync = run(&config(1, 2_000_000, ""));
    assert_eq!(r["vmm"]["stalled_ns"], sync["vmm"]["stalled_ns"]);
    assert_eq!(u(&r, "/pager/fetches"), u(&sync, "/pager/fetches"));
    assert_eq!(
        u(&r, "/vmm/exits/not_resident"),
        u(&sync, "/vmm/exits/not_resident")
    );
}

#[test]
fn example_policies_decide_in_wasm_and_their_choice_shows() {
    // Paolo Bonzini's review: dedicated EC, ready as an interrupt, guest
    // initiation, sync in kernel mode.
    let r = run(&config(1, 2_000_000, "[policy]\nmodule = \"paolo\"\n"));
    assert_complete(&r);
    assert_eq!(r["policy"]["module"], "paolo");
    assert_eq!(r["policy"]["sha256"].as_str().unwrap().len(), 64);
    let a = &r["apf"];
    let n = u(a, "/async_faults");
    assert!(n > 0, "{a:#}");
    assert_eq!(u(a, "/not_present/dedicated_ec"), n);
    assert_eq!(u(a, "/page_requests"), n);
    assert_eq!(u(a, "/policy_calls"), u(a, "/faults"));
    // Gavin Shan's RFCv2: a data abort for "not present", ready as an
    // exception, host-initiated.
    let r = run(&config(
        1,
        2_000_000,
        "[policy]\nmodule = \"gavin-rfcv2\"\n",
    ));
    assert_complete(&r);
    let a = &r["apf"];
    let n = u(a, "/async_faults");
    assert!(n > 0, "{a:#}");
    assert_eq!(u(a, "/not_present/data_abort"), n);
    assert_eq!(u(a, "/ready_exceptions"), n);
    assert_eq!(u(a, "/page_requests"), 0);
    // Gavin Shan's v4: "not present" as an SDEI event, ready as the PPI
    // acknowledged by hypercall, host-initiated, the task rescheduled.
    let r = run(&config(1, 2_000_000, "[policy]\nmodule = \"gavin-v4\"\n"));
    assert_complete(&r);
    let a = &r["apf"];
    let n = u(a, "/async_faults");
    assert!(n > 0, "{a:#}");
    assert_eq!(u(a, "/not_present/sdei"), n);
    assert_eq!(u(&r, "/vmm/exits/sdei_dispatch"), n);
    assert_eq!(u(a, "/acks"), u(a, "/ready_interrupts"));
    assert_eq!(u(a, "/page_requests"), 0);
    assert_eq!(u(&r, "/guest/apf/parked"), n);
    // always-halt: the vCPU waits for every page.
    let r = run(&config(
        1,
        2_000_000,
        "[policy]\nmodule = \"always-halt\"\n",
    ));
    assert_complete(&r);
    let n = u(&r, "/apf/async_faults");
    assert!(n > 0);
    assert_eq!(
        (u(&r, "/guest/apf/halts"), u(&r, "/guest/apf/parked")),
        (n, 0)
    );
}

#[test]
fn two_vcpus_run_async_with_intact_pages() {
    let r = run(&config(
        2,
        2_000_000,
        &decision("data-abort", "interrupt", "guest", "reschedule"),
    ));
    assert_complete(&r);
    let a = &r["apf"];
    assert!(u(a, "/async_faults") > 0);
    assert_eq!(u(a, "/ready_delivered"), u(a, "/async_faults"));
    assert_eq!(a["violations"], serde_json::json!({}));
}

#[test]
fn the_policy_flag_overrides_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.toml");
    std::fs::write(&path, config(1, 2_000_000, "")).unwrap();
    let out_dir = dir.path().join("out");
    let out = Command::new(APFLAB)
        .args([
            "run",
            path.to_str().unwrap(),
            "--policy",
            "paolo",
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("result.json")).unwrap())
            .unwrap();
    assert_eq!(r["policy"]["module"], "paolo");
    assert!(u(&r, "/apf/async_faults") > 0);
    // A module that is not there is bad input, before anything runs.
    let out = Command::new(APFLAB)
        .args([
            "run",
            path.to_str().unwrap(),
            "--policy",
            "missing.wasm",
            "--out",
            dir.path().join("out2").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--policy missing.wasm: no policy"));
    assert!(!dir.path().join("out2/result.json").exists());
}
