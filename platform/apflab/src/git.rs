//! Running git on apflab's source tree, written once for the build script
//! (which bakes in the commit the executable is built from) and for
//! [`crate::result::SourceRecord`] (which compares that commit with the tree
//! a run comes from). The build script includes this file by its path.

use std::path::Path;
use std::process::{Command, Stdio};

/// The standard output of `git -C root ARGS`, trimmed, if git ran and
/// succeeded.
pub(crate) fn output(root: &Path, args: &[&str]) -> Option<String> {
    Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}
