//! The end of the guest's boot: the one point where the VMM can save the
//! whole machine and where a later run resumes from it ("boot once, run
//! many").
//!
//! The guest announces the point with [`FN_BOOT_DONE`] once everything that
//! does not depend on its workload is set up, and reads the
//! [`AFTER_BOOT_KEYS`] of its bootargs only after the call returns. A run
//! resumed from a snapshot rewrites the device tree before the guest reads
//! them, so one boot serves every workload that shares its other keys. The
//! call changes nothing the guest can measure: the VMM charges it no time
//! and counts no exit for it. A Linux guest, whose kernel keeps the
//! command line it booted with, fetches those words after the call with
//! [`FN_WORKLOAD_ARGS`] instead.

use crate::boot;
use crate::hypercall::APFLAB_FN_BASE;

/// `BOOT_DONE() -> 0`: the guest has booted and reads its workload next.
/// Made once, by the boot CPU. On a machine without it (plain QEMU) it
/// returns [`crate::hypercall::SMCCC_NOT_SUPPORTED`], which changes
/// nothing for the guest.
pub const FN_BOOT_DONE: u32 = APFLAB_FN_BASE | 0x20;

/// `WORKLOAD_ARGS(offset) -> (length, bytes)`: the words of the bootargs
/// that are read after the boot ([`AFTER_BOOT_KEYS`]), for a guest whose
/// kernel consumes its command line at boot (Linux): x0 = the length of
/// the whole string, x1 = its bytes `offset..offset + 8` (little-endian,
/// zero past the end); `INVALID_PARAMETERS` for an offset past the end.
/// The Linux guest's init makes it through the doorbell page.
pub const FN_WORKLOAD_ARGS: u32 = APFLAB_FN_BASE | 0x21;

/// The word the VMM puts on a Linux kernel's command line in place of the
/// words of [`AFTER_BOOT_KEYS`], which it hands over with
/// [`FN_WORKLOAD_ARGS`] instead: the command line (which the kernel prints
/// and keeps) is then the same for every workload of one boot.
pub const HANDOVER_WORD: &str = "apflab.handover=doorbell";

/// The bootargs keys the guest reads only after [`FN_BOOT_DONE`]: what the
/// workload does. Every other key shapes the boot, so a snapshot serves
/// only runs whose other keys are the same.
pub const AFTER_BOOT_KEYS: [&str; 12] = [
    boot::KEY_WORKLOAD,
    boot::KEY_TASKS,
    boot::KEY_OPS,
    boot::KEY_MIB,
    boot::KEY_PATTERN,
    boot::KEY_PASSES,
    boot::KEY_VERIFY,
    boot::KEY_READER,
    boot::KEY_REQUESTS,
    boot::KEY_INTERVAL_US,
    boot::KEY_SEED,
    boot::KEY_STORE_SEED,
];

/// Whether the bootargs key `key` is read after the boot.
pub fn is_after_boot_key(key: &str) -> bool {
    AFTER_BOOT_KEYS.contains(&key)
}

/// The words of `bootargs` that shape the boot: every word but the
/// `key=value` ones of [`AFTER_BOOT_KEYS`], in order.
pub fn boot_words(bootargs: &str) -> impl Iterator<Item = &str> {
    bootargs.split_ascii_whitespace().filter(|word| {
        word.split_once('=')
            .is_none_or(|(key, _)| !is_after_boot_key(key))
    })
}

/// The words of `bootargs` read after the boot: the `key=value` ones of
/// [`AFTER_BOOT_KEYS`], in order.
pub fn after_boot_words(bootargs: &str) -> impl Iterator<Item = &str> {
    bootargs.split_ascii_whitespace().filter(|word| {
        word.split_once('=')
            .is_some_and(|(key, _)| is_after_boot_key(key))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_workload_words_are_left_for_after_the_boot() {
        let words: [&str; 3] = {
            let mut it = boot_words(
                "console=ttyAMA0 apflab.workload=cpu apflab.timeslice_us=500 apflab.ops=7 quiet",
            );
            [it.next().unwrap(), it.next().unwrap(), it.next().unwrap()]
        };
        assert_eq!(
            words,
            ["console=ttyAMA0", "apflab.timeslice_us=500", "quiet"]
        );
        let after: [&str; 2] = {
            let mut it = after_boot_words("quiet apflab.ops=7 apflab.apf=off apflab.seed=3");
            [it.next().unwrap(), it.next().unwrap()]
        };
        assert_eq!(after, ["apflab.ops=7", "apflab.seed=3"]);
        assert!(is_after_boot_key(boot::KEY_SEED));
        assert!(!is_after_boot_key(boot::KEY_APF));
        assert_ne!(FN_BOOT_DONE, crate::hypercall::FN_TRACE);
        assert_ne!(FN_BOOT_DONE, FN_WORKLOAD_ARGS);
    }
}
