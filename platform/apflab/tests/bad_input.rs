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
    let mut child = Command::new(APFLAB)
        .args(args)
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
            vec!["truncated.elf"],
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
