//! The files an apflab user names: reading them (configs, experiment
//! files, samples files, store images, policy modules, guest kernels),
//! walking folders of them ([`walk`]) and writing outputs ([`output`]), each
//! in one place so that every command does it the same way.
//!
//! Reading:
//!
//! - Only regular files are read. A directory, FIFO, device or socket is
//!   refused before it is opened: opening a FIFO blocks until a writer
//!   comes, and `/dev/zero` never ends.
//! - The size is checked against a limit the caller gives *before*
//!   anything is read, and the read itself stops one byte past the limit,
//!   so a file that grows (or lies about its size, as files in `/proc` do)
//!   cannot make it unbounded either.
//!
//! Errors are [`std::io::Error`]s whose message says what is wrong
//! ("is a FIFO (named pipe), not a regular file", "is 2147483648 bytes,
//! more than ..."), so callers keep their own error types, which already
//! name the file and the key.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

pub mod output;
pub mod walk;

pub use output::{FileId, OutputError, Outputs, write_atomic};

/// One MiB, for limits.
pub const MIB: u64 = 1 << 20;

/// What a file that is not regular is, for messages.
pub(crate) fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// `n` bytes, with a binary unit when it is a whole number of them.
fn size_text(n: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n.trailing_zeros() >= shift {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

/// The error for a file of `len` bytes over a limit of `max` (`why` says
/// where the limit comes from, e.g. "guest RAM").
fn too_large(len: u64, max: u64, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!(
            "is {len} bytes, more than {why} allows ({})",
            size_text(max)
        ),
    )
}

fn check(meta: &Metadata, max_bytes: u64, why: &str) -> io::Result<()> {
    if !meta.is_file() {
        let kind = kind_of(meta);
        let text = if kind == "not a regular file" {
            "is not a regular file".to_owned()
        } else {
            format!("is {kind}, not a regular file")
        };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, text));
    }
    if meta.len() > max_bytes {
        return Err(too_large(meta.len(), max_bytes, why));
    }
    Ok(())
}

/// Checks, without opening it, that `path` is a regular file of at most
/// `max_bytes` bytes (`why` names the limit in the error); returns its
/// length.
pub fn check_regular(path: &Path, max_bytes: u64, why: &str) -> io::Result<u64> {
    let meta = std::fs::metadata(path)?;
    check(&meta, max_bytes, why)?;
    Ok(meta.len())
}

/// Opens `path` for reading if it is a regular file of at most `max_bytes`
/// bytes (`why` names the limit in the error); returns the file and its
/// length. Nothing else is opened: the type is checked before the open and
/// again on the opened file (which is opened non-blocking, so a FIFO put
/// in its place in between does not block either).
pub fn open_regular(path: &Path, max_bytes: u64, why: &str) -> io::Result<(File, u64)> {
    check_regular(path, max_bytes, why)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    check(&meta, max_bytes, why)?;
    Ok((file, meta.len()))
}

/// Reads the regular file `path` whole if it has at most `max_bytes`
/// bytes (see [`open_regular`]); a file that grows past the limit while it
/// is read is refused too.
pub fn read_regular(path: &Path, max_bytes: u64, why: &str) -> io::Result<Vec<u8>> {
    let (file, len) = open_regular(path, max_bytes, why)?;
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    let read = bytes.len() as u64;
    if read > max_bytes {
        return Err(too_large(read, max_bytes, why));
    }
    Ok(bytes)
}

/// [`read_regular`] for a UTF-8 text file.
pub fn read_regular_to_string(path: &Path, max_bytes: u64, why: &str) -> io::Result<String> {
    String::from_utf8(read_regular(path, max_bytes, why)?).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "is not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_small_regular_file_is_read() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"hello").unwrap();
        assert_eq!(read_regular(f.path(), 5, "the limit").unwrap(), b"hello");
        assert_eq!(
            read_regular_to_string(f.path(), 10, "the limit").unwrap(),
            "hello"
        );
        assert_eq!(check_regular(f.path(), 5, "x").unwrap(), 5);
    }

    #[test]
    fn a_file_over_the_limit_is_refused_before_it_is_read() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0; 4097]).unwrap();
        let e = read_regular(f.path(), 4096, "guest RAM").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(
            e.to_string(),
            "is 4097 bytes, more than guest RAM allows (4 KiB)"
        );
    }

    #[test]
    fn directories_fifos_and_devices_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_regular(dir.path(), 1 << 20, "x").unwrap_err();
        assert_eq!(e.to_string(), "is a directory, not a regular file");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_regular(&fifo, 1 << 20, "x").unwrap_err();
        assert_eq!(e.to_string(), "is a FIFO (named pipe), not a regular file");
        let e = open_regular(&fifo, u64::MAX, "x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = read_regular(Path::new("/dev/zero"), 1 << 20, "x").unwrap_err();
        assert_eq!(e.to_string(), "is a character device, not a regular file");
        let e = read_regular(Path::new("/no/such/file"), 1, "x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn text_must_be_utf8() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"ok\xff").unwrap();
        let e = read_regular_to_string(f.path(), 10, "x").unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }

    #[test]
    fn sizes_are_shown_in_binary_units() {
        assert_eq!(size_text(1 << 20), "1 MiB");
        assert_eq!(size_text(3 << 30), "3 GiB");
        assert_eq!(size_text(1000), "1000 bytes");
    }
}
