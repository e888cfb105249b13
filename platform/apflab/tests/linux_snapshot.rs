//! Boot once, run many with Linux: Debian's arm64 kernel (see
//! `tests/linux_guest.rs` for where it comes from) saved at the end of its
//! boot (its `/init` announces it and then fetches the workload's words),
//! and resumed with another workload, on 1 and 4 vCPUs.

use std::path::Path;

mod common;
use common::{debian_kernel, outside_wall, run_named as run};

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
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("linux.snap");
        let snap = snap.to_str().unwrap();
        let first = config(&kernel, vcpus, "kind = \"cpu\"\nops = 50000");
        let (code, log, _, _) = run(dir.path(), "save", &first, &["--save-snapshot", snap]);
        assert_eq!(code, Some(0), "{vcpus} vCPUs: {log}");

        let second = config(&kernel, vcpus, "kind = \"cpu\"\ntasks = 2\nops = 120000");
        let (code, log, from_boot, boot_console) = run(dir.path(), "from-boot", &second, &[]);
        assert_eq!(code, Some(0), "{vcpus} vCPUs: {log}");
        let from_boot = from_boot.expect("results written");
        let (code, log, resumed, resumed_console) =
            run(dir.path(), "resumed", &second, &["--resume", snap]);
        assert_eq!(code, Some(0), "{vcpus} vCPUs: {log}");
        let resumed = resumed.expect("results written");
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
