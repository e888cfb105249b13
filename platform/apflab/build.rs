//! Bakes in the git commit the apflab executable is built from, so that a
//! result can say when the executable that made it is not the tree's
//! current commit (see `SourceRecord::of_build_tree`).

use std::path::Path;

#[path = "src/git.rs"]
mod git;

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
    let root = Path::new(&manifest_dir).join("../..");
    let git = |args: &[&str]| git::output(&root, args).filter(|s| !s.is_empty());
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=APFLAB_BUILD_COMMIT={commit}");
    // Rerun when HEAD moves: HEAD itself (a checkout), the branch it names
    // (a commit) and packed-refs (where the branch may live). Only files
    // that exist: cargo reruns on every build for a path that does not.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", &name])
            && Path::new(&path).is_file()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/git.rs");
}
