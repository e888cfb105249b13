//! Linux as a guest: a config whose `[guest] kernel` is an arm64 Linux
//! `Image` (plain or gzip'd, as distributions ship `vmlinuz`) boots that
//! kernel with an initramfs whose `/init` runs the configured workload
//! (`guest/linux`, built with apflab; or the config's own `initrd`), and
//! reads the workload's report from the console line it prints.
//!
//! The workload keys travel on the kernel command line as for apflab's own
//! guest (`apflab.*` keys of [`apflab_abi::boot`]): `/init` reads them from
//! `/proc/cmdline`. The keys and sections that only apflab's own kernel
//! implements are refused for Linux with the key's name.

use std::path::Path;

use apflab_vmm::arm64_image;

/// The command line every Linux guest gets first: its console on the
/// board's PL011 from the first message on, and the initramfs's `/init`
/// as the first process.
pub const BASE_BOOTARGS: &str = "console=ttyAMA0 earlycon=pl011,0x09000000 rdinit=/init";

/// Whether the kernel file `path` is an arm64 Linux Image, plain or gzip'd.
/// Unreadable files are not: the loader reports them.
pub fn is_linux_kernel(path: &Path) -> bool {
    matches!(arm64_image::read_header(path), Ok(Some(_)))
}

/// One past the last byte the loader puts in RAM for the Linux kernel
/// `path` and an initrd of `initrd_len` bytes (see
/// [`apflab_vmm::loader::LinuxLayout`]); `None` if `path` is no Image.
pub fn payload_end(path: &Path, initrd_len: u64) -> Option<u64> {
    let (header, len) = arm64_image::read_header(path).ok()??;
    Some(
        apflab_vmm::loader::LinuxLayout::of(&header, len)
            .free_from
            .saturating_add(initrd_len),
    )
}

/// The kernel parameter that keeps the async PF client of apflab's Linux
/// kernel (`guest/linux/kernel`) off, for `[apf] guest_enables = false`.
pub const NO_APF_BOOTARG: &str = "no-apflab-apf";

/// `[workload]` keys apflab's own kernel implements and Linux's `/init`
/// does not: its scheduler and time slice (Linux schedules with its own)
/// and the store-backed verification.
pub const WORKLOAD_KEYS_NOT_FOR_LINUX: [&str; 3] = ["timeslice_us", "scheduler", "verify"];

/// The command line of a Linux guest: [`BASE_BOOTARGS`], the config's own
/// `[guest] bootargs`, then the workload's keys.
pub fn bootargs(extra: Option<&str>, workload_args: &str) -> String {
    let mut args = String::from(BASE_BOOTARGS);
    for part in [extra.unwrap_or(""), workload_args] {
        if !part.trim().is_empty() {
            args.push(' ');
            args.push_str(part.trim());
        }
    }
    args
}

/// What the Linux guest's init said when it powered off without a report
/// (a bootarg it does not take, or a failure): its first such line.
pub fn init_failure(console: &str) -> Option<String> {
    use apflab_abi::linux::{BAD_BOOTARG_PREFIX, ERROR_PREFIX};
    console
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(BAD_BOOTARG_PREFIX) || l.starts_with(ERROR_PREFIX))
        .map(|l| format!("the Linux guest's init stopped: {l}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn an_image_is_a_linux_kernel_and_an_elf_is_not() {
        let mut image = vec![0u8; 64];
        image[0x38..0x3c].copy_from_slice(b"ARM\x64");
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&image).unwrap();
        assert!(is_linux_kernel(f.path()));
        assert_eq!(
            payload_end(f.path(), 100),
            Some(apflab_abi::memory_map::RAM_BASE + (4 << 20) + 100)
        );
        assert!(!is_linux_kernel(apflab_artifacts::guest_elf()));
        assert!(!is_linux_kernel(Path::new("/nonexistent")));
    }

    #[test]
    fn the_command_line_starts_with_the_console_and_init() {
        assert_eq!(
            bootargs(Some(" quiet "), "apflab.workload=mixed"),
            format!("{BASE_BOOTARGS} quiet apflab.workload=mixed")
        );
        assert_eq!(bootargs(None, ""), BASE_BOOTARGS);
    }

    #[test]
    fn the_inits_own_failure_line_is_the_runs_failure() {
        let console = "[ 0.3] Run /init as init process\r\n\
                       apflab-linux: bad bootarg apflab.mib=600: expected at most 431\r\n";
        assert_eq!(
            init_failure(console).as_deref(),
            Some(
                "the Linux guest's init stopped: apflab-linux: bad bootarg apflab.mib=600: \
                 expected at most 431"
            )
        );
        assert_eq!(init_failure("[ 0.3] reboot: Power down\n"), None);
    }
}
