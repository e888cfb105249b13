//! Hostile input to the `apflab` command: values the config accepted but the
//! machine, the guest or the clock could not (bounds at load, the guest's
//! limits, time that would wrap), files that are not regular or too large,
//! and a standard output that closes early. Every bad input is exit code 2
//! with `file:line: key` (or the file and what is wrong with it), never a
//! panic, a hang or a half-written result.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const APFLAB: &str = env!("CARGO_BIN_EXE_apflab");

/// A config that runs (1 vCPU, `cpu`); cases edit it.
const GOOD: &str = "seed = 7\n[guest]\nvcpus = 1\nmemory_mib = 64\n[workload]\nkind = \"cpu\"\n\
                    ops = 1000\n[backend]\nkind = \"emu\"\n";

/// What a run of apflab gave: exit status and stdout + stderr.
struct Ran {
    code: Option<i32>,
    log: String,
}

/// Runs apflab with `args`; a run that has not ended after 60 s is killed
/// and fails the test (a FIFO read would block forever).
fn apflab(args: &[&str]) -> Ran {
    let mut command = Command::new(APFLAB);
    command.args(args);
    run_command(command, args)
}

/// [`apflab`] of a prepared command (environment, limits).
fn run_command(mut command: Command, args: &[&str]) -> Ran {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("apflab starts");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("apflab {args:?} did not end within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = out.join().unwrap() + &err.join().unwrap();
    assert!(
        !log.contains("panicked"),
        "apflab {args:?} panicked:\n{log}"
    );
    Ran {
        code: status.code(),
        log,
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// A directory holding what the cases name: `fifo`, `dir/`, `big.img`
/// (sparse, larger than 64 MiB of guest RAM), `huge.txt` (over a config's
/// limit), `huge-samples.txt` (sparse, over a samples file's limit),
/// `bad-samples.txt` (a latency of 1e300 µs).
fn fixtures() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    mkfifo(&p.join("fifo"));
    std::fs::create_dir(p.join("dir")).unwrap();
    let big = std::fs::File::create(p.join("big.img")).unwrap();
    big.set_len(65 << 20).unwrap();
    std::fs::write(p.join("huge.txt"), vec![b'#'; (1 << 20) + 1]).unwrap();
    std::fs::write(p.join("bad-samples.txt"), "12\n1e300\n").unwrap();
    let huge = std::fs::File::create(p.join("huge-samples.txt")).unwrap();
    huge.set_len((16 << 20) + 1).unwrap();
    std::fs::write(p.join("empty-samples.txt"), "").unwrap();
    std::fs::write(p.join("garbage-samples.txt"), "12\nbanana\n").unwrap();
    std::fs::write(p.join("empty.wasm"), "").unwrap();
    std::fs::write(p.join("text.wasm"), "not a module\n").unwrap();
    let mut truncated = elf(0x4008_0000, 0x4008_0000);
    truncated.truncate(40);
    std::fs::write(p.join("truncated.elf"), truncated).unwrap();
    // The built-in guest cut short, as a copy interrupted midway leaves it.
    let mut guest = std::fs::read(apflab_artifacts::guest_elf()).unwrap();
    guest.truncate(65536);
    std::fs::write(p.join("cut-guest.elf"), guest).unwrap();
    std::fs::write(p.join("low.elf"), elf(0x1000, 0x1000)).unwrap();
    std::fs::write(p.join("entry.elf"), elf(0x4100_0000, 0x1000)).unwrap();
    dir
}

/// A minimal arm64 ELF: one 4-byte segment (`b .`) loaded at `vaddr`,
/// entry at `entry`.
fn elf(vaddr: u64, entry: u64) -> Vec<u8> {
    let mut e = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&entry.to_le_bytes());
    e.extend_from_slice(&64u64.to_le_bytes()); // program headers
    e.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    e.extend_from_slice(&0u32.to_le_bytes());
    for half in [64u16, 56, 1, 64, 0, 0] {
        e.extend_from_slice(&half.to_le_bytes());
    }
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // R X
    for word in [120u64, vaddr, vaddr, 4, 4, 4] {
        e.extend_from_slice(&word.to_le_bytes());
    }
    e.extend_from_slice(&0x1400_0000u32.to_le_bytes());
    e
}

/// `GOOD` with `from` replaced by `to` (which must occur).
fn edit(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from:?} not in the good config");
    GOOD.replacen(from, to, 1)
}

/// `GOOD` with a `[pager]` section of `body`.
fn pager(body: &str) -> String {
    format!("{GOOD}[pager]\nstore = {{ kind = \"zero\" }}\n{body}\n")
}

/// `GOOD` with `kind = "cpu"` replaced by workload `body`.
fn workload(body: &str) -> String {
    edit("kind = \"cpu\"\nops = 1000", body)
}

