//! Linux as a guest: what a config with an arm64 Linux Image as its kernel
//! may say (every key that does not apply to Linux is exit 2 naming it),
//! and, with Debian's arm64 kernel (`scripts/linux-kernel` fetches it and
//! `scripts/test` names it in `APFLAB_LINUX_KERNEL`), boots to `/init` and
//! the far-memory workload on emu.

use std::path::{Path, PathBuf};
use std::process::Command;

const APFLAB: &str = env!("CARGO_BIN_EXE_apflab");

/// An arm64 Image header of a 4 KiB-page little-endian kernel: enough for
/// the config to take the file as a Linux kernel.
fn fake_image(dir: &Path) -> PathBuf {
    let mut image = vec![0u8; 4096];
    image[16..24].copy_from_slice(&0x10_0000u64.to_le_bytes());
    image[24..32].copy_from_slice(&0xau64.to_le_bytes());
    image[0x38..0x3c].copy_from_slice(b"ARM\x64");
    let path = dir.join("Image");
    std::fs::write(&path, image).unwrap();
    std::fs::write(dir.join("initrd.cpio"), b"070701").unwrap();
    path
}

/// `apflab run` of `config` (written as `linux.toml` in `dir`): exit code
/// and output.
fn run(dir: &Path, config: &str) -> (Option<i32>, String) {
    let path = dir.join("linux.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(APFLAB)
        .args(["run", path.to_str().unwrap(), "--out"])
        .arg(dir.join("out"))
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("panicked"), "{log}");
    (out.status.code(), log)
}

fn linux_config(guest: &str, workload: &str, rest: &str) -> String {
    format!(
        "seed = 7\n[guest]\nvcpus = 1\nmemory_mib = 256\nkernel = \"Image\"\n{guest}\n\
         [workload]\n{workload}\n[backend]\nkind = \"emu\"\n{rest}"
    )
}

#[test]
fn keys_that_do_not_apply_to_linux_are_exit_2_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    fake_image(dir.path());
    let initrd = "initrd = \"initrd.cpio\"";
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            linux_config(initrd, "kind = \"cpu\"\nops = 10\ntimeslice_us = 500", ""),
            vec![
                "linux.toml:",
                "workload.timeslice_us",
                "Linux guest",
                "tasks, ops",
            ],
        ),
        (
            linux_config(
                initrd,
                "kind = \"memtouch\"\nmib = 8\nverify = \"store\"",
                "",
            ),
            vec!["workload.verify", "Linux guest"],
        ),
        (
            linux_config(
                initrd,
                "kind = \"memtouch\"\nmib = 8\nreader = \"kernel\"",
                "",
            ),
            vec!["workload.reader", "Linux guest"],
        ),
        (
            linux_config(initrd, "kind = \"cpu\"", "[policy]\nmodule = \"sync\"\n"),
            vec!["policy", "async PF client", "Linux"],
        ),
        (
            linux_config(
                &format!("{initrd}\nbootargs = \"{}\"", "x".repeat(2100)),
                "kind = \"cpu\"",
                "",
            ),
            vec!["guest.bootargs", "at most 2047"],
        ),
        (
            linux_config("initrd = \"missing.cpio\"", "kind = \"cpu\"", ""),
            vec!["guest.initrd", "missing.cpio"],
        ),
    ];
    for (config, needles) in cases {
        let (code, log) = run(dir.path(), &config);
        assert_eq!(code, Some(2), "{config}\n{log}");
        for needle in needles {
            assert!(
                log.contains(needle),
                "{needle:?} not in:\n{log}\nfor:\n{config}"
            );
        }
        assert!(!dir.path().join("out/result.json").exists());
    }
}

#[test]
fn an_initrd_for_a_kernel_that_is_not_linux_is_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    fake_image(dir.path());
    let config = "[guest]\nvcpus = 1\nmemory_mib = 64\ninitrd = \"initrd.cpio\"\n[workload]\n\
                  kind = \"cpu\"\n[backend]\nkind = \"emu\"\n";
    let (code, log) = run(dir.path(), config);
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("guest.initrd") && log.contains("only a Linux kernel"),
        "{log}"
    );
}
