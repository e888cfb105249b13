//! Builds the artifacts that are not host code: the arm64 guest kernel
//! (`guest/`, target `aarch64-unknown-none-softfloat`), the init of the
//! Linux guest (`guest/linux/`, a static `aarch64-unknown-linux-musl`
//! binary), the board conformance kernel (`conformance/`, bare metal too),
//! the sieve compute kernel of `benches/qemu-ratio` (`benches/sieve/`, same
//! target as the conformance kernel) and the example policies (`policies/`,
//! target `wasm32-unknown-unknown`), so that a plain
//! `cargo build` or `cargo test` of the workspace has them ready.
//!
//! Each but the Linux init is its own cargo workspace; the init is a member
//! of this one. Each is built by a nested cargo into
//! `<target>/apflab-artifacts/` (a directory of its own, so the nested cargo
//! never waits on the outer one's lock), or into `APFLAB_ARTIFACTS_DIR`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "src/nested.rs"]
mod nested;

use nested::{GUEST_TARGET, POLICY_TARGET};

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

    let guest_target_dir = artifacts_dir.join("guest");
    // The guest builds `core` from source (guest/.cargo/config.toml).
    run(
        nested::cargo_build(
            &root,
            &guest_dir,
            GUEST_TARGET,
            "release",
            &guest_target_dir,
        )
        .env("RUSTC_BOOTSTRAP", "1"),
        &guest_dir,
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

    // The Linux guest's init is a member of this workspace (the root
    // Cargo.toml says why), built from the root for aarch64 musl with its
    // own profile and linked as the root's .cargo/config.toml says. Run
    // from the root, cargo reads none of guest/'s bare-metal config.
    let linux_target_dir = artifacts_dir.join("linux");
    run(
        &mut nested::linux_init_build(&root, &linux_target_dir),
        &root,
    );
    let linux_init = nested::linux_init_in(&linux_target_dir);
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
    run(
        nested::cargo_build(
            &root,
            &conformance_dir,
            GUEST_TARGET,
            "release",
            &conformance_target_dir,
        )
        .env("RUSTC_BOOTSTRAP", "1"),
        &conformance_dir,
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
    run(
        nested::cargo_build(
            &root,
            &sieve_dir,
            GUEST_TARGET,
            "release",
            &conformance_target_dir,
        )
        .env("RUSTC_BOOTSTRAP", "1"),
        &sieve_dir,
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
    run(
        nested::cargo_build(
            &root,
            &policies_dir,
            POLICY_TARGET,
            "release",
            &policy_target_dir,
        )
        .arg("--workspace"),
        &policies_dir,
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

/// Runs a nested build of the workspace at `dir`; a failure fails this
/// build with how to see why.
fn run(cmd: &mut Command, dir: &Path) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo for {}: {e}", dir.display()));
    let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
    assert!(
        status.success(),
        "building {} failed ({status}); run `cargo {}` in {} to see why",
        dir.display(),
        args.join(" "),
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
