//! Paths of the artifacts built alongside the host code: the arm64 guest
//! kernel, the Linux guest's init and the example policies.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub mod nested;

/// The apflab guest kernel ELF (built for `aarch64-unknown-none-softfloat`).
pub fn guest_elf() -> &'static Path {
    Path::new(env!("APFLAB_GUEST_ELF"))
}

/// The init of the Linux guest (`guest/linux/`): a static
/// `aarch64-unknown-linux-musl` binary that runs as `/init` (PID 1) of an
/// initramfs, runs the workload of the kernel command line's `apflab.*`
/// words, prints the report's console line and powers off.
pub fn linux_init() -> &'static Path {
    Path::new(env!("APFLAB_LINUX_INIT"))
}

/// The initramfs of a Linux guest: a newc cpio archive whose `/init` is
/// [`linux_init`].
pub fn linux_initramfs() -> &'static Path {
    Path::new(env!("APFLAB_LINUX_INITRAMFS"))
}

/// The board conformance kernel (`conformance/`): a bare-metal image for
/// QEMU's `virt` board, independent of apflab, that prints one `PASS` or
/// `FAIL` line per behaviour of the machine it checks.
pub fn conformance_elf() -> &'static Path {
    Path::new(env!("APFLAB_CONFORMANCE_ELF"))
}

/// The sieve compute kernel (`benches/sieve/`): a bare-metal image for
/// QEMU's `virt` board, independent of apflab, that turns its MMU on, runs
/// a sieve of Eratosthenes, prints the prime count and powers off.
pub fn sieve_elf() -> &'static Path {
    Path::new(env!("APFLAB_SIEVE_ELF"))
}

/// The example policies built from `policies/` (Rust, to Wasm), by name.
pub const EXAMPLE_POLICIES: [&str; 8] = [
    "sync",
    "gavin-rfcv2",
    "gavin-v4",
    "paolo",
    "always-halt",
    "always-reschedule",
    "adaptive",
    "ewma",
];

/// The hand-written WAT policies in `policies/wat/`, by name.
pub const WAT_POLICIES: [&str; 1] = ["threshold"];

/// An example policy by crate name with dashes as underscores, e.g.
/// `gavin_rfcv2`: `<dir>/<name>.wasm`. Hand-written WAT policies are found
/// with [`policy_wat`].
pub fn policy_wasm(name: &str) -> PathBuf {
    Path::new(env!("APFLAB_POLICY_WASM_DIR")).join(format!("{}.wasm", name.replace('-', "_")))
}

/// A hand-written policy in `policies/wat/<name>.wat`.
pub fn policy_wat(name: &str) -> PathBuf {
    Path::new(env!("APFLAB_POLICY_WAT_DIR")).join(format!("{name}.wat"))
}

/// `qemu-system-aarch64` set up to boot the guest on QEMU's `virt` board
/// (GICv3, `-cpu max`, no apflab VMM), console on stdout, standard input
/// closed: the reference the emu backend is compared with. The Debian
/// package is `qemu-system-arm`.
pub fn qemu_virt(cpus: u32, memory_mib: u64, bootargs: &str) -> Command {
    let mut cmd = qemu_virt_kernel(guest_elf(), cpus, memory_mib);
    cmd.args(["-append", bootargs]);
    cmd
}

/// Like [`qemu_virt`], for any bare-metal `kernel` and no command line.
pub fn qemu_virt_kernel(kernel: &Path, cpus: u32, memory_mib: u64) -> Command {
    let mut cmd = Command::new("qemu-system-aarch64");
    cmd.args(["-M", "virt,gic-version=3", "-cpu", "max"])
        .args(["-smp", &cpus.to_string(), "-m", &format!("{memory_mib}M")])
        .args([
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(kernel)
        .stdin(Stdio::null());
    cmd
}