/// (config text, fragments the error must contain).
fn cases() -> Vec<(String, Vec<&'static str>)> {
    vec![
        // 1. Every size, count and depth is bounded at load.
        (
            pager("queue_depth = 4294967295"),
            vec![
                "test.toml:",
                "pager.queue_depth = 4294967295",
                "at most 512",
            ],
        ),
        (
            pager("queue_depth = 1000000000"),
            vec!["pager.queue_depth", "at most 512"],
        ),
        // Far memory armed at the boot point needs a backend that stops
        // there: emu, whose faults exit to the VMM.
        (
            pager("armed_at = \"boot-point\"\nfault_path = \"kernel\""),
            vec!["pager.armed_at", "fault_path = \"vmm\""],
        ),
        (
            edit("kind = \"emu\"", "kind = \"kvm\"")
                + "[pager]\nstore = { kind = \"zero\" }\narmed_at = \"boot-point\"\n",
            vec!["armed_at = \"boot-point\"", "only the emu backend"],
        ),
        (
            pager("retries = 4000000000"),
            vec!["pager.retries = 4000000000", "at most 100"],
        ),
        (
            edit("ops = 1000\n", "ops = 1000\ntasks = 16\n") + "[apf]\nguest_abuses = true\n",
            vec![
                "test.toml:8:",
                "workload.tasks",
                "16",
                "at most 15",
                "guest_abuses",
            ],
        ),
        (
            edit("[backend]\n", "[backend]\nslice_instructions = 80\n"),
            vec!["test.toml:9:", "backend.slice_instructions", "80", "513"],
        ),
        (
            edit(
                "[backend]\n",
                "[backend]\nslice_instructions = 18446744073709551615\n",
            ),
            vec!["backend.slice_instructions", "1000000000"],
        ),
        (
            edit(
                "[backend]\n",
                "[backend]\nmax_virtual_ms = 18446744073709551615\n",
            ),
            vec!["backend.max_virtual_ms", "1000000000"],
        ),
        (
            edit("[backend]\n", "[backend]\nwatchdog_ms = 0\n"),
            vec!["test.toml:9:", "backend.watchdog_ms", "at least 1"],
        ),
        (
            edit("[backend]\n", "[backend]\nwatchdog_ms = 1\n"),
            vec![
                "test.toml:9:",
                "key `backend.watchdog_ms`: 1;",
                "more than workload.timeslice_us = 1000 us",
            ],
        ),
        (
            pager("inject_errors = { spike_every = 3 }"),
            vec!["pager.inject_errors.spike_every", "go together"],
        ),
        (
            pager("inject_errors = { spike_every = 3, spike_us = 18446744073709551615 }"),
            vec!["pager.inject_errors.spike_us", "at most 1000000000"],
        ),
        // 4. The kinds of every config error: syntax, unknown keys, wrong
        //    types, non-finite values, policy files, conflicting options,
        //    samples files, kernels.
        (edit("vcpus = 1", "vcpus = = 1"), vec!["test.toml:3:"]),
        (
            edit("[backend]\n", "[backend]\nturbo = true\n"),
            vec!["test.toml:9:", "turbo"],
        ),
        (
            edit("memory_mib = 64", "memory_mib = \"lots\""),
            vec!["test.toml:4:", "guest.memory_mib"],
        ),
        (
            pager("latency = { model = \"constant\", us = nan }"),
            vec!["pager.latency.us", "finite"],
        ),
        (
            format!(
                "{GOOD}[pager]\nstore = {{ kind = \"zero\" }}\n[policy]\nmodule = \"missing.wasm\"\n"
            ),
            vec!["policy.module", "missing.wasm"],
        ),
        (
            format!(
                "{GOOD}[pager]\nstore = {{ kind = \"zero\" }}\n[policy]\nmodule = \"empty.wasm\"\n"
            ),
            vec!["policy.module", "empty.wasm"],
        ),
        (
            format!(
                "{GOOD}[pager]\nstore = {{ kind = \"zero\" }}\n[policy]\nmodule = \"text.wasm\"\n"
            ),
            vec!["policy.module", "text.wasm"],
        ),
        (
            format!("{GOOD}[policy]\nmodule = \"paolo\"\n"),
            vec!["[policy]", "without a [pager] section"],
        ),
        (
            pager("latency = { model = \"empirical\", samples = \"empty-samples.txt\" }"),
            vec!["empty-samples.txt"],
        ),
        (
            pager("latency = { model = \"empirical\", samples = \"garbage-samples.txt\" }"),
            vec!["garbage-samples.txt:2", "banana"],
        ),
        (
            edit("[workload]", "kernel = \"truncated.elf\"\n[workload]"),
            vec![
                "truncated.elf",
                "truncated: an ELF64 header is 64 bytes, the file has 40",
            ],
        ),
        (
            edit("[workload]", "kernel = \"cut-guest.elf\"\n[workload]"),
            vec![
                "cut-guest.elf",
                "truncated: its section header table",
                "ends past the end of the file, which has 65536 bytes",
            ],
        ),
        (
            edit("[workload]", "kernel = \"low.elf\"\n[workload]"),
            vec!["low.elf", "0x1000..0x1004 lies outside guest RAM"],
        ),
        (
            edit("[workload]", "kernel = \"entry.elf\"\n[workload]"),
            vec![
                "entry.elf",
                "entry point 0x1000 is not inside any loaded segment",
            ],
        ),
        // 2. What the guest would reject is rejected at load, with the
        //    guest's own limits.
        (
            workload("kind = \"cpu\"\ntimeslice_us = 1"),
            vec!["test.toml:7:", "workload.timeslice_us", "10..=10000000"],
        ),
        (
            workload("kind = \"cpu\"\ntasks = 100000"),
            vec!["workload.tasks", "100000", "1..=16"],
        ),
        (
            workload("kind = \"cpu\"\nops = 9223372036854775807"),
            vec!["workload.ops", "9223372036854775807"],
        ),
        (
            workload("kind = \"memtouch\"\nmib = 4\npasses = 4294967295"),
            vec!["workload.passes", "4294967295", "1..=1048576"],
        ),
        (
            workload("kind = \"kv\"\nmib = 4\nrequests = 4294967297"),
            vec!["workload.requests", "1..=4294967296"],
        ),
        (
            workload("kind = \"kv\"\nmib = 4\ninterval_us = 4294967297"),
            vec!["workload.interval_us", "1..=4294967296"],
        ),
        (
            workload("kind = \"memtouch\"\nmib = 2000000"),
            vec!["workload.mib", "2000000", "1..=1048576"],
        ),
        // 3. Time that would wrap the clock is refused at load.
        (
            pager(
                "latency = { model = \"constant\", us = 1e300 }\nbandwidth_bytes_per_sec = 1000000000",
            ),
            vec!["pager.latency.us = 1e300", "at most 1e9"],
        ),
        (
            pager("latency = { model = \"uniform\", min_us = 1.0, max_us = 1e300 }"),
            vec!["pager.latency.max_us"],
        ),
        (
            pager("latency = { model = \"lognormal\", median_us = 1e300, sigma = 0.5 }"),
            vec!["pager.latency.median_us"],
        ),
        (
            pager("latency = { model = \"lognormal\", median_us = 10.0, sigma = 1000.0 }"),
            vec!["pager.latency.sigma = 1000"],
        ),
        (
            pager("latency = { model = \"empirical\", samples = \"bad-samples.txt\" }"),
            vec!["bad-samples.txt:2", "at most 1e9"],
        ),
        (
            edit(
                "[backend]\n",
                "[backend]\ncost = { exit_ns = 9223372036854775807 }\n",
            ),
            vec!["backend.cost.exit_ns", "9223372036854775807", "1000000000"],
        ),
        (
            edit(
                "[backend]\n",
                "[backend]\ncost = { hypercall_ns = 9223372036854775807 }\n",
            ),
            vec!["backend.cost.hypercall_ns"],
        ),
        (
            edit(
                "[backend]\n",
                "[backend]\ncost = { inject_ns = 18446744073709551615 }\n",
            ),
            vec!["backend.cost.inject_ns"],
        ),
        (
            edit(
                "[backend]\n",
                "[backend]\ncost = { ns_per_instruction = 1e-300 }\n",
            ),
            vec!["backend.cost.ns_per_instruction", "0.01"],
        ),
        // A cost model under which the guest cannot show life within the
        // watchdog's span: every run would end as a hang.
        (
            edit(
                "[backend]\n",
                "[backend]\ncost = { ns_per_instruction = 100000.0 }\n",
            ),
            vec![
                "test.toml:9:",
                "backend.cost.ns_per_instruction = 100000 with backend.watchdog_ms = 1000",
                "guest.memory_mib = 64",
                "expected ns_per_instruction at most 1644.73 or watchdog_ms at least 60800",
            ],
        ),
        (
            edit(
                "[backend]\n",
                "[backend]\nwatchdog_ms = 30\ncost = { ns_per_instruction = 1000.0 }\n",
            ),
            vec![
                "backend.cost.ns_per_instruction = 1000 with backend.watchdog_ms = 30",
                "watchdog_ms at least 608",
            ],
        ),
        (
            edit("[backend]\n", "[backend]\nwall_timeout_ms = 0\n"),
            vec!["test.toml:9:", "backend.wall_timeout_ms", "at least 1"],
        ),
        // 5. Files a config names: regular files only, size-checked before
        //    they are read.
        (
            pager("latency = { model = \"empirical\", samples = \"/dev/zero\" }"),
            vec!["pager.latency.samples", "/dev/zero", "character device"],
        ),
        (
            pager("latency = { model = \"empirical\", samples = \"fifo\" }"),
            vec!["pager.latency.samples", "FIFO"],
        ),
        (
            pager("latency = { model = \"empirical\", samples = \"huge-samples.txt\" }"),
            vec!["pager.latency.samples", "16777217 bytes", "16 MiB"],
        ),
        (
            format!("{GOOD}[pager]\nstore = {{ kind = \"file\", path = \"fifo\" }}\n"),
            vec!["pager.store.path", "FIFO"],
        ),
        (
            format!("{GOOD}[pager]\nstore = {{ kind = \"file\", path = \"dir\" }}\n"),
            vec!["pager.store.path", "a directory"],
        ),
        (
            edit("[workload]", "kernel = \"dir\"\n[workload]"),
            vec!["guest.kernel", "a directory, not a regular file"],
        ),
        (
            edit("[workload]", "kernel = \"fifo\"\n[workload]"),
            vec!["guest.kernel", "FIFO"],
        ),
        (
            edit("[workload]", "kernel = \"big.img\"\n[workload]"),
            vec!["guest.kernel", "68157440 bytes", "guest RAM"],
        ),
    ]
}

