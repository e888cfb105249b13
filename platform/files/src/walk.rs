//! Walking a tree of folders the user names (`apflab report results/`):
//! each file once, whatever links the tree holds.
//!
//! Symlinks are followed (a results folder may well link to another run's),
//! so a link to a folder above it would loop forever and one file reached
//! by two names would be counted twice. The walk remembers every folder and
//! file it has seen by device and inode, enters each folder once, yields
//! each file once, and refuses a tree deeper than a bound instead of
//! following it down.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::output::FileId;

/// Deepest folder a walk enters below its root by default: far deeper than
/// any results tree (a matrix's is two), shallow enough that a walk ends.
pub const MAX_DEPTH: usize = 32;

/// A walk over one or more trees that shares what it has seen, so that
/// overlapping roots (`report results results/x`) give each file once.
#[derive(Debug)]
pub struct Walk {
    max_depth: usize,
    dirs: HashSet<FileId>,
    files: HashSet<FileId>,
    /// Entries whose name starts with `.` are skipped (work in progress,
    /// such as a matrix's `.partial-r003/`).
    pub skip_hidden: bool,
}

impl Walk {
    /// A walk entering folders down to `max_depth` below each root.
    pub fn new(max_depth: usize) -> Self {
        Walk {
            max_depth,
            dirs: HashSet::new(),
            files: HashSet::new(),
            skip_hidden: true,
        }
    }

    /// Everything under `root` that is not a folder and whose file name
    /// `keep` accepts, each file once (by device and inode, over every
    /// root this walk has been given), sorted by path. An entry whose
    /// target cannot be read (a dangling link) is listed, for its reader
    /// to report. A folder that cannot be read, or a tree deeper than the
    /// walk's bound, is an error naming the folder.
    pub fn files(
        &mut self,
        root: &Path,
        keep: impl Fn(&std::ffi::OsStr) -> bool,
    ) -> io::Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        let root_id = FileId::of(root).map_err(|e| with_path(root, e))?;
        if !self.dirs.insert(root_id) {
            return Ok(found);
        }
        let mut stack = vec![(root.to_path_buf(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| with_path(&dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| with_path(&dir, e))?;
                let name = entry.file_name();
                if self.skip_hidden && name.to_string_lossy().starts_with('.') {
                    continue;
                }
                let path = entry.path();
                match std::fs::metadata(&path) {
                    Ok(meta) if meta.is_dir() => {
                        if !self.dirs.insert(FileId::of_metadata(&meta)) {
                            // Seen already: a link back up the tree, or a
                            // second name of a folder.
                            continue;
                        }
                        if depth + 1 > self.max_depth {
                            return Err(io::Error::other(format!(
                                "{}: more than {} folders below {}; a tree this deep is not \
                                 a results folder",
                                path.display(),
                                self.max_depth,
                                root.display()
                            )));
                        }
                        stack.push((path, depth + 1));
                    }
                    Ok(meta) => {
                        if keep(&name) && self.files.insert(FileId::of_metadata(&meta)) {
                            found.push(path);
                        }
                    }
                    Err(_) => {
                        if keep(&name) {
                            found.push(path);
                        }
                    }
                }
            }
        }
        found.sort();
        Ok(found)
    }
}

/// `e` with the path it concerns in front.
fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn named(n: &std::ffi::OsStr) -> bool {
        n == "result.json"
    }

    #[test]
    fn a_symlink_loop_and_a_second_name_give_each_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("a/b")).unwrap();
        std::fs::write(p.join("a/b/result.json"), "{}").unwrap();
        symlink(p, p.join("a/b/up")).unwrap();
        symlink(p.join("a"), p.join("again")).unwrap();
        std::fs::hard_link(p.join("a/b/result.json"), p.join("a/result.json")).unwrap();
        let mut walk = Walk::new(MAX_DEPTH);
        let found = walk.files(p, named).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        // A second root inside the first adds nothing.
        assert!(walk.files(&p.join("a"), named).unwrap().is_empty());
    }

    #[test]
    fn a_tree_deeper_than_the_bound_is_refused_naming_where() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("1/2/3/4");
        std::fs::create_dir_all(&deep).unwrap();
        let e = Walk::new(3).files(dir.path(), named).unwrap_err();
        assert!(e.to_string().contains("more than 3 folders"), "{e}");
        assert!(Walk::new(4).files(dir.path(), named).is_ok());
    }

    #[test]
    fn hidden_entries_are_skipped_and_dangling_links_listed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir(p.join(".partial-r000")).unwrap();
        std::fs::write(p.join(".partial-r000/result.json"), "{}").unwrap();
        symlink(p.join("missing"), p.join("result.json")).unwrap();
        let found = Walk::new(MAX_DEPTH).files(p, named).unwrap();
        assert_eq!(found, [p.join("result.json")]);
    }
}
