//! The SDEI firmware interface from the real guest on the emu backend: the
//! guest's conformance test (`apflab.selftest=sdei`) prints one line per
//! check; every check must be there and pass, and the run must end as the
//! guest asked, the VMM standing.

use std::process::Command;

const APFLAB: &str = env!("CARGO_BIN_EXE_apflab");

/// Boots the guest with `append`; (exit code, console).
fn boot(append: &str) -> (Option<i32>, String) {
    let image = apflab_artifacts::guest_elf();
    let out = Command::new(APFLAB)
        .args(["boot", image.to_str().unwrap(), "--append", append])
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), log)
}

#[test]
fn the_guests_sdei_conformance_checks_all_pass() {
    let (code, log) = boot("apflab.workload=cpu apflab.ops=1000 apflab.selftest=sdei");
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("sdei-selftest: FAIL"), "{log}");
    // What the issue asks to be covered, each by name.
    for check in [
        "version",
        "pe-starts-masked",
        "register-bad-event",
        "register-unaligned-entry",
        "enable-unregistered",
        "complete-outside-handler",
        "register",
        "enable",
        "masked-pe-holds-the-event",
        "dispatched-on-unmask",
        "handler-x0-is-the-event",
        "handler-x1-is-the-argument",
        "handler-x2-is-the-interrupted-pc",
        "handler-x3-is-the-interrupted-pstate",
        "handler-runs-at-el1h-with-exceptions-masked",
        "context-x5",
        "context-x18-is-invalid",
        "disabled-event-is-held",
        "dispatched-again-after-complete",
        "resume-target-ran-once",
        "resume-elr-is-the-interrupted-pc",
        "resume-spsr-is-the-interrupted-pstate",
        "unregister-in-handler-is-pending",
        "enable-while-unregister-pending",
        "unregistered-after-complete",
        "private-reset-unregisters",
    ] {
        assert!(
            log.contains(&format!("sdei-selftest: PASS {check}\n")),
            "{check} missing or failed:\n{log}"
        );
    }
    let total = log.matches("sdei-selftest: PASS ").count();
    assert!(
        log.contains(&format!("sdei-selftest: {total} passed, 0 failed")),
        "{log}"
    );
    // The workload ran after the test (the guest's report line).
    assert!(log.contains("apflab-guest"), "{log}");
}

#[test]
fn without_the_option_the_guest_does_not_touch_sdei() {
    let (code, log) = boot("apflab.workload=cpu apflab.ops=1000");
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("sdei-selftest"), "{log}");
}
