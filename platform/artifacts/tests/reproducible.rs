//! The Linux guest's init is the same bytes from any checkout.
//!
//! Its code's order follows its symbol names, and cargo hashes a path
//! dependency outside the workspace root into those names by its absolute
//! path. So before the init joined the root workspace, the same commit gave
//! different inits (and different Linux results) in different directories.
//! This builds it, exactly as the build does, in two copies of the checkout
//! at paths of different lengths and compares each with the built one.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use apflab_artifacts::nested;

/// The checkout this test belongs to.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("platform/artifacts sits two levels below the root")
        .to_path_buf()
}

/// The checkout's files (tracked and untracked, not ignored), relative to
/// its root, as they are on disk.
fn checkout_files(root: &Path) -> Vec<PathBuf> {
    let out = Command::new("git")
        .current_dir(root)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .expect("git is needed to list the checkout's files");
    assert!(
        out.status.success(),
        "git ls-files failed in {}",
        root.display()
    );
    out.stdout
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| PathBuf::from(String::from_utf8_lossy(name).into_owned()))
        // A file deleted but not yet staged is listed and absent.
        .filter(|name| root.join(name).is_file())
        .collect()
}

/// Copies `files` of `root` to `to`.
fn copy_checkout(root: &Path, files: &[PathBuf], to: &Path) {
    for name in files {
        let dest = to.join(name);
        fs::create_dir_all(dest.parent().expect("a file has a parent")).unwrap();
        fs::copy(root.join(name), &dest)
            .unwrap_or_else(|e| panic!("copying {}: {e}", name.display()));
    }
}

#[test]
fn the_linux_init_is_the_same_bytes_from_checkouts_at_other_paths() {
    let root = root();
    let built = fs::read(apflab_artifacts::linux_init()).expect("the built init");
    let files = checkout_files(&root);
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reproducible");
    let _ = fs::remove_dir_all(&scratch);
    for copy in [
        scratch.join("a"),
        scratch.join("a-checkout-at-a-longer-path/apflab"),
    ] {
        copy_checkout(&root, &files, &copy);
        let target_dir = copy.join("target");
        let status = nested::linux_init_build(&copy, &target_dir)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the init in {}", copy.display());
        let init = fs::read(nested::linux_init_in(&target_dir)).unwrap();
        assert!(
            init == built,
            "the init built in {} differs from the one built in {}",
            copy.display(),
            root.display()
        );
    }
    fs::remove_dir_all(&scratch).unwrap();
}
