//! The files a command writes: checked before it does any work, written so
//! that they are never half-written.
//!
//! A command that writes lists what it reads and what it will write in an
//! [`Outputs`] before it starts. Each output is checked at once, so that a
//! bad argument is exit 2 in a second, not a failure after an hour's run:
//!
//! - a file is meant, so the path must not be a directory, nor a device or
//!   FIFO (outputs are replaced by renaming a new file onto them, which
//!   would replace `/dev/null` itself);
//! - it must not be one of the command's inputs, compared by device and
//!   inode with symlinks followed (`report DIR --out DIR/a/result.json`
//!   would destroy the result it reads; a hard link is the same file too);
//! - it must not be another output of the same command;
//! - its folder must be one: the nearest part of the path that exists must
//!   be a directory, and a file must be creatable in it (tried, not
//!   guessed from permission bits: root ignores those, a read-only mount
//!   does not).
//!
//! [`write_atomic`] then writes each one to a temporary name in the same
//! folder and renames it into place: a reader sees the old file or the new
//! one, never half of it.

use std::fs::{self, Metadata, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};

/// A file's identity: the device and inode its path leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl FileId {
    /// The identity of what `meta` describes.
    pub fn of_metadata(meta: &Metadata) -> Self {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// The identity of the file `path` leads to, symlinks followed.
    pub fn of(path: &Path) -> io::Result<Self> {
        fs::metadata(path).map(|m| Self::of_metadata(&m))
    }
}

/// Why an output cannot be written: the path and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputError {
    /// The output as the user named it (or the part of it at fault).
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for OutputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for OutputError {}

/// What a command reads and what it will write, checked before it starts.
#[derive(Debug, Default)]
pub struct Outputs {
    /// The inputs that exist, with their identity.
    inputs: Vec<(PathBuf, FileId)>,
    /// The outputs checked so far, by [`absolute`] path.
    planned: Vec<(PathBuf, PathBuf)>,
    /// Folders a file was created in.
    writable: Vec<PathBuf>,
}

impl Outputs {
    /// Nothing read, nothing to write yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes that the command reads `path`. An input that does not exist
    /// (yet) is left to its reader to report.
    pub fn input(&mut self, path: &Path) {
        if let Ok(id) = FileId::of(path)
            && !self.inputs.iter().any(|(_, i)| *i == id)
        {
            self.inputs.push((path.to_path_buf(), id));
        }
    }

    /// The input whose identity is `id`, if any.
    fn input_named(&self, id: FileId) -> Option<&Path> {
        self.inputs
            .iter()
            .find(|(_, i)| *i == id)
            .map(|(p, _)| p.as_path())
    }

    /// Checks that `path` can be written as a file (see the module's doc)
    /// and notes it as an output.
    pub fn file(&mut self, path: &Path) -> Result<(), OutputError> {
        let error = |reason: String| OutputError {
            path: path.to_path_buf(),
            reason,
        };
        if path.as_os_str().is_empty() {
            return Err(error("an empty path; expected a file name".to_owned()));
        }
        if path.file_name().is_none() || path.ends_with(".") {
            return Err(error(
                "names a folder (it ends in `..`, `.` or `/`); expected a file name".to_owned(),
            ));
        }
        match fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {
                return Err(error(
                    "is a directory; expected a file (name the file to write)".to_owned(),
                ));
            }
            Ok(meta) if !meta.is_file() => {
                return Err(error(format!(
                    "is {}; expected a regular file or a new name (an output is replaced by \
                     renaming a new file onto it)",
                    crate::kind_of(&meta)
                )));
            }
            Ok(meta) => {
                if let Some(input) = self.input_named(FileId::of_metadata(&meta)) {
                    return Err(error(format!(
                        "is {} (symlinks followed), which this command reads: writing it would \
                         destroy the input",
                        if input == path {
                            "an input".to_owned()
                        } else {
                            format!("the same file as the input {}", input.display())
                        }
                    )));
                }
            }
            // (A part of the path that is a file: the folder check says so.)
            Err(e) if missing(&e) => {}
            Err(e) => return Err(error(format!("cannot be written: {}", io_reason(&e)))),
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        self.folder(parent).map_err(|e| {
            error(format!(
                "cannot be written: its folder {} {}",
                parent.display(),
                e.reason
            ))
        })?;
        let abs = absolute(path);
        if let Some((other, _)) = self.planned.iter().find(|(_, a)| *a == abs) {
            return Err(error(if other == path {
                "is named twice as an output".to_owned()
            } else {
                format!("is the same file as the output {}", other.display())
            }));
        }
        self.planned.push((path.to_path_buf(), abs));
        Ok(())
    }

    /// Checks that `dir` can be a folder of outputs (it is one, or can be
    /// created, and files can be created in it), and that each of `files`
    /// in it can be written ([`Outputs::file`]).
    pub fn dir(&mut self, dir: &Path, files: &[&str]) -> Result<(), OutputError> {
        self.folder(dir)?;
        for name in files {
            self.file(&dir.join(name))?;
        }
        Ok(())
    }

