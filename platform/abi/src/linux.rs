//! What the init of the Linux guest (`guest/linux`, PID 1 of the initramfs
//! the VMM packs) prints on the console besides its report: the VMM looks
//! for these lines to tell a bad configuration from a failed run.
//!
//! Every line of its own starts with [`MESSAGE_PREFIX`]; the report itself
//! is the line of [`crate::report::GuestReport::write_console_line`].

/// Prefix of every line the Linux guest's init prints.
pub const MESSAGE_PREFIX: &str = "apflab-linux: ";

/// Prefix of the line for a bootarg the init does not accept, followed by
/// `KEY=VALUE: expected ...` (the key, its value as given, what would have
/// been accepted). The init then powers off without a report.
pub const BAD_BOOTARG_PREFIX: &str = "apflab-linux: bad bootarg ";

/// Prefix of the line for any other failure (a system call that failed, a
/// panic), followed by what failed. The init then powers off without a
/// report.
pub const ERROR_PREFIX: &str = "apflab-linux: error: ";

/// The file of the async PF client's counters in the apflab Linux kernel
/// (`guest/linux/kernel`): one `NAME VALUE` line per counter of
/// [`APF_COUNTERS`].
pub const APF_PROC_FILE: &str = "/proc/apflab-apf";

/// The async PF client's counters, named as in [`APF_PROC_FILE`], in the
/// order of the report's `apf_*` fields they fill
/// ([`crate::report::GuestReport`]): "not present" taken, "page ready"
/// taken, tasks put to sleep, halts, dummy entries (a ready before its
/// sleeper), CPUs enabled, halts of the kernel itself, wake-alls, and the
/// time halted in nanoseconds.
pub const APF_COUNTERS: [&str; 9] = [
    "not_present",
    "ready",
    "parked",
    "halts",
    "early_ready",
    "enabled",
    "kernel_halts",
    "wake_alls",
    "halted_ns",
];

/// Linux guest only: `apflab.hotplug=on` has the init take CPU 1 offline
/// and back online while the memory threads run (through
/// `/sys/devices/system/cpu/cpu1/online`), so that the async PF client's
/// CPU offline and online paths run in the middle of a workload.
pub const KEY_HOTPLUG: &str = "apflab.hotplug";

/// When the init takes CPU 1 offline, and for how long, in nanoseconds of
/// `CLOCK_MONOTONIC` after the workload's start.
pub const HOTPLUG_OFFLINE_AT_NS: u64 = 20_000_000;
/// See [`HOTPLUG_OFFLINE_AT_NS`].
pub const HOTPLUG_OFFLINE_FOR_NS: u64 = 20_000_000;
