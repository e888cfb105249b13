//! The async PF protocol end to end on the emu backend: the real guest's
//! client, the real engine, each variant's own signature in the results
//! file and the guest's report. Emu runs are deterministic, so the
//! comparisons of virtual times are exact.

use std::process::Command;

use serde_json::Value;

mod common;

use common::{VARIANTS, assert_each_token_once, decision, run_in, run_logged, u};

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

/// Runs `config`; its results (the run must succeed).
fn run(config: &str) -> Value {
    run_logged(config).0
}

/// What every correct run shows: all work done, every word intact.
fn assert_complete(r: &Value) {
    assert_complete_with(r, 2);
}

/// [`assert_complete`] for a guest that runs `tasks` tasks.
fn assert_complete_with(r: &Value, tasks: u64) {
    assert_eq!(u(r, "/guest/tasks_completed"), tasks, "{:#}", r["guest"]);
    assert_eq!(u(r, "/integrity/mismatches"), 0);
    assert_eq!(u(r, "/integrity/pages_verified"), 8 * 256 * 2);
}

/// The CPU task's completion time (task 0 of `mixed`).
fn cpu_task_done(r: &Value) -> u64 {
    u(r, "/guest/task_done_ns/0")
}

#[test]
fn every_variant_delivers_each_token_exactly_once() {
    let sync = run(&config(1, 2_000_000, ""));
    assert_complete(&sync);
    assert!(sync.get("apf").is_none(), "no policy: no async PF offered");
    assert_eq!(sync["guest"]["apf"]["enabled"], false);
    for (not_present, ready, initiation, sleep) in VARIANTS {
        let variant = format!("{not_present}/{ready}/{initiation}/{sleep}");
        let (r, tokens, _) = run_logged(&config(
            1,
            2_000_000,
            &decision(not_present, ready, initiation, sleep),
        ));
        assert_complete(&r);
        let a = &r["apf"];
        let n = u(a, "/async_faults");
        assert!(n > 0, "{variant}: {a:#}");
        assert_eq!(
            assert_each_token_once(&tokens, initiation == "guest", ready == "interrupt"),
            n as usize,
            "{variant}"
        );
        assert_eq!(u(a, "/sync_faults"), 0, "{variant}: {a:#}");
        assert_eq!(r["fallbacks"], serde_json::json!({}), "{variant}");
        assert_eq!(r["violations"], serde_json::json!({}), "{variant}");
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
        // APF_DISABLE at shutdown: the host dropped nothing, the guest
        // handled the wake-all it answers with.
        assert_eq!(u(a, "/wake_alls"), 1, "{variant}");
        assert_eq!(u(&r, "/guest/apf/wake_alls"), 1, "{variant}");
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
    assert_eq!(u(&r, "/fallbacks/not_enabled"), u(a, "/faults"));
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
    // always-reschedule: the task always gives its CPU away.
    let r = run(&config(
        1,
        2_000_000,
        "[policy]\nmodule = \"always-reschedule\"\n",
    ));
    assert_complete(&r);
    let n = u(&r, "/apf/async_faults");
    assert!(n > 0);
    assert_eq!(
        (u(&r, "/guest/apf/halts"), u(&r, "/guest/apf/parked")),
        (0, n)
    );
}

#[test]
fn adaptive_halts_on_fast_fetches_and_reschedules_on_slow_ones() {
    let with_latency = |us: &str| {
        config(1, 2_000_000, "[policy]\nmodule = \"adaptive\"\n")
            .replace("us = 100.0", &format!("us = {us}"))
    };
    // 2 µs fetches, below what a task switch costs it: it halts.
    let fast = run(&with_latency("2.0"));
    assert_complete(&fast);
    let n = u(&fast, "/apf/async_faults");
    assert!(n > 0);
    assert_eq!(
        (u(&fast, "/guest/apf/halts"), u(&fast, "/guest/apf/parked")),
        (n, 0)
    );
    // 100 µs fetches: it reschedules while the CPU task is runnable (the
    // run queue's length in the control block says so), and halts once
    // that task is done and nothing else could run.
    let slow = run(&with_latency("100.0"));
    assert_complete(&slow);
    let (halts, parked) = (u(&slow, "/guest/apf/halts"), u(&slow, "/guest/apf/parked"));
    assert!(parked > 0 && halts > 0, "halts {halts}, parked {parked}");
    assert_eq!(halts + parked, u(&slow, "/apf/async_faults"));
}

/// The mixed workload with the kernel reading the memory task's pages (a
/// checksum system call with IRQs unmasked), so the faults are the
/// kernel's.
fn kernel_reads(extra: &str) -> String {
    config(1, 2_000_000, extra).replace(
        "verify = \"store\"\n",
        "verify = \"store\"\nreader = \"kernel\"\n",
    )
}

#[test]
fn kernel_mode_faults_are_sync_by_default_and_async_halt_when_the_policy_says_so() {
    // Reschedule is never served in the kernel: every fault falls back.
    let r = run(&kernel_reads(&decision(
        "dedicated-ec",
        "interrupt",
        "host",
        "reschedule",
    )));
    assert_complete(&r);
    assert!(
        r["config"]["bootargs"]
            .as_str()
            .unwrap()
            .contains("apflab.reader=kernel")
    );
    let a = &r["apf"];
    let faults = u(a, "/faults");
    assert!(faults > 0, "{a:#}");
    assert_eq!(u(a, "/async_faults"), 0);
    assert_eq!(u(&r, "/fallbacks/kernel_mode"), faults);
    assert_eq!(u(&r, "/guest/apf/kernel_halts"), 0);
    // Paolo Bonzini's policy decides sync in kernel mode itself.
    let r = run(&kernel_reads("[policy]\nmodule = \"paolo\"\n"));
    assert_complete(&r);
    assert_eq!(u(&r, "/apf/async_faults"), 0);
    assert_eq!(r["fallbacks"], serde_json::json!({}));
    assert!(u(&r, "/policy/fuel_used") > 0);
    // Async-halt: the kernel waits in its halt loop; the ready interrupt or
    // exception reaches it there.
    for (not_present, ready, initiation) in [
        ("dedicated-ec", "interrupt", "guest"),
        ("data-abort", "exception", "host"),
    ] {
        let variant = format!("{not_present}/{ready}/{initiation}/halt in the kernel");
        let (r, tokens, _) = run_logged(&kernel_reads(&decision(
            not_present,
            ready,
            initiation,
            "halt",
        )));
        assert_complete(&r);
        let a = &r["apf"];
        let n = u(a, "/async_faults");
        assert!(n > 0, "{variant}: {a:#}");
        assert_eq!(u(a, "/sync_faults"), 0, "{variant}: {a:#}");
        assert_eq!(
            assert_each_token_once(&tokens, initiation == "guest", ready == "interrupt"),
            n as usize,
            "{variant}"
        );
        let g = &r["guest"]["apf"];
        assert_eq!(u(g, "/kernel_halts"), n, "{variant}: {g:#}");
        assert_eq!((u(g, "/halts"), u(g, "/parked")), (n, 0), "{variant}");
        assert!(u(g, "/halted_ns") > 0, "{variant}");
        assert_eq!(u(&r, "/vmm/stalled_ns/0"), 0, "{variant}: no vCPU stall");
    }
}

#[test]
fn a_guest_that_misuses_the_protocol_is_refused_each_time_and_the_run_still_finishes() {
    let (r, tokens, console) = run_logged(&config(
        1,
        2_000_000,
        &(decision("dedicated-ec", "interrupt", "guest", "reschedule")
            + "[apf]\nguest_abuses = true\n"),
    ));
    // The workload's two tasks and the abusive one.
    assert_complete_with(&r, 3);
    assert!(
        r["config"]["bootargs"]
            .as_str()
            .unwrap()
            .contains("apflab.apf_abuse=on")
    );
    use apflab_abi::boot::{
        APF_ABUSE_ACK_FLOOD as flood, APF_ABUSE_RANDOM_CALLS, APF_ABUSE_TOGGLES,
    };
    // A sixth of the random calls are requests for random tokens.
    let random_requests = APF_ABUSE_RANDOM_CALLS / 6;
    let expected = [
        ("ack_not_enabled", 1),
        ("request_not_enabled", 1),
        ("disable_not_enabled", 1),
        ("control_block_misaligned", 1),
        ("control_block_outside_ram", 1),
        ("control_block_over_kernel_code", 1),
        ("control_block_version", 1),
        ("request_unknown_token", 1 + random_requests),
        ("ack_without_consumption", flood),
        ("ready_tail_out_of_range", 1),
    ];
    let v = r["violations"].as_object().unwrap();
    assert_eq!(v.len(), expected.len(), "{v:?}");
    for (kind, n) in expected {
        assert_eq!(
            v.get(kind).and_then(Value::as_u64),
            Some(n),
            "{kind}: {v:?}"
        );
    }
    // The guest saw each misuse answered as it must be: the protocol's
    // with INVALID_PARAMETERS, each disable and enable of the loop with
    // success, unknown ids with NOT_SUPPORTED, PSCI calls for CPUs that do
    // not exist and TASK_DONE for tasks that cannot with INVALID_PARAMETERS.
    let sent: u64 =
        expected.iter().map(|(_, n)| n).sum::<u64>() - random_requests + 2 * APF_ABUSE_TOGGLES;
    assert!(
        console.contains(&format!(
            "apf abuse: {sent} of {sent} misuses answered as they must be"
        )),
        "{console}"
    );
    // The random calls came from a task of the guest's own, beside the
    // workload's tasks.
    assert!(
        console.contains(&format!(
            "apf abuse task: {n} of {n} misuses answered as they must be",
            n = APF_ABUSE_RANDOM_CALLS
        )),
        "{console}"
    );
    // Unknown apflab and PSCI ids: a third of the random calls.
    assert!(
        u(&r, "/vmm/exits/hypercall_unsupported") >= APF_ABUSE_RANDOM_CALLS / 3,
        "{:#}",
        r["vmm"]["exits"]
    );
    // The read the guest made inside its no-inject window was served
    // where it was, synchronously, and completed.
    assert_eq!(
        u(&r, "/fallbacks/no_inject_window"),
        1,
        "{:#}",
        r["fallbacks"]
    );
    assert_eq!(r["guest"]["apf"]["enabled"], true);
    // And then it used the protocol as it should: every token once.
    let a = &r["apf"];
    let n = u(a, "/async_faults");
    assert!(n > 0);
    assert_eq!(assert_each_token_once(&tokens, true, true), n as usize);
}

#[test]
fn a_ready_that_comes_before_its_sleeper_leaves_a_dummy_entry() {
    // Through SDEI the task is put to sleep on the IRQ path the handler
    // resumes into, after the pending interrupts are taken; with 0.5 us
    // fetches the ready interrupt for the token is among them, finds no
    // sleeper and leaves a dummy entry, which the task then finds instead
    // of sleeping.
    let (r, tokens, _) = run_logged(
        &config(
            1,
            2_000_000,
            &decision("sdei", "interrupt", "host", "reschedule"),
        )
        .replace("us = 100.0", "us = 0.5"),
    );
    assert_complete(&r);
    let n = u(&r, "/apf/async_faults");
    assert!(n > 0);
    let g = &r["guest"]["apf"];
    assert_eq!((u(g, "/early_ready"), u(g, "/parked")), (n, 0), "{g:#}");
    assert_eq!(u(g, "/ready"), n);
    assert_eq!(assert_each_token_once(&tokens, false, true), n as usize);
}

/// Four memory tasks on one vCPU, each writing then verifying its share of
/// a working set twice the resident limit, every fault async with "page
/// ready" as an exception: the vCPU often idles with several tokens in
/// flight, so "page ready" comes in the idle loop's marked wait, one after
/// another.
const READY_IN_IDLE: &str = "seed = 1\n[guest]\nvcpus = 1\nmemory_mib = 128\n\
    [workload]\nkind = \"memtouch\"\nmib = 16\npasses = 2\npattern = \"random\"\ntasks = 4\nverify = \"self\"\n\
    [backend]\nkind = \"emu\"\nmax_virtual_ms = 10000\n[apf]\nring_depth = 1\n\
    [pager]\nstore = { kind = \"synthetic\", seed = 42 }\n\
    latency = { model = \"uniform\", min_us = 40.0, max_us = 60.0 }\n\
    queue_depth = 4\nresident_limit = \"8 MiB\"\ninitially_resident = 0.0\nseed = 1\n";

#[test]
fn page_ready_exceptions_in_the_idle_wait_do_not_nest() {
    // The handler of a "page ready" entered in the marked wait must take
    // the mark off before it ends the notification: left on, the host
    // entered the next one into the handler's own exception return, after
    // ELR_EL1 and SPSR_EL1 were reloaded, and the kernel panicked on a
    // stack pointer run off the top of RAM.
    for policy in [
        "[policy]\nmodule = \"always-reschedule\"\n".to_owned(),
        decision("dedicated-ec", "exception", "host", "reschedule"),
    ] {
        let (r, tokens, _) = run_logged(&(READY_IN_IDLE.to_owned() + &policy));
        assert_eq!(u(&r, "/guest/tasks_completed"), 4, "{policy}");
        assert_eq!(u(&r, "/integrity/pages_verified"), 16 * 256 * 2, "{policy}");
        assert_eq!(u(&r, "/integrity/mismatches"), 0, "{policy}");
        let a = &r["apf"];
        let n = u(a, "/async_faults");
        assert_eq!(u(a, "/faults"), n, "{policy}");
        assert_eq!(u(a, "/ready_exceptions"), n, "{policy}");
        // Some were held until the vCPU could take them (not at EL0 nor in
        // the marked wait).
        assert!(u(a, "/ready_exception_held") > 0, "{policy}");
        assert_eq!(u(&r, "/guest/apf/ready"), n, "{policy}");
        assert_eq!(assert_each_token_once(&tokens, false, false), n as usize);
    }
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
    assert_eq!(r["violations"], serde_json::json!({}));
    assert!(a.get("violations").is_none(), "kept once, at the top level");
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

/// Runs `config` with `--trace`; its results and the trace's events.
fn run_traced(config: &str) -> (Value, Vec<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.json");
    let (r, _) = run_in(dir.path(), config, &["--trace", trace.to_str().unwrap()]);
    let t: Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let events = t["traceEvents"]
        .as_array()
        .expect("a traceEvents array")
        .clone();
    // Every event is of a kind the trace-event format defines, on the vCPU
    // or the task process, with a time where the kind has one.
    for e in &events {
        let ph = e["ph"].as_str().expect("ph");
        assert!(
            ["M", "X", "b", "n", "e", "s", "t", "f"].contains(&ph),
            "{e}"
        );
        assert!(e["pid"] == 1 || e["pid"] == 2, "{e}");
        if ph != "M" {
            assert!(
                e["ts"].as_f64().is_some() && e["tid"].as_u64().is_some(),
                "{e}"
            );
        }
    }
    // The slices of a track nest (the format draws them as a stack): each
    // ends before the one it started inside (token steps, 50 ns marks on
    // a step, aside).
    type Slice<'a> = (f64, f64, &'a Value);
    let mut tracks: std::collections::BTreeMap<(u64, u64), Vec<Slice>> = Default::default();
    for e in events
        .iter()
        .filter(|e| e["ph"] == "X" && e["cat"] != "token-step")
    {
        let ts = e["ts"].as_f64().unwrap();
        let key = (e["pid"].as_u64().unwrap(), e["tid"].as_u64().unwrap());
        tracks
            .entry(key)
            .or_default()
            .push((ts, ts + e["dur"].as_f64().unwrap(), e));
    }
    for slices in tracks.values_mut() {
        slices.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
        let mut open: Vec<(f64, &Value)> = Vec::new();
        for &(start, end, e) in slices.iter() {
            while open.last().is_some_and(|&(oe, _)| oe <= start + 1e-6) {
                open.pop();
            }
            if let Some(&(outer_end, outer)) = open.last() {
                assert!(end <= outer_end + 1e-6, "{e} is not inside {outer}");
            }
            open.push((end, e));
        }
    }
    (r, events)
}

#[test]
fn the_trace_has_a_slice_per_token_and_the_stalls_of_each_vcpu() {
    let (r, events) = run_traced(&config(
        1,
        2_000_000,
        &decision("dedicated-ec", "interrupt", "guest", "reschedule"),
    ));
    let mut lives: std::collections::BTreeMap<String, Vec<(&str, f64)>> = Default::default();
    for e in events.iter().filter(|e| e["cat"] == "token") {
        lives
            .entry(e["id"].as_str().unwrap().to_owned())
            .or_default()
            .push((e["ph"].as_str().unwrap(), e["ts"].as_f64().unwrap()));
    }
    assert_eq!(lives.len() as u64, u(&r, "/apf/async_faults"));
    for (id, life) in &lives {
        let phases: String = life.iter().map(|(ph, _)| *ph).collect();
        // fault; not present, request, fetch done, pushed; consumed.
        assert_eq!(phases, "bnnnne", "token {id}: {life:?}");
        assert!(
            life.windows(2).all(|w| w[0].1 <= w[1].1),
            "token {id}: {life:?}"
        );
    }
    // One flow per token through the same steps, each bound to a step slice
    // at the same time on the same vCPU.
    let mut flows: std::collections::BTreeMap<String, Vec<(&str, f64)>> = Default::default();
    for e in events.iter().filter(|e| e["cat"] == "token-flow") {
        let ts = e["ts"].as_f64().unwrap();
        assert!(
            events.iter().any(|s| s["cat"] == "token-step"
                && s["ts"].as_f64() == Some(ts)
                && s["tid"] == e["tid"]),
            "{e}: no step slice under it"
        );
        flows
            .entry(e["id"].as_str().unwrap().to_owned())
            .or_default()
            .push((e["ph"].as_str().unwrap(), ts));
    }
    assert_eq!(
        flows.keys().collect::<Vec<_>>(),
        lives.keys().collect::<Vec<_>>()
    );
    // The vCPU's halts in WFI add up to its halted time (none is dropped
    // in a run this short).
    let halted_us: f64 = events
        .iter()
        .filter(|e| e["cat"] == "halt")
        .map(|e| e["dur"].as_f64().unwrap())
        .sum();
    let expected_us = u(&r, "/vmm/halted_ns/0") as f64 / 1e3;
    assert!(expected_us > 0.0);
    assert!(
        (halted_us - expected_us).abs() < 1.0,
        "{halted_us} vs {expected_us}"
    );
    // The guest's task tracks: a task blocked on each token it faulted on
    // (the policy reschedules), from after the fault to its wake-up, which
    // comes once the page is in.
    let mut blocked: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    for e in events.iter().filter(|e| e["cat"] == "task") {
        assert_eq!(e["pid"], 2, "{e}");
        if let Some(token) = e["name"]
            .as_str()
            .unwrap()
            .strip_prefix("blocked on token ")
        {
            let ts = e["ts"].as_f64().unwrap();
            let end = ts + e["dur"].as_f64().unwrap();
            assert!(blocked.insert(token.to_owned(), (ts, end)).is_none(), "{e}");
        }
    }
    assert!(!blocked.is_empty());
    for (token, &(start, end)) in &blocked {
        let life = &lives[token];
        assert!(
            start >= life[0].1,
            "token {token}: blocked before its fault"
        );
        assert!(
            end >= life[3].1,
            "token {token}: woken before its page came in"
        );
    }
    for (id, flow) in &flows {
        let phases: String = flow.iter().map(|(ph, _)| *ph).collect();
        // Its life's steps, then (if a task slept on it) the wake-up.
        let mut times: Vec<f64> = lives[id].iter().map(|(_, t)| *t).collect();
        if let Some(&(_, wake)) = blocked.get(id) {
            times.push(wake);
            times.sort_by(f64::total_cmp);
        }
        let expected = format!("s{}f", "t".repeat(times.len() - 2));
        assert_eq!(phases, expected, "token {id}: {flow:?}");
        // (The wake-up is a slice's end: ts + dur, rounded.)
        assert!(
            flow.iter()
                .zip(&times)
                .all(|((_, t), want)| (t - want).abs() < 1e-6),
            "token {id}: {flow:?} vs {times:?}"
        );
    }
    // The vCPU's track: which task it ran, and the guest's handlers, among
    // them one "not present" entry per token (left at the switch away from
    // the parked task, entered again when it comes back).
    let names = |cat: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["cat"] == cat && e["pid"] == 1)
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let on_vcpu = names("vcpu-task");
    assert!(on_vcpu.iter().any(|n| n == "task 0") && on_vcpu.iter().any(|n| n == "idle"));
    let handlers = names("handler");
    let not_present = handlers.iter().filter(|n| *n == "not present").count();
    assert!(
        not_present as u64 >= u(&r, "/apf/async_faults"),
        "{not_present}"
    );
    assert!(handlers.iter().any(|n| n == "page ready"));
    assert!(handlers.iter().any(|n| n == "interrupt"));
    // The synchronous baseline: the vCPU's stalls, adding up to its
    // stalled time.
    let (r, events) = run_traced(&config(1, 2_000_000, ""));
    let stalls: Vec<&Value> = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["cat"] == "stall")
        .collect();
    assert!(!stalls.is_empty());
    let total_us: f64 = stalls.iter().map(|e| e["dur"].as_f64().unwrap()).sum();
    let stalled_us = u(&r, "/vmm/stalled_ns/0") as f64 / 1e3;
    assert!(
        (total_us - stalled_us).abs() < 1.0,
        "{total_us} vs {stalled_us}"
    );
}

