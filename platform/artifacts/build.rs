//! Builds the artifacts that are not host code: the arm64 guest kernel
//! (`guest/`, target `aarch64-unknown-none-softfloat`), the init of the
//! Linux guest (`guest/linux/`, a static `aarch64-unknown-linux-musl`
//! binary), the board conformance kernel (`conformance/`, bare metal too),
//! the sieve compute kernel of `benches/qemu-ratio` (`benches/sieve/`, same
//! target as the conformance kernel) and the example policies (`policies/`,
//! target `wasm32-unknown-unknown`), so that a plain
//! `cargo build` or `cargo test` of the workspace has them ready.
//!
//! Each is its own cargo workspace, built by a nested cargo into
//! `<target>/apflab-artifacts/` (a directory of its own, so the nested cargo
//! never waits on the outer one's lock), or into `APFLAB_ARTIFACTS_DIR`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "aarch64-unknown-none-softfloat";
const LINUX_TARGET: &str = "aarch64-unknown-linux-musl";
const POLICY_TARGET: &str = "wasm32-unknown-unknown";

/// Variables of the outer build that would change what the nested cargo
/// does (flags meant for host code, clippy's driver, the outer target dir).
const OUTER_ONLY_VARS: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_PRIMARY_PACKAGE",
    "__CARGO_FIX_PLZ",
    "CARGO_LLVM_COV",
    "LLVM_PROFILE_FILE",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .ancestors()
        .nth(2)
        .expect("platform/artifacts sits two levels below the workspace root")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out (or one level
    // deeper with --target); find <target> as the parent of `build`'s parent.
    let target_dir = out_dir
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(|build| build.parent())
        .and_then(|profile| profile.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out_dir.clone());
    // Nothing in the artifacts depends on the outer build, so a second
    // build tree (the fuzz targets') may reuse a first one's.
    println!("cargo:rerun-if-env-changed=APFLAB_ARTIFACTS_DIR");
    let artifacts_dir = env::var_os("APFLAB_ARTIFACTS_DIR")
        .map_or_else(|| target_dir.join("apflab-artifacts"), PathBuf::from);

    let guest_dir = root.join("guest");
    let policies_dir = root.join("policies");
    watch_crate_tree(&guest_dir);
    watch_crate_tree(&policies_dir);
    let conformance_dir = root.join("conformance");
    watch_crate_tree(&conformance_dir);
    let sieve_dir = root.join("benches/sieve");
    watch_crate_tree(&sieve_dir);
    watch_crate_tree(&root.join("platform/abi"));
    println!(
        "cargo:rerun-if-changed={}",
        root.join("rust-toolchain.toml").display()
    );

    // The checkout's path must not reach the artifacts: panic locations
    // carry source paths, and their lengths move the guest's data, its
    // instruction counts and so emu's virtual times, and the policies'
    // sha256. Every checkout builds them as if it were at /apflab.
    let remap = format!("--remap-path-prefix={}=/apflab", root.display());
    let rustflags: (&str, &str) = ("CARGO_ENCODED_RUSTFLAGS", &remap);

    let guest_target_dir = artifacts_dir.join("guest");
    // The guest builds `core` from source (guest/.cargo/config.toml).
    cargo_build(
        &guest_dir,
        GUEST_TARGET,
        &guest_target_dir,
        &[],
        &[("RUSTC_BOOTSTRAP", "1"), rustflags],
        &[],
    );
    let guest_elf = guest_target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join("apflab-guest");
    assert!(
        guest_elf.is_file(),
        "guest build produced no {}",
        guest_elf.display()
    );
    println!("cargo:rustc-env=APFLAB_GUEST_ELF={}", guest_elf.display());

    // The Linux guest's init lives under guest/ (watched above) but is a
    // workspace of its own with std; linked by the toolchain's rust-lld (as
    // guest/linux/.cargo/config.toml says too), so that no aarch64 C
    // toolchain is needed. Without RUSTC_BOOTSTRAP, cargo ignores the
    // bare-metal guest's `[unstable] build-std`, which its config inherits.
    let linux_target_dir = artifacts_dir.join("linux");
    cargo_build(
        &guest_dir.join("linux"),
        LINUX_TARGET,
        &linux_target_dir,
        &[],
        &[
            ("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld"),
            rustflags,
        ],
        &["RUSTC_BOOTSTRAP"],
    );
    let linux_init = linux_target_dir
        .join(LINUX_TARGET)
        .join("release")
        .join("apflab-linux-init");
    assert!(
        linux_init.is_file(),
        "Linux init build produced no {}",
        linux_init.display()
    );
    println!("cargo:rustc-env=APFLAB_LINUX_INIT={}", linux_init.display());
    // Its initramfs: the init alone (the kernel's built-in initramfs gives
    // /dev/console). The workload comes from the command line, so one
    // initramfs serves every config.
    let initramfs = linux_target_dir.join("initramfs.cpio");
    pack_initramfs(&linux_init, &initramfs);
    println!(
        "cargo:rustc-env=APFLAB_LINUX_INITRAMFS={}",
        initramfs.display()
    );

    // Its own target directory: `core` is built for its profile (sharing
    // the guest's would rebuild one for the other on every change).
    let conformance_target_dir = artifacts_dir.join("conformance");
    cargo_build(
        &conformance_dir,
        GUEST_TARGET,
        &conformance_target_dir,
        &[],
        &[("RUSTC_BOOTSTRAP", "1"), rustflags],
        &[],
    );
    let conformance_elf = conformance_target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join("virt-conformance");
    assert!(
        conformance_elf.is_file(),
        "conformance build produced no {}",
        conformance_elf.display()
    );
    println!(
        "cargo:rustc-env=APFLAB_CONFORMANCE_ELF={}",
        conformance_elf.display()
    );

    // The sieve shares the conformance kernel's target, profile and so
    // its `core`.
    cargo_build(
        &sieve_dir,
        GUEST_TARGET,
        &conformance_target_dir,
        &[],
        &[("RUSTC_BOOTSTRAP", "1"), rustflags],
        &[],
    );
    let sieve_elf = conformance_target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join("apflab-sieve");
    assert!(
        sieve_elf.is_file(),
        "sieve build produced no {}",
        sieve_elf.display()
    );
    println!("cargo:rustc-env=APFLAB_SIEVE_ELF={}", sieve_elf.display());

    let policy_target_dir = artifacts_dir.join("policies");
    cargo_build(
        &policies_dir,
        POLICY_TARGET,
        &policy_target_dir,
        &["--workspace"],
        &[rustflags],
        &[],
    );
    let wasm_dir = policy_target_dir.join(POLICY_TARGET).join("release");
    println!(
        "cargo:rustc-env=APFLAB_POLICY_WASM_DIR={}",
        wasm_dir.display()
    );
    println!(
        "cargo:rustc-env=APFLAB_POLICY_WAT_DIR={}",
        policies_dir.join("wat").display()
    );
}

