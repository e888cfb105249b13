//! The board conformance kernel (`conformance/`, a bare-metal image written
//! for QEMU's `virt` board that knows nothing of apflab) on
//! `apflab boot --backend emu` and on
//! `qemu-system-aarch64 -M virt,gic-version=3 -cpu max`: both machines must
//! give the same PASS/FAIL line for every behaviour it checks, in the same
//! order, and end the same way; and two emu runs must print exactly the
//! same thing.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const APFLAB: &str = env!("CARGO_BIN_EXE_apflab");

/// Host time a QEMU run may take before the test calls it a hang.
const QEMU_TIMEOUT: Duration = Duration::from_secs(120);

/// The `PASS <name>` / `FAIL <name>` part of every result line, in order
/// (a FAIL's detail, after the colon, names machine-specific values).
fn verdicts(console: &str) -> Vec<String> {
    console
        .lines()
        .filter(|l| l.starts_with("PASS ") || l.starts_with("FAIL "))
        .map(|l| l.split(':').next().unwrap_or(l).trim().to_owned())
        .collect()
}

fn emu(vcpus: u32) -> (Option<i32>, String) {
    let out = Command::new(APFLAB)
        .args(["boot", "--backend", "emu", "--memory", "256", "--vcpus"])
        .arg(vcpus.to_string())
        .arg(apflab_artifacts::conformance_elf())
        .stdin(Stdio::null())
        .output()
        .expect("apflab runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "apflab panicked:\n{stderr}");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn qemu(vcpus: u32) -> (Option<i32>, String) {
    let mut child = apflab_artifacts::qemu_virt_kernel(apflab_artifacts::conformance_elf(), vcpus, 256)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run qemu-system-aarch64 (scripts/setup installs it: Debian package qemu-system-arm)");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for qemu") {
            break status;
        }
        if started.elapsed() > QEMU_TIMEOUT {
            let _ = child.kill();
            panic!("the conformance kernel did not power QEMU off within {QEMU_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut console = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut console)
        .expect("qemu's console is text");
    (status.code(), console)
}

fn emu_and_qemu_agree(vcpus: u32) {
    let (emu_code, emu_console) = emu(vcpus);
    let (qemu_code, qemu_console) = qemu(vcpus);
    let (emu_v, qemu_v) = (verdicts(&emu_console), verdicts(&qemu_console));
    // The kernel ran to its end on both (a crash or hang would cut the
    // list short) and checked a real number of behaviours.
    for console in [&emu_console, &qemu_console] {
        assert!(
            console.contains(" passed, ") && console.contains(" failed"),
            "the kernel did not finish:\n{console}"
        );
    }
    assert!(
        emu_v.len() > 80,
        "only {} checks ran:\n{emu_console}",
        emu_v.len()
    );
    let differ: Vec<_> = emu_v
        .iter()
        .zip(&qemu_v)
        .filter(|(e, q)| e != q)
        .map(|(e, q)| format!("emu {e} / qemu {q}"))
        .collect();
    assert!(
        differ.is_empty() && emu_v.len() == qemu_v.len(),
        "emu and QEMU disagree on {vcpus} vCPUs:\n{}\n--- emu:\n{emu_console}\n--- qemu:\n{qemu_console}",
        differ.join("\n")
    );
    assert_eq!(emu_code, qemu_code, "exit status");
    assert_eq!(emu_code, Some(0), "SYSTEM_OFF is a clean exit");
    // Deterministic: a second emu run prints the very same console.
    let (again_code, again) = emu(vcpus);
    assert_eq!((again_code, again), (emu_code, emu_console));
}

#[test]
fn emu_and_qemu_agree_on_two_vcpus() {
    emu_and_qemu_agree(2);
}

#[test]
fn emu_and_qemu_agree_on_four_vcpus() {
    emu_and_qemu_agree(4);
}