#[test]
fn bad_values_and_files_are_exit_2_naming_file_line_and_key_without_results() {
    let dir = fixtures();
    let failures: Vec<String> = cases()
        .into_iter()
        .enumerate()
        .filter_map(|(i, (config, expected))| {
            let path = dir.path().join("test.toml");
            std::fs::write(&path, &config).unwrap();
            let out = dir.path().join(format!("out-{i}"));
            let ran = apflab(&[
                "run",
                path.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ]);
            let mut wrong = Vec::new();
            if ran.code != Some(2) {
                wrong.push(format!("exit {:?}, expected 2", ran.code));
            }
            for e in &expected {
                if !ran.log.contains(e) {
                    wrong.push(format!("no {e:?}"));
                }
            }
            if out.join("result.json").exists() {
                wrong.push("a result.json was written".into());
            }
            (!wrong.is_empty()).then(|| {
                format!(
                    "case {i}: {}\n{config}\n--- gave:\n{}",
                    wrong.join(", "),
                    ran.log
                )
            })
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_config_that_is_a_fifo_a_device_or_too_large_is_refused_before_it_is_read() {
    let dir = fixtures();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    for (config, expected) in [
        (p("fifo"), "is a FIFO (named pipe), not a regular file"),
        ("/dev/zero".to_owned(), "is a character device"),
        (p("dir"), "is a directory"),
        (
            p("huge.txt"),
            "is 1048577 bytes, more than a config file allows (1 MiB)",
        ),
    ] {
        let out = dir.path().join("out");
        let ran = apflab(&["run", &config, "--out", out.to_str().unwrap()]);
        assert_eq!(ran.code, Some(2), "{config}: {}", ran.log);
        assert!(ran.log.contains(&config), "names the file: {}", ran.log);
        assert!(ran.log.contains(expected), "{config}: {}", ran.log);
        assert!(!out.exists(), "no results");
    }
    // `apflab list` over a folder holding such files lists the good ones.
    std::fs::write(dir.path().join("good.toml"), GOOD).unwrap();
    mkfifo(&dir.path().join("pipe.toml"));
    let ran = apflab(&["list", "--configs", &p("")]);
    assert_eq!(ran.code, Some(0), "{}", ran.log);
    assert!(ran.log.contains("good"), "{}", ran.log);
}

#[test]
fn experiments_and_result_files_that_are_fifos_are_refused_before_they_are_read() {
    let dir = fixtures();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let out = p("out");
    let ran = apflab(&["matrix", &p("fifo"), "--out", &out]);
    assert_eq!(ran.code, Some(2), "{}", ran.log);
    assert!(
        ran.log
            .contains("is a FIFO (named pipe), not a regular file"),
        "{}",
        ran.log
    );
    // A results folder with a FIFO where a result file should be.
    std::fs::create_dir_all(dir.path().join("results/r000")).unwrap();
    mkfifo(&dir.path().join("results/r000/result.json"));
    let ran = apflab(&["report", &p("results"), "--out", &p("report.md")]);
    assert_eq!(ran.code, Some(2), "{}", ran.log);
    assert!(ran.log.contains("result.json: is a FIFO"), "{}", ran.log);
}

#[test]
fn boot_refuses_an_image_that_cannot_fit_or_is_not_a_file_before_reading_it() {
    let dir = fixtures();
    let p = |name: &str| -> PathBuf { dir.path().join(name) };
    let big = std::fs::File::create(p("2g.img")).unwrap();
    big.set_len(2 << 30).unwrap();
    for (image, expected) in [
        (
            p("2g.img"),
            "is 2147483648 bytes, more than --memory 128 MiB allows",
        ),
        (p("fifo"), "FIFO"),
        (p("dir"), "a directory"),
        (p("missing.img"), "guest image not found"),
    ] {
        let start = Instant::now();
        let ran = apflab(&["boot", image.to_str().unwrap()]);
        assert_eq!(ran.code, Some(2), "{}: {}", image.display(), ran.log);
        assert!(
            ran.log.contains(expected),
            "{}: {}",
            image.display(),
            ran.log
        );
        assert!(start.elapsed() < Duration::from_secs(10), "refused at once");
    }
    let ran = apflab(&[
        "boot",
        apflab_artifacts::guest_elf().to_str().unwrap(),
        "--max-virtual-ms",
        "18446744073709551615",
    ]);
    assert_eq!(ran.code, Some(2), "{}", ran.log);
    assert!(ran.log.contains("--max-virtual-ms"), "{}", ran.log);
}

/// Runs apflab with its standard output closed before it writes anything;
/// returns the exit status and stderr.
fn with_stdout_closed(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(APFLAB)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("apflab starts");
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap().code(), err)
}

#[test]
fn a_standard_output_closed_early_is_no_panic_for_any_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ok.toml");
    std::fs::write(&config, GOOD).unwrap();
    let out = dir.path().join("out");
    let report = dir.path().join("report.md");
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let runs: [Vec<&str>; 5] = [
        vec!["list", "--configs", configs.to_str().unwrap()],
        vec!["policy", "check", "always-reschedule"],
        vec!["policy", "check", "--json", "always-reschedule"],
        vec![
            "run",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        vec![
            "report",
            out.to_str().unwrap(),
            "--out",
            report.to_str().unwrap(),
        ],
    ];
    for args in runs {
        let (code, err) = with_stdout_closed(&args);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(code, Some(0), "{args:?}: {err}");
    }
}

/// Runs `GOOD` into `dir/res/r` and returns that folder (holding
/// `result.json`).
fn a_result(dir: &Path) -> PathBuf {
    let config = dir.join("good.toml");
    std::fs::write(&config, GOOD).unwrap();
    let out = dir.join("res/r");
    let ran = apflab(&[
        "run",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(ran.code, Some(0), "{}", ran.log);
    out
}

#[test]
fn every_output_is_checked_before_the_run_and_a_bad_one_is_exit_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |name: &str| d.join(name).to_str().unwrap().to_owned();
    let config = p("test.toml");
    std::fs::write(&config, GOOD).unwrap();
    std::fs::write(p("file"), "").unwrap();
    std::fs::create_dir_all(d.join("o3/result.json")).unwrap();
    std::fs::create_dir_all(d.join("o5/tokens.csv")).unwrap();
    // A config that is itself named result.json, run into its own folder.
    std::fs::create_dir_all(d.join("o7")).unwrap();
    std::fs::write(p("o7/result.json"), GOOD).unwrap();
    let results = a_result(d);
    let result = results.join("result.json");
    let result_text = std::fs::read(&result).unwrap();
    let template = p("paper.in.md");
    std::fs::write(&template, "# paper\n").unwrap();
    // A matrix whose base config lies where the matrix writes its points.
    std::fs::create_dir_all(d.join("m/points")).unwrap();
    std::fs::write(p("m/points/r000.toml"), GOOD).unwrap();
    std::fs::write(p("exp.toml"), "base = \"m/points/r000.toml\"\n").unwrap();

    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            vec!["run".into(), config.clone(), "--out".into(), p("file")],
            vec![p("file"), "is a file, not a directory".into()],
        ),
        (
            vec![
                "run".into(),
                config.clone(),
                "--out".into(),
                "/dev/null".into(),
            ],
            vec!["/dev/null".into(), "character device".into()],
        ),
        (
            vec!["run".into(), config.clone(), "--out".into(), p("o3")],
            vec![p("o3/result.json"), "is a directory".into()],
        ),
        (
            vec![
                "run".into(),
                config.clone(),
                "--out".into(),
                p("o4"),
                "--trace".into(),
                "/proc/apflab-trace.json".into(),
            ],
            vec![
                "--trace /proc/apflab-trace.json: cannot be written: its folder /proc takes no \
                 new files"
                    .into(),
            ],
        ),
        (
            vec![
                "run".into(),
                config.clone(),
                "--out".into(),
                p("o5"),
                "--token-log".into(),
            ],
            vec![p("o5/tokens.csv"), "is a directory".into()],
        ),
        (
            vec![
                "run".into(),
                config.clone(),
                "--out".into(),
                p("o6"),
                "--trace".into(),
                config.clone(),
            ],
            vec![config.clone(), "destroy the input".into()],
        ),
        (
            vec!["run".into(), p("o7/result.json"), "--out".into(), p("o7")],
            vec![p("o7/result.json"), "destroy the input".into()],
        ),
        (
            vec![
                "run".into(),
                config.clone(),
                "--out".into(),
                p("o8"),
                "--trace".into(),
                p("o8/x/../result.json"),
            ],
            vec!["same file as the output".into()],
        ),
        (
            vec![
                "report".into(),
                p("res"),
                "--out".into(),
                result.to_str().unwrap().to_owned(),
            ],
            vec![
                "--out".into(),
                "result.json".into(),
                "destroy the input".into(),
            ],
        ),
        (
            vec!["report".into(), p("res"), "--out".into(), p("o3")],
            vec![p("o3"), "is a directory".into()],
        ),
        (
            vec![
                "paper".into(),
                template.clone(),
                "--results".into(),
                p("res"),
                "--out".into(),
                template.clone(),
            ],
            vec!["paper.in.md".into(), "destroy the input".into()],
        ),
        (
            vec!["matrix".into(), p("exp.toml"), "--out".into(), p("m")],
            vec![
                "m/points/r000.toml".into(),
                "lies where the matrix writes".into(),
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (args, expected) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ran = apflab(&args);
        let mut wrong = Vec::new();
        if ran.code != Some(2) {
            wrong.push(format!("exit {:?}, expected 2", ran.code));
        }
        for e in expected {
            if !ran.log.contains(e.as_str()) {
                wrong.push(format!("no {e:?}"));
            }
        }
        if !wrong.is_empty() {
            failures.push(format!("{args:?}: {}\n{}", wrong.join(", "), ran.log));
        }
    }
    // Nothing ran, nothing was written or replaced.
    for out in ["o4", "o5", "o6", "o8"] {
        if d.join(out).join("result.json").exists() {
            failures.push(format!("{out}/result.json was written"));
        }
    }
    assert_eq!(
        std::fs::read(&result).unwrap(),
        result_text,
        "the result read"
    );
    assert_eq!(std::fs::read_to_string(p("o7/result.json")).unwrap(), GOOD);
    assert_eq!(std::fs::read_to_string(&template).unwrap(), "# paper\n");
    assert_eq!(
        std::fs::read_to_string(p("m/points/r000.toml")).unwrap(),
        GOOD
    );
    let figures: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".png") || n.ends_with(".svg"))
        .collect();
    assert!(figures.is_empty(), "figures written: {figures:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_report_over_a_tree_with_a_symlink_loop_counts_each_result_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = a_result(d);
    std::os::unix::fs::symlink(d.join("res"), run.join("loop")).unwrap();
    std::os::unix::fs::symlink(&run, d.join("res/again")).unwrap();
    let out = d.join("report.md");
    let res = d.join("res");
    // The folder given twice, and once inside itself, too.
    let ran = apflab(&[
        "report",
        res.to_str().unwrap(),
        res.to_str().unwrap(),
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(ran.code, Some(0), "{}", ran.log);
    assert!(ran.log.contains("1 results"), "{}", ran.log);
    let md = std::fs::read_to_string(&out).unwrap();
    assert!(md.contains("from 1 result file "), "{md}");
}

/// An experiment over the `GOOD` config in `dir` with `body` after its
/// `base` line.
fn experiment(dir: &Path, body: &str) -> String {
    std::fs::write(dir.join("good.toml"), GOOD).unwrap();
    let path = dir.join("exp.toml");
    std::fs::write(&path, format!("base = \"good.toml\"\n{body}")).unwrap();
    path.to_str().unwrap().to_owned()
}

/// `apflab` with its address space limited to `mib` MiB.
fn apflab_within(mib: u64, args: &[&str]) -> Ran {
    use std::os::unix::process::CommandExt as _;
    let mut command = Command::new(APFLAB);
    command.args(args);
    let bytes = mib << 20;
    // SAFETY: setrlimit is async-signal-safe and touches nothing else.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    run_command(command, args)
}

#[test]
fn a_grid_of_a_billion_points_is_exit_2_at_once_naming_the_product() {
    let dir = tempfile::tempdir().unwrap();
    let values = (0..1000)
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    for (body, expected) in [
        (
            "repetitions = 1000000000\n".to_owned(),
            vec![
                "key `repetitions`",
                "the grid has 1000000000 points",
                "repetitions: 1000000000",
                "at most 1000000",
            ],
        ),
        (
            format!(
                "[axes]\n\"workload.ops\" = [{values}]\n\"seed\" = [{values}]\n\
                 \"workload.timeslice_us\" = [{values}]\n"
            ),
            vec![
                "the grid has 1000000000 points",
                "axes.\"seed\": 1000 × axes.\"workload.ops\": 1000 × \
                 axes.\"workload.timeslice_us\": 1000 × repetitions: 1",
            ],
        ),
    ] {
        let exp = experiment(dir.path(), &body);
        let out = dir.path().join("out");
        let start = Instant::now();
        let ran = apflab_within(512, &["matrix", &exp, "--out", out.to_str().unwrap()]);
        assert_eq!(ran.code, Some(2), "{}", ran.log);
        for e in expected {
            assert!(ran.log.contains(e), "no {e:?}: {}", ran.log);
        }
        assert!(start.elapsed() < Duration::from_secs(10), "refused at once");
        assert!(!out.exists(), "nothing written");
    }
}

#[test]
fn a_large_grid_is_submitted_in_bounded_memory_within_slurms_array_limit() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), "repetitions = 20000\n");
    let out = dir.path().join("job");
    let ran = apflab_within(
        512,
        &[
            "matrix",
            &exp,
            "--slurm",
            out.to_str().unwrap(),
            "--wall-timeout",
            "60000",
        ],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.log);
    assert!(ran.log.contains("20 points per array task"), "{}", ran.log);
    let job = std::fs::read_to_string(out.join("job.sbatch")).unwrap();
    assert!(job.contains("#SBATCH --array=0-999\n"), "{job}");
    // 20 points of at most a minute each, a second each to start, a
    // minute for the task.
    assert!(job.contains("#SBATCH --time=22\n"), "{job}");
    assert!(job.contains("--wall-timeout 60000"), "{job}");
    assert_eq!(
        std::fs::read_dir(out.join("points")).unwrap().count(),
        20000
    );
}

/// A raw image that writes `.` to the UART every 100 million instructions,
/// forever: alive to the watchdog, slow in wall-clock time.
fn slow_printer(dir: &Path) -> String {
    let words: [u32; 7] = [
        0xd2a12001, // movz x1, #0x0900, lsl #16
        0xd2a0bea0, // 1: movz x0, #0x05f5, lsl #16
        0xf1000400, // 2: subs x0, x0, #1
        0x54ffffe1, // b.ne 2b
        0x528005c2, // movz w2, #'.'
        0x39000022, // strb w2, [x1]
        0x17fffffb, // b 1b
    ];
    let path = dir.join("slow.bin");
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn wall_timeout_stops_a_guest_that_prints_slowly_on_boot_run_and_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = slow_printer(d);
    let start = Instant::now();
    let ran = apflab(&[
        "boot",
        &image,
        "--max-virtual-ms",
        "1000000000",
        "--wall-timeout",
        "1000",
    ]);
    assert_eq!(ran.code, Some(1), "{}", ran.log);
    assert!(
        ran.log
            .contains("no power-off within --wall-timeout 1000 ms of wall-clock time"),
        "{}",
        ran.log
    );
    assert!(start.elapsed() < Duration::from_secs(20));

    // The config key, and the option over it.
    let config = GOOD
        .replace(
            "memory_mib = 64\n",
            &format!("memory_mib = 64\nkernel = \"{image}\"\n"),
        )
        .replace(
            "[backend]\n",
            "[backend]\nmax_virtual_ms = 1000000000\nwall_timeout_ms = 1000\n",
        );
    let path = d.join("slow.toml");
    std::fs::write(&path, &config).unwrap();
    for (extra, ms) in [(vec![], 1000), (vec!["--wall-timeout", "500"], 500)] {
        let out = d.join(format!("out-{ms}"));
        let mut args = vec![
            "run",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let start = Instant::now();
        let ran = apflab(&args);
        assert_eq!(ran.code, Some(1), "{}", ran.log);
        assert!(start.elapsed() < Duration::from_secs(20));
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap())
                .unwrap();
        assert_eq!(r["outcome"]["exit"], "wall_timeout", "{r:#}");
        assert!(
            r["outcome"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("{ms} ms of wall-clock time")),
            "{r:#}"
        );
        assert!(r["watchdog"].is_null());
    }

    // A matrix passes --wall-timeout to every point.
    std::fs::write(
        d.join("slow-base.toml"),
        config.replace("wall_timeout_ms = 1000\n", ""),
    )
    .unwrap();
    std::fs::write(
        d.join("slow-exp.toml"),
        "base = \"slow-base.toml\"\nrepetitions = 2\n",
    )
    .unwrap();
    let out = d.join("m");
    let start = Instant::now();
    let ran = apflab(&[
        "matrix",
        d.join("slow-exp.toml").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--wall-timeout",
        "500",
        "--jobs",
        "2",
    ]);
    assert_eq!(ran.code, Some(1), "{}", ran.log);
    assert!(start.elapsed() < Duration::from_secs(30));
    let table = std::fs::read_to_string(out.join("table.csv")).unwrap();
    assert_eq!(table.matches(",wall_timeout,").count(), 2, "{table}");
}

#[test]
fn messages_say_what_is_wrong_once_and_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |name: &str| d.join(name).to_str().unwrap().to_owned();
    let mut failures = Vec::new();
    let mut check = |args: &[&str], code: i32, want: &[&str], once: &str| {
        let ran = apflab(args);
        let mut wrong = Vec::new();
        if ran.code != Some(code) {
            wrong.push(format!("exit {:?}, expected {code}", ran.code));
        }
        for w in want {
            if !ran.log.contains(w) {
                wrong.push(format!("no {w:?}"));
            }
        }
        if !once.is_empty() && ran.log.matches(once).count() != 1 {
            wrong.push(format!("{once:?} not exactly once"));
        }
        if ran.log.contains('\u{1b}') {
            wrong.push("colour codes in output that is no terminal".into());
        }
        if !wrong.is_empty() {
            failures.push(format!("{args:?}: {}\n{}", wrong.join(", "), ran.log));
        }
    };

    // A seed that would wrap is refused, naming both keys.
    std::fs::write(
        p("seed.toml"),
        GOOD.replace("seed = 7", "seed = 9223372036854775807"),
    )
    .unwrap();
    std::fs::write(
        p("seed-exp.toml"),
        "base = \"seed.toml\"\nrepetitions = 2\n",
    )
    .unwrap();
    check(
        &["matrix", &p("seed-exp.toml"), "--out", &p("seed-out")],
        2,
        &[
            "key `repetitions`",
            "repetition 1 runs with seed 9223372036854775807 + 1, more than a seed can be",
        ],
        "",
    );
    // Two different bad schema versions read differently.
    let res = a_result(d);
    let text = std::fs::read_to_string(res.join("result.json")).unwrap();
    for (name, version, shown) in [
        ("seven", "7", "schema_version 7;"),
        ("text", "\"two\"", "schema_version \"two\";"),
    ] {
        let folder = d.join(format!("schema-{name}/r"));
        std::fs::create_dir_all(&folder).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut v = v.as_object().unwrap().clone();
        v.insert(
            "schema_version".into(),
            serde_json::from_str(version).unwrap(),
        );
        std::fs::write(
            folder.join("result.json"),
            serde_json::to_string(&v).unwrap(),
        )
        .unwrap();
        check(
            &[
                "report",
                &p(&format!("schema-{name}")),
                "--out",
                &p("report.md"),
            ],
            2,
            &[shown],
            "",
        );
    }
    // `policy check` on a folder gives its reason once.
    std::fs::create_dir(p("policy-dir")).unwrap();
    check(
        &["policy", "check", &p("policy-dir")],
        2,
        &["a directory"],
        "a directory",
    );
    // A random file as a policy.
    std::fs::write(p("random.wasm"), [0xffu8, 0xfe, 0x00, 0x13, 0x37]).unwrap();
    check(
        &["policy", "check", &p("random.wasm")],
        2,
        &[
            "neither a Wasm binary",
            "nor WAT text (byte 0 is not UTF-8)",
        ],
        "",
    );
    // A configs folder that is not there.
    check(
        &["list", "--configs", &p("no-such-folder")],
        2,
        &["--configs", "no-such-folder", "no such folder"],
        "",
    );
    // The watchdog's message says how long the guest was quiet when the
    // time limit stopped it first.
    let wfi = d.join("wfi.bin");
    let words: [u32; 3] = [0xd50342df, 0xd503207f, 0x17ffffff]; // msr daifset, #2; wfi; b .-4
    std::fs::write(
        &wfi,
        words
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    check(
        &["boot", wfi.to_str().unwrap(), "--max-virtual-ms", "200"],
        1,
        &["for 200 ms"],
        "",
    );
    // Logs carry no colour codes when stderr is no terminal.
    let mut command = Command::new(APFLAB);
    command
        .env("RUST_LOG", "info")
        .args(["run", &p("good.toml"), "--out", &p("o")]);
    let ran = run_command(command, &["run"]);
    if ran.code != Some(0) || !ran.log.contains("INFO") || ran.log.contains('\u{1b}') {
        failures.push(format!("RUST_LOG=info run: {:?}\n{}", ran.code, ran.log));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_corrupt_result_is_named_corrupt_when_collected_and_when_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), "repetitions = 2\n");
    let out = dir.path().join("m");
    let o = out.to_str().unwrap();
    let ran = apflab(&["matrix", &exp, "--out", o]);
    assert_eq!(ran.code, Some(0), "{}", ran.log);
    std::fs::write(out.join("r001/result.json"), "{ not json").unwrap();
    let ran = apflab(&["matrix", &exp, "--collect", o]);
    assert_eq!(ran.code, Some(1), "{}", ran.log);
    assert!(
        ran.log
            .contains("1 point with a corrupt result.json, counted as failed: r001"),
        "{}",
        ran.log
    );
    let table = std::fs::read_to_string(out.join("table.csv")).unwrap();
    assert!(table.contains("corrupt results: "), "{table}");
    assert!(!ran.log.contains("have no results"), "{}", ran.log);
    let ran = apflab(&["matrix", &exp, "--out", o]);
    assert_eq!(ran.code, Some(0), "{}", ran.log);
    assert!(
        ran.log
            .contains("1 point with a corrupt result.json, run again: r001"),
        "{}",
        ran.log
    );
}

