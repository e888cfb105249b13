//! The Linux system calls PID 1 needs, each wrapped once: mounts, the
//! console, the monotonic clock (the guest's virtual counter), anonymous
//! mappings and power-off.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::sync::OnceLock;

/// The console's file descriptor, once opened.
static CONSOLE: OnceLock<RawFd> = OnceLock::new();

/// Mounts a pseudo file system (`proc`, `devtmpfs`) on `target`, creating
/// the directory if needed; one already mounted there is fine.
pub fn mount(fstype: &str, target: &str) -> io::Result<()> {
    let context =
        |e: io::Error| io::Error::new(e.kind(), format!("mount {fstype} on {target}: {e}"));
    match std::fs::create_dir(target) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(context(e)),
        _ => {}
    }
    let source = CString::new(fstype).expect("no NUL in a file system name");
    let dir = CString::new(target).expect("no NUL in a mount point");
    // SAFETY: three valid C strings and no data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            dir.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(context(e));
        }
    }
    Ok(())
}

/// Opens `/dev/console` for the messages and the report, mounting
/// devtmpfs on `/dev` first if the initramfs has no console node.
pub fn open_console() -> io::Result<()> {
    let path = c"/dev/console";
    let open = || {
        // SAFETY: a valid C string; the descriptor is kept for the
        // process's lifetime.
        unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        }
    };
    let mut fd = open();
    if fd < 0 {
        mount("devtmpfs", "/dev")?;
        fd = open();
    }
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("open /dev/console: {e}")));
    }
    let _ = CONSOLE.set(fd);
    Ok(())
}

/// Writes `bytes` to the console in one `write(2)`, so that no kernel
/// message lands inside them. Before [`open_console`] it writes to
/// standard output (the console the kernel opened for init, if any).
pub fn write_console(bytes: &[u8]) -> io::Result<()> {
    let fd = CONSOLE.get().copied().unwrap_or(libc::STDOUT_FILENO);
    // SAFETY: `bytes` is valid for its length.
    let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("the console took {n} of {} bytes", bytes.len()),
        ));
    }
    Ok(())
}

/// Prints one line: `prefix`, `text` with any newline made a space, `\n`.
pub fn console_line(prefix: &str, text: &str) {
    let line = format!("{prefix}{}\n", text.replace(['\n', '\r'], " "));
    // Nothing better to do with a console that does not take a line.
    let _ = write_console(line.as_bytes());
}

/// CLOCK_MONOTONIC in nanoseconds: on arm64 the vDSO reads the virtual
/// counter (CNTVCT_EL0), so under emu this is the machine's virtual time.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_MONOTONIC is always there");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until CLOCK_MONOTONIC reaches `deadline_ns` (a timer, not a
/// busy wait).
pub fn sleep_until(deadline_ns: u64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as _,
        tv_nsec: (deadline_ns % 1_000_000_000) as _,
    };
    loop {
        // SAFETY: `ts` is a valid timespec; no remainder is asked for.
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        match rc {
            0 => return Ok(()),
            libc::EINTR => continue,
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// CPUs online (`sysconf(_SC_NPROCESSORS_ONLN)`).
pub fn cpus_online() -> u32 {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    n.max(0) as u32
}

/// Clock ticks per second of `/proc/stat` (`USER_HZ`).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    n.max(1) as u64
}

/// Private anonymous memory, not populated: the workload's first touch of
/// each page is a page fault, as in Gavin Shan's tests.
pub struct Mapping {
    ptr: *mut u64,
    words: usize,
}

// SAFETY: the mapping is plain memory owned by this value; sharing it is
// governed by the borrows of `words`/`words_mut` and the raw accessors'
// contracts.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `bytes` bytes (a multiple of 8).
    pub fn new(bytes: u64) -> io::Result<Mapping> {
        let len =
            usize::try_from(bytes).map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // SAFETY: a fresh anonymous mapping, no address hint.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("mmap of {} MiB: {e}", bytes >> 20),
            ));
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            words: len / 8,
        })
    }

    /// The memory as words.
    pub fn words_mut(&mut self) -> &mut [u64] {
        // SAFETY: the mapping is `words` words, readable and writable, and
        // `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.words) }
    }

    /// First word of the mapping, for callers that share it between
    /// threads with their own rules.
    pub fn as_ptr(&self) -> *mut u64 {
        self.ptr
    }

    /// Unmaps the memory, reporting a failure (dropping unmaps silently).
    pub fn unmap(self) -> io::Result<()> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the mapping is ours and nothing refers to it any more.
        if unsafe { libc::munmap(this.ptr.cast(), this.words * 8) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("munmap: {e}")));
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: as in `unmap`.
        unsafe { libc::munmap(self.ptr.cast(), self.words * 8) };
    }
}

/// A pipe to copy a page through: the kernel reads the page from the
/// caller's memory (`write(2)`, `copy_from_user`) and writes it back into
/// another buffer (`read(2)`).
pub struct Pipe {
    read: std::fs::File,
    write: std::fs::File,
}

impl Pipe {
    /// A new pipe (its capacity, 64 KiB by default, holds a page).
    pub fn new() -> io::Result<Pipe> {
        use std::os::fd::FromRawFd;
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are fresh and owned by nothing else.
        Ok(unsafe {
            Pipe {
                read: std::fs::File::from_raw_fd(fds[0]),
                write: std::fs::File::from_raw_fd(fds[1]),
            }
        })
    }

    /// Copies the words of `from` into `to` (of the same length) through
    /// the pipe.
    pub fn copy_through(&self, from: &[u64], to: &mut [u64]) -> io::Result<()> {
        use std::io::{Read, Write};
        // SAFETY: plain words viewed as their bytes, for their lifetime.
        let bytes =
            unsafe { std::slice::from_raw_parts(from.as_ptr().cast::<u8>(), size_of_val(from)) };
        (&self.write).write_all(bytes)?;
        // SAFETY: as above; any bytes are valid words.
        let out = unsafe {
            std::slice::from_raw_parts_mut(to.as_mut_ptr().cast::<u8>(), size_of_val(to))
        };
        (&self.read).read_exact(out)
    }
}

/// Flushes the file systems and powers the machine off through the
/// kernel (PSCI SYSTEM_OFF on arm64). PID 1 must not exit: the kernel
/// would panic.
pub fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::LINUX_REBOOT_CMD_POWER_OFF);
    }
    let e = io::Error::last_os_error();
    console_line(apflab_abi::linux::ERROR_PREFIX, &format!("power off: {e}"));
    loop {
        // SAFETY: pause takes no arguments.
        unsafe { libc::pause() };
    }
}
