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
