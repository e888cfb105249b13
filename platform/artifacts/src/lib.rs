//! Paths of the artifacts built alongside the host code: the arm64 guest
//! kernel and the example policies.

use std::path::{Path, PathBuf};

/// The apflab guest kernel ELF (built for `aarch64-unknown-none-softfloat`).
pub fn guest_elf() -> &'static Path {
    Path::new(env!("APFLAB_GUEST_ELF"))
}

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