/// Flaky far memory: every 5th store read fails once and is retried, and
/// every 7th fetch takes 2 ms more, so later fetches overtake it.
const FLAKY: &str = "inject_errors = { transient_every = 5, spike_every = 7, spike_us = 2000 }\n";

#[test]
fn every_variant_keeps_its_invariants_on_flaky_far_memory() {
    let mut reordered = 0;
    for (not_present, ready, initiation, sleep) in VARIANTS {
        let variant = format!("{not_present}/{ready}/{initiation}/{sleep}");
        // Four memory tasks on two vCPUs: several faults outstanding at once.
        let (r, tokens, _) = run_logged(
            &config(
                2,
                1,
                &(FLAKY.to_owned() + &decision(not_present, ready, initiation, sleep)),
            )
            .replace(
                "kind = \"mixed\"\nops = 1\n",
                "kind = \"memtouch\"\ntasks = 4\n",
            ),
        );
        assert_eq!(u(&r, "/guest/tasks_completed"), 4, "{variant}");
        assert_eq!(u(&r, "/integrity/mismatches"), 0, "{variant}");
        assert_eq!(u(&r, "/integrity/pages_verified"), 8 * 256 * 2, "{variant}");
        assert!(r["watchdog"].is_null(), "{variant}");
        assert_eq!(r["violations"], serde_json::json!({}), "{variant}");
        assert!(u(&r, "/retries") > 0, "{variant}");
        assert!(u(&r, "/pager/latency_spikes") > 0, "{variant}");
        let n = u(&r["apf"], "/async_faults");
        assert!(n > 0, "{variant}");
        assert_eq!(
            assert_each_token_once(&tokens, initiation == "guest", ready == "interrupt"),
            n as usize,
            "{variant}"
        );
        // Completions out of fault order: a token whose page came in before
        // that of a token which faulted earlier.
        let order = |kind: &str| -> Vec<&str> {
            tokens
                .iter()
                .filter(|e| e.event == kind)
                .map(|e| e.token.as_str())
                .collect()
        };
        if order("fault") != order("fetch_done") {
            reordered += 1;
        }
    }
    // (A vCPU that halts for its page has one fetch in flight at a time.)
    assert!(
        reordered >= 6,
        "{reordered} variants saw completions reordered"
    );
}

#[test]
fn a_permanent_store_error_stops_every_variant_naming_the_page() {
    let dir = tempfile::tempdir().unwrap();
    for (not_present, ready, initiation, sleep) in VARIANTS {
        let variant = format!("{not_present}/{ready}/{initiation}/{sleep}");
        let path = dir.path().join("apf.toml");
        let extra = "inject_errors = { permanent = [0x4210_0000] }\n".to_owned()
            + &decision(not_present, ready, initiation, sleep);
        std::fs::write(&path, config(1, 200_000, &extra)).unwrap();
        let out = Command::new(APFLAB)
            .args(["run", path.to_str().unwrap(), "--out"])
            .arg(dir.path().join("out"))
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{variant}: {log}");
        assert!(
            log.contains("guest page 0x42100") && log.contains("injected media error"),
            "{variant}: {log}"
        );
        assert!(!log.contains("panicked"), "{variant}: {log}");
    }
}
