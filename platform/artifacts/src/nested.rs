//! The nested cargo builds of the artifacts that are not host code.
//!
//! `build.rs` includes this file and the library exports it, so that a test
//! can build an artifact in another checkout exactly as the build does.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The target of apflab's guest, the conformance kernel and the sieve.
pub const GUEST_TARGET: &str = "aarch64-unknown-none-softfloat";
/// The target of the Linux guest's init.
pub const LINUX_TARGET: &str = "aarch64-unknown-linux-musl";
/// The root Cargo.toml's profile for the Linux guest's init.
pub const LINUX_PROFILE: &str = "linux-init";
/// The target of the example policies.
pub const POLICY_TARGET: &str = "wasm32-unknown-unknown";

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

/// `cargo build --profile <profile> --target <target>` of the workspace at
/// `dir` of the checkout at `root`, into `target_dir`, without the outer
/// build's variables.
///
/// The checkout's path must not reach the artifacts: panic locations carry
/// source paths, and their lengths move the guest's data, its instruction
/// counts and so emu's virtual times, and the policies' sha256. Every
/// checkout builds them as if it were at `/apflab`.
pub fn cargo_build(
    root: &Path,
    dir: &Path,
    target: &str,
    profile: &str,
    target_dir: &Path,
) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir)
        .args([
            "build",
            "--profile",
            profile,
            "--target",
            target,
            "--target-dir",
        ])
        .arg(target_dir);
    for var in OUTER_ONLY_VARS {
        cmd.env_remove(var);
    }
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!("--remap-path-prefix={}=/apflab", root.display()),
    );
    cmd
}

/// The build of the Linux guest's init in the checkout at `root`.
///
/// The init is a member of the root's workspace (the root Cargo.toml says
/// why), built from the root with its own profile and linked as the root's
/// `.cargo/config.toml` says. Run from the root, cargo reads none of
/// `guest/`'s bare-metal config.
pub fn linux_init_build(root: &Path, target_dir: &Path) -> Command {
    let mut cmd = cargo_build(root, root, LINUX_TARGET, LINUX_PROFILE, target_dir);
    cmd.args(["-p", "apflab-linux-init"]);
    cmd
}

/// Where [`linux_init_build`] puts the init.
pub fn linux_init_in(target_dir: &Path) -> PathBuf {
    target_dir
        .join(LINUX_TARGET)
        .join(LINUX_PROFILE)
        .join("apflab-linux-init")
}