#[test]
fn a_write_that_fails_after_the_run_keeps_the_results_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = slow_printer(d);
    let config = GOOD
        .replace(
            "memory_mib = 64\n",
            &format!("memory_mib = 64\nkernel = \"{image}\"\n"),
        )
        .replace(
            "[backend]\n",
            "[backend]\nmax_virtual_ms = 1000000000\nwall_timeout_ms = 1500\n",
        );
    let path = d.join("slow.toml");
    std::fs::write(&path, config).unwrap();
    let traces = d.join("traces");
    std::fs::create_dir(&traces).unwrap();
    let out = d.join("out");
    let child = {
        let (path, out, trace) = (path.clone(), out.clone(), traces.join("trace.json"));
        std::thread::spawn(move || {
            apflab(&[
                "run",
                path.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--trace",
                trace.to_str().unwrap(),
            ])
        })
    };
    // The trace's folder becomes a file while the guest runs.
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_dir(&traces).unwrap();
    std::fs::write(&traces, "").unwrap();
    let ran = child.join().unwrap();
    assert_eq!(ran.code, Some(1), "{}", ran.log);
    let result = out.join("result.json");
    assert!(
        ran.log.contains("trace.json: cannot write results: ")
            && ran.log.contains(&format!(
                "; what was written is kept: {}, {}",
                result.display(),
                out.join("console.log").display()
            )),
        "{}",
        ran.log
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    assert_eq!(r["outcome"]["exit"], "wall_timeout");
}