/// Writes a newc cpio archive holding `init` as `/init` (mode 0755, owned
/// by root, time 0: the same bytes for the same init).
fn pack_initramfs(init: &Path, out: &Path) {
    let file = fs::File::open(init).unwrap_or_else(|e| panic!("{}: {e}", init.display()));
    let entry = cpio::NewcBuilder::new("init").ino(1).mode(0o100_755);
    let tmp = out.with_extension("cpio.tmp");
    let written = fs::File::create(&tmp)
        .and_then(|w| cpio::write_cpio(std::iter::once((entry, file)), w))
        .and_then(|w| w.sync_all());
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, out)) {
        panic!("cannot write the initramfs {}: {e}", out.display());
    }
}

/// Runs `cargo build --release` for `target` in the workspace at `dir`,
/// with `vars` set and the variables `unset` of the outer build removed.
fn cargo_build(
    dir: &Path,
    target: &str,
    target_dir: &Path,
    extra: &[&str],
    vars: &[(&str, &str)],
    unset: &[&str],
) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir)
        .args(["build", "--release", "--target", target, "--target-dir"])
        .arg(target_dir)
        .args(extra);
    for var in OUTER_ONLY_VARS.iter().chain(unset) {
        cmd.env_remove(var);
    }
    cmd.envs(vars.iter().copied());
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo for {}: {e}", dir.display()));
    assert!(
        status.success(),
        "building {} for {target} failed ({status}); run `cargo build --release --target {target}` in {} to see why",
        dir.display(),
        dir.display()
    );
}

/// Asks cargo to rerun this script when any source of the crates under `dir`
/// changes, without watching their `target/` directories.
fn watch_crate_tree(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        println!("cargo:rerun-if-changed={}", dir.display());
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') && name != ".cargo" {
            continue;
        }
        if path.is_dir() && path.join("Cargo.toml").is_file() {
            watch_crate_tree(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