    /// Checks that `dir` is a folder files can be created in, or that it
    /// can be created.
    fn folder(&mut self, dir: &Path) -> Result<(), OutputError> {
        // The nearest part of the path that exists must be a directory.
        let mut existing = dir;
        loop {
            match fs::metadata(existing) {
                Ok(meta) if meta.is_dir() => break,
                Ok(meta) => {
                    return Err(OutputError {
                        path: dir.to_path_buf(),
                        reason: if existing == dir {
                            format!("is {}, not a directory", kind(&meta))
                        } else {
                            format!(
                                "cannot be created: {} is {}, not a directory",
                                existing.display(),
                                kind(&meta)
                            )
                        },
                    });
                }
                Err(e) if missing(&e) => {
                    existing = match existing.parent() {
                        Some(p) if !p.as_os_str().is_empty() => p,
                        _ => Path::new("."),
                    };
                }
                Err(e) => {
                    return Err(OutputError {
                        path: dir.to_path_buf(),
                        reason: format!("cannot be used as a folder: {}", io_reason(&e)),
                    });
                }
            }
        }
        let abs = absolute(existing);
        if self.writable.contains(&abs) {
            return Ok(());
        }
        probe(existing).map_err(|e| OutputError {
            path: dir.to_path_buf(),
            reason: if existing == dir {
                format!("takes no new files: {}", io_reason(&e))
            } else {
                format!(
                    "cannot be created: {} takes no new files: {}",
                    existing.display(),
                    io_reason(&e)
                )
            },
        })?;
        self.writable.push(abs);
        Ok(())
    }
}

/// What `meta` describes, for messages: `a file`, `a directory`, `a FIFO
/// (named pipe)`...
fn kind(meta: &Metadata) -> &'static str {
    if meta.is_file() {
        "a file"
    } else {
        crate::kind_of(meta)
    }
}

/// Whether `e` says the path does not lead anywhere yet: a part is missing,
/// or is a file where a folder would be (which the folder check names).
fn missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// An I/O error's text without Rust's `(os error N)` suffix.
fn io_reason(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// Creates and removes a file in `dir`: the one sure test that files can
/// be created there.
fn probe(dir: &Path) -> io::Result<()> {
    let name = dir.join(format!(".apflab-probe-{}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&name)?;
    fs::remove_file(&name)
}

/// `path` made absolute, with its longest existing prefix resolved
/// (symlinks followed) and `.` / `..` in the rest applied: two names of one
/// file not yet created compare equal.
pub fn absolute(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    let base = loop {
        if let Ok(c) = fs::canonicalize(if existing.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &existing
        }) {
            break c;
        }
        match existing.components().next_back() {
            Some(Component::Normal(_) | Component::CurDir | Component::ParentDir) => {
                let last = existing
                    .components()
                    .next_back()
                    .map(|c| c.as_os_str().to_owned());
                rest.extend(last);
                existing.pop();
            }
            _ => break std::path::absolute(&existing).unwrap_or(existing.clone()),
        }
    };
    let mut out = base;
    for part in rest.iter().rev() {
        match Path::new(part).components().next() {
            Some(Component::ParentDir) => {
                out.pop();
            }
            Some(Component::CurDir) => {}
            _ => out.push(part),
        }
    }
    out
}

/// Writes `bytes` to a temporary name in `path`'s folder (created if
/// needed) and renames it onto `path`, so a reader sees the old file or the
/// new one, never half of it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    let name = path
        .file_name()
        .map_or_else(|| "file".to_owned(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    // A leftover of an earlier process with the same id is ours to replace;
    // `create_new` then never follows a link planted under that name.
    let _ = fs::remove_file(&tmp);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes));
    written
        .and_then(|()| fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_that_is_an_input_is_refused_by_identity() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("result.json");
        fs::write(&input, "{}").unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        let hard = dir.path().join("hard.json");
        fs::hard_link(&input, &hard).unwrap();
        let mut outputs = Outputs::new();
        outputs.input(&input);
        for path in [&input, &link, &hard] {
            let e = outputs.file(path).unwrap_err();
            assert!(e.reason.contains("destroy the input"), "{e}");
        }
        // Through a folder reached by `..`, too.
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        let e = outputs.file(&sub.join("../result.json")).unwrap_err();
        assert!(e.reason.contains("destroy the input"), "{e}");
        assert!(outputs.file(&dir.path().join("new.md")).is_ok());
    }

    #[test]
    fn directories_devices_and_unwritable_folders_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut outputs = Outputs::new();
        let e = outputs.file(dir.path()).unwrap_err();
        assert!(e.reason.contains("is a directory"), "{e}");
        let e = outputs.file(Path::new("/dev/null")).unwrap_err();
        assert!(e.reason.contains("a character device"), "{e}");
        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        let e = outputs.file(&file.join("x.json")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: cannot be written: its folder {} is a file, not a directory",
                file.join("x.json").display(),
                file.display()
            )
        );
        let e = outputs.file(&file.join("a/x.json")).unwrap_err();
        assert!(e.reason.contains("is a file, not a directory"), "{e}");
        let e = outputs.dir(&file, &["result.json"]).unwrap_err();
        assert_eq!(e.reason, "is a file, not a directory", "{e}");
        // /proc takes no new files, whoever asks.
        let e = outputs
            .file(Path::new("/proc/apflab-out.json"))
            .unwrap_err();
        assert!(
            e.reason
                .starts_with("cannot be written: its folder /proc takes no new files"),
            "{e}"
        );
        // A folder still to be created is checked where it would be.
        assert!(
            outputs
                .dir(&dir.path().join("a/b"), &["result.json"])
                .is_ok()
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(
            leftovers.len(),
            1,
            "the probe leaves nothing: {leftovers:?}"
        );
    }

    #[test]
    fn one_file_named_twice_as_an_output_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut outputs = Outputs::new();
        outputs.dir(dir.path(), &["result.json"]).unwrap();
        let e = outputs
            .file(&dir.path().join("x/../result.json"))
            .unwrap_err();
        assert!(e.reason.contains("same file as the output"), "{e}");
    }

    #[test]
    fn an_atomic_write_replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/table.csv");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path().join("a"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["table.csv"]);
        // Onto a directory: refused, the directory and no temporary left.
        let e = write_atomic(&dir.path().join("a"), b"x").unwrap_err();
        assert!(e.kind() != io::ErrorKind::NotFound, "{e}");
        assert!(dir.path().join("a/table.csv").is_file());
    }
}
