//! The end of the boot, and the workload's words after it (see
//! [`apflab_abi::boot_point`]).
//!
//! The kernel keeps the command line it booted with, so apflab keeps the
//! workload's words off it: it puts [`HANDOVER_WORD`] there instead, and
//! this init announces the end of its boot ([`FN_BOOT_DONE`], where the VMM
//! saves or resumes a snapshot) and then fetches the words with
//! [`FN_WORKLOAD_ARGS`], 8 bytes a call, through the apflab doorbell page
//! (user space has no HVC), which it maps from `/dev/mem`. Without the
//! word (plain QEMU, `-append`) the words are on the command line.

use std::ffi::CString;
use std::io;

use apflab_abi::boot_point::{FN_BOOT_DONE, FN_WORKLOAD_ARGS, HANDOVER_WORD};
use apflab_abi::hypercall::doorbell as layout;
use apflab_abi::memory_map::{DOORBELL_BASE, DOORBELL_SIZE};

/// Most bytes of words taken (the kernel's command line holds no more).
const MAX_WORDS: u64 = 4096;

/// The words that say what the workload is: `cmdline`'s own, and when
/// `cmdline` says so, those the VMM hands over after the boot point (in
/// place of [`HANDOVER_WORD`], so the keys that shape the boot are checked
/// as before).
pub fn workload_words(cmdline: &str) -> io::Result<String> {
    if !cmdline.split_ascii_whitespace().any(|w| w == HANDOVER_WORD) {
        return Ok(cmdline.to_owned());
    }
    let bell = Doorbell::map()?;
    bell.call(FN_BOOT_DONE, 0);
    // The VMM takes its snapshot where the CPU next stops for it: an
    // emulated one completes an MMIO store at once and stops at its next
    // context synchronisation or branch. The ISB is that, before anything
    // after the boot point (on hardware it only orders the call).
    #[cfg(target_arch = "aarch64")]
    // SAFETY: an ISB has no effect on memory or registers.
    unsafe {
        std::arch::asm!("isb", options(nostack, preserves_flags))
    };
    let (len, _) = bell.call(FN_WORKLOAD_ARGS, 0);
    if len > MAX_WORDS {
        return Err(io::Error::other(format!(
            "the VMM hands over {len} bytes of workload words (at most {MAX_WORDS})"
        )));
    }
    let mut words = Vec::with_capacity(len as usize);
    for at in (0..len).step_by(8) {
        let (_, chunk) = bell.call(FN_WORKLOAD_ARGS, at);
        let n = (len - at).min(8) as usize;
        words.extend_from_slice(&chunk.to_le_bytes()[..n]);
    }
    let words = String::from_utf8(words)
        .map_err(|_| io::Error::other("the VMM's workload words are not UTF-8"))?;
    let mut all: Vec<&str> = cmdline
        .split_ascii_whitespace()
        .filter(|w| *w != HANDOVER_WORD)
        .collect();
    all.push(&words);
    Ok(all.join(" "))
}

/// The doorbell page, mapped uncached from `/dev/mem`.
struct Doorbell {
    regs: *mut u64,
}

impl Doorbell {
    fn map() -> io::Result<Doorbell> {
        let context = |what: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("{what} (the apflab doorbell page): {e}"))
        };
        let path = CString::new("/dev/mem").expect("no NUL");
        // The initramfs has no /dev/mem of its own unless devtmpfs is
        // mounted: make the node (char 1:1).
        // SAFETY: a valid C string; the call only creates a node.
        let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 1)) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(context("mknod /dev/mem", e));
            }
        }
        // SAFETY: a valid C string.
        let fd =
            unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_SYNC | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(context("open /dev/mem", io::Error::last_os_error()));
        }
        // SAFETY: maps one page of physical address space that is no RAM
        // (/dev/mem maps it uncached, as device memory); `fd` is open.
        let regs = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                DOORBELL_SIZE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                DOORBELL_BASE as libc::off_t,
            )
        };
        let mapped = io::Error::last_os_error();
        // SAFETY: `fd` is ours; the mapping outlives it.
        unsafe { libc::close(fd) };
        if regs == libc::MAP_FAILED {
            return Err(context("mmap /dev/mem", mapped));
        }
        Ok(Doorbell { regs: regs.cast() })
    }

    /// One call with x1 = `arg`: (x0, x1) of the answer. Every register is
    /// accessed with one 64-bit load or store, as the VMM decodes them.
    fn call(&self, function: u32, arg: u64) -> (u64, u64) {
        let reg = |offset: u64| self.regs.wrapping_byte_add(offset as usize);
        // SAFETY: the page is mapped (see `map`) and these offsets lie in
        // it; these are MMIO accesses.
        unsafe {
            reg(layout::ARGS[0]).write_volatile(arg);
            reg(layout::FUNCTION).write_volatile(u64::from(function));
            (
                reg(layout::RESULT0).read_volatile(),
                reg(layout::RESULT1).read_volatile(),
            )
        }
    }
}
